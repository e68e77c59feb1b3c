"""The one exception tree of the pipeline; "retryable" is a type, not a string match.

PipelineError
├── ConfigError            bad YAML, unknown/missing/wrong-typed key, unset ${VAR}
├── InputError             unreadable input, missing template column, bad template
├── OutputError            the output or the store cannot be written
│   └── StoreError         the store file is unreadable, corrupt or read-only
├── LockError              another run holds the store
├── RunStopped             the run stopped sending early (key, model, budget, endpoint down)
├── StoppedPartWay         an input, output or store error after sending began
├── CatalogUnavailable     the model catalog did not answer usefully
│   └── EndpointUnreachable  no connection to model.base_url (DNS, refused, timed out)
├── RowError               one row cannot be rendered (recorded on that row)
└── RequestError           one request failed (recorded on its row)
    ├── RetryableError     429, 5xx, timeouts, dropped connections, truncated bodies
    │   └── RateLimited    429, with the server's Retry-After when it sent one
    └── FatalRequestError  any other 4xx, or an answer a retry cannot change
        └── AuthError      401 / 403 / 404: the key, the model or the URL is wrong
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

    from .ratelimit import RateHeaders


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class ConfigError(PipelineError):
    """The config cannot be used as written."""


class InputError(PipelineError):
    """The input table or the template over it cannot be used."""


class OutputError(PipelineError):
    """The output file or the store cannot be written."""


class StoreError(OutputError):
    """The store file cannot be read or written (corrupt pages, read-only, not SQLite)."""


class LockError(PipelineError):
    """Another run holds the store."""


class RunStopped(PipelineError):
    """The run stopped sending early (auth failures, budget, endpoint down); answers are kept.

    `partial`: from `map_rows`, the frame with what was answered, the other rows `pending`
    (None when it stopped before sending: the key or the model rejected).
    """

    def __init__(self, message: str, *, partial: pl.DataFrame | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class StoppedPartWay(PipelineError):
    """An input, output or store error stopped a run after it had begun sending."""


class CatalogUnavailable(PipelineError):
    """The endpoint did not answer the catalog request usefully; `status` if it answered."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EndpointUnreachable(CatalogUnavailable):
    """No connection to the endpoint: its name does not resolve, or it refused or timed out."""


class RowError(PipelineError):
    """This row cannot be rendered (a missing or refused image file); recorded on the row."""


class RequestError(PipelineError):
    """One chat request failed; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetryableError(RequestError):
    """A failure that may pass on a later attempt."""


class RateLimited(RetryableError):
    """The server answered 429; `retry_after` is its advice in seconds, if any."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        rate: RateHeaders | None = None,
    ) -> None:
        super().__init__(message, status=429)
        self.retry_after = retry_after
        self.rate = rate  # the response's rate-limit headers, if it sent any


class FatalRequestError(RequestError):
    """A 4xx answer (or an answer) that a retry cannot fix."""


class AuthError(FatalRequestError):
    """401/403/404: wrong key, unknown model or wrong base URL."""


def printable(text: str) -> str:
    """Text from the data, safe to quote in a message: control characters escaped (`\\x00`),
    so a column name from a binary file cannot write to the terminal."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
