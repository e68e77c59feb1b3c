"""Retry policy: which failures are tried again, how long to wait, how often.

Built from tenacity's strategy objects in one place. Retryable errors (429, 5xx, timeouts,
dropped connections, malformed 200 bodies) back off exponentially with full jitter; a 429
waits at least what the server's `Retry-After` asks. Other 4xx are never retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base, wait_random_exponential

from .errors import RateLimited, RetryableError


class wait_retry_after(wait_base):
    """The server's Retry-After when it sent one, else the fallback strategy."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return exc.retry_after
        return float(self.fallback(retry_state))


def policy(
    max_retries: int,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    initial_s: float = 0.5,
    max_wait_s: float = 60.0,
) -> AsyncRetrying:
    """At most `max_retries` retries of a retryable error; the last error is re-raised."""
    return AsyncRetrying(
        retry=retry_if_exception_type(RetryableError),
        stop=stop_after_attempt(max_retries + 1),
        wait=wait_retry_after(wait_random_exponential(multiplier=initial_s, max=max_wait_s)),
        sleep=sleep,
        reraise=True,
    )
