"""Run an LLM over every row of a table: one chat-completions request per row."""

from .api import amap_rows, map_rows
from .errors import (
    AuthError,
    CatalogUnavailable,
    ConfigError,
    EndpointUnreachable,
    FatalRequestError,
    InputError,
    LockError,
    OutputError,
    PipelineError,
    RateLimited,
    RequestError,
    RetryableError,
    RowError,
    RunStopped,
    StoppedPartWay,
    StoreError,
)

__version__ = "0.1.0"
__all__ = [
    "AuthError",
    "CatalogUnavailable",
    "ConfigError",
    "EndpointUnreachable",
    "FatalRequestError",
    "InputError",
    "LockError",
    "OutputError",
    "PipelineError",
    "RateLimited",
    "RequestError",
    "RetryableError",
    "RowError",
    "RunStopped",
    "StoppedPartWay",
    "StoreError",
    "__version__",
    "amap_rows",
    "map_rows",
]
