"""Retry policy: which failures are tried again, how long to wait, how often.

Built from tenacity's strategy objects in one place. Retryable errors (429, 5xx, timeouts,
dropped connections, malformed 200 bodies) back off exponentially with full jitter; a 429
waits at least what the server's `Retry-After` asks. Other 4xx are never retried.

In a run the shared `Limiter` holds every request after a 429 for as long as the server
asks (and no longer: at a fixed window's reset). There (`limiter_waits`) a 429 is tried
again at once, for the limiter to hold, and is not a failure of the row: 429s have their own
allowance, `RATE_LIMITED_RETRIES`, beside `max_retries` for the other errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_random_exponential

from .errors import RateLimited, RetryableError

RATE_LIMITED_RETRIES = 30  # 429s a request may get, each after the limiter's pause


class wait_retry_after(wait_base):
    """The server's Retry-After when it sent one, else the fallback strategy."""

    def __init__(self, fallback: wait_base, *, limiter_waits: bool = False) -> None:
        self.fallback = fallback
        self.limiter_waits = limiter_waits

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, RateLimited):
            if self.limiter_waits:
                return 0.0
            if exc.retry_after is not None:
                return exc.retry_after
        return float(self.fallback(retry_state))


class stop_after_failures(stop_base):
    """Stop after `max_retries` retries of errors other than 429, or `rate_limited` of 429s.

    One per request: it counts that request's errors as the policy reports them.
    """

    def __init__(self, max_retries: int, rate_limited: int) -> None:
        self.max_retries, self.rate_limited = max_retries, rate_limited
        self.failures = self.refusals = 0

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is not None and isinstance(outcome.exception(), RateLimited):
            self.refusals += 1
        else:
            self.failures += 1
        return self.failures > self.max_retries or self.refusals > self.rate_limited


def policy(
    max_retries: int,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    initial_s: float = 0.5,
    max_wait_s: float = 60.0,
    limiter_waits: bool = False,
) -> AsyncRetrying:
    """At most `max_retries` retries of a retryable error; the last error is re-raised.

    `limiter_waits`: a limiter paces the retries of 429s, which then do not count against
    `max_retries` but against RATE_LIMITED_RETRIES (none when `max_retries` is 0).
    """
    if limiter_waits:
        stop: stop_base = stop_after_failures(
            max_retries, RATE_LIMITED_RETRIES if max_retries else 0
        )
    else:
        stop = stop_after_attempt(max_retries + 1)
    backoff = wait_random_exponential(multiplier=initial_s, max=max_wait_s)
    return AsyncRetrying(
        retry=retry_if_exception_type(RetryableError),
        stop=stop,
        wait=wait_retry_after(backoff, limiter_waits=limiter_waits),
        sleep=sleep,
        reraise=True,
    )
