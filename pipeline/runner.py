"""Runner: the only module that knows every stage.

    config -> source -> render -> store lookup -> limiter/client/retries -> store -> parse -> sink

`run` checks what it can before spending, checks the model, reads chunks, keeps the next
chunk's requests flowing while the previous chunk's last answers arrive, and writes chunks
in input order. `reparse` does the same from the store alone and sends nothing. Whatever
ends a run, its summary says what was sent and kept, and the run log gets a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import polars as pl

from .catalog import Price, check_model, price
from .checks import api_key, check_new_columns, check_output
from .config import Config
from .engine import Engine, LocalEngine
from .errors import ConfigError, PipelineError
from .evaluate import merge
from .job import Chunk, Job
from .lock import Lock
from .progress import Progress
from .render import Renderer
from .scoretable import format_table
from .sink import Sink
from .source import Source
from .store import Store
from .summary import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    Summary,
    append_run_log,
    write_summary,
)

if TYPE_CHECKING:
    from .batches import BatchOutcome
    from .job import Sending

log = logging.getLogger(__name__)


def config_hash(config: Config) -> str:
    """A short fingerprint of the validated config, for the run log."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


@dataclass
class OpenedInput:
    """The input and the renderer, checked against each other before anything is sent."""

    source: Source
    renderer: Renderer


def open_source(config: Config, limit: int | None = None) -> tuple[Config, Source]:
    """The input, fetched first when it is an oxen:// or s3:// path (once per version), and
    the config reading it."""
    if config.input.repo is not None and not config.input.path.is_file():
        from .repos import fetch_input  # oxen:// inputs only

        config = fetch_input(config)[0]
    parts = None
    if config.input.url is not None:
        from .objectstore import fetch_input as fetch_object  # s3:// inputs only

        parts = fetch_object(config)
    return config, Source(config.input.path, limit, config.input, parts)


def open_input(config: Config, limit: int | None = None) -> OpenedInput:
    """Read the input's schema and check the template and output columns against it."""
    config, source = open_source(config, limit)
    renderer = Renderer(
        config.prompt, config.model, source.columns, config.output, config.input.path.parent
    )
    check_new_columns(config, source.columns)
    return OpenedInput(source, renderer)


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
    detach: bool = False,
) -> Summary:
    """Answer every row of the input and write the output; the summary says what happened.

    With `offline`, nothing is sent: rows come from the store or are marked pending. With
    `run.mode: batch`, the batch phase first submits what is unanswered and waits for the
    batches (`detach`: submits and returns, writing no output); the engine then writes the
    output from the store, sending online only what a passed deadline left over. A
    pipeline error does not raise: it ends the run and sets the summary's error and exit
    code. Whatever ends the run, the summary is written beside the output (when the output
    is not another run's) and a line is appended to the run log.
    """
    output = limit_path(config.output.path, limit)
    summary = Summary(output=str(output), fail_threshold=config.run.fail_threshold)
    started = time.monotonic()
    sink: Sink | None = None
    batch = config.run.mode == "batch" and not offline
    try:
        if config.run.engine == "ray" and not offline:
            from .raycluster import import_ray  # a missing install is said before anything else

            import_ray()
        if config.input.repo is not None:
            from .repos import fetch_input  # oxen:// inputs only

            config, summary.input_commit = await asyncio.to_thread(fetch_input, config)
        opened = open_input(config, limit)
        check_output(output)
        if config.output.url is not None and limit is None:
            from .objectstore import check_bucket  # s3:// outputs only

            await asyncio.to_thread(check_bucket, config)
        stamp = None  # output.commit: the local input's size and time before the run
        if config.output.commit and limit is None:
            from .repos import check_local  # a local Oxen repository: the oxen extra

            stamp = await asyncio.to_thread(check_local, config, output)
        total = opened.source.count()
        if total == 0:
            log.warning("the input %s has no rows: the output will have none", config.input.path)
        outcome = None
        if batch:
            summary.mode = "batch"
            outcome = await _batch_phase(config, summary, progress, transport, detach)
            if detach:
                summary.output = ""
                return summary
            offline = not outcome.fallback
        sink = Sink(output)
        await execute(
            config,
            opened.renderer,
            opened.source.chunks(config.run.chunk_rows),
            sink.write,
            summary=summary,
            total=total,
            progress=progress,
            transport=transport,
            offline=offline,
            prune_memo=limit is None,
        )
        sink.commit()
        sink = None
        if outcome is not None:
            _count_batches(summary, outcome)
        if (config.output.repo or config.output.commit) and limit is None and not summary.stopped:
            from .repos import commit_local, commit_output, input_commit_local

            commit = commit_output
            if config.output.commit:
                commit = commit_local
                summary.input_commit = await asyncio.to_thread(input_commit_local, config, stamp)
            summary.commit = await asyncio.to_thread(
                commit, config, summary, output, summary.input_commit
            )
        if config.output.url is not None and limit is None and not summary.stopped:
            from .objectstore import upload_output  # s3:// outputs only

            summary.output_url = await asyncio.to_thread(upload_output, config, output)
    except PipelineError as exc:
        summary.fail(exc)
    except (asyncio.CancelledError, KeyboardInterrupt):
        summary.error, summary.exit = "interrupted", EXIT_INTERRUPTED
        raise
    except Exception as exc:
        summary.error = f"internal error: {type(exc).__name__}: {exc}"
        summary.exit = EXIT_INTERNAL
        raise
    finally:
        if sink is not None:
            sink.abort()
        summary.seconds = time.monotonic() - started
        record(summary, config, "reparse" if offline and not batch else "run")
    return summary


async def _batch_phase(
    config: Config,
    summary: Summary,
    progress: Progress | None,
    transport: httpx.AsyncBaseTransport | None,
    detach: bool,
) -> BatchOutcome:
    """Submit, wait for and collect the batches, under the store's lock."""
    from .batchapi import BatchAPI  # batch mode only
    from .batches import Batches

    key = api_key(config)
    found_price = await asyncio.to_thread(model_price, config, key)
    shown = Progress(enabled=progress.enabled, tty=progress.tty) if progress else None
    with Lock(config.store_path):
        store = Store(config.store_path)
        try:
            async with BatchAPI(config.model.base_url, key, transport=transport) as api:
                batches = Batches(config, store, api, price=found_price, progress=shown)
                try:
                    outcome = await batches.run(detach=detach)
                finally:
                    summary.batches = batches.outcome.report()
                    summary.batch_submitted = batches.outcome.submitted
        finally:
            store.close()
    if outcome.held_back:
        summary.stopped = _held_back(outcome)
    return outcome


def _held_back(outcome: BatchOutcome) -> str:
    """Why the run stops early when the budget kept requests from being submitted."""
    return (
        f"run.max_cost_usd: {outcome.held_back} requests were not submitted, their worst "
        "case would pass the budget; they are pending"
    )


def _count_batches(summary: Summary, outcome: BatchOutcome) -> None:
    """Add the batches' answers to what the engine counted."""
    summary.from_store = max(0, summary.from_store - outcome.answered)  # answered by batches
    summary.prompt_tokens += outcome.prompt_tokens
    summary.completion_tokens += outcome.completion_tokens
    if outcome.cost_usd:
        summary.cost_usd = (summary.cost_usd or 0.0) + outcome.cost_usd
    if outcome.held_back and not summary.stopped:  # the engine's counting cleared it
        summary.stopped = _held_back(outcome)
    if summary.pending and not outcome.fallback and not summary.stopped:
        summary.stopped = (
            f"{summary.pending} rows have no answer from the batches (expired, cancelled or "
            "failed); the next run submits them again"
        )


def limit_path(output: Path, limit: int | None) -> Path:
    """Where a run writes: with `--limit N`, beside the output, which stays whole."""
    if limit is None:
        return output
    return output.with_name(f"{output.stem}.first-{limit}{output.suffix}")


def record(summary: Summary, config: Config, command: str) -> None:
    """Write the summary beside the output and a line in the run log, as far as possible."""
    if summary.exit != EXIT_LOCKED and summary.output:  # locked: the output is the other run's
        with contextlib.suppress(OSError):
            write_summary(summary, Path(summary.output))
    log_run(summary, config, command)


def log_run(summary: Summary, config: Config, command: str) -> None:
    """Append the run's line to the run log beside the store, if the store's folder exists."""
    if config.store_path.parent.is_dir():
        try:
            append_run_log(summary, config.store_path, config_hash(config), command)
        except OSError as exc:
            log.warning("cannot append to the run log beside %s: %s", config.store_path, exc)


async def execute(
    config: Config,
    renderer: Renderer,
    frames: Iterable[pl.DataFrame],
    write: Callable[[pl.DataFrame], None],
    *,
    summary: Summary,
    total: int | None = None,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    offline: bool = False,
    prune_memo: bool = False,
    latencies: list[float] | None = None,
) -> None:
    """The engine: frames in, answered frames to `write`, in order, under the store's lock.

    `summary` counts what happened, also when an error ends the run part-way.
    `prune_memo`: `frames` are the whole input, so memoised chunks not seen are stale.
    `latencies`, when given, gets the seconds each answered request took.
    """
    progress = progress or Progress(enabled=False)
    key = None if offline else api_key(config)
    with Lock(config.store_path):
        store = Store(config.store_path)
        try:
            found_price = price(config.model, None)
            if not offline:
                found_price = await asyncio.to_thread(model_price, config, key)
            if config.run.engine == "ray" and not offline:
                from .rayengine import RayEngine  # run.engine: ray only

                engine: Engine = RayEngine(config, key, found_price, summary)
            else:
                engine = LocalEngine(config, key, found_price, offline, transport)
            sender = engine.sender
            sender.latencies = latencies
            job = Job(
                config,
                store,
                sender,
                renderer,
                summary=summary,
                progress=progress,
                offline=offline,
                pool=engine.pool,
            )
            try:
                async with contextlib.AsyncExitStack() as stack:
                    await stack.enter_async_context(engine)
                    progress.start(total, engine.stats(job), sender.waiting)
                    stack.callback(progress.close)
                    job.start()
                    stack.push_async_callback(job.close)
                    await _stream(job, frames, write)
                    if prune_memo and job.sender.stop_reason is None:
                        job.memo.prune()
            finally:
                _count_spending(summary, sender)
                if job.evaluations:
                    evaluation = merge(job.evaluations)
                    summary.evaluation = evaluation.to_dict()
                    summary.evaluation_table = format_table(evaluation)
        finally:
            store.close()


def _count_spending(summary: Summary, sender: Sending) -> None:
    counters = sender.counters
    summary.requests_sent = counters.requests_sent
    summary.retries = counters.retries
    summary.prompt_tokens = counters.prompt_tokens
    summary.completion_tokens = counters.completion_tokens
    summary.cost_usd = counters.cost_usd if sender.price is not None else None
    summary.stopped = sender.stop_reason


async def _stream(
    job: Job, frames: Iterable[pl.DataFrame], write: Callable[[pl.DataFrame], None], ahead: int = 1
) -> None:
    """Chunks in order; up to `ahead` later chunks are queued while one is finishing.

    When the input fails part-way, the requests already queued are still answered and
    stored before the error ends the run: they may have been sent.
    """
    backlog: deque[Chunk] = deque()
    rows = iter(frames)
    while True:
        try:
            frame = next(rows, None)
        except PipelineError:
            while backlog:
                await job.finish(backlog.popleft())
            raise
        if frame is None:
            break
        backlog.append(await job.prepare(frame))
        while len(backlog) > ahead:
            write(await job.finish(backlog.popleft()))
    while backlog:
        write(await job.finish(backlog.popleft()))
