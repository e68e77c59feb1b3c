"""Batch mode's waiting half: the open batches polled until they end, their results stored.

    open batches -> poll (cancel at the deadline) -> output and error files -> store

`Collector.wait_for` polls the given batches, `run.batch.poll_s` apart and doubling up to
10 minutes, waking for the next deadline rather than a poll interval after it. A batch is
due the running config's `run.batch.deadline` after its submission (`due_at`); one still
unfinished then is cancelled, what it completed is kept, and the outcome's `fallback` sends
the rest online. An ended batch is collected: its output and error files are downloaded,
the lines of its own keys go into the store (batchresults), a line the batch never ran
stays pending, and the answers' tokens and cost at the batch discount are counted in the
`BatchOutcome` that `batches.Batches` shares with it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import batchfile, batchresults
from .batchapi import BatchAPI
from .batchconfig import BatchConfig
from .catalog import Price
from .progress import Progress
from .records import FAILED, OK, Result
from .store import BatchRecord, Store

log = logging.getLogger(__name__)

ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
# How batchresults words a line that an expired batch never ran (OpenAI's code batch_expired).
NEVER_RAN = "batch: batch_expired:"
MAX_POLL_S = 600.0


@dataclass
class BatchOutcome:
    """What the batch phase did, for the summary and the engine after it."""

    submitted: int = 0  # requests submitted by this run
    held_back: int = 0  # requests the budget kept from being submitted
    collected: int = 0  # result lines put into the store
    answered: int = 0  # of which answers
    # The keys (a re-ask's: its request's) whose answer this run's batches put into the store.
    answered_keys: set[str] = field(default_factory=set)
    fallback: bool = False  # a deadline passed: send what is left online
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    batches: dict[int, BatchRecord] = field(default_factory=dict)  # touched by this run

    def report(self) -> list[dict[str, Any]]:
        return [described(r) for r in self.batches.values()]


def described(record: BatchRecord) -> dict[str, Any]:
    """A batch as the summary and `status` show it: id, state and request counts."""
    return {
        "id": record.batch_id,
        "state": record.remote or record.state,
        "requests": record.requests,
        "completed": record.completed,
        "failed": record.failed,
    }


def due_at(record: BatchRecord, deadline: float | None) -> float | None:
    """When `record` is due under the running config's `run.batch.deadline`: that long after
    its submission (None: no deadline), so a later run may shorten or lengthen it."""
    return None if deadline is None else record.created_at + deadline


class Collector:
    """Polls one run's open batches and collects each that ended into the store."""

    def __init__(
        self,
        settings: BatchConfig,
        store: Store,
        api: BatchAPI,
        outcome: BatchOutcome,
        *,
        price: Price | None,
        progress: Progress,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.store = store
        self.api = api
        self.outcome = outcome
        self.price = price
        self.progress = progress
        self.clock = clock
        self.sleep = sleep
        self._next_poll = 0.0

    async def wait(self) -> None:
        """Poll the open batches until each has ended and is collected."""
        waiting = [r for r in self.store.batches() if r.state == "submitted"]
        if waiting:
            await self.wait_for(waiting)

    async def wait_for(self, waiting: list[BatchRecord]) -> None:
        for record in waiting:
            self.outcome.batches[record.id] = record
        self._next_poll = self.clock()
        self.progress.start(sum(r.requests for r in waiting), self._stats, self._waiting)
        try:
            await self._poll_until_ended(waiting)
        finally:
            self.progress.close()

    async def _poll_until_ended(self, waiting: list[BatchRecord]) -> None:
        interval = self.settings.poll_s
        while True:
            settled = sum(r.completed + r.failed for r in waiting)
            for record in waiting:
                if record.state == "submitted":
                    await self.poll(record)
            self.progress.advance(sum(r.completed + r.failed for r in waiting) - settled)
            open_now = [r for r in waiting if r.state == "submitted"]
            if not open_now:
                return
            pause = interval
            deadlines = [d for r in open_now if (d := self._due(r)) is not None]
            if deadlines:  # wake up for the next deadline, not a poll interval after it
                pause = max(1.0, min(pause, min(deadlines) - self.clock() + 1.0))
            self._next_poll = self.clock() + pause
            await self.sleep(pause)
            interval = min(MAX_POLL_S, interval * 2)

    def _stats(self) -> dict[str, object]:
        records = self.outcome.batches.values()
        states: dict[str, int] = {}
        for record in records:
            state = record.remote or record.state
            states[state] = states.get(state, 0) + 1
        return {
            "batches": ", ".join(f"{n} {state}" for state, n in sorted(states.items())),
            "completed": sum(r.completed for r in records),
            "failed": sum(r.failed for r in records),
            "requests": sum(r.requests for r in records),
        }

    def _waiting(self) -> str | None:
        left = self._next_poll - self.clock()
        return f"batch API, next poll in {left:.0f}s" if left >= 1 else None

    def _due(self, record: BatchRecord) -> float | None:
        return due_at(record, self.settings.deadline)

    async def poll(self, record: BatchRecord) -> None:
        """Poll one open batch: collect it if it ended, cancel it if it is past its deadline."""
        assert record.batch_id is not None
        batch = await self.api.get(record.batch_id)
        status = str(batch.get("status"))
        counts = batch.get("request_counts") or {}
        self.store.batch_update(
            record,
            remote=status,
            completed=int(counts.get("completed") or 0),
            failed=int(counts.get("failed") or 0),
        )
        if status in ENDED:
            await self._collect(record, batch)
        elif (
            (due := self._due(record)) is not None
            and self.clock() >= due
            and status != "cancelling"
        ):
            log.warning(
                "batch %s is still %s at its deadline (run.batch.deadline after its "
                "submission): cancelling it, keeping what it completed, and sending the rest "
                "online",
                record.batch_id,
                status,
            )
            cancelled = await self.api.cancel(record.batch_id)
            self.store.batch_update(record, remote=str(cancelled.get("status") or "cancelling"))
            self.outcome.fallback = True

    async def _collect(self, record: BatchRecord, batch: dict[str, Any]) -> None:
        """Put an ended batch's result lines into the store; mark it collected."""
        keys = set(self.store.batch_keys(record))
        results: list[Result] = []
        for name in ("output_file_id", "error_file_id"):
            file_id = batch.get(name)
            if not file_id:
                continue
            data = await self.api.content(str(file_id))
            reader = batchresults.read_results(
                batchresults.file_lines(io.BytesIO(data)), str(file_id)
            )
            results += [r for r in reader if r.key in keys and not _never_ran(r)]
            if reader.unreadable:
                first = reader.first[0] if reader.first else None
                log.warning(
                    "batch %s: %d unreadable result lines (%s); their rows go again",
                    record.batch_id,
                    reader.unreadable,
                    f"line {first.line}: {first.why}" if first else "",
                )
        if batch.get("status") == "failed" and not results:
            why = _batch_errors(batch)
            results = [
                Result(key, FAILED, error=f"batch failed: {why}", attempts=1) for key in keys
            ]
            log.error("batch %s failed: %s", record.batch_id, why)
        self._count(results)
        wanted = {head for key in keys if (head := batchfile.prefix(key)) is not None}
        answers = {r.key for r in results if r.status == OK}
        stored = self.store.lookup(answers, with_raw=False)
        new = answers - {key for key, found in stored.items() if found.status == OK}
        batchresults.store_results(self.store, results, wanted)
        self.outcome.answered_keys.update(key.partition("~")[0] for key in new)
        done = sum(1 for r in results if r.status == OK)
        self.outcome.collected += len(results)
        if batch.get("status") in ("expired", "cancelled") and len(results) < len(keys):
            self.outcome.fallback = self.outcome.fallback or self.settings.deadline is not None
            log.warning(
                "batch %s %s: %d of %d requests answered, the rest are pending again",
                record.batch_id,
                batch.get("status"),
                done,
                len(keys),
            )
        self.store.batch_update(
            record, state="collected", completed=done, failed=len(results) - done
        )

    def _count(self, results: list[Result]) -> None:
        """The answers' tokens and their cost at the batch discount."""
        for result in results:
            if result.status == OK:
                self.outcome.answered += 1
                self.outcome.prompt_tokens += result.prompt_tokens
                self.outcome.completion_tokens += result.completion_tokens
                if self.price is not None:
                    cost = self.price.cost(result.prompt_tokens, result.completion_tokens)
                    self.outcome.cost_usd += cost * self.settings.discount


def _never_ran(result: Result) -> bool:
    """A line the batch did not run before it expired: no failure, the request stays pending."""
    return result.status == FAILED and (result.error or "").startswith(NEVER_RAN)


def _batch_errors(batch: dict[str, Any]) -> str:
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        first = data[0]
        return str(first.get("message") or first.get("code") or first)[:500]
    return "no reason given"
