"""Run an LLM over every row of a table: one chat-completions request per row."""

from .api import amap_rows, map_rows

__version__ = "0.1.0"
__all__ = ["__version__", "amap_rows", "map_rows"]
