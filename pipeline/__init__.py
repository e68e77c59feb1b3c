"""Run an LLM over every row of a table: one chat-completions request per row."""

__version__ = "0.1.0"
