"""Runner: the only module that knows every stage.

    config -> source -> render -> store lookup -> limiter/client/retries -> store -> parse -> sink

`run` checks what it can before spending, fetches the input, submits or settles batches,
then has `execute` (the engine loop) answer the chunks in input order into the output,
which it commits or uploads when the config says so. `reparse` does the same from the
store alone and sends nothing. How whatever ends a run becomes its summary, exit code and
run-log line is `ending`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from .checks import api_key, check_new_columns, check_output
from .config import Config
from .ending import count_batches, discard, held_back, not_reparsed, record, recount, signalled
from .errors import ConfigError, PipelineError, RequestError
from .execute import Priced, execute, model_price
from .lock import Lock
from .progress import Progress
from .render import Renderer
from .signals import stop_for
from .sink import Sink
from .source import Source
from .store import Store
from .summary import EXIT_FAILED_ROWS, EXIT_INTERNAL, EXIT_INTERRUPTED, Summary

if TYPE_CHECKING:
    from .batchcollect import BatchOutcome

log = logging.getLogger(__name__)


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
    deadline left over; `limit` holds for the batches too (only the first rows' requests
    are submitted), and `detach` with a `report` is refused, as there is no output to
    report on. An online run over a store with open batches first collects what
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
    if not offline:  # the engine the config names, also when the run stops before it starts
        summary.engine = config.run.engine
    started = time.monotonic()
    sink: Sink | None = None
    sending: OpenedInput | None = None  # until the output is written: a signal recounts it
    phase: list[BatchOutcome] = []  # the batch phase's outcome, as far as it got
    batch = config.run.mode == "batch" and not offline
    try:
        if detach and report is not None:
            raise ConfigError(
                "--report needs the output, and --detach writes none: submit without "
                "--report, and give it to the run that collects the batches and writes the "
                "output"
            )
        if config.run.engine == "ray" and not offline:
            from .raycluster import import_ray  # a missing install is said before anything else

            import_ray()
        if config.input.repo is not None:
            from .repos import fetch_input  # oxen:// inputs only

            config, summary.input_commit = await asyncio.to_thread(fetch_input, config)
        opened = open_input(config, limit)
        sending = None if offline else opened
        check_output(output, config.input.path)
        if config.output.url is not None and limit is None:
            from .s3output import check_bucket  # s3:// outputs only

            await asyncio.to_thread(check_bucket, config)
        if config.output.repo is not None and limit is None:
            from .repos import check_output_repo  # oxen:// outputs only

            await asyncio.to_thread(check_output_repo, config)
        stamp = None  # output.commit: the local input's size and time before the run
        if config.output.commit and limit is None:
            from .repos import check_local  # a local Oxen repository: the oxen extra

            stamp = await asyncio.to_thread(check_local, config, output)
        total = opened.source.count()
        if total == 0:
            log.warning("the input %s has no rows: the output will have none", config.input.path)
        outcome, priced = None, None
        if not offline:  # the model is checked once a run, whichever phases send
            priced = Priced(await asyncio.to_thread(model_price, config, api_key(config)))
            if batch:
                summary.mode = "batch"
                outcome = await _batch_phase(
                    config, summary, progress, transport, detach, priced, limit, phase
                )
                offline = not outcome.fallback
            else:
                outcome = await _settle_batches(config, summary, progress, transport, priced, phase)
        if detach:  # the rows as the store has them now, counted; no output written
            frames = opened.source.chunks(config.run.chunk_rows)
            await execute(config, opened.renderer, frames, discard, summary=summary, offline=True)
            summary.output = ""
            count_batches(summary, outcome, detached=True)
            return summary
        sink = Sink(output)
        answered: Container[str] = outcome.answered_keys if outcome is not None else ()
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
            priced=priced,
        )
        if offline and not batch and summary.pending:  # reparse: never a less answered output
            summary.error = not_reparsed(config, summary, opened.renderer.uses_labels)
            summary.exit = EXIT_FAILED_ROWS
            return summary  # `finally` drops the new file: the output stays as it was
        sink.commit()
        sink, sending = None, None
        summary.written.append(str(output))
        count_batches(summary, outcome)
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
            from .s3output import upload_output  # s3:// outputs only

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
        signalled(summary, stop)
        if sending is not None:  # the output not written yet
            keys: Container[str] = ()
            if phase:  # what the batches collected and spent so far
                count_batches(summary, phase[0], detached=True)
                keys = phase[0].answered_keys
            await recount(config, sending, summary, keys)
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
    priced: Priced,
    limit: int | None,
    phase: list[BatchOutcome],
) -> BatchOutcome:
    """Submit (the first `limit` rows' requests), wait for and collect the batches, under
    the store's lock; `phase` gets the outcome as it grows, for a signal's summary."""
    from .batchapi import BatchAPI  # batch mode only
    from .batches import Batches

    key = api_key(config)
    shown = Progress(enabled=progress.enabled, tty=progress.tty) if progress else None
    with Lock(config.store_path):
        store = Store(config.store_path)
        try:
            async with BatchAPI(config.model.base_url, key, transport=transport) as api:
                batches = Batches(
                    config, store, api, price=priced.price, limit=limit, progress=shown
                )
                phase.append(batches.outcome)
                try:
                    outcome = await batches.run(detach=detach)
                finally:
                    summary.batches = batches.outcome.report()
                    summary.batch_submitted = batches.outcome.submitted
        finally:
            store.close()
    if outcome.held_back:
        summary.stopped = held_back(outcome)
    return outcome


async def _settle_batches(
    config: Config,
    summary: Summary,
    progress: Progress | None,
    transport: httpx.AsyncBaseTransport | None,
    priced: Priced,
    phase: list[BatchOutcome],
) -> BatchOutcome | None:
    """An online run over a store with open batches: collect what they finished first (the
    engine then sends none of the keys still in one). None: the store has no open batch.
    `phase` gets the outcome as it grows, for a signal's summary."""
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
            shown = Progress(enabled=progress.enabled, tty=progress.tty) if progress else None
            async with BatchAPI(config.model.base_url, key, transport=transport) as api:
                batches = Batches(config, store, api, price=priced.price, progress=shown)
                phase.append(batches.outcome)
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


def limit_path(output: Path, limit: int | None) -> Path:
    """Where a run writes: with `--limit N`, beside the output, which stays whole."""
    if limit is None:
        return output
    return output.with_name(f"{output.stem}.first-{limit}{output.suffix}")
