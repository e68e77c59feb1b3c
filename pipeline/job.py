"""Job: one run's chunks through the memo, triage, the worker pool and the answer columns.

`Job.answer_chunk` is the seam for other runners: a chunk of rows in, the same rows with
their answer columns out, with no state but the store, the sender and the parser.
Identical requests are sent once; a request answered in the store is never sent again.

Everything that happens to one row stays on that row: a template that fails on its values
(`render_rows`), a request that fails (the sender), an answer that does not parse (the
parser) or anything unexpected while sending (the dispatcher) becomes its status and error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any, Protocol

import jinja2
import polars as pl

from .answers import answer_columns, traced
from .config import Config
from .dispatch import Dispatcher, Pool
from .errors import OutputError, RowError
from .evaluate import score
from .memo import Memo
from .parse import Parser
from .progress import Progress
from .reask import Reasker
from .records import FAILED, INVALID, OK, PENDING, SKIPPED, Request, Result
from .render import Renderer
from .scores import Evaluation
from .sender import Counters
from .store import Store, Writer
from .summary import Summary, usd
from .triage import Stored, Work, triage


@dataclass
class Chunk:
    """A chunk on its way: per row a store key (None: skipped or not renderable)."""

    frame: pl.DataFrame
    keys: list[str | None]
    row_errors: dict[int, str]
    known: dict[str, Result]
    waiting: dict[str, asyncio.Future[Result]] = field(default_factory=dict)
    digest: bytes | None = None  # its memo key, when it may be memoised
    answered: pl.DataFrame | None = None  # the memo had it: the finished chunk
    stored: frozenset[str] = frozenset()  # the keys the store (or this run's batches) answered


def render_rows(
    renderer: Renderer, frame: pl.DataFrame
) -> tuple[list[Request | None], dict[int, str]]:
    """Render every row of `frame`; a row that cannot be rendered keeps its error."""
    names = renderer.columns
    rows: Any = (
        frame.select(names).iter_rows(named=True) if names else ({} for _ in range(frame.height))
    )
    requests: list[Request | None] = []
    errors: dict[int, str] = {}
    for index, row in enumerate(rows):
        try:
            requests.append(renderer.render(row))
        except RowError as exc:
            requests.append(None)
            errors[index] = str(exc)
        except jinja2.TemplateError as exc:
            requests.append(None)
            errors[index] = f"template error: {exc}"
        except Exception as exc:  # the per-row boundary: `{{ 1 / price }}` with a 0 price
            requests.append(None)
            errors[index] = f"template error: {type(exc).__name__}: {exc}"
    return requests, errors


class Sending(Protocol):
    """What a job asks of its sender: `sender.Sender`, or the Ray engine's `RaySender`."""

    counters: Counters
    stop_reason: str | None
    price: Any
    latencies: list[float] | None

    def stop(self, reason: str) -> None: ...

    def waiting(self) -> str | None: ...

    def unanswered(self, key: str) -> bool: ...  # may have failed only as the endpoint is down

    async def send(self, request: Request) -> Result: ...


class Job:
    """One run's stages wired together; `offline` answers from the store only.

    `pool` makes the worker pool that sends (default: `dispatch.Dispatcher` in this process).
    `held`: the keys in open batches, pending and never sent; `batch_answered`: the keys
    whose answers this run's batches stored (their rows count as `batch_collected`).
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        sender: Sending,
        renderer: Renderer,
        *,
        summary: Summary,
        progress: Progress | None = None,
        offline: bool = False,
        pool: Callable[[Job], Pool] | None = None,
        held: Container[str] = frozenset(),
        batch_answered: Container[str] = frozenset(),
    ) -> None:
        self.config = config
        self.store = store
        self.sender = sender
        self.renderer = renderer
        self.summary = summary
        self.parser = Parser(config.output)
        self.progress = progress or Progress(enabled=False)
        self.offline = offline
        self.held = held
        self.batch_answered = batch_answered
        self.memo = Memo(store, config, renderer.columns)
        self.reasker = Reasker(self.parser, config.output.retry_invalid, store)
        self.pool: Pool = (
            pool(self) if pool else Dispatcher(config.run.concurrency, self._handle, self.settled)
        )
        self._writer = Writer(store)
        self._failed: dict[str, Result] = {}  # failed in this run: not sent again in this run
        self._held: dict[str, Result] = {}  # failures stored when their chunk is finished
        self._settled: dict[str, int] = {}  # rows settled in chunks not finished, by status
        self.fatal: OutputError | None = None  # the store failed: the run must stop
        self.evaluations: list[Evaluation] = []  # per finished chunk, with output.gold

    def start(self) -> None:
        self.pool.start()

    async def close(self) -> None:
        await self.pool.close()

    async def answer_chunk(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The seam: rows in, the same rows with their answer columns out."""
        return await self.finish(await self.prepare(frame))

    async def prepare(self, frame: pl.DataFrame) -> Chunk:
        """Render the chunk, take what the store has, queue the rest for sending."""
        digest = self.memo.digest(frame)
        hit = self.memo.get(digest) if digest is not None else None
        if hit is not None:
            self.summary.count_many(OK, hit.ok)
            self.summary.count_many(SKIPPED, hit.skipped)
            self.summary.from_store += hit.ok
            self.progress.advance(frame.height)
            return Chunk(frame, [], {}, {}, answered=frame.hstack(hit.columns))
        requests, row_errors = render_rows(self.renderer, frame)
        keys = [r.key if r is not None else None for r in requests]
        unique = {r.key: r for r in requests if r is not None}
        rows: dict[str, int] = {}
        for key in keys:
            if key is not None:
                rows[key] = rows.get(key, 0) + 1
        fresh = [k for k in unique if k not in self.pool and k not in self._failed]
        stored: dict[str, Stored] = {}
        for key, found in self.store.lookup(fresh, with_raw=False).items():
            if found.status == OK:
                stored[key] = self.reasker.from_store(key, found)
            elif found.status == FAILED:
                unique[key].failed_before = found.error
        sending = not self.offline and self.sender.stop_reason is None
        plan = triage(unique, stored, self._failed, self.pool, sending=sending, held=self.held)
        chunk = Chunk(frame, keys, row_errors, plan.settled, digest=digest)
        settled = unkeyed = frame.height - sum(rows.values())  # skipped or not renderable
        self._tally(FAILED, len(row_errors))
        self._tally(SKIPPED, unkeyed - len(row_errors))
        for key, result in plan.settled.items():
            self._tally(result.status, rows[key])
            settled += rows[key]
        chunk.stored = frozenset(plan.from_store)  # counted once parsed (`_count_stored`)
        self.summary.batch_pending += sum(rows[k] for k in plan.held)
        for key in plan.join:
            chunk.waiting[key] = self.pool.join(key, rows[key])
        for work in plan.send:
            key = work[0].key
            chunk.waiting[key] = await self.pool.submit(work, rows[key])
        if settled:
            self.progress.advance(settled)
        return chunk

    async def finish(self, chunk: Chunk) -> pl.DataFrame:
        """Wait for the chunk's answers and add them as columns, in row order."""
        if chunk.answered is not None:
            if self.config.output.gold is not None:
                self._evaluate(chunk.answered, self._memo_statuses(chunk.answered))
            return chunk.answered
        results = dict(chunk.known)
        for waited, future in chunk.waiting.items():
            results[waited] = await future
        if self.fatal is not None:
            raise self.fatal
        await self._settle_held(chunk, results)
        rows = []
        for index, row_key in enumerate(chunk.keys):
            if row_key is not None:
                rows.append(results[row_key])
            elif index in chunk.row_errors:
                rows.append(Result("", FAILED, error=chunk.row_errors[index]))
            else:
                rows.append(Result("", SKIPPED))
        statuses: list[str] = []
        answered, counts = answer_columns(
            chunk.frame,
            rows,
            self.parser,
            include_meta=self.config.output.include_meta,
            statuses=statuses,
            model=self.config.model.name if traced(self.config) else None,
        )
        if self.config.output.gold is not None:
            self._evaluate(answered, statuses)
        self._count_stored(chunk, statuses)
        for status, count in counts.items():
            self.summary.count_many(status, count)
            self._tally(OK if status == INVALID else status, -count)  # parsed: no longer live
        self.summary.row_errors += len(chunk.row_errors)
        ok, skipped = counts.get(OK, 0), counts.get(SKIPPED, 0)
        if chunk.digest is not None and ok + skipped == chunk.frame.height:
            new = answered.columns[chunk.frame.width :]
            self.memo.put(chunk.digest, answered.select(new), ok, skipped)
        return answered

    def _count_stored(self, chunk: Chunk, statuses: list[str]) -> None:
        """Count the rows the store answered as `from_store`, or `batch_collected` when this
        run's batches answered them: those whose answer parsed, so each answered row is
        counted once (an answer that does not parse is `invalid`, and only that)."""
        if not chunk.stored:
            return
        for key, status in zip(chunk.keys, statuses, strict=True):
            if status != OK or key is None or key not in chunk.stored:
                continue
            if key in self.batch_answered:
                self.summary.batch_collected += 1
            else:
                self.summary.from_store += 1

    async def _settle_held(self, chunk: Chunk, results: dict[str, Result]) -> None:
        """A request that failed only because the endpoint went down, which then stopped the
        run, ends `pending`, as those never sent: nothing was answered, and the store keeps
        nothing for it. Other failures held back (`_keep`) are stored now."""
        stopped = self.sender.stop_reason is not None
        for key, result in results.items():
            if result.status != FAILED:
                continue
            held = self._held.pop(key, None)
            if stopped and self.sender.unanswered(key):
                results[key] = Result(key, PENDING, attempts=result.attempts)
                rows = chunk.keys.count(key)
                self._tally(FAILED, -rows)  # counted failed when it settled
                self._tally(PENDING, rows)
            elif held is not None:
                await self._writer.put(held)

    def _evaluate(self, answered: pl.DataFrame, statuses: list[str]) -> None:
        """Score a finished chunk's answers against the gold column (`output.gold`)."""
        output = self.config.output
        assert output.gold is not None
        gold = answered.get_column(output.gold).to_list()
        names = list(self.parser.columns)
        if output.parse == "json":
            answers: list[Any] = answered.select(names).to_dicts()
        else:
            answers = answered.get_column(names[0]).to_list()
        fields = names if output.parse == "json" else None
        self.evaluations.append(
            score(output.parse, answers, gold, statuses, labels=output.labels, fields=fields)
        )

    def _memo_statuses(self, answered: pl.DataFrame) -> list[str]:
        """A memoised chunk's statuses: each row answered, or skipped (no answer at all)."""
        if "_status" in answered.columns:
            return [str(s) for s in answered.get_column("_status").to_list()]
        blank = pl.all_horizontal(pl.col(name).is_null() for name in self.parser.columns)
        return [SKIPPED if b else OK for b in answered.select(blank).to_series().to_list()]

    async def _handle(self, work: Work) -> Result:
        """One key's request (and re-asks) through the sender; a failing store stops the run."""
        request, first, prior = work
        try:
            if first or self.reasker.reasks:
                return await self.reasker.ask(request, first, prior, self.sender.send, self._keep)
            sent = await self.sender.send(request)  # the common case, one coroutine less
            await self._keep(sent)
            return sent
        except OutputError as exc:
            self.store_failed(exc)
            return Result(request.key, PENDING)

    async def _keep(self, result: Result) -> None:
        """Store `result` now, unless it is held (`hold`)."""
        if result.status == PENDING or self.hold(result):
            return
        await self._writer.put(result)

    def hold(self, result: Result) -> bool:
        """Hold a request that failed while the endpoint may be down (`Sending.unanswered`)
        until its chunk is finished (`_settle_held`): if the outage stops the run, its rows
        are pending and nothing is stored. False: the caller stores `result` now."""
        key = result.key
        if result.status == FAILED and key in self.pool and self.sender.unanswered(key):
            self._held[key] = result  # a re-ask's key is never the pool's: stored now
            return True
        return False

    def store_failed(self, exc: OutputError) -> None:
        """The store cannot take answers: stop sending, and end the run with the error."""
        self.sender.stop(str(exc))
        self.fatal = self.fatal or exc

    def resume(self, work: Work) -> Work | Result:
        """A request whose worker was lost: settled if the store has its answer now, else
        to send again from its first re-ask missing."""
        request = work[0]
        found = self.store.lookup([request.key], with_raw=False).get(request.key)
        if found is None or found.status != OK:
            return work
        result, next_reask = self.reasker.from_store(request.key, found)
        return result if next_reask is None else (request, next_reask, result)

    def settled(self, result: Result, rows: int) -> None:
        """A key's request is done, for the `rows` rows waiting on it."""
        if result.status == FAILED:
            self._failed[result.key] = result
        elif result.status == OK:
            self.summary.received += rows
        self._tally(result.status, rows)
        self.progress.advance(rows)

    def _tally(self, status: str, rows: int) -> None:
        if rows:
            self._settled[status] = self._settled.get(status, 0) + rows

    def stats(self) -> dict[str, Any]:
        """The counts the progress display shows, read each time it redraws.

        The names are the summary's. `answered` counts rows as their answers arrive; the
        parser runs when a chunk is finished (all its rows settled, in input order), and an
        answer that does not parse then moves from `answered` to `invalid`. `failed` counts
        rows when they fail (a request that gave up, a template error), `skipped` and
        `pending` likewise, so answered + invalid + failed + skipped + pending = rows settled,
        and once the last chunk is finished each count is the summary's. `sent` counts every
        request sent (re-asks and retries included), `retries` the retries of failures.
        """
        live, done, counters = self._settled, self.summary, self.sender.counters
        answered = done.answered + live.get(OK, 0)
        stats: dict[str, Any] = {"answered": answered, "invalid": done.invalid}
        stats["failed"] = done.failed + live.get(FAILED, 0)
        for status, before in ((SKIPPED, done.skipped), (PENDING, done.pending)):
            if before + live.get(status, 0):
                stats[status] = before + live.get(status, 0)
        stats["sent"] = counters.requests_sent
        stats["retries"] = counters.retries
        stats["tokens"] = counters.prompt_tokens + counters.completion_tokens
        if self.sender.price is not None:
            stats["cost"] = usd(counters.cost_usd)
        return stats
