"""The limiter's arithmetic: when a budget's units may be spent, what rate the server accepted,
when a fixed window resets, and when a spent budget frees. Plain state and numbers, no waiting.

Each budget is a GCRA token bucket ("theoretical arrival time"): a reservation moves the time
the budget is next free, so requests leave evenly spaced, never as a burst at the top of a
minute.

The accepted rate counts answers per whole second over the run, up to the last two minutes
(`HORIZON_S`): the rate the server took, which `limiter.Limiter` learns a limit from when no
budget is known.

Fixed windows (LiteLLM's 60 s, IETF `w=`) say little of when the window under way ends, so it
is estimated from the answers: a window begins with the run's first request, with the first
answer after a 429, or where `remaining` jumps back up.
"""

from __future__ import annotations

import math
from collections import deque

from .ratelimit import Budget

HORIZON_S = 120.0  # the accepted rate is measured over the run, at most this far back
MIN_SPAN_S = 1.0  # ... and over at least this long
MIN_ACCEPTED = 5  # fewer answers than this: too little to learn a limit from
RESET_GUARD_S = 0.1  # resume this long after a fixed window's estimated reset


class Bucket:
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


class Accepted:
    """Answers per whole second over the last HORIZON_S: the rate the server accepted."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.seconds: deque[list[int]] = deque()  # [second, answers]

    def add(self, now: float, answers: int = 1) -> None:
        if self.first is None:
            self.first = now
        second = math.floor(now)
        if self.seconds and self.seconds[-1][0] == second:
            self.seconds[-1][1] += answers
            return
        self.seconds.append([second, answers])
        while self.seconds[0][0] < second - HORIZON_S:
            self.seconds.popleft()

    def per_minute(self, now: float) -> float | None:
        """Answers per minute since the first (at most HORIZON_S back); None: too few."""
        if self.first is None:
            return None
        span = min(HORIZON_S, max(MIN_SPAN_S, now - self.first))
        answers = sum(n for second, n in self.seconds if second + 1 > now - span)
        return answers * 60.0 / span if answers >= MIN_ACCEPTED else None


class Window:
    """A fixed window of the server's: its length, and when the one under way began."""

    def __init__(self) -> None:
        self.length: float | None = None
        self.start: float | None = None
        self.remaining: float | None = None  # the last answer's, to see a reset
        self.resumed_at: float | None = None  # when the run resumed at an estimated reset
        self.blocked: float | None = None  # the latest send refused with a 429, until an answer

    def reset(self, now: float) -> float | None:
        """When the window under way ends, if its start is known."""
        if self.length is None or self.start is None:
            return None
        return self.start + max(1, math.ceil((now - self.start) / self.length)) * self.length

    def answered(self, budget: Budget, sent_at: float, first_sent: float, sent: float) -> None:
        """An answer to a request sent at `sent_at`: a window began if it came after a 429
        or if `remaining` jumped back up. The first answer tells whether the run's first
        request began the window (`sent` units sent so far account for all that is used)."""
        if budget.window_s:
            self.length = budget.window_s
        if self.blocked is not None and sent_at > self.blocked:  # sent after the refusal
            self.start, self.blocked, self.resumed_at = sent_at, None, None
        remaining, before = budget.remaining, self.remaining
        if remaining is None or not budget.limit:
            return
        quota = budget.limit * (self.length or 60.0) / 60.0
        if before is None:
            if quota - remaining <= 2 * sent + 2:
                self.start = first_sent
        elif remaining > before + max(2.0, quota / 4):
            self.start = sent_at
        self.remaining = remaining


def free_in(budget: Budget, window: Window, now: float) -> float | None:
    """Seconds until a spent budget frees one unit; None if it is not spent."""
    if budget.remaining is None or budget.remaining >= 1 or not budget.limit:
        return None
    if budget.window_s:  # a fixed window: nothing frees before it resets
        if budget.reset_s is not None:
            return budget.reset_s
        reset = window.reset(now)
        return None if reset is None else reset + RESET_GUARD_S - now
    wait = 60.0 / budget.limit  # a bucket refills evenly; the reset is when it is full
    return wait if budget.reset_s is None else min(wait, budget.reset_s)
