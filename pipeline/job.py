"""Job: one run's chunks through store lookup, sending and answer columns.

`Job.answer_chunk` is the seam for other runners: a chunk of rows in, the same rows with
their answer columns out, with no state but the store, the sender and the parser.
Identical requests are sent once; a request answered in the store is never sent again; an
answer that does not parse is asked again up to `output.retry_invalid` times.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import jinja2
import polars as pl

from .answers import answer_columns, is_valid
from .config import Config
from .errors import OutputError, RowError
from .memo import Memo
from .parse import Parser
from .progress import Progress
from .records import FAILED, OK, PENDING, SKIPPED, Request, Result
from .render import Renderer, reask_key
from .sender import Sender
from .store import Store, Writer
from .summary import Summary

Work = tuple[Request, int, Result | None]  # request, first re-ask to try, answer so far


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
        except jinja2.TemplateError as exc:
            requests.append(None)
            errors[index] = f"template error: {exc}"
        except RowError as exc:
            requests.append(None)
            errors[index] = str(exc)
    return requests, errors


class Job:
    """One run's stages wired together; `offline` answers from the store only."""

    def __init__(
        self,
        config: Config,
        store: Store,
        sender: Sender,
        renderer: Renderer,
        *,
        progress: Progress | None = None,
        offline: bool = False,
    ) -> None:
        self.config = config
        self.store = store
        self.sender = sender
        self.renderer = renderer
        self.parser = Parser(config.output)
        self.progress = progress or Progress(enabled=False)
        self.offline = offline
        self.summary = Summary(
            output=str(config.output.path), fail_threshold=config.run.fail_threshold
        )
        self._reasks = config.output.retry_invalid
        self._writer = Writer(store)
        self.memo = Memo(store, config, renderer.columns)
        self._queue: asyncio.Queue[Work] = asyncio.Queue(maxsize=config.run.concurrency * 4)
        self._inflight: dict[str, asyncio.Future[Result]] = {}
        self._inflight_rows: dict[str, int] = {}  # rows waiting on each in-flight key
        self._failed: dict[str, Result] = {}  # failed in this run: not sent again in this run
        self._workers: list[asyncio.Task[None]] = []
        self.fatal: OutputError | None = None  # the store failed: the run must stop

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work()) for _ in range(self.config.run.concurrency)
        ]

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

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
        fresh = [k for k in unique if k not in self._inflight and k not in self._failed]
        stored = {
            k: r for k, r in self.store.lookup(fresh, with_raw=False).items() if r.status == OK
        }
        chunk = Chunk(frame, keys, row_errors, known={}, digest=digest)
        rows_per_key: dict[str, int] = {}
        for key in keys:
            if key is not None:
                rows_per_key[key] = rows_per_key.get(key, 0) + 1
        settled = frame.height - sum(rows_per_key.values())
        stopped = self.offline or self.sender.stop_reason is not None
        for key, request in unique.items():
            work: Work | None = None
            if key in stored:
                result, next_reask = self._stored_reasks(key, stored[key])
                if next_reask is None or stopped:
                    chunk.known[key] = result
                    self.summary.from_store += rows_per_key[key]
                else:
                    work = (request, next_reask, result)
            elif key in self._failed:
                chunk.known[key] = self._failed[key]
            elif key in self._inflight:
                chunk.waiting[key] = self._inflight[key]
                self._inflight_rows[key] += rows_per_key[key]
            elif stopped:
                chunk.known[key] = Result(key, PENDING)
            else:
                work = (request, 0, None)
            if work is not None:
                future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
                self._inflight[key] = chunk.waiting[key] = future
                self._inflight_rows[key] = rows_per_key[key]
                await self._queue.put(work)
            elif key in chunk.known:
                settled += rows_per_key[key]
        if settled:
            self.progress.advance(settled)
        return chunk

    def _stored_reasks(self, key: str, result: Result) -> tuple[Result, int | None]:
        """Follow stored re-asks of an invalid answer; the next re-ask to send, if any."""
        attempt = 0
        while self._reasks and not is_valid(self.parser, result):
            if attempt == self._reasks:
                return result, None
            attempt += 1
            found = self.store.lookup([reask_key(key, attempt)], with_raw=False).get(
                reask_key(key, attempt)
            )
            if found is None or found.status != OK:
                return result, attempt
            result = found
        return result, None

    async def finish(self, chunk: Chunk) -> pl.DataFrame:
        """Wait for the chunk's answers and add them as columns, in row order."""
        if chunk.answered is not None:
            return chunk.answered
        results = dict(chunk.known)
        for waited, future in chunk.waiting.items():
            results[waited] = await future
        if self.fatal is not None:
            raise self.fatal
        rows = []
        for index, row_key in enumerate(chunk.keys):
            if row_key is not None:
                rows.append(results[row_key])
            elif index in chunk.row_errors:
                rows.append(Result("", FAILED, error=chunk.row_errors[index]))
            else:
                rows.append(Result("", SKIPPED))
        ok, skipped = self.summary.answered, self.summary.skipped
        answered = answer_columns(
            chunk.frame,
            rows,
            self.parser,
            include_meta=self.config.output.include_meta,
            summary=self.summary,
        )
        ok, skipped = self.summary.answered - ok, self.summary.skipped - skipped
        if chunk.digest is not None and ok + skipped == chunk.frame.height:
            new = answered.columns[chunk.frame.width :]
            self.memo.put(chunk.digest, answered.select(new), ok, skipped)
        return answered

    async def _work(self) -> None:
        while True:
            request, reask, prior = await self._queue.get()
            key = request.key
            try:
                result = await self._resolve(request, reask, prior)
            except OutputError as exc:
                self.sender.stop(str(exc))
                self.fatal = self.fatal or exc
                result = Result(key, PENDING)
            finally:
                self._queue.task_done()
            if result.status == FAILED:
                self._failed[key] = result
            self._inflight.pop(key).set_result(result)
            self.progress.advance(self._inflight_rows.pop(key))

    async def _resolve(self, request: Request, reask: int, prior: Result | None) -> Result:
        """Send the request (or its next re-ask) until its answer parses or re-asks run out."""
        if reask == 0 and not self._reasks:  # the common case: one answer, stored
            sent = await self.sender.send(request)
            if sent.status != PENDING:
                await self._writer.put(sent)
            return sent
        result = prior
        for attempt in range(reask, self._reasks + 1):
            if result is not None and (result.status != OK or is_valid(self.parser, result)):
                break
            key = reask_key(request.key, attempt)
            sent = await self.sender.send(Request(key, request.payload, request.est_tokens))
            if sent.status in (OK, FAILED):
                await self._writer.put(sent)
            if sent.status != OK and result is not None:
                break  # keep the last answer; the failed re-ask is retried next run
            result = sent
        assert result is not None
        return Result(request.key, *_fields(result))

    def stats(self) -> dict[str, Any]:
        counters = self.sender.counters
        stats: dict[str, Any] = {
            "sent": counters.requests_sent,
            "tokens": counters.prompt_tokens + counters.completion_tokens,
            "failed": len(self._failed),
        }
        if self.sender.price is not None:
            stats["cost"] = f"${counters.cost_usd:.4f}"
        return stats


def _fields(result: Result) -> tuple[Any, ...]:
    return (
        result.status,
        result.answer,
        result.raw,
        result.error,
        result.prompt_tokens,
        result.completion_tokens,
        result.attempts,
    )
