"""Limiter stage: paces requests under requests/minute and tokens/minute budgets.

Each budget is a GCRA token bucket ("theoretical arrival time"): requests leave evenly
spaced, never as a burst at the top of a minute. Tokens are reserved from the estimate
before sending and settled with the response's `usage`. The server's `x-ratelimit-*`
headers set or tighten the budgets and pause everyone when one runs out. A 429 pauses every
worker until `Retry-After` / `x-ratelimit-reset-*` (or a doubling pause when the server says
nothing), lowers the rate, and the rate then climbs back. With no budget configured, the
first 429 sets one from the rate that the server accepted: the limit is learned.
A 429 pause logs one line when it begins and one when it ends, however many 429s it holds;
`waiting` says what requests wait for, for the progress display.
Clock and sleep are injected so tests run without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from .ratelimit import Budget, RateHeaders

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

MARGIN = 0.995  # pace this far under a known limit, so jitter does not cross it
BACKOFF_FACTOR = 0.7  # rate multiplier after a 429 when the limit is being learned
ACCEPTED_FACTOR = 0.8  # ... of the rate the server accepted, when that is measured
KNOWN_BACKOFF_FACTOR = 0.9  # ... and when the limit is known (told or sent in headers)
RECOVERY_STEP = 0.05  # rate fraction regained per quiet RECOVERY_S
RECOVERY_S = 2.0
DEFAULT_PAUSE_S = 1.0  # pause after a 429 that names no wait; doubles while 429s go on
MAX_PAUSE_S = 4.0  # a probe every few seconds while the server keeps saying 429
ACCEPTED_WINDOW_S = 10.0  # how far back the accepted rate is measured when learning
MIN_ACCEPTED = 5  # fewer answers than this in the window: too little to learn a limit from
BOOKED_NOTE_S = 1.0  # a budget booked this far ahead is what the run waits for: `waiting` says so


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
        margin: float = MARGIN,
    ) -> None:
        self._margin = margin
        self._requests = _Bucket(requests_per_minute * margin) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute * margin) if tokens_per_minute else None
        self._told = (requests_per_minute, tokens_per_minute)
        self._clock = clock
        self._sleep = sleep
        self.factor = 1.0
        self.paused_until = 0.0
        self._last_change = float("-inf")
        self._pause_s = DEFAULT_PAUSE_S  # the next burst's pause when the server names none
        self._burst_pause = DEFAULT_PAUSE_S  # this burst's
        self.rate_limited = 0
        self._learning = requests_per_minute is None
        self._accepted: deque[float] = deque()  # when answers arrived, while learning
        self._pause_why = ""  # what the pause under way waits for, for `waiting`
        self._pause_began: float | None = None  # when the 429 pause under way began
        self._pause_429s = 0  # the 429s answered during it

    @property
    def requests_per_minute(self) -> float | None:
        """The request budget in force (None: unlimited), the factor included."""
        return None if self._requests is None else self._requests.per_minute * self.factor

    async def acquire(self, tokens: int) -> float:
        """Wait until one request of `tokens` estimated tokens may be sent; return when."""
        while True:
            now = self._clock()
            if now < self.paused_until:
                await self._sleep(self.paused_until - now)
                continue
            if self._pause_began is not None:
                self._end_pause(now)
            self._recover(now)
            start = now
            if self._requests is not None:
                start = max(start, self._requests.reserve(1, now, self.factor))
            if self._tokens is not None:
                start = max(start, self._tokens.reserve(tokens, now, self.factor))
            if start > now:
                await self._sleep(start - now)
            if self._clock() >= self.paused_until:
                return max(start, now)
            # A 429 arrived while we waited: our slot is void, queue again after the pause.

    def waiting(self) -> str | None:
        """What requests wait for now, for the progress display; None: nothing worth saying."""
        now = self._clock()
        if now < self.paused_until:
            left = math.ceil(self.paused_until - now)
            return f"rate-limit pause, {left}s left ({self._pause_why})"
        ahead, name = 0.0, ""
        for label, bucket in (("requests/minute", self._requests), ("tokens/minute", self._tokens)):
            if bucket is not None and bucket.tat - now > ahead:
                ahead, name = bucket.tat - now, label
        if ahead >= BOOKED_NOTE_S:
            return f"{name} budget, sends booked {math.ceil(ahead)}s ahead"
        return None

    def settle(self, estimated: int, actual: int) -> None:
        """An answer arrived: correct the token budget with its real usage."""
        self._pause_s = DEFAULT_PAUSE_S
        if self._learning:
            now = self._clock()
            self._accepted.append(now)
            if len(self._accepted) > 4096:
                self._accepted_since(now - ACCEPTED_WINDOW_S)
        if self._tokens is not None and actual > 0:
            self._tokens.refund(estimated - actual, self.factor)

    def observe(self, rate: RateHeaders | None) -> None:
        """Take the server's budgets from a response's `x-ratelimit-*` headers."""
        if rate is None:
            return
        self._requests = self._adopt(self._requests, rate.requests.limit, self._told[0])
        self._tokens = self._adopt(self._tokens, rate.tokens.limit, self._told[1])
        if self._requests is not None:
            self._learning = False
        self._pause_for(rate.requests, self._clock(), "requests")
        self._pause_for(rate.tokens, self._clock(), "tokens")

    def _adopt(
        self, bucket: _Bucket | None, limit: float | None, told: float | None
    ) -> _Bucket | None:
        if not limit:
            return bucket
        per_minute = (min(limit, told) if told else limit) * self._margin
        if bucket is None:
            return _Bucket(per_minute)
        bucket.per_minute = per_minute
        return bucket

    def _pause_for(self, budget: Budget, now: float, name: str) -> None:
        """None left: wait for one unit to free (the reset is when *all* of it is back)."""
        if budget.remaining is not None and budget.remaining < 1 and budget.limit:
            wait = 60.0 / budget.limit
            if budget.reset_s is not None:
                wait = min(wait, budget.reset_s)
            self._pause_until(now + wait, f"the server's {name} budget is spent")

    def _pause_until(self, until: float, why: str) -> None:
        if until > self.paused_until:
            self.paused_until, self._pause_why = until, why

    def rate_limited_by_server(
        self,
        retry_after: float | None,
        *,
        sent_at: float | None = None,
        rate: RateHeaders | None = None,
    ) -> None:
        """A 429: pause everyone and, once per burst, lower the rate."""
        now = self._clock()
        self.rate_limited += 1
        self._end_pause(now)  # the last pause ran out while no request was waiting to notice
        # A 429 for a request sent before the last cut was caused by the old rate.
        new_burst = (
            sent_at > self._last_change if sent_at is not None else now - self._last_change > 1.0
        )
        resets = [b.reset_s for b in (rate.requests, rate.tokens) if b.reset_s] if rate else []
        wait = retry_after if retry_after is not None else max(resets, default=None)
        if wait is None:  # the server says nothing: wait longer each burst until one succeeds
            if new_burst:
                self._burst_pause = self._pause_s
                self._pause_s = min(MAX_PAUSE_S, self._pause_s * 2)
            wait = self._burst_pause
            why = "429 without retry-after"
        elif retry_after is not None:
            why = f"429, retry-after {retry_after:g}s"
        else:
            why = f"429, x-ratelimit-reset {wait:g}s"
        self._pause_until(now + wait, why)
        self._begin_pause(now, why)
        self.observe(rate)
        if not new_burst:
            return
        self._last_change = now
        if self._learning:
            # Answers accepted over the last window, as a per-minute rate: what the server
            # took while we were over its limit. Start from under that.
            answers = self._accepted_since(now - ACCEPTED_WINDOW_S)
            if answers >= MIN_ACCEPTED:
                accepted = answers * 60.0 / ACCEPTED_WINDOW_S
                if self._requests is None:
                    self._requests = _Bucket(accepted)
                self._requests.per_minute = accepted
                self.factor = ACCEPTED_FACTOR
                return
            if self._requests is None:
                # A 429 after an answer or two (a blip early in a run) would set a budget of
                # a few requests a minute, to be climbed back 5 % at a time: only pause.
                return
        cut = BACKOFF_FACTOR if self._learning else KNOWN_BACKOFF_FACTOR
        self.factor = max(0.05, self.factor * cut)

    def _begin_pause(self, now: float, why: str) -> None:
        """Log a 429 pause once, when it begins; later 429s only join it."""
        self._pause_429s += 1
        if self._pause_began is None:
            self._pause_began, self._pause_429s = now, 1
            wait = round(self.paused_until - now, 1)
            log.info("the server answered %s: every request waits %gs", why, wait)

    def _end_pause(self, now: float) -> None:
        if self._pause_began is not None and now >= self.paused_until:
            log.info(
                "rate-limit pause over after %.0fs (429 answers during it: %d): sending resumes",
                now - self._pause_began,
                self._pause_429s,
            )
            self._pause_began = None

    def _accepted_since(self, since: float) -> int:
        while self._accepted and self._accepted[0] < since:
            self._accepted.popleft()
        return len(self._accepted)

    def _recover(self, now: float) -> None:
        """Climb back step by step, counting quiet time after the last pause only."""
        if self._last_change == float("-inf") or (self.factor >= 1.0 and not self._learning):
            return
        anchor = max(self._last_change, self.paused_until)
        steps = int((now - anchor) // RECOVERY_S)
        if steps > 0:
            if self._learning:  # the limit is unknown: grow by a fraction, without a cap
                self.factor *= (1 + RECOVERY_STEP) ** steps
            else:
                self.factor = min(1.0, self.factor + steps * RECOVERY_STEP)
            self._last_change = anchor + steps * RECOVERY_S
