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
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import polars as pl

from .catalog import Price, check_model, price
from .checks import api_key, check_new_columns, check_output
from .config import Config
from .engine import Engine, LocalEngine
from .errors import ConfigError, PipelineError, RequestError
from .evaluate import merge
from .job import Chunk, Job
from .lock import Lock
from .progress import Progress
from .render import Renderer
from .scoretable import format_table
from .signals import Stop, stop_for
from .sink import Sink
from .source import Source
from .store import Store
from .summary import (
    EXIT_FAILED_ROWS,
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
    report: Callable[[Summary], None] | None = None,
) -> Summary:
    """Answer every row of the input and write the output; the summary says what happened.

    With `offline` (reparse), nothing is sent: rows come from the store, and when a row has
    no stored answer, the output is left as it was and the summary says why (exit 1). With
    `run.mode: batch`, the batch phase first submits what is unanswered and waits for the
    batches (`detach`: submits and counts the rows from the store, writing no output); the
    engine then writes the output from the store, sending online only what a passed
    deadline left over. An online run over a store with open batches first collects what
    they finished; the keys still in one stay pending, never sent twice. A pipeline error
    does not raise: it ends the run and sets the summary's error and exit code; so does a
    `report` (called once the output is written) that raises one. A signal's cancellation
    (`signals.stoppable`) ends the run with the signal's exit code, the output left as it
    was, and the rows counted as the store has them. Whatever ends the run, the summary is
    written beside the output (when the output is not another run's) and a line is
    appended to the run log.
    """
    output = limit_path(config.output.path, limit)
    summary = Summary(output=str(output), fail_threshold=config.run.fail_threshold)
    started = time.monotonic()
    sink: Sink | None = None
    sending: OpenedInput | None = None  # set once requests may go out: a signal recounts it
    answered: Container[str] = frozenset()  # the keys this run's batches answered
    batch = config.run.mode == "batch" and not offline
    try:
        if config.run.engine == "ray" and not offline:
            from .raycluster import import_ray  # a missing install is said before anything else

            import_ray()
        if config.input.repo is not None:
            from .repos import fetch_input  # oxen:// inputs only

            config, summary.input_commit = await asyncio.to_thread(fetch_input, config)
        opened = open_input(config, limit)
        check_output(output, config.input.path)
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
            offline = not outcome.fallback
        elif not offline:
            outcome = await _settle_batches(config, summary, progress, transport)
        if detach:  # the rows as the store has them now, counted; no output written
            frames = opened.source.chunks(config.run.chunk_rows)
            await execute(config, opened.renderer, frames, _discard, summary=summary, offline=True)
            summary.output = ""
            _count_batches(summary, outcome, detached=True)
            return summary
        sink = Sink(output)
        answered = outcome.answered_keys if outcome is not None else frozenset()
        sending = None if offline else opened
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
            batch_answered=answered,
        )
        if offline and not batch and summary.pending:  # reparse: never a less answered output
            summary.error = not_reparsed(config, summary, opened.renderer.uses_labels)
            summary.exit = EXIT_FAILED_ROWS
            return summary  # `finally` drops the new file: the output stays as it was
        sink.commit()
        sink = None
        summary.written.append(str(output))
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
        if report is not None:
            summary.seconds = time.monotonic() - started
            report(summary)
    except PipelineError as exc:
        summary.fail(exc)
    except asyncio.CancelledError as exc:
        stop = stop_for(exc)
        if stop is None:  # cancelled by the caller, not by a signal
            summary.error, summary.exit = "interrupted", EXIT_INTERRUPTED
            raise
        _stopped(summary, stop)
        if sending is not None and sink is not None:  # the output not written yet
            await _recount(config, sending, summary, answered)
    except KeyboardInterrupt:
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
        record(summary, config, "reparse" if offline and not batch else "run", output)
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


async def _settle_batches(
    config: Config,
    summary: Summary,
    progress: Progress | None,
    transport: httpx.AsyncBaseTransport | None,
) -> BatchOutcome | None:
    """An online run over a store with open batches: collect what they finished first (the
    engine then sends none of the keys still in one). None: the store has no open batch."""
    if not config.store_path.exists():
        return None
    from .batchapi import BatchAPI  # open batches only
    from .batches import Batches

    with Lock(config.store_path):
        store = Store(config.store_path)
        try:
            if not store.batches():
                return None
            key = api_key(config)
            found_price = await asyncio.to_thread(model_price, config, key)
            shown = Progress(enabled=progress.enabled, tty=progress.tty) if progress else None
            async with BatchAPI(config.model.base_url, key, transport=transport) as api:
                batches = Batches(config, store, api, price=found_price, progress=shown)
                try:
                    await batches.settle()
                except RequestError as exc:
                    log.warning(
                        "cannot poll the open batches (%s): the rows waiting on them stay "
                        "pending and are not sent online",
                        exc,
                    )
                finally:
                    summary.batches = batches.outcome.report()
                return batches.outcome
        finally:
            store.close()


def _discard(frame: pl.DataFrame) -> None:
    """A detached run writes no output: its rows are only counted."""


def _stopped(summary: Summary, stop: Stop) -> None:
    """A signal ended the run: its exit code, and why in `stopped`; the task goes on."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()  # handled: what follows may await, time out, and be cancelled anew
    summary.exit = stop.exit_code
    summary.stopped = f"{stop.reason}; {summary.stopped}" if summary.stopped else stop.reason


RECOUNTED = (
    *("rows", "answered", "failed", "row_errors", "invalid", "skipped", "pending"),
    *("batch_collected", "batch_pending"),
)


async def _recount(
    config: Config, opened: OpenedInput, summary: Summary, answered: Container[str]
) -> None:
    """After a signal: every row as the store has it now, counted; nothing is sent, and
    no output written. A chunk's rows are counted only once it is finished, so without
    this an interrupted run would count none of the rows it had answered."""
    counted = Summary()
    frames = opened.source.chunks(config.run.chunk_rows)
    try:
        await execute(
            config,
            opened.renderer,
            frames,
            _discard,
            summary=counted,
            offline=True,
            batch_answered=answered,
        )
    except PipelineError as exc:
        log.warning("cannot count the rows from the store %s: %s", config.store_path, exc)
        return
    for name in RECOUNTED:
        setattr(summary, name, getattr(counted, name))
    summary.from_store = max(0, counted.from_store - summary.received)
    summary.evaluation, summary.evaluation_table = counted.evaluation, counted.evaluation_table


def _held_back(outcome: BatchOutcome) -> str:
    """Why the run stops early when the budget kept requests from being submitted."""
    return (
        f"run.max_cost_usd: {outcome.held_back} requests were not submitted, their worst "
        "case would pass the budget; they are pending"
    )


def _count_batches(
    summary: Summary, outcome: BatchOutcome | None, *, detached: bool = False
) -> None:
    """Add the batches' tokens and cost to what the engine counted (which counted the rows
    they answered as `batch_collected`), and say why rows are left pending."""
    if outcome is None:
        return
    summary.prompt_tokens += outcome.prompt_tokens
    summary.completion_tokens += outcome.completion_tokens
    if outcome.cost_usd:
        summary.cost_usd = (summary.cost_usd or 0.0) + outcome.cost_usd
    if outcome.held_back and not summary.stopped:  # the engine's counting cleared it
        summary.stopped = _held_back(outcome)
    if detached:  # the rows in the batches just submitted are pending, as they should be
        return
    if summary.batch_pending:
        waiting = _waiting(summary, outcome)
        summary.stopped = f"{summary.stopped}; {waiting}" if summary.stopped else waiting
    elif summary.pending and summary.mode == "batch" and not outcome.fallback:
        summary.stopped = summary.stopped or (
            f"{summary.pending} rows have no answer from the batches (expired, cancelled or "
            "failed); the next run submits them again"
        )


def _waiting(summary: Summary, outcome: BatchOutcome) -> str:
    """Why an online run left rows pending: their requests are in open batches."""
    ids = [str(r.batch_id) for r in outcome.batches.values() if r.state != "collected"]
    return (
        f"{summary.batch_pending} rows wait on open batches ({', '.join(ids)}) and were not "
        "sent online, not to pay twice; a run in batch mode (--set run.mode=batch) waits for "
        "them, or --set run.batch.deadline=DURATION cancels those submitted longer ago, "
        "keeps what they completed and sends the rest online"
    )


def not_reparsed(config: Config, summary: Summary, uses_labels: bool) -> str:
    """Why reparse left the output as it was: rows whose request the store has no answer for."""
    why = (
        "the prompt uses {{ labels }}, so changing output.labels changes every request, as "
        "changing the prompt, model.name or model.params does"
        if uses_labels
        else "changing the prompt, model.name or model.params changes the requests"
    )
    return (
        f"{summary.pending} of {summary.rows} rows have no answer in the store "
        f"{config.store_path} for the requests this config makes, so {summary.output} was "
        f"left as it was; reparse reuses answers only for unchanged requests, and {why}; "
        "`pipeline run` would send them"
    )


def limit_path(output: Path, limit: int | None) -> Path:
    """Where a run writes: with `--limit N`, beside the output, which stays whole."""
    if limit is None:
        return output
    return output.with_name(f"{output.stem}.first-{limit}{output.suffix}")


def record(summary: Summary, config: Config, command: str, output: Path | None = None) -> None:
    """Write the summary beside the output (`output`: where a run that writes none, detached,
    would have written it) and a line in the run log, as far as possible."""
    beside = Path(summary.output) if summary.output else output
    if summary.exit != EXIT_LOCKED and beside is not None:  # locked: the other run's output
        with contextlib.suppress(OSError):
            summary.written.append(str(write_summary(summary, beside)))
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
    batch_answered: Container[str] = frozenset(),
) -> None:
    """The engine: frames in, answered frames to `write`, in order, under the store's lock.

    `summary` counts what happened, also when an error ends the run part-way.
    `prune_memo`: `frames` are the whole input, so memoised chunks not seen are stale.
    `latencies`, when given, gets the seconds each answered request took.
    The keys in open batches are never sent: their rows stay pending (`batch_pending`);
    `batch_answered`: keys this run's batches answered, counted as `batch_collected`.
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
                held=store.open_batch_keys(),
                batch_answered=batch_answered,
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
