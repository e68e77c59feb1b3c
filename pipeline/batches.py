"""Batch mode: the unanswered requests go through the provider's Batch API into the store.

    unanswered requests -> JSONL parts -> upload -> create -> poll -> results -> store

`Batches.run` comes before the engine: it finishes what a killed run left half-submitted,
submits what no batch holds yet, waits for the open batches (polling, `run.batch.poll_s`
doubling up to 10 minutes) and puts their answers into the store, where the engine, run
offline, finds them and writes the output. A batch still unfinished at its deadline (the
running config's `run.batch.deadline` after the batch's submission, `due_at`) is cancelled,
what it completed is kept, and the run sends the rest online (`fallback`).

`Batches.settle` is an online run's batch phase: it submits nothing, polls each open batch
once and collects those that ended (a batch past its deadline is cancelled and waited for),
so that the engine, which never sends a key in an open batch, sends only what is free.

Crash safety: the store records each batch before each step and after it (prepared ->
uploaded -> submitted -> collected). A rerun looks for a prepared batch's file by its name,
and for an uploaded batch's batch by its metadata (the store's id, the submission, the
part), and adopts what it finds: no key is ever in two open batches, and no completed
answer is lost. A key in an open batch is never submitted again; an answered one never.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import batchfile, batchresults
from .batchapi import BatchAPI
from .catalog import Price
from .config import Config
from .errors import RetryableError
from .progress import Progress
from .records import FAILED, OK, Request, Result
from .render import completion_reserve
from .store import BatchRecord, Store

log = logging.getLogger(__name__)

ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
# How batchresults words a line that an expired batch never ran (OpenAI's code batch_expired).
NEVER_RAN = "batch: batch_expired:"
MAX_POLL_S = 600.0
CREATE_TRIES = 4


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
        return [
            {
                "id": r.batch_id,
                "state": r.remote or r.state,
                "requests": r.requests,
                "completed": r.completed,
                "failed": r.failed,
            }
            for r in self.batches.values()
        ]


def due_at(record: BatchRecord, deadline: float | None) -> float | None:
    """When `record` is due under the running config's `run.batch.deadline`: that long after
    its submission (None: no deadline), so a later run may shorten or lengthen it."""
    return None if deadline is None else record.created_at + deadline


class Batches:
    """One run's batch phase over the store."""

    def __init__(
        self,
        config: Config,
        store: Store,
        api: BatchAPI,
        *,
        price: Price | None,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.settings = config.run.batch
        self.store = store
        self.api = api
        self.price = price
        self.progress = progress or Progress(enabled=False)
        self.clock = clock
        self.sleep = sleep
        self.outcome = BatchOutcome()
        self._store_id = store.store_id()
        self._worst: dict[str, float] = {}  # worst-case cost of the requests being submitted
        self._next_poll = 0.0

    async def run(self, *, detach: bool = False) -> BatchOutcome:
        await self.api.check()
        await self.resume()
        await self.submit()
        if not detach:
            await self.wait()
        return self.outcome

    async def settle(self) -> BatchOutcome:
        """An online run's batch phase: submit nothing; drop what a killed run left that never
        became a batch, poll each open batch once and collect those that ended. A batch past
        its deadline is cancelled and waited for, its partial answers collected, so that its
        other keys are free to go online; the keys of the batches still open stay in them."""
        await self.resume(create=False)
        polled = [r for r in self.store.batches() if r.state == "submitted"]
        self.outcome.batches.update((r.id, r) for r in polled)
        for record in polled:
            await self._poll(record)
        ending = [r for r in polled if r.state == "submitted" and r.remote == "cancelling"]
        if ending:
            log.info("waiting for %d cancelled batches to end", len(ending))
            await self._wait_for(ending)
        return self.outcome

    # --- submitting ------------------------------------------------------------------------

    def _name(self, record: BatchRecord) -> str:
        return f"pipeline-{self._store_id[:12]}-{record.submission}-{record.part}.jsonl"

    def _metadata(self, record: BatchRecord) -> dict[str, str]:
        return {
            "pipeline_store": self._store_id,
            "pipeline_submission": record.submission,
            "pipeline_part": str(record.part),
        }

    async def resume(self, *, create: bool = True) -> None:
        """Finish what a killed run left between the steps of a submission; `create` False
        (an online run): drop what never became a batch instead, its keys are free."""
        for record in self.store.batches():
            if record.state == "prepared":
                file_id = await self.api.find_file(self._name(record)) if create else None
                if file_id is None:
                    log.info("batch part %d was never uploaded: its requests go again", record.id)
                    self.store.batch_forget(record)
                    continue
                self.store.batch_update(record, state="uploaded", file_id=file_id)
            if record.state == "uploaded":
                found = await self.api.find_batch(self._metadata(record))
                if found is not None:
                    log.info("adopting batch %s, created by a run that was stopped", found["id"])
                    self.store.batch_update(
                        record,
                        state="submitted",
                        batch_id=str(found["id"]),
                        remote=found.get("status"),
                    )
                elif create:
                    await self._create(record)
                else:
                    log.info("batch part %d was never created: its requests are free", record.id)
                    self.store.batch_forget(record)
                    continue
            self.outcome.batches[record.id] = record

    async def submit(self) -> None:
        """Submit every unanswered request that no open batch holds, within the budget."""
        skip = self.store.open_batch_keys()
        requests = batchfile.unanswered(self.config, self.store, skip=skip)
        lines = ((r.key, batchfile.request_line(r)) for r in self._affordable(requests))
        submission = uuid.uuid4().hex[:12]
        deadline = self.settings.deadline
        max_bytes = int(self.settings.max_file_mb * batchfile.MB)
        parts = batchfile.split(lines, self.settings.max_requests_per_file, max_bytes)
        for number, part in enumerate(parts, start=1):
            keys = [key for key, _ in part]
            deadline_at = None if deadline is None else self.clock() + deadline
            reserved = sum(self._worst.pop(key, 0.0) for key in keys)
            record = self.store.batch_add(submission, number, keys, deadline_at, reserved)
            self.outcome.batches[record.id] = record
            file_id = await self.api.upload(self._name(record), b"".join(line for _, line in part))
            self.store.batch_update(record, state="uploaded", file_id=file_id)
            await self._create(record)
            self.outcome.submitted += len(keys)
            log.info("submitted batch %s: %d requests", record.batch_id, len(keys))
        if self.outcome.held_back:
            log.warning(
                "run.max_cost_usd: %d requests not submitted, their worst case would pass the "
                "budget; they stay pending",
                self.outcome.held_back,
            )

    async def _create(self, record: BatchRecord) -> None:
        """Create the batch of an uploaded file; after a lost answer, look for it first."""
        assert record.file_id is not None
        metadata = self._metadata(record)
        for attempt in range(CREATE_TRIES):
            try:
                batch = await self.api.create(
                    record.file_id, self.settings.completion_window, metadata
                )
                break
            except RetryableError as exc:
                found = await self.api.find_batch(metadata)
                if found is not None:
                    batch = found
                    break
                if attempt + 1 == CREATE_TRIES:
                    raise
                log.warning("creating the batch failed (%s); trying again", exc)
                await self.sleep(2.0**attempt)
        self.store.batch_update(
            record, state="submitted", batch_id=str(batch["id"]), remote=batch.get("status")
        )

    def _affordable(self, requests: Iterator[Request]) -> Iterator[Request]:
        """The requests whose worst case (estimate + max_tokens, discounted) fits the budget."""
        budget = self.config.run.max_cost_usd
        if budget is None or self.price is None:
            yield from requests
            return
        reserve = completion_reserve(self.config.model.params)
        left = budget - self.store.batch_reserved_usd()
        for request in requests:
            prompt = max(0, request.est_tokens - reserve)
            worst = self.price.cost(prompt, reserve) * self.settings.discount
            if worst > left:
                self.outcome.held_back += 1
                continue
            left -= worst
            self._worst[request.key] = worst
            yield request

    # --- waiting and collecting ------------------------------------------------------------

    async def wait(self) -> None:
        """Poll the open batches until each has ended and is collected."""
        waiting = [r for r in self.store.batches() if r.state == "submitted"]
        if waiting:
            await self._wait_for(waiting)

    async def _wait_for(self, waiting: list[BatchRecord]) -> None:
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
                    await self._poll(record)
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

    async def _poll(self, record: BatchRecord) -> None:
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
