"""Runner: the only module that knows every stage.

    source -> render -> store lookup -> (miss) limiter/client/retries -> store -> sink

`Job.answer_chunk` is the seam: a chunk of rows in, the same rows with their answer
columns out, with no state but the store, the limiter and the client handed to it.
`run` reads chunks, keeps the next chunk's requests flowing while the previous chunk's
stragglers finish, and writes chunks in input order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jinja2
import polars as pl

from .client import ChatClient
from .config import Config
from .errors import ConfigError, InputError, OutputError
from .limiter import Limiter
from .progress import Progress
from .records import FAILED, OK, PENDING, SKIPPED, Request, Result
from .render import Renderer
from .sender import Sender
from .sink import Sink
from .source import Source
from .store import Lock, Store, Writer
from .summary import Summary, write_summary

log = logging.getLogger(__name__)

META_COLUMNS = {
    "_status": pl.String,
    "_error": pl.String,
    "_prompt_tokens": pl.Int64,
    "_completion_tokens": pl.Int64,
    "_attempts": pl.Int64,
}


@dataclass
class _Chunk:
    """A chunk on its way through: per row a store key (None: skipped) or a render error."""

    frame: pl.DataFrame
    keys: list[str | None]
    render_errors: dict[int, str]
    known: dict[str, Result]
    waiting: dict[str, asyncio.Future[Result]] = field(default_factory=dict)


def api_key(config: Config) -> str | None:
    """The key from `model.api_key_env`; required unless the endpoint is on this machine."""
    key = os.environ.get(config.model.api_key_env) or None
    host = urlsplit(config.model.base_url).hostname or ""
    if key is None and host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(
            f"environment variable {config.model.api_key_env} is not set; put your API key "
            f"for {config.model.base_url} there (config key model.api_key_env)"
        )
    return key


def check_output_column(config: Config, columns: list[str]) -> None:
    new = [config.output.column, *(META_COLUMNS if config.output.include_meta else ())]
    clash = [name for name in new if name in columns]
    if clash:
        raise InputError(
            f"output column '{clash[0]}' already exists in the input; "
            "choose another name in output.column"
        )


def render_rows(
    renderer: Renderer, frame: pl.DataFrame
) -> tuple[list[Request | None], dict[int, str]]:
    """Render every row of `frame`; template failures are kept per row, not raised."""
    names = list(dict.fromkeys([*renderer.variables, *renderer.skip_null]))
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
    return requests, errors


class Job:
    """One run's stages wired together."""

    def __init__(
        self, config: Config, store: Store, sender: Sender, renderer: Renderer, progress: Progress
    ) -> None:
        self.config = config
        self.store = store
        self.sender = sender
        self.renderer = renderer
        self.progress = progress
        self.summary = Summary(output=str(config.output.path))
        self._writer = Writer(store)
        self._queue: asyncio.Queue[Request] = asyncio.Queue(maxsize=config.run.concurrency * 4)
        self._inflight: dict[str, asyncio.Future[Result]] = {}
        self._failed: dict[str, Result] = {}  # failed in this run: not sent again in this run
        self._workers: list[asyncio.Task[None]] = []

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

    async def prepare(self, frame: pl.DataFrame) -> _Chunk:
        """Render the chunk, take what the store has, queue the rest for sending."""
        requests, render_errors = render_rows(self.renderer, frame)
        keys = [r.key if r is not None else None for r in requests]
        unique = {r.key: r for r in requests if r is not None}
        fresh = [k for k in unique if k not in self._inflight and k not in self._failed]
        stored = {k: r for k, r in self.store.lookup(fresh).items() if r.status == OK}
        chunk = _Chunk(frame, keys, render_errors, known=dict(stored))
        rows_per_key: dict[str, int] = {}
        for key in keys:
            if key is not None:
                rows_per_key[key] = rows_per_key.get(key, 0) + 1
        settled = frame.height - sum(rows_per_key.values())
        for key, request in unique.items():
            if key in stored:
                self.summary.from_store += rows_per_key[key]
                settled += rows_per_key[key]
            elif key in self._failed:
                chunk.known[key] = self._failed[key]
                settled += rows_per_key[key]
            elif key in self._inflight:
                chunk.waiting[key] = self._inflight[key]
            elif self.sender.stop_reason is not None:
                chunk.known[key] = Result(key, PENDING)
                settled += rows_per_key[key]
            else:
                future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
                self._inflight[key] = future
                chunk.waiting[key] = future
                await self._queue.put(request)
        for key, future in chunk.waiting.items():
            future.add_done_callback(self._advance_by(rows_per_key[key]))
        if settled:
            self.progress.advance(settled)
        return chunk

    def _advance_by(self, rows: int) -> Callable[[asyncio.Future[Result]], None]:
        return lambda _: self.progress.advance(rows)

    async def finish(self, chunk: _Chunk) -> pl.DataFrame:
        """Wait for the chunk's answers and add them as columns, in row order."""
        results = dict(chunk.known)
        for key, future in chunk.waiting.items():
            results[key] = await future
        return self._assemble(chunk, results)

    def _assemble(self, chunk: _Chunk, results: dict[str, Result]) -> pl.DataFrame:
        answers: list[str | None] = []
        meta: dict[str, list[Any]] = {name: [] for name in META_COLUMNS}
        summary = self.summary
        for index, key in enumerate(chunk.keys):
            if key is None:
                error = chunk.render_errors.get(index)
                result = Result("", FAILED if error else SKIPPED, error=error)
            else:
                result = results[key]
            answers.append(
                result.answer.strip() if result.status == OK and result.answer is not None else None
            )
            meta["_status"].append(result.status)
            meta["_error"].append(result.error)
            meta["_prompt_tokens"].append(result.prompt_tokens)
            meta["_completion_tokens"].append(result.completion_tokens)
            meta["_attempts"].append(result.attempts)
            summary.rows += 1
            if result.status == OK:
                summary.answered += 1
            elif result.status == FAILED:
                summary.failed += 1
            elif result.status == SKIPPED:
                summary.skipped += 1
            else:
                summary.pending += 1
        columns = [pl.Series(self.config.output.column, answers, dtype=pl.String)]
        if self.config.output.include_meta:
            columns += [
                pl.Series(name, meta[name], dtype=dtype) for name, dtype in META_COLUMNS.items()
            ]
        return chunk.frame.with_columns(columns)

    async def _work(self) -> None:
        while True:
            request = await self._queue.get()
            future = self._inflight[request.key]
            try:
                result = await self.sender.send(request)
                if result.status in (OK, FAILED):
                    await self._writer.put(result)
                if result.status == FAILED:
                    self._failed[request.key] = result
            except OutputError as exc:
                self.sender.stop(str(exc))
                del self._inflight[request.key]
                future.set_exception(exc)
                continue
            finally:
                self._queue.task_done()
            del self._inflight[request.key]
            future.set_result(result)

    def stats(self) -> dict[str, int]:
        counters = self.sender.counters
        return {
            "sent": counters.requests_sent,
            "tokens": counters.prompt_tokens + counters.completion_tokens,
            "failed": self.summary.failed + len(self._failed),
        }


async def run(
    config: Config,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Summary:
    """Answer every row of the input and write the output; the summary says what happened."""
    started = time.monotonic()
    progress = progress or Progress(enabled=False)
    source = Source(config.input.path, limit)
    renderer = Renderer(config.prompt, config.model, source.columns)
    check_output_column(config, source.columns)
    key = api_key(config)
    total = source.count()
    with Lock(config.store_path):
        store = Store(config.store_path)
        sink = Sink(config.output.path)
        client = ChatClient(
            config.model.base_url,
            key,
            timeout_s=config.run.timeout_s,
            concurrency=config.run.concurrency,
            transport=transport,
        )
        limiter = Limiter(config.run.requests_per_minute, config.run.tokens_per_minute)
        try:
            async with client:
                job = Job(config, store, Sender(config, client, limiter), renderer, progress)
                progress.start(total, job.stats)
                job.start()
                try:
                    await _stream(job, source, sink)
                finally:
                    await job.close()
                    progress.close()
            sink.commit()
        except BaseException:
            sink.abort()
            raise
        finally:
            store.close()
    summary = job.summary
    counters = job.sender.counters
    summary.requests_sent = counters.requests_sent
    summary.retries = counters.retries
    summary.prompt_tokens = counters.prompt_tokens
    summary.completion_tokens = counters.completion_tokens
    summary.stopped = job.sender.stop_reason
    summary.seconds = time.monotonic() - started
    write_summary(summary, config.output.path)
    return summary


async def _stream(job: Job, source: Source, sink: Sink, ahead: int = 1) -> None:
    """Chunks in order; up to `ahead` later chunks are queued while one is finishing."""
    backlog: deque[_Chunk] = deque()
    for frame in source.chunks(job.config.run.chunk_rows):
        backlog.append(await job.prepare(frame))
        while len(backlog) > ahead:
            sink.write(await job.finish(backlog.popleft()))
    while backlog:
        sink.write(await job.finish(backlog.popleft()))
