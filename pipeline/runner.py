"""Runner: the only module that knows every stage.

    config -> source -> render -> store lookup -> limiter/client/retries -> store -> parse -> sink

`run` checks the model, reads chunks, keeps the next chunk's requests flowing while the
previous chunk's last answers arrive, and writes chunks in input order. `reparse` does the
same from the store alone and sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import polars as pl

from .answers import output_columns
from .catalog import Price, check_model, price
from .client import ChatClient
from .config import Config
from .errors import ConfigError, InputError
from .job import Chunk, Job
from .limiter import Limiter
from .parse import Parser
from .progress import Progress
from .render import Renderer
from .sender import Sender
from .sink import Sink
from .source import Source
from .store import Lock, Store
from .summary import Summary, append_run_log, write_summary

log = logging.getLogger(__name__)


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


def config_hash(config: Config) -> str:
    """A short fingerprint of the validated config, for the run log."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


@dataclass
class OpenedInput:
    """The input and the renderer, checked against each other before anything is sent."""

    source: Source
    renderer: Renderer


def open_input(config: Config, limit: int | None = None) -> OpenedInput:
    """Read the input's schema and check the template and output columns against it."""
    source = Source(config.input.path, limit)
    renderer = Renderer(
        config.prompt, config.model, source.columns, config.output, config.input.path.parent
    )
    check_new_columns(config, source.columns)
    return OpenedInput(source, renderer)


def check_new_columns(config: Config, columns: list[str]) -> None:
    """The answer (and meta) columns must not overwrite an input column."""
    new = output_columns(Parser(config.output), config.output.include_meta)
    clash = [name for name in new if name in columns]
    if clash:
        key = "output.schema" if config.output.parse == "json" else "output.column"
        raise InputError(
            f"output column '{clash[0]}' already exists in the input; rename it in {key}"
        )


def model_price(config: Config, key: str | None) -> Price | None:
    """Stop early on a model the endpoint does not serve; the price when it is known."""
    found = None
    if config.model.preflight:
        checked = check_model(config.model, key)
        if checked.note:
            log.info("%s", checked.note)
        found = checked.model
    found_price = price(config.model, found)
    if found_price is None and config.run.max_cost_usd is not None:
        raise ConfigError(
            "run.max_cost_usd needs prices, and the endpoint gives none for "
            f"'{config.model.name}': set model.pricing (input_per_million, output_per_million)"
        )
    return found_price


async def run(
    config: Config,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    offline: bool = False,
) -> Summary:
    """Answer every row of the input and write the output; the summary says what happened.

    With `offline`, nothing is sent: rows come from the store or are marked pending.
    """
    plan = open_input(config, limit)
    sink = Sink(config.output.path)
    try:
        summary = await execute(
            config,
            plan.renderer,
            plan.source.chunks(config.run.chunk_rows),
            sink.write,
            total=plan.source.count(),
            progress=progress,
            transport=transport,
            offline=offline,
            prune_memo=limit is None,
        )
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    write_summary(summary, config.output.path)
    return summary


async def execute(
    config: Config,
    renderer: Renderer,
    frames: Iterable[pl.DataFrame],
    write: Callable[[pl.DataFrame], None],
    *,
    total: int | None = None,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    offline: bool = False,
    prune_memo: bool = False,
) -> Summary:
    """The engine: frames in, answered frames to `write`, in order, under the store's lock.

    `prune_memo`: `frames` are the whole input, so memoised chunks not seen are stale.
    """
    started = time.monotonic()
    progress = progress or Progress(enabled=False)
    key = None if offline else api_key(config)
    found_price = price(config.model, None)
    if not offline:
        found_price = await asyncio.to_thread(model_price, config, key)
    with Lock(config.store_path):
        store = Store(config.store_path)
        limiter = Limiter(config.run.requests_per_minute, config.run.tokens_per_minute)
        client = None
        if not offline:
            client = ChatClient(
                config.model.base_url,
                key,
                timeout_s=config.run.timeout_s,
                concurrency=config.run.concurrency,
                transport=transport,
            )
        sender = Sender(config, client, limiter, found_price)
        job = Job(config, store, sender, renderer, progress=progress, offline=offline)
        try:
            async with contextlib.AsyncExitStack() as stack:
                if client is not None:
                    await stack.enter_async_context(client)
                progress.start(total, job.stats)
                stack.callback(progress.close)
                job.start()
                stack.push_async_callback(job.close)
                await _stream(job, frames, write)
                if prune_memo and job.sender.stop_reason is None:
                    job.memo.prune()
        finally:
            store.close()
        summary = _finish(job, started)
        command = "reparse" if offline else "run"
        append_run_log(summary, config.store_path, config_hash(config), command)
    return summary


def _finish(job: Job, started: float) -> Summary:
    summary, counters = job.summary, job.sender.counters
    summary.requests_sent = counters.requests_sent
    summary.retries = counters.retries
    summary.prompt_tokens = counters.prompt_tokens
    summary.completion_tokens = counters.completion_tokens
    summary.cost_usd = counters.cost_usd if job.sender.price is not None else None
    summary.stopped = job.sender.stop_reason
    summary.seconds = time.monotonic() - started
    return summary


async def _stream(
    job: Job, frames: Iterable[pl.DataFrame], write: Callable[[pl.DataFrame], None], ahead: int = 1
) -> None:
    """Chunks in order; up to `ahead` later chunks are queued while one is finishing."""
    backlog: deque[Chunk] = deque()
    for frame in frames:
        backlog.append(await job.prepare(frame))
        while len(backlog) > ahead:
            write(await job.finish(backlog.popleft()))
    while backlog:
        write(await job.finish(backlog.popleft()))
