"""Unit tests for `pipeline.budget`: several `LeasedLimiter`s sharing one `Ledger`, on virtual time.

No Ray and no real sleeping. Each test runs on an event loop whose clock only moves when every
task waits: its selector, asked to block for `t` seconds, moves the clock on by `t` instead.
So `asyncio.sleep` is a virtual sleep, minutes of sending take milliseconds, and the results
are the same on any machine. Workers lease straight from the ledger, after a simulated
network delay each way.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import selectors
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from pipeline.budget import (
    ASK_AHEAD_S,
    LEASE_S,
    SLICE_S,
    Grant,
    LeasedLimiter,
    Ledger,
    Report,
)
from pipeline.limiter import DEFAULT_PAUSE_S, KNOWN_BACKOFF_FACTOR, MARGIN
from pipeline.ratelimit import Budget, RateHeaders, rate_headers

START = 1000.0  # a realistic monotonic clock reading
NET = 0.002  # to the ledger, each way: the Ray actor call
LATENCY = 0.05  # the server's answer time
EST = 10  # estimated tokens per request
LONGEST_S = 3600.0  # a run on virtual time that goes past this has a bug: stop it

T = TypeVar("T")


# --- virtual time ----------------------------------------------------------------------------


class _Selector(selectors.SelectSelector):
    """Never blocks: a wait for `timeout` seconds moves the virtual clock on instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = START

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("deadlock: every task waits and no timer is set")
        self.now += max(0.0, timeout)
        if self.now - START > LONGEST_S:
            raise RuntimeError(f"the virtual run passed {LONGEST_S:g} s")
        return []


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _Selector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run `main()` on virtual time."""
    with asyncio.Runner(loop_factory=_VirtualLoop) as runner:
        return runner.run(main())  # type: ignore[arg-type]


def clock() -> float:
    return asyncio.get_running_loop().time()


async def sleep(seconds: float) -> None:
    """The limiters' injected sleep: virtual, and never for nothing."""
    assert seconds > 0, "a limiter must not sleep for nothing"
    await asyncio.sleep(seconds)


def test_virtual_time_moves_only_when_everyone_waits() -> None:
    async def main() -> list[float]:
        seen = []

        async def nap(seconds: float) -> None:
            await asyncio.sleep(seconds)
            seen.append(clock())

        await asyncio.gather(nap(30.0), nap(0.25), nap(600.0))
        return seen

    assert run(main) == pytest.approx([START + 0.25, START + 30, START + 600])


# --- a cluster: one ledger, several workers, a fake server -----------------------------------


@dataclass
class Answer:
    status: int = 200
    rate: RateHeaders | None = None
    retry_after: float | None = None
    usage: int = EST  # tokens the answer used


Server = Callable[[float, int, int], Answer]  # (now, worker, estimated tokens) -> answer


def answer_all(now: float, worker: int, tokens: int) -> Answer:
    return Answer(usage=tokens)


@dataclass
class Send:
    at: float
    worker: int
    tokens: int  # estimated
    usage: int = 0  # what the answer used (0 for a 429)


@dataclass
class Lease:
    """One lease call as the worker saw it."""

    worker: int
    asked: float
    arrived: float
    want: int
    report: Report
    grant: Grant


@dataclass
class Cluster:
    ledger: Ledger
    limiters: list[LeasedLimiter] = field(default_factory=list)
    sends: list[Send] = field(default_factory=list)
    leases: list[Lease] = field(default_factory=list)
    net: float = NET
    fail_next: int = 0  # lease calls to fail (the actor unreachable)

    @classmethod
    def start(
        cls,
        workers: int,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        net: float = NET,
    ) -> Cluster:
        """Inside a running virtual loop: a ledger and `workers` limiters leasing from it."""
        cluster = cls(Ledger(rpm, tpm, clock=clock), net=net)
        for worker in range(workers):
            cluster.limiters.append(
                LeasedLimiter(cluster._lease_for(worker), clock=clock, sleep=sleep)
            )
        return cluster

    def _lease_for(self, worker: int) -> Callable[[int, int, Report], Awaitable[Grant]]:
        async def lease(want: int, tokens: int, report: Report) -> Grant:
            asked = clock()
            if self.net:
                await asyncio.sleep(self.net)
            if self.fail_next:
                self.fail_next -= 1
                raise ConnectionError("the ledger is unreachable")
            grant = self.ledger.lease(want, tokens, report)
            if self.net:
                await asyncio.sleep(self.net)
            self.leases.append(Lease(worker, asked, clock(), want, report, grant))
            return grant

        return lease

    async def client(
        self, worker: int, until: float, server: Server = answer_all, tokens: int = EST
    ) -> None:
        """One of a worker's concurrent senders, as `sender.Sender` drives its limiter."""
        limiter = self.limiters[worker]
        while clock() < until:
            sent_at = await limiter.acquire(tokens)
            now = clock()
            assert sent_at == pytest.approx(now, abs=1e-9)
            send = Send(now, worker, tokens)
            self.sends.append(send)
            answer = server(now, worker, tokens)
            await asyncio.sleep(LATENCY)
            if answer.status == 429:
                limiter.rate_limited_by_server(
                    answer.retry_after, sent_at=sent_at, rate=answer.rate
                )
                continue
            send.usage = answer.usage
            limiter.settle(tokens, answer.usage)
            limiter.observe(answer.rate, sent_at=sent_at)

    async def close(self) -> None:
        for limiter in self.limiters:
            await limiter.close()

    def times(self, worker: int | None = None) -> list[float]:
        return sorted(s.at for s in self.sends if worker is None or s.worker == worker)

    def heard(self, worker: int, after: float) -> Lease | None:
        """The worker's first lease after `after` that brought a pause."""
        return next(
            (
                lease
                for lease in self.leases
                if lease.worker == worker and lease.arrived > after and lease.grant.paused_for
            ),
            None,
        )


def simulate(
    *,
    workers: int = 4,
    share: int = 16,
    seconds: float = 60.0,
    rpm: float | None = None,
    tpm: float | None = None,
    server: Server = answer_all,
    tokens: int = EST,
    net: float = NET,
) -> Cluster:
    """`workers` workers with `share` senders each, sending for `seconds` of virtual time."""

    async def main() -> Cluster:
        cluster = Cluster.start(workers, rpm, tpm, net=net)
        until = START + seconds
        await asyncio.gather(
            *(
                cluster.client(worker, until, server, tokens)
                for worker in range(workers)
                for _ in range(share)
            )
        )
        await cluster.close()
        return cluster

    return run(main)


def most_in(times: list[float], window: float) -> int:
    """The most sends in any window [t, t + window)."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def least_in(times: list[float], window: float, begin: float, end: float) -> int:
    """The fewest sends in a window [t, t + window) for t every 0.1 s from `begin` to `end`."""
    times = sorted(times)
    counts = []
    t = begin
    while t + window <= end:
        counts.append(bisect.bisect_left(times, t + window) - bisect.bisect_left(times, t))
        t += 0.1
    return min(counts)


def openai_headers(limit: int, remaining: int) -> RateHeaders:
    rate = rate_headers(
        {"x-ratelimit-limit-requests": str(limit), "x-ratelimit-remaining-requests": str(remaining)}
    )
    assert rate is not None
    return rate


# --- 1. a told budget, shared ----------------------------------------------------------------

BUSY_RPM = 6000
BUSY_S = 120.0
BUSY_SPACING = 60.0 / (BUSY_RPM * MARGIN)


@pytest.fixture(scope="module")
def busy() -> Cluster:
    """4 workers of 16 senders each at 6,000 a minute for two minutes: the budget binds."""
    return simulate(workers=4, share=16, seconds=BUSY_S, rpm=BUSY_RPM)


def test_the_cluster_keeps_to_the_budget_in_every_window_and_uses_it(busy: Cluster) -> None:
    times = busy.times()

    assert most_in(times, 60.0) <= BUSY_RPM
    per_s = BUSY_RPM / 60
    assert most_in(times, 1.0) <= per_s + 1
    assert most_in(times, 0.1) <= per_s / 10 + 1
    assert least_in(times, 1.0, START + 1, START + BUSY_S - 1) >= 0.95 * per_s
    assert sum(1 for t in times if t < START + BUSY_S) >= 0.95 * BUSY_RPM * BUSY_S / 60


@pytest.mark.parametrize(("workers", "share"), [(1, 16), (16, 2)], ids=["1x16", "16x2"])
def test_any_split_of_the_senders_keeps_to_the_budget(workers: int, share: int) -> None:
    rpm = 1200
    times = simulate(workers=workers, share=share, seconds=180.0, rpm=rpm).times()

    assert most_in(times, 60.0) <= rpm
    assert most_in(times, 1.0) <= rpm / 60 + 1
    assert least_in(times, 1.0, START + 1, START + 179) >= 0.9 * rpm / 60
    assert sum(1 for t in times if t < START + 180) >= 0.95 * 3 * rpm


def test_workers_take_turns_at_the_budget(busy: Cluster) -> None:
    sent = [len(busy.times(worker)) for worker in range(4)]

    assert min(sent) >= 0.95 * max(sent)


def test_every_send_goes_at_a_time_booked_at_the_ledger(busy: Cluster) -> None:
    booked = sorted(lease.arrived + delay for lease in busy.leases for delay in lease.grant.slots)
    times = busy.times()

    assert len(times) <= len(booked)
    for t in times:  # no send at a time nobody booked, nor late
        i = bisect.bisect_left(booked, t - 1e-9)
        assert i < len(booked) and booked[i] == pytest.approx(t, abs=1e-9)


def test_a_worker_books_a_bounded_time_ahead_whatever_the_demand() -> None:
    cluster = simulate(workers=4, share=64, seconds=5.0, rpm=BUSY_RPM)

    ahead = max(max(lease.grant.slots, default=0.0) for lease in cluster.leases)
    # A turn of slices past the point where a worker asks again: not a slot for each of the
    # 256 senders waiting, as a limiter in one process would book.
    assert ahead <= ASK_AHEAD_S + 4 * (SLICE_S + 2 * BUSY_SPACING)
    assert ahead < 256 * BUSY_SPACING / 3


# --- 2. coordination per slice, not per request ------------------------------------------------


def test_lease_calls_are_few_next_to_the_requests(busy: Cluster) -> None:
    requests = len(busy.sends)

    assert busy.ledger.leases <= requests / 10
    assert busy.ledger.leases <= 4 * BUSY_S * 3  # a few a second per worker
    assert len(busy.leases) == busy.ledger.leases


def test_a_lease_books_one_slice_of_the_budget_at_most(busy: Cluster) -> None:
    for lease in busy.leases:
        slots = lease.grant.slots
        assert len(slots) <= max(1, lease.want)
        if len(slots) > 1:
            assert slots[-2] - slots[0] < SLICE_S
            gaps = [b - a for a, b in itertools.pairwise(slots)]
            assert gaps == pytest.approx([BUSY_SPACING] * len(gaps))


def test_lease_calls_do_not_grow_with_the_rate() -> None:
    slow = simulate(workers=2, share=32, seconds=10.0, rpm=3000)
    fast = simulate(workers=2, share=32, seconds=10.0, rpm=12000)

    assert len(fast.sends) >= 3.5 * len(slow.sends)
    assert fast.ledger.leases <= 1.5 * slow.ledger.leases


# --- 3. no budget known: free leases, then the server's headers ---------------------------------


def test_with_no_budget_a_worker_sends_at_once_under_a_free_lease() -> None:
    cluster = simulate(workers=2, share=8, seconds=5.0)
    first = [s.at for s in cluster.sends[:16]]

    assert first == pytest.approx([START + NET * 2] * 16)  # the first lease's round trip
    assert all(lease.grant.free_for == LEASE_S for lease in cluster.leases)
    assert all(not lease.grant.slots for lease in cluster.leases)
    # One lease per worker per free lease, not one per request.
    assert cluster.ledger.leases <= 2 * (5.0 / LEASE_S + 2)
    assert len(cluster.sends) > 20 * cluster.ledger.leases
    # Each report counts what its worker sent freely.
    assert sum(lease.report.sent for lease in cluster.leases) == pytest.approx(
        len(cluster.sends), abs=16
    )
    assert not cluster.ledger.limiter.budgeted


def test_the_servers_headers_make_the_ledger_pace_every_worker() -> None:
    limit = 600
    count = 0

    def server(now: float, worker: int, tokens: int) -> Answer:
        nonlocal count
        count += 1
        return Answer(rate=openai_headers(limit, max(1, limit - count)), usage=tokens)

    cluster = simulate(workers=4, share=8, seconds=120.0, server=server)
    times = cluster.times()

    assert times[:32] == pytest.approx([START + 2 * NET] * 32)  # free until the first answer
    assert cluster.ledger.limiter.budgeted
    # The opening burst is charged, whoever sent it: the first minute holds the limit.
    assert most_in(times, 60.0) <= limit
    # Within a free lease and an answer of the first header, every worker is paced.
    paced_from = START + 2 * LEASE_S + LATENCY
    assert most_in([t for t in times if t >= paced_from], 1.0) <= limit / 60 + 1
    free = [lease.arrived for lease in cluster.leases if lease.grant.free_for]
    assert max(free) < START + LEASE_S + LATENCY
    # The second minute is paced near the limit.
    second = [t for t in times if START + 60 <= t < START + 120]
    assert 0.9 * limit <= len(second) <= limit


def test_a_hand_built_rate_reaches_the_other_workers_at_their_next_lease() -> None:
    rate = RateHeaders(Budget(limit=120, remaining=100, reset_s=None), Budget(None, None, None))

    async def main() -> tuple[list[float], Cluster]:
        cluster = Cluster.start(2)
        first, second = cluster.limiters
        assert await first.acquire(EST) == pytest.approx(START + 2 * NET)  # free
        first.settle(EST, EST)
        first.observe(rate)  # the first rate seen: reported at once
        await first.close()
        assert cluster.ledger.limiter.requests_per_minute == pytest.approx(120 * MARGIN)
        times = [await second.acquire(EST) for _ in range(3)]
        return times, cluster

    times, cluster = run(main)
    spacing = 60.0 / (120 * MARGIN)
    assert times[1] - times[0] == pytest.approx(spacing)
    assert times[2] - times[1] == pytest.approx(spacing)
    # The first send is charged: the second worker's first slot comes one spacing after it.
    assert times[0] == pytest.approx(START + 2 * NET + spacing, abs=4 * NET)
    assert cluster.leases[1].want == 0  # the report, asking for nothing
    assert cluster.leases[1].report.rate == rate


def test_free_sends_reported_after_the_budget_is_known_are_charged() -> None:
    # Worker 0 learns the limit; worker 1 keeps sending freely until its free lease ends and
    # reports those sends afterwards: the ledger charges them then.
    async def main() -> Cluster:
        cluster = Cluster.start(2, net=0.0)
        first, second = cluster.limiters
        await first.acquire(EST)
        for _ in range(30):
            await second.acquire(EST)
        first.observe(openai_headers(60, 59))
        await first.close()
        await second.acquire(EST)  # still free: it has not heard
        await asyncio.sleep(LEASE_S)
        await second.acquire(EST)  # the report of 31 free sends, then a slot
        return cluster

    cluster = run(main)
    report = cluster.leases[-1].report
    assert report.sent == 31
    # 32 sends at one a second: the next slot is about half a minute away.
    assert cluster.leases[-1].grant.slots[0] == pytest.approx(32 * 60 / (60 * MARGIN) - LEASE_S)


def test_a_spent_budget_in_the_headers_is_reported_at_once_and_pauses_everyone() -> None:
    async def main() -> tuple[Cluster, float]:
        cluster = Cluster.start(2, rpm=600)
        first, second = cluster.limiters
        await first.acquire(EST)
        await second.acquire(EST)
        first.settle(EST, EST)
        first.observe(openai_headers(600, 10))  # the first headers: reported
        await asyncio.sleep(1)
        first.observe(openai_headers(600, 5))  # nothing new: kept for the next lease
        await asyncio.sleep(1)
        first.observe(openai_headers(600, 0))  # spent: reported
        await first.close()
        told = [lease for lease in cluster.leases if lease.want == 0]
        assert [lease.report.rate for lease in told] == [
            openai_headers(600, 10),
            openai_headers(600, 0),
        ]
        return cluster, await second.acquire(EST)

    cluster, sent = run(main)
    heard = cluster.leases[-2]
    assert heard.worker == 1
    assert heard.grant.paused_for == pytest.approx(60 / 600, abs=2 * NET)
    assert sent >= heard.arrived + heard.grant.paused_for


# --- 4. a 429 pauses every worker --------------------------------------------------------------


def pause_run(retry_after: float | None) -> tuple[Cluster, float, int]:
    """4 workers at 1200/minute; the first request at or after START + 10 gets a 429."""
    refused: list[tuple[float, int]] = []

    def server(now: float, worker: int, tokens: int) -> Answer:
        if now >= START + 10 and not refused:
            refused.append((now + LATENCY, worker))
            return Answer(429, retry_after=retry_after)
        return Answer(usage=tokens)

    cluster = simulate(workers=4, share=8, seconds=20.0, rpm=1200, server=server)
    (at, worker) = refused[0]
    return cluster, at, worker


PAUSE_SPACING = 60.0 / (1200 * MARGIN)
TURN_S = ASK_AHEAD_S + 4 * (SLICE_S + PAUSE_SPACING)  # how far ahead 4 workers book


def test_a_429_pauses_every_worker_by_its_next_lease() -> None:
    cluster, at, refused = pause_run(retry_after=2.0)
    ledger_end = at + NET + 2.0  # the report reaches the ledger, which pauses from then

    # The refused worker stops at once.
    assert not [t for t in cluster.times(refused) if at < t < at + 2.0]
    for worker in range(4):
        if worker == refused:
            continue
        lease = cluster.heard(worker, at)
        assert lease is not None
        assert lease.grant.paused_for == pytest.approx(ledger_end - (lease.arrived - NET))
        # Late by at most its turn: what it had booked before it heard.
        assert lease.arrived - at <= TURN_S + 2 * NET
        # Nothing sent inside the pause after hearing of it.
        assert not [t for t in cluster.times(worker) if lease.arrived < t < ledger_end]
    # What the others sent in the pause before they heard: at most a turn of the budget.
    inside = [t for t in cluster.times() if at < t < ledger_end]
    assert max(inside, default=at) - at <= TURN_S
    assert len(inside) <= TURN_S * 1200 / 60


def test_sending_resumes_after_the_pause_at_a_lowered_rate_then_recovers() -> None:
    cluster, at, _ = pause_run(retry_after=2.0)
    end = at + 2.0 + 2 * NET
    times = cluster.times()

    def per_s(begin: float) -> int:
        return sum(1 for t in times if begin <= t < begin + 1)

    after = [t for t in times if t >= end]
    assert after[0] - end < PAUSE_SPACING
    before = per_s(at - 2)
    assert before == 20
    cut = 1200 * MARGIN * KNOWN_BACKOFF_FACTOR / 60  # 17.9 a second
    assert [per_s(end), per_s(end + 1)] == [math.ceil(cut)] * 2
    assert per_s(end + 6) == before  # climbed back, 5 % every RECOVERY_S
    assert most_in(after, 1.0) <= before
    assert cluster.ledger.limiter.rate_limited == 1


def test_a_429_without_retry_after_pauses_for_the_default() -> None:
    cluster, at, _ = pause_run(retry_after=None)

    pause_end = at + NET + DEFAULT_PAUSE_S
    assert not [t for t in cluster.times() if at + TURN_S < t < pause_end]
    assert [t for t in cluster.times() if pause_end <= t < pause_end + 0.5]


def test_a_429_voids_the_slots_a_worker_holds_and_reports_at_once() -> None:
    async def main() -> tuple[Cluster, float, list[float]]:
        cluster = Cluster.start(1, rpm=600, net=0.0)
        (limiter,) = cluster.limiters
        waiting = [asyncio.create_task(limiter.acquire(EST)) for _ in range(4)]
        await asyncio.sleep(0.05)  # the first slot is used, the others wait for theirs
        assert sum(task.done() for task in waiting) == 1
        limiter.rate_limited_by_server(3.0, sent_at=START)
        now = clock()
        times = list(await asyncio.gather(*waiting))
        return cluster, now, times

    cluster, at, times = run(main)
    assert times[0] == pytest.approx(START)
    assert min(times[1:]) >= at + 3.0
    (told,) = [lease for lease in cluster.leases if lease.want == 0]
    assert told.asked == pytest.approx(at)  # reported at once, asking for nothing
    ((wait, age, rate),) = told.report.refusals
    assert (wait, rate) == (3.0, None)
    assert age == pytest.approx(at - START)
    assert cluster.ledger.limiter.paused_until == pytest.approx(at + 3.0)


# --- 5. tokens per minute: booked by estimate, settled with usage --------------------------------


def sequential_sends(tpm: float, estimate: int, usage: int, n: int) -> list[float]:
    async def main() -> list[float]:
        cluster = Cluster.start(1, tpm=tpm, net=0.0)
        (limiter,) = cluster.limiters
        times = []
        for _ in range(n):
            times.append(await limiter.acquire(estimate))
            await asyncio.sleep(LATENCY)
            limiter.settle(estimate, usage)
        return times

    return run(main)


def test_unused_tokens_are_refunded_so_the_next_send_comes_sooner() -> None:
    per_token = 60.0 / (6000 * MARGIN)
    refunded = sequential_sends(6000, 1000, 100, 4)
    unknown = sequential_sends(6000, 1000, 0, 4)  # no usage in the answer: the estimate holds

    assert [b - a for a, b in itertools.pairwise(refunded)] == pytest.approx([100 * per_token] * 3)
    assert [b - a for a, b in itertools.pairwise(unknown)] == pytest.approx([1000 * per_token] * 3)


def test_usage_above_the_estimate_is_charged() -> None:
    per_token = 60.0 / (6000 * MARGIN)
    times = sequential_sends(6000, 100, 700, 3)

    assert times[2] - times[1] == pytest.approx(700 * per_token)


def test_the_clusters_token_pace_follows_real_usage() -> None:
    tpm, estimate, usage = 60_000, 1000, 200
    cluster = simulate(
        workers=4,
        share=8,
        seconds=120.0,
        tpm=tpm,
        tokens=estimate,
        server=lambda now, worker, tokens: Answer(usage=usage),
    )
    used = [s.at for s in cluster.sends for _ in range(s.usage // 10)]  # a mark per 10 tokens

    # Paced by the estimate alone it would send 60 a minute; by usage, near 300.
    assert len(cluster.sends) >= 0.9 * 2 * tpm / usage
    assert most_in(used, 60.0) * 10 <= tpm


def test_a_slot_used_by_a_smaller_request_refunds_the_difference() -> None:
    # A lease books every slot at the estimate of the request that asked; a request with a
    # smaller estimate that takes one of them gives the difference back.
    async def main() -> Cluster:
        cluster = Cluster.start(1, tpm=600_000, net=NET)
        (limiter,) = cluster.limiters
        # The first asks alone; the other two wait for its lease, then one asks for both.
        await asyncio.gather(limiter.acquire(1000), limiter.acquire(1000), limiter.acquire(250))
        await limiter.acquire(1000)  # the report
        return cluster

    cluster = run(main)
    both, then = cluster.leases[1], cluster.leases[-1]
    assert (both.want, both.grant.tokens, len(both.grant.slots)) == (2, 1000, 2)
    assert then.report.refund == 750
    assert then.report.answers == 0


# --- 6. refused_for, waiting, failed leases -------------------------------------------------------


def test_refused_for_counts_from_the_last_answer_anywhere() -> None:
    async def main() -> list[float]:
        cluster = Cluster.start(2, rpm=6000, net=0.0)
        first, second = cluster.limiters
        seen = [first.refused_for()]
        await asyncio.sleep(20)
        seen.append(first.refused_for())  # no answer yet, anywhere
        await second.acquire(EST)
        second.settle(EST, EST)
        seen.append(second.refused_for())  # its own answer, at once
        await second.acquire(EST)  # reports it with its next lease
        await asyncio.sleep(10)
        await first.acquire(EST)  # hears of it
        seen.append(first.refused_for())
        await asyncio.sleep(5)
        seen.append(first.refused_for())  # counts on between leases
        return seen

    assert run(main) == pytest.approx([0.0, 20.0, 0.0, 10.0, 15.0], abs=0.05)


def test_refused_for_keeps_growing_while_every_worker_gets_only_429s() -> None:
    async def main() -> list[float]:
        cluster = Cluster.start(2, rpm=600, net=NET)
        seen = []
        for _ in range(5):
            for limiter in cluster.limiters:
                sent = await limiter.acquire(EST)
                limiter.rate_limited_by_server(1.0, sent_at=sent)
            await asyncio.sleep(3)
            seen.append(min(limiter.refused_for() for limiter in cluster.limiters))
        await cluster.close()
        return seen

    seen = run(main)
    assert seen == sorted(seen)
    assert seen[-1] >= 15


def test_waiting_says_what_the_ledger_waits_for() -> None:
    async def main() -> list[str | None]:
        cluster = Cluster.start(2, rpm=30, net=NET)  # one send every 2 s
        first, second = cluster.limiters
        said = [first.waiting(), cluster.ledger.waiting()]
        for _ in range(3):
            await first.acquire(EST)
        said.append(first.waiting())  # the ledger had booked seconds ahead
        first.rate_limited_by_server(12.0)
        assert cluster.ledger.limiter.rate_limited == 0  # the report is on its way
        await first.close()
        assert cluster.ledger.limiter.rate_limited == 1
        said.append(second.waiting())  # not heard yet
        sending = asyncio.create_task(second.acquire(EST))
        await asyncio.sleep(5)
        said += [second.waiting(), cluster.ledger.waiting()]  # the worker's is the lease's
        await sending
        said.append(second.waiting())
        return said

    said = run(main)
    assert said[:2] == [None, None]
    assert said[2] == "requests/minute budget, sends booked 3s ahead"
    assert said[3] is None
    assert said[4] == "rate-limit pause, 12s left (429, retry-after 12s)"
    assert said[5] == "rate-limit pause, 7s left (429, retry-after 12s)"
    assert said[6] is None


def test_a_failed_lease_keeps_its_report_for_the_next() -> None:
    async def main() -> Cluster:
        cluster = Cluster.start(1, rpm=600, net=0.0)
        (limiter,) = cluster.limiters
        await limiter.acquire(EST)
        limiter.settle(EST, 4)
        limiter.rate_limited_by_server(0.5, sent_at=START, rate=openai_headers(600, 0))
        cluster.fail_next = 1  # the report of the 429 is lost
        await limiter.close()
        limiter.settle(EST, 7)
        await limiter.acquire(EST)  # told again
        return cluster

    cluster = run(main)
    _, told, then = cluster.leases  # the lost report was between the first two
    report = told.report
    assert (report.answers, report.refund) == (2, 6 + 3)
    assert [(wait, rate) for wait, _, rate in report.refusals] == [(0.5, openai_headers(600, 0))]
    assert told.asked == pytest.approx(START + 0.5)  # after its own pause
    assert told.grant.paused_for > 0  # the ledger's pause, now it knows
    assert then.grant.slots
