"""Limiter stage: paces requests under requests/minute and tokens/minute budgets.

Each budget is a GCRA bucket (`budgetmath.Bucket`): requests leave evenly spaced. Tokens are
reserved from the estimate before sending and settled with the response's `usage`.

The server's rate-limit headers (any dialect `ratelimit.py` reads) set or tighten the budgets
from the first response on; what was sent before that response is charged to the new budget,
so a run's opening burst is not paid for with a 429 at the end of the first window. A budget
that runs out pauses everyone until one unit frees.

A 429 pauses every worker until the server's `Retry-After` / reset (or a doubling pause when
it says nothing) and lowers the rate, which then climbs back. Fixed windows (LiteLLM's 60 s,
IETF `w=`): a `Retry-After` as long as the whole window says nothing of when the window under
way ends, so the run resumes at the reset its answers show instead (`budgetmath.Window`).
If a request sent at that estimated reset gets a 429 too, the estimate is dropped and short
doubling pauses probe for the reset. With no budget known, each burst of 429s sets one from
the rate the server accepted over the run (`budgetmath.Accepted`): the limit is learned,
whatever the length of the server's window.

A 429 pause logs one line when it begins and one when it ends, however many 429s it holds;
`waiting` says what requests wait for, for the progress display.
Clock and sleep are injected so tests run without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from .budgetmath import RESET_GUARD_S, Accepted, Bucket, Window, free_in
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
BOOKED_NOTE_S = 1.0  # a budget booked this far ahead is what the run waits for: `waiting` says so
WHOLE_WINDOW = 0.9  # a Retry-After this share of a fixed window or more names no reset
LOGGED_PAUSE_S = 2.0  # a spent budget's pause this long or longer is logged, begin and end
REFUSED_STOP_S = 600.0  # only 429s for this long (no answer at all): a spent quota, stop


class Pacer(Protocol):
    """What the sender asks of a limiter: this module's, or a worker's share of a cluster's
    (`budget.LeasedLimiter`)."""

    async def acquire(self, tokens: int) -> float: ...

    def waiting(self) -> str | None: ...

    def refused_for(self) -> float: ...

    def settle(self, estimated: int, actual: int) -> None: ...

    def observe(self, rate: RateHeaders | None, *, sent_at: float | None = None) -> None: ...

    def rate_limited_by_server(
        self,
        retry_after: float | None,
        *,
        sent_at: float | None = None,
        rate: RateHeaders | None = None,
    ) -> None: ...


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
        self._requests = Bucket(requests_per_minute * margin) if requests_per_minute else None
        self._tokens = Bucket(tokens_per_minute * margin) if tokens_per_minute else None
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
        self._accepted = Accepted()  # answers while learning
        self._window = Window()
        self._answered_at = clock()  # the last answer (or the start): `refused_for`
        self._first_sent: float | None = None
        self._sent = 0  # requests and estimated tokens sent, to charge a budget learned late
        self._sent_tokens = 0
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
            start = self._reserve(tokens, now)
            if start > now:
                await self._sleep(start - now)
            if self._clock() >= self.paused_until:
                self.count_sent(1, tokens, start)
                return max(start, now)
            # A 429 arrived while we waited: our slot is void, queue again after the pause.

    def book(self, tokens: int) -> float | None:
        """Reserve one request's slot without waiting: when it may be sent (None: paused).

        For a budget shared by several processes (`budget.Ledger`): the slot is counted as
        sent, since whoever holds it sends at that time.
        """
        now = self._clock()
        if now < self.paused_until:
            return None
        start = self._reserve(tokens, now)
        self.count_sent(1, tokens, start)
        return start

    def count_sent(self, requests: int, tokens: int, at: float) -> None:
        """`requests` went out at `at` (with `tokens` estimated): a budget learnt later is
        charged for them."""
        if self._first_sent is None:
            self._first_sent = at
        self._sent += requests
        self._sent_tokens += tokens

    @property
    def budgeted(self) -> bool:
        """Whether any budget paces sending (told, sent in headers or learnt)."""
        return self._requests is not None or self._tokens is not None

    def _reserve(self, tokens: int, now: float) -> float:
        if self._pause_began is not None:
            self._end_pause(now)
        self._recover(now)
        start = now
        if self._requests is not None:
            start = max(start, self._requests.reserve(1, now, self.factor))
        if self._tokens is not None:
            start = max(start, self._tokens.reserve(tokens, now, self.factor))
        return start

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

    def refused_for(self) -> float:
        """Seconds since the server last answered anything but 429 (or since the start)."""
        return self._clock() - self._answered_at

    def settle(self, estimated: int, actual: int) -> None:
        """An answer arrived: correct the token budget with its real usage (0: unknown)."""
        self.answered(1, estimated - actual if actual > 0 else 0)

    def answered(self, answers: int, refund: int) -> None:
        """`answers` arrived; give back `refund` tokens reserved beyond what they used."""
        if answers:
            self._pause_s = DEFAULT_PAUSE_S
            self._answered_at = self._clock()
            if self._learning:
                self._accepted.add(self._answered_at, answers)
        if self._tokens is not None and refund:
            self._tokens.refund(refund, self.factor)

    def observe(self, rate: RateHeaders | None, *, sent_at: float | None = None) -> None:
        """Take the server's budgets from an answer's rate-limit headers; `sent_at`: when its
        request was sent (default now)."""
        if rate is None:
            return
        now = self._clock()
        self._adopt_all(rate)
        when = now if sent_at is None else sent_at
        if rate.requests.remaining is not None:
            self._window.answered(rate.requests, when, self._first_sent or when, self._sent)
        else:
            self._window.answered(rate.tokens, when, self._first_sent or when, self._sent_tokens)
        self._pause_for(rate.requests, now, "requests")
        self._pause_for(rate.tokens, now, "tokens")

    def _adopt(
        self, bucket: Bucket | None, limit: float | None, told: float | None, per_request: int
    ) -> Bucket | None:
        if not limit:
            return bucket
        per_minute = (min(limit, told) if told else limit) * self._margin
        if bucket is not None:
            bucket.per_minute = per_minute
            return bucket
        bucket = Bucket(per_minute)
        first = self._first_sent
        if first is not None and self._clock() - first < 60.0:
            # What went out before the server's first answer counts against its budget.
            sent = self._sent if per_request else self._sent_tokens
            bucket.tat = first + sent * 60.0 / (per_minute * self.factor)
        return bucket

    def _pause_for(self, budget: Budget, now: float, name: str) -> None:
        """None left: wait for one unit to free."""
        wait = free_in(budget, self._window, now)
        if wait is not None and wait > 0:
            why = f"the server's {name} budget is spent"
            self._pause_until(now + wait, why)
            if wait >= LOGGED_PAUSE_S:  # a fixed window's reset, say: not a silent wait
                self._begin_pause(now, f"{why} until its window resets", refusals=0)

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
        if rate is not None:
            self._adopt_all(rate)
        wait, why = self._wait_after_429(now, retry_after, rate, sent_at, new_burst)
        self._pause_until(now + wait, why)
        self._begin_pause(now, why)
        if not new_burst:
            return
        self._last_change = now
        if self._learning:
            # The rate the server took over the run so far: start again from under it.
            accepted = self._accepted.per_minute(now)
            if accepted is not None:
                if self._requests is None:
                    self._requests = Bucket(accepted)
                self._requests.per_minute = accepted
                self.factor = ACCEPTED_FACTOR
                return
            if self._requests is None:
                # A 429 after an answer or two (a blip early in a run) would set a budget of
                # a few requests a minute, to be climbed back 5 % at a time: only pause.
                return
        cut = BACKOFF_FACTOR if self._learning else KNOWN_BACKOFF_FACTOR
        self.factor = max(0.05, self.factor * cut)

    def _adopt_all(self, rate: RateHeaders) -> None:
        self._requests = self._adopt(self._requests, rate.requests.limit, self._told[0], 1)
        self._tokens = self._adopt(self._tokens, rate.tokens.limit, self._told[1], 0)
        if self._requests is not None:
            self._learning = False
        for budget in (rate.requests, rate.tokens):
            if budget.window_s:
                self._window.length = budget.window_s

    def _wait_after_429(
        self,
        now: float,
        retry_after: float | None,
        rate: RateHeaders | None,
        sent_at: float | None,
        new_burst: bool,
    ) -> tuple[float, str]:
        """How long everyone waits after this 429, and why."""
        window, length = self._window, self._window.length
        when = now if sent_at is None else sent_at
        window.blocked = when if window.blocked is None else max(window.blocked, when)
        if window.resumed_at is not None and when >= window.resumed_at:
            window.start = window.resumed_at = None  # refused at the estimated reset: wrong
        if retry_after is not None and length and retry_after >= WHOLE_WINDOW * length:
            reset = window.reset(now)
            if reset is None:
                wait = min(retry_after, self._bare_pause(new_burst))
                return wait, f"429, probing for the reset of the server's {length:g}s window"
            if reset + RESET_GUARD_S - now < retry_after:
                window.resumed_at = reset + RESET_GUARD_S
                why = f"429, retry-after {retry_after:g}s is the whole {length:g}s window"
                return window.resumed_at - now, f"{why}: resuming at its reset"
        if retry_after is not None:
            return retry_after, f"429, retry-after {retry_after:g}s"
        if rate is not None:
            spent = [
                w for b in (rate.requests, rate.tokens) if (w := free_in(b, self._window, now))
            ]
            resets = [b.reset_s for b in (rate.requests, rate.tokens) if b.reset_s is not None]
            if spent or resets:
                wait = max(spent) if spent else min(resets)
                return wait, f"429, the server's budget frees in {wait:.1f}s"
        return self._bare_pause(new_burst), "429 without retry-after"

    def _bare_pause(self, new_burst: bool) -> float:
        """The server names no wait: wait longer each burst until an answer arrives."""
        if new_burst:
            self._burst_pause = self._pause_s
            self._pause_s = min(MAX_PAUSE_S, self._pause_s * 2)
        return self._burst_pause

    def _begin_pause(self, now: float, why: str, refusals: int = 1) -> None:
        """Log a pause once, when it begins; later 429s only join it."""
        self._pause_429s += refusals
        if self._pause_began is None:
            self._pause_began, self._pause_429s = now, refusals
            wait = round(self.paused_until - now, 1)
            said = "the server answered " if refusals else ""
            log.info("%s%s: every request waits %gs", said, why, wait)

    def _end_pause(self, now: float) -> None:
        if self._pause_began is not None and now >= self.paused_until:
            log.info(
                "rate-limit pause over after %.0fs (429 answers during it: %d): sending resumes",
                now - self._pause_began,
                self._pause_429s,
            )
            self._pause_began = None

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
