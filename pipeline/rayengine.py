"""Ray engine: a run's requests sent by worker actors on a Ray cluster, under one budget.

Only sending moves. This process (the driver) still reads the input, renders, asks the store,
parses and writes the output in order, through the same `job.Job` as the local engine, so the
output and the store are the same whichever engine ran. `RayPool` takes the local worker
pool's place: it hands batches of requests to `rayworker.Worker` actors (each with its own
HTTP client and sender) and long-polls each for what came back. Every worker's limiter leases
send times from one `budget.Ledger` actor: one rate budget for the cluster, asked a few times
a second per worker, not once per request.

An answer is committed to the store here before its worker hears so (the next poll's ack),
and only then does the worker's slot take another request: a SIGKILL of the driver loses at
most the requests in flight, as in one process. A failure that may be only the endpoint's
(the worker says which) is held until its chunk is finished, as in one process
(`Job.hold`): if the outage stops the run, its rows end pending. A worker that dies is
restarted by Ray; the requests it held are looked up in the store again and sent anew only
if still unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .catalog import Price
from .config import Config
from .errors import OutputError, PipelineError
from .raycluster import Cluster, answer, import_ray, start
from .raysender import RaySender
from .rayworker import DONE, PUT, Drained
from .records import PENDING, Result
from .summary import Summary
from .triage import Work

if TYPE_CHECKING:
    from .job import Job

log = logging.getLogger(__name__)

POLL_S = 0.25  # a worker answers a poll at once when it has news, else after this long
QUEUED_PER_SLOT = 2  # requests handed to a worker: up to this many per request it may send
LOST_S = 15.0  # a worker unreachable this long (Ray's restarts spent) is given up
CLOSE_S = 10.0  # seconds a worker has to hand back its last answers at the end


@dataclass(eq=False)
class _Slot:
    """One worker as the driver sees it."""

    index: int
    actor: Any
    share: int
    held: dict[str, Work] = field(default_factory=dict)  # handed to it, not done
    outbox: list[Work] = field(default_factory=list)  # held, to go with the next poll
    alive: bool = True


class RayPool:
    """The worker pool of `job.Job`, its workers Ray actors."""

    def __init__(self, engine: RayEngine, job: Job, sender: RaySender) -> None:
        self._engine = engine
        self._ray: Any = None
        self._ledger: Any = None
        self._job = job
        self._sender = sender
        self._slots: list[_Slot] = []
        self._cap = 0
        self._queue: deque[Work] = deque()
        self._futures: dict[str, asyncio.Future[Result]] = {}
        self._rows: dict[str, int] = {}
        self._room = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pumps: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._flushing = False
        self._closing = False
        self.calls = {"polls": 0, "events": 0, "batches": 0, "handed": 0}  # for `-v`

    def __contains__(self, key: object) -> bool:
        return key in self._futures

    @property
    def live(self) -> int:
        return sum(slot.alive for slot in self._slots)

    def start(self) -> None:
        cluster = self._engine.cluster
        assert cluster is not None, "the engine starts the cluster before the pool"
        self._ray, self._ledger = cluster.ray, cluster.ledger
        self._slots = [
            _Slot(i, actor, share)
            for i, (actor, share) in enumerate(zip(cluster.workers, cluster.shares, strict=True))
        ]
        self._cap = sum(cluster.shares) * (QUEUED_PER_SLOT + 1)
        self._pumps = [asyncio.create_task(self._pump(slot)) for slot in self._slots]
        self._listener = asyncio.create_task(self._listen())

    def tell(self, reason: str) -> None:
        """Tell every worker to stop sending."""
        for slot in self._slots:
            self._watch(slot.actor.stop.remote(reason))

    async def submit(self, work: Work, rows: int) -> asyncio.Future[Result]:
        """Queue `work` for `rows` rows (waits while the workers hold enough)."""
        while len(self._futures) >= self._cap and self.live:
            self._room.clear()
            await self._room.wait()
        key = work[0].key
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._futures[key] = future
        self._rows[key] = rows
        if not self.live:
            self._settle(Result(key, PENDING))
            return future
        self._queue.append(work)
        self._schedule()
        return future

    def join(self, key: str, rows: int) -> asyncio.Future[Result]:
        self._rows[key] += rows
        return self._futures[key]

    async def close(self) -> None:
        """Close the workers and take their last answers and spending, end what is left
        pending.

        A poll in flight is taken, not abandoned: the worker handed it answers to store and
        the spending since its last poll (requests cut off in flight among it), which no
        later call hands over again.
        """
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()
        loop = asyncio.get_running_loop()
        end = loop.time() + CLOSE_S

        async def close(slot: _Slot) -> Drained:
            drained: Drained = await answer(slot.actor.close.remote())
            return drained

        closing = {slot: asyncio.ensure_future(close(slot)) for slot in self._slots if slot.alive}
        if self._pumps:  # each ends with its poll in flight, which the close answers at once
            await asyncio.wait(self._pumps, timeout=CLOSE_S)
        for task in [*self._pumps, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._pumps, *self._tasks, return_exceptions=True)
        if closing:
            await asyncio.wait(closing.values(), timeout=max(0.0, end - loop.time()))
        for slot, closed in closing.items():
            if closed.done() and closed.exception() is None:
                self._take(slot, closed.result())
            else:  # lost or slow: what it held stays unanswered
                exc = closed.exception() if closed.done() else "no answer"
                log.warning("Ray worker %d did not close: %s", slot.index, exc)
                closed.cancel()
        if self._listener is not None:
            await asyncio.gather(self._listener, return_exceptions=True)
        for key in list(self._futures):
            self._settle(Result(key, PENDING))
        log.debug("Ray pool: %s", ", ".join(f"{n} {name}" for name, n in self.calls.items()))

    def _schedule(self) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Hand queued requests to the workers with the most room, a batch per worker."""
        self._flushing = False
        if self._closing:
            return  # the workers are closing: what is queued ends pending
        live = [slot for slot in self._slots if slot.alive]
        batches: dict[_Slot, list[Work]] = {}
        idle = {slot for slot in live if not slot.held}  # no poll of theirs will come back soon
        while self._queue and live:
            slot = min(live, key=lambda s: len(s.held) / s.share)
            if len(slot.held) >= slot.share * QUEUED_PER_SLOT:
                break
            work = self._queue.popleft()
            slot.held[work[0].key] = work
            batches.setdefault(slot, []).append(work)
        for slot, works in batches.items():
            self.calls["handed"] += len(works)
            if slot in idle:
                self._watch(slot.actor.take.remote(works), slot, works)
                self.calls["batches"] += 1
            else:
                slot.outbox.extend(works)  # with the next poll: one call, not two

    def _watch(self, ref: Any, slot: _Slot | None = None, works: list[Work] | None = None) -> None:
        """Await a call's answer in the background; a batch a lost worker never took goes
        to the others."""

        async def wait() -> None:
            try:
                await answer(ref)
            except Exception as exc:
                if slot is not None and works:
                    lost = [w for w in works if slot.held.pop(w[0].key, None) is not None]
                    self._requeue(slot, lost, exc)

        task = asyncio.create_task(wait())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, slot: _Slot) -> None:
        """Poll one worker for its answers, store them, and ack them with the next poll."""
        errors = self._ray.exceptions.RayError
        acked, lost_since = 0, None
        while not self._closing:
            works, slot.outbox = slot.outbox, []
            try:
                drained = await answer(slot.actor.drain.remote(acked, POLL_S, works))
            except errors as exc:
                if self._closing:
                    return
                acked = 0  # a restarted worker counts from the start
                lost = list(slot.held.values())
                slot.held.clear()
                slot.outbox.clear()
                self._requeue(slot, lost, exc)
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > LOST_S:
                    self._give_up(slot, exc)
                    return
                await asyncio.sleep(1.0)
                continue
            lost_since = None
            taken = self._take(slot, drained)
            if taken is None:
                return
            acked = taken or acked

    def _take(self, slot: _Slot, drained: Drained) -> int | None:
        """Store a poll's answers, settle its finished requests; the last event's number
        (None: the store failed, and the run stops)."""
        self.calls["polls"] += 1
        self.calls["events"] += len(drained.events)
        self._sender.heard(slot.index, drained)
        hold = self._job.hold  # a failure that may be only the endpoint's waits for its chunk
        puts = [result for _, kind, result in drained.events if kind != DONE and not hold(result)]
        if puts:
            try:
                self._job.store.put_many(puts)
            except OutputError as exc:
                self._job.store_failed(exc)
                return None
        for _, kind, result in drained.events:
            if kind != PUT and slot.held.pop(result.key, None) is not None:
                self._settle(result)
        self._sender.add(drained.counters)
        if drained.stop_reason:
            self._sender.stop(drained.stop_reason)
        return drained.events[-1][0] if drained.events else 0

    def _settle(self, result: Result) -> None:
        future = self._futures.pop(result.key, None)
        if future is None:
            return  # settled already (sent twice after a worker was thought lost)
        rows = self._rows.pop(result.key)
        if not future.done():
            future.set_result(result)
        self._job.settled(result, rows)
        self._room.set()
        self._schedule()

    def _requeue(self, slot: _Slot, lost: list[Work], exc: BaseException) -> None:
        """Requests a lost worker held: settled from the store, or sent again."""
        if not lost or self._closing:
            return
        log.warning(
            "Ray worker %d lost (%s): its %d requests go to the workers left",
            slot.index,
            type(exc).__name__,
            len(lost),
        )
        for work in reversed(lost):
            again = self._job.resume(work)
            if isinstance(again, Result):
                self._settle(again)
            else:
                self._queue.appendleft(again)
        self._schedule()

    def _give_up(self, slot: _Slot, exc: BaseException) -> None:
        slot.alive = False
        log.error("Ray worker %d is gone: %s", slot.index, exc)
        if not self.live:
            self._sender.stop(
                "every Ray worker was lost; the answers so far are kept, rerun to go on"
            )
            for work in list(self._queue):
                self._settle(Result(work[0].key, PENDING))
            self._queue.clear()
            self._room.set()

    async def _listen(self) -> None:
        """What the budget waits for, for the progress display, once a second."""
        while True:
            with contextlib.suppress(PipelineError, self._ray.exceptions.RayError):
                self._sender.said = await answer(self._ledger.waiting.remote())
            await asyncio.sleep(1.0)


class RayEngine:
    """`run.engine: ray`: Ray started (or joined) around the run, its workers sending."""

    def __init__(
        self, config: Config, api_key: str | None, price: Price | None, summary: Summary
    ) -> None:
        import_ray()  # before anything else: a missing install is a usage error
        self._config = config
        self._api_key = api_key
        self._price = price
        self._summary = summary
        self.cluster: Cluster | None = None
        self._pool: RayPool | None = None
        self.sender = RaySender(config, price, self._tell)

    def pool(self, job: Job) -> RayPool:
        self._pool = RayPool(self, job, self.sender)
        return self._pool

    def stats(self, job: Job) -> Callable[[], Mapping[str, Any]]:
        def stats() -> Mapping[str, Any]:
            live = self._pool.live if self._pool is not None else 0
            return {**job.stats(), "workers": live}

        return stats

    async def __aenter__(self) -> RayEngine:
        self._summary.engine = "ray"  # also when the start fails, or a signal stops it
        self.cluster = await start(self._config, self._api_key, self._price)
        self._summary.workers = len(self.cluster.workers)
        self._summary.ray_start_s = round(self.cluster.seconds, 2)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)

    def _tell(self, reason: str) -> None:
        if self._pool is not None:
            self._pool.tell(reason)
