"""Budget: one rate budget shared by every worker of a cluster, leased a slice at a time.

The `Ledger` (one per run, in one process: a Ray actor under the Ray engine) holds the run's
`Limiter`: requests and tokens per minute, the limits the server's headers name, the limit
learnt from 429s, the pauses. Each worker's `LeasedLimiter` takes the limiter's place in its
sender. It books send times from the ledger a slice at a time (SLICE_S of the budget's time at
most), sends at those times, asks for the next slice once its last booked send is ASK_AHEAD_S
away, and reports what came back (answers and their token usage, the latest rate-limit
headers, 429s) with its next lease. Workers whose senders all wait take turns, a slice each:
the ledger is asked about 1/SLICE_S times a second in all, whatever the rate, and the sum of
all workers' sending stays under the budget, since every send time was booked in one place.

A 429 is reported at once, and the ledger's pause reaches the other workers at their next
lease: a worker holds the sends it booked for its turn (ASK_AHEAD_S, and a slice for each
worker), and drops those dated after a pause when it hears of it. When no budget paces the
run (none told, none in headers, none learnt yet), the ledger lets a worker send freely for
LEASE_S at a time, counting what it sent, so a limit learnt later is charged for the opening
burst as in one process, and for what a worker sent freely before it heard of the limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .limiter import DEFAULT_PAUSE_S, Clock, Limiter, Sleep
from .ratelimit import RateHeaders

LEASE_S = 0.5  # a free lease lasts this long
SLICE_S = LEASE_S / 4  # a lease books at most this much of the budget's time: workers take turns
ASK_AHEAD_S = SLICE_S  # a worker asks for more once its last booked send is this close


@dataclass
class Report:
    """What a worker saw since its last lease. Ages are seconds before the report."""

    sent: int = 0  # sent during a free lease
    sent_tokens: int = 0
    sent_age: float = 0.0  # ... the first of them
    answers: int = 0
    refund: int = 0  # tokens booked beyond what the answers used
    rate: RateHeaders | None = None  # the latest answer's rate-limit headers
    rate_age: float = 0.0  # ... the age of its request
    refusals: list[tuple[float | None, float, RateHeaders | None]] = field(default_factory=list)
    # 429s: (retry-after, age of the request, headers)


@dataclass
class Grant:
    """The ledger's answer: send times booked (seconds from now), or a free lease, or a pause."""

    slots: list[float]
    tokens: int  # tokens booked per slot
    free_for: float = 0.0
    paused_for: float = 0.0
    refused_for: float = 0.0  # seconds since the server last answered anything but 429
    waiting: str | None = None  # what sending waits for (the progress display)


class Ledger:
    """The one budget of a run, asked by every worker's `LeasedLimiter`."""

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.limiter = Limiter(requests_per_minute, tokens_per_minute, clock=clock)
        self._clock = clock
        self.leases = 0  # lease calls answered: the coordination's cost

    def lease(self, want: int, tokens: int, report: Report) -> Grant:
        """Take a worker's report, then book up to `want` sends of `tokens` tokens each."""
        now = self._clock()
        self.leases += 1
        self._apply(report, now)
        limiter = self.limiter
        grant = Grant([], tokens, refused_for=limiter.refused_for(), waiting=limiter.waiting())
        if limiter.paused_until > now:
            grant.paused_for = limiter.paused_until - now
        elif not limiter.budgeted:
            grant.free_for = LEASE_S if want else 0.0
        else:
            for _ in range(want):
                start = limiter.book(tokens)
                if start is None:
                    break
                grant.slots.append(max(0.0, start - now))
                if start - now - grant.slots[0] >= SLICE_S:
                    break
        return grant

    def waiting(self) -> str | None:
        """What sending waits for now, for the driver's progress display."""
        return self.limiter.waiting()

    def _apply(self, report: Report, now: float) -> None:
        limiter = self.limiter
        if report.sent and limiter.budgeted and now >= limiter.paused_until:
            # Sent freely before this worker heard of the budget: charged now, like the
            # opening burst (which `observe` charges when the budget is learnt).
            each, extra = divmod(report.sent_tokens, report.sent)
            for i in range(report.sent):
                limiter.book(each + (i < extra))
        elif report.sent:
            limiter.count_sent(report.sent, report.sent_tokens, now - report.sent_age)
        if report.answers or report.refund:
            limiter.answered(report.answers, report.refund)
        if report.rate is not None:
            limiter.observe(report.rate, sent_at=now - report.rate_age)
        for retry_after, age, rate in report.refusals:
            limiter.rate_limited_by_server(retry_after, sent_at=now - age, rate=rate)


Lease = Callable[[int, int, Report], Awaitable[Grant]]


class LeasedLimiter:
    """A worker's share of the ledger's budget, in the place of its sender's `Limiter`."""

    def __init__(
        self, lease: Lease, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self._lease = lease
        self._clock = clock
        self._sleep = sleep
        self._slots: deque[float] = deque()  # booked send times, on this process's clock
        self._booked = 0  # tokens booked per slot
        self._free_until = 0.0
        self._ask_at = 0.0  # no lease before this: the last one booked far enough ahead
        self.paused_until = 0.0
        self._report = Report()
        self._first_free: float | None = None  # the first send of the free lease under way
        self._lock = asyncio.Lock()
        self._waiters = 0
        self._refused = (0.0, clock())  # the ledger's refused_for, and when it said so
        self._answered_at = clock()
        self._waiting: str | None = None
        self._seen_rate = False
        self._reporting: set[asyncio.Task[None]] = set()

    async def acquire(self, tokens: int) -> float:
        """Wait for a send time booked at the ledger (or a free lease); return it."""
        self._waiters += 1
        try:
            while True:
                now = self._clock()
                if now < self.paused_until:
                    await self._sleep(self.paused_until - now)
                    continue
                if now < self._free_until:
                    self._sent_free(tokens, now)
                    return now
                if not self._slots:
                    if now < self._ask_at:
                        await self._sleep(self._ask_at - now)
                    else:
                        await self._refill(tokens)
                    continue
                at = self._slots.popleft()
                if at > now:
                    await self._sleep(at - now)
                if self._clock() >= self.paused_until:
                    self._report.refund += self._booked - tokens
                    return max(at, now)
                # a pause began while this send waited: its slot is void
        finally:
            self._waiters -= 1

    def waiting(self) -> str | None:
        return self._waiting

    def refused_for(self) -> float:
        now = self._clock()
        told, at = self._refused
        return min(now - self._answered_at, told + now - at)

    def settle(self, estimated: int, actual: int) -> None:
        self._answered_at = self._clock()
        self._report.answers += 1
        if actual > 0:
            self._report.refund += estimated - actual

    def observe(self, rate: RateHeaders | None, *, sent_at: float | None = None) -> None:
        if rate is None:
            return
        now = self._clock()
        self._report.rate = rate
        self._report.rate_age = now - (now if sent_at is None else sent_at)
        spent = any(
            b.remaining is not None and b.remaining < 1 for b in (rate.requests, rate.tokens)
        )
        if spent or not self._seen_rate:  # news the other workers should have now
            self._seen_rate = True
            self._report_now()

    def rate_limited_by_server(
        self,
        retry_after: float | None,
        *,
        sent_at: float | None = None,
        rate: RateHeaders | None = None,
    ) -> None:
        """A 429: pause this worker now, and tell the ledger at once."""
        now = self._clock()
        age = 0.0 if sent_at is None else now - sent_at
        self._report.refusals.append((retry_after, age, rate))
        wait = DEFAULT_PAUSE_S if retry_after is None else retry_after
        self.paused_until = max(self.paused_until, now + wait)
        self._void()
        self._report_now()

    async def close(self) -> None:
        """Wait for the reports under way."""
        if self._reporting:
            await asyncio.gather(*self._reporting, return_exceptions=True)

    def _sent_free(self, tokens: int, now: float) -> None:
        if self._first_free is None:
            self._first_free = now
        self._report.sent += 1
        self._report.sent_tokens += tokens

    def _void(self) -> None:
        self._slots.clear()
        self._free_until = self._ask_at = 0.0

    def _report_now(self) -> None:
        task = asyncio.get_running_loop().create_task(self._refill(self._booked, want=0))
        self._reporting.add(task)
        task.add_done_callback(self._reporting.discard)

    async def _refill(self, tokens: int, want: int | None = None) -> None:
        async with self._lock:
            now = self._clock()
            if want is None and (
                self._slots or now < max(self._free_until, self.paused_until, self._ask_at)
            ):
                return  # another waiter's lease came back meanwhile
            await self._ask(max(1, self._waiters) if want is None else want, tokens)

    async def _ask(self, want: int, tokens: int) -> None:
        report, self._report = self._report, Report()
        if self._first_free is not None:
            report.sent_age = self._clock() - self._first_free
            self._first_free = None
        try:
            grant = await self._lease(want, tokens, report)
        except BaseException:
            self._merge(report)  # told again with the next lease
            raise
        now = self._clock()
        self._refused = (grant.refused_for, now)
        self._waiting = grant.waiting
        local = self.paused_until if self._report.refusals else 0.0  # 429s not yet reported
        self.paused_until = max(local, now + grant.paused_for)
        if grant.paused_for:
            self._void()
        self._slots.extend(now + delay for delay in grant.slots)
        if grant.slots:  # ask again once the last send booked is ASK_AHEAD_S away
            self._ask_at = now + grant.slots[-1] - ASK_AHEAD_S
        self._booked = grant.tokens
        if grant.free_for:
            self._free_until = now + grant.free_for

    def _merge(self, report: Report) -> None:
        now = self._report
        now.sent += report.sent
        now.sent_tokens += report.sent_tokens
        now.answers += report.answers
        now.refund += report.refund
        now.rate = now.rate or report.rate
        now.refusals[:0] = report.refusals
