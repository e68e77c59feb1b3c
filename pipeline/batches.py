"""Batch mode: the unanswered requests go through the provider's Batch API into the store.

    unanswered requests -> JSONL parts -> upload -> create -> poll -> results -> store

`Batches.run` comes before the engine: it finishes what a killed run left half-submitted,
submits what no batch holds yet, waits for the open batches and puts their answers into the
store, where the engine, run offline, finds them and writes the output. This module holds
the submitting half; batchcollect's `Collector` does the waiting, the deadline's cancel and
the collecting, into the same `BatchOutcome`. A batch still unfinished at its deadline
(`due_at`) is cancelled, what it completed is kept, and the run sends the rest online
(`fallback`).

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
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

from . import batchfile
from .batchapi import BatchAPI
from .batchcollect import BatchOutcome, Collector
from .catalog import Price
from .config import Config
from .errors import RetryableError
from .progress import Progress
from .records import Request
from .render import completion_reserve
from .store import BatchRecord, Store

log = logging.getLogger(__name__)

CREATE_TRIES = 4


class Batches:
    """One run's batch phase over the store."""

    def __init__(
        self,
        config: Config,
        store: Store,
        api: BatchAPI,
        *,
        price: Price | None,
        limit: int | None = None,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.settings = config.run.batch
        self.store = store
        self.api = api
        self.price = price
        self.limit = limit  # --limit N: only the first N rows' requests are submitted
        self.clock = clock
        self.sleep = sleep
        self.outcome = BatchOutcome()
        self.collector = Collector(
            self.settings,
            store,
            api,
            self.outcome,
            price=price,
            progress=progress or Progress(enabled=False),
            clock=clock,
            sleep=sleep,
        )
        self._store_id = store.store_id()
        self._worst: dict[str, float] = {}  # worst-case cost of the requests being submitted

    async def run(self, *, detach: bool = False) -> BatchOutcome:
        await self.api.check()
        await self.resume()
        await self.submit()
        if not detach:
            await self.collector.wait()
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
            await self.collector.poll(record)
        ending = [r for r in polled if r.state == "submitted" and r.remote == "cancelling"]
        if ending:
            log.info("waiting for %d cancelled batches to end", len(ending))
            await self.collector.wait_for(ending)
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
        """Submit every unanswered request of the (first `limit`) rows that no open batch
        holds, within the budget."""
        skip = self.store.open_batch_keys()
        requests = batchfile.unanswered(self.config, self.store, skip=skip, limit=self.limit)
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
