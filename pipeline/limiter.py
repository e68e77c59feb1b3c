"""Limiter stage: paces requests under requests/minute and tokens/minute budgets.

Each budget is a GCRA token bucket ("theoretical arrival time"): requests leave evenly
spaced, never as a burst at the top of a minute. Tokens are reserved from the estimate
before sending and settled with the response's `usage`. A 429 pauses every worker until
the server's `Retry-After`, lowers the rate, and the rate then climbs back.
Clock and sleep are injected so tests run without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

BACKOFF_FACTOR = 0.7  # rate multiplier after a 429
RECOVERY_STEP = 0.05  # rate fraction regained per quiet RECOVERY_S
RECOVERY_S = 5.0
DEFAULT_PAUSE_S = 1.0  # pause after a 429 that names no Retry-After


class _Bucket:
    """One GCRA budget of `per_minute` units."""

    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self.tat = 0.0  # when the budget is next free

    def reserve(self, units: float, now: float, factor: float) -> float:
        """Reserve `units`; return when they may be spent."""
        start = max(self.tat, now)
        self.tat = start + units * 60.0 / (self.per_minute * factor)
        return start

    def refund(self, units: float, factor: float) -> None:
        self.tat -= units * 60.0 / (self.per_minute * factor)


class Limiter:
    """Shared by all workers of a run."""

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._requests = _Bucket(requests_per_minute) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute) if tokens_per_minute else None
        self._clock = clock
        self._sleep = sleep
        self.factor = 1.0
        self.paused_until = 0.0
        self._last_change = float("-inf")
        self.rate_limited = 0

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of `tokens` estimated tokens may be sent."""
        while True:
            now = self._clock()
            if now < self.paused_until:
                await self._sleep(self.paused_until - now)
                continue
            self._recover(now)
            start = now
            if self._requests is not None:
                start = max(start, self._requests.reserve(1, now, self.factor))
            if self._tokens is not None:
                start = max(start, self._tokens.reserve(tokens, now, self.factor))
            if start > now:
                await self._sleep(start - now)
            if self._clock() >= self.paused_until:
                return
            # A 429 arrived while we waited: our slot is void, queue again after the pause.

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token budget with the real usage of a finished request."""
        if self._tokens is not None and actual > 0:
            self._tokens.refund(estimated - actual, self.factor)

    def rate_limited_by_server(self, retry_after: float | None) -> None:
        """A 429: pause everyone and lower the rate."""
        now = self._clock()
        self.rate_limited += 1
        self.paused_until = max(self.paused_until, now + (retry_after or DEFAULT_PAUSE_S))
        if now - self._last_change > 1.0:  # one cut per burst of 429s
            self.factor = max(0.05, self.factor * BACKOFF_FACTOR)
            self._last_change = now

    def _recover(self, now: float) -> None:
        if self.factor >= 1.0:
            return
        steps = int((now - self._last_change) // RECOVERY_S)
        if steps > 0:
            self.factor = min(1.0, self.factor + steps * RECOVERY_STEP)
            self._last_change += steps * RECOVERY_S
