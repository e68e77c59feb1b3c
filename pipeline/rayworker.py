"""Ray worker: one actor of the Ray engine, sending its share of a run's requests.

It is the local engine's sending half (`dispatch.Dispatcher` over a `sender.Sender`, with the
re-ask policy) in another process: its limiter is a `budget.LeasedLimiter` that leases send
times from the run's one `budget.Ledger`, and its store is the driver's. Each answer to keep is
an event the driver takes with its next `drain`, and the request's slot stays taken until the
driver says (with the drain after) that the answer is committed: a worker never holds more
unstored answers than its requests in flight. Each drain also says which of its requests gave
up while the endpoint may be down (`Sender.gave_up_in_outage`, as this worker's breaker saw
it), and whether its breaker gave up on the endpoint: the driver ends such rows pending when
the outage stops the run, as the local engine does. Plain Python: `rayengine` wraps it in
`ray.remote`, and tests can drive it without Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field, fields
from typing import Any

from .budget import Grant, LeasedLimiter, Report
from .catalog import Price
from .client import ChatClient
from .config import Config
from .dispatch import Dispatcher
from .parse import Parser
from .reask import Reasker
from .records import FAILED, PENDING, Result
from .sender import Counters, Sender
from .triage import Work

PUT = "put"  # an answer (or failure) to store; the worker waits for its ack
DONE = "done"  # a request's final result for its rows
GATHER_S = 0.05  # a poll with little news waits this long for more: fewer calls, each answer
# acked (its slot freed) at most this much later
FINAL = "final"  # both at once: a request's one answer, to store and give its rows


@dataclass
class Drained:
    """What a worker hands the driver: events in order, spending since the last drain."""

    events: list[tuple[int, str, Result]] = field(default_factory=list)  # (seq, kind, result)
    counters: Counters = field(default_factory=Counters)
    stop_reason: str | None = None
    unanswered: frozenset[str] = frozenset()  # gave up on an outage, no answer since
    down: bool = False  # this worker's breaker gave up on the endpoint


class Worker:
    """Sends the requests the driver hands it, `share` at a time."""

    def __init__(
        self, config: Config, api_key: str | None, price: Price | None, share: int, ledger: Any
    ) -> None:
        self._config = config
        self._api_key = api_key
        self._price = price
        self._share = share
        self._ledger = ledger  # the ledger actor's name, or anything with `lease.remote`
        self._pool: Dispatcher | None = None
        self._client: ChatClient | None = None
        self._limiter: LeasedLimiter | None = None
        self.sender: Sender | None = None
        self._reasker = Reasker(Parser(config.output), config.output.retry_invalid, None)
        self._events: list[tuple[int, str, Result]] = []
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._seq = 0
        self._final: set[str] = set()  # keys whose FINAL event was emitted: no DONE after
        self._told = Counters()  # spending already handed to the driver
        self._gave_up: set[str] = set()  # failed keys that may have failed on an outage only
        self._news: asyncio.Event | None = None
        self._closed = False

    async def take(self, works: list[Work]) -> None:
        """Queue `works` for sending (the driver keeps the queue short)."""
        pool = await self._started()
        for work in works:
            await pool.submit(work, 1)

    async def drain(self, acked: int, wait_s: float, works: list[Work] | None = None) -> Drained:
        """Free the slots of events up to `acked` (stored), queue `works`, then hand over
        what is new: at once when a good part of the slots have news, else GATHER_S after
        the first news, or after `wait_s` if nothing happens."""
        for seq in [s for s in self._acks if s <= acked]:
            future = self._acks.pop(seq)
            if not future.done():
                future.set_result(None)
        if works:
            await self.take(works)
        news = self._news = self._news or asyncio.Event()
        loop = asyncio.get_running_loop()
        end, gathered = loop.time() + wait_s, 0.0
        while wait_s > 0 and not self._closed:
            now = loop.time()
            if self._events:
                gathered = gathered or now + GATHER_S
                if len(self._events) >= max(1, self._share // 2) or now >= gathered:
                    break
            elif now >= end:
                break
            news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(news.wait(), (gathered or end) - now)
        events, self._events = self._events, []
        if self.sender is None:
            return Drained(events)
        sender = self.sender
        return Drained(
            events, self._spent(), sender.stop_reason, self._unanswered(), sender.breaker.down
        )

    def stop(self, reason: str) -> None:
        """The run stops sending: what is queued or waiting ends pending."""
        if self.sender is not None:
            self.sender.stop(reason)

    async def close(self) -> Drained:
        """Stop the workers and the client; the last events (pending results among them).
        A poll waiting for news is answered at once, with what it has."""
        self._closed = True
        if self._news is not None:
            self._news.set()
        if self._pool is not None:
            await self._pool.close()
        if self._limiter is not None:
            await self._limiter.close()
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
        return await self.drain(0, 0)

    async def _started(self) -> Dispatcher:
        if self._pool is None:
            config = self._config
            self._limiter = LeasedLimiter(self._lease)
            self._client = ChatClient(
                config.model.base_url,
                self._api_key,
                timeout_s=config.run.timeout_s,
                concurrency=self._share,
            )
            await self._client.__aenter__()
            self.sender = Sender(config, self._client, self._limiter, self._price)
            self._pool = Dispatcher(self._share, self._handle, self._done)
            self._pool.start()
        return self._pool

    async def _lease(self, want: int, tokens: int, report: Report) -> Grant:
        if isinstance(self._ledger, str):
            import ray  # in a Ray worker process

            self._ledger = ray.get_actor(self._ledger)
        grant: Grant = await self._ledger.lease.remote(want, tokens, report)
        return grant

    async def _handle(self, work: Work) -> Result:
        assert self.sender is not None
        request, first, prior = work
        if first or self._reasker.reasks:
            return await self._reasker.ask(request, first, prior, self.sender.send, self._keep)
        sent = await self.sender.send(request)  # the common case: one event, not two
        if sent.status != PENDING:
            self._final.add(request.key)
            await self._keep(sent, FINAL)
        return sent

    async def _keep(self, result: Result, kind: str = PUT) -> None:
        """Hand `result` to the driver to store; return once it is stored."""
        assert self.sender is not None
        if result.status == FAILED and self.sender.gave_up_in_outage(result.key):
            self._gave_up.add(result.key)
        future = asyncio.get_running_loop().create_future()
        self._acks[self._emit(kind, result)] = future
        await future

    def _done(self, result: Result, rows: int) -> None:
        if result.key in self._final:
            self._final.discard(result.key)  # its rows had it with the answer
            return
        self._emit(DONE, result)

    def _emit(self, kind: str, result: Result) -> int:
        self._seq += 1
        self._events.append((self._seq, kind, result))
        if self._news is not None:
            self._news.set()
        return self._seq

    def _unanswered(self) -> frozenset[str]:
        """The requests that gave up on an outage since this worker's endpoint last answered
        (not `Sender.unanswered`: once another worker's breaker stops the run, that says no
        for every request of this one)."""
        sender = self.sender
        assert sender is not None
        self._gave_up = {key for key in self._gave_up if sender.gave_up_in_outage(key)}
        return frozenset(self._gave_up)

    def _spent(self) -> Counters:
        """Spending since the last drain."""
        if self.sender is None:
            return Counters()
        now, told = self.sender.counters, self._told
        delta = Counters(
            **{f.name: getattr(now, f.name) - getattr(told, f.name) for f in fields(now)}
        )
        self._told = Counters(**{f.name: getattr(now, f.name) for f in fields(now)})
        return delta
