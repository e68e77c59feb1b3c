"""Ending: how whatever ends a run becomes its summary, exit code and run-log line.

The runner wires the stages; what the summary says at the end is decided here. Once the
output is written, the batches' tokens and cost are added and why rows stay pending is said
(`count_batches`); a reparse that would leave rows without an answer keeps the output as
it was and says why (`not_reparsed`); a signal sets its exit code (`signalled`) and every
row is counted again as the store has it, sending nothing (`recount`). Whatever ended the
run, `record` writes the summary beside the output and appends the run's line to the run
log. A run that spent no token cost nothing, priced or not (`free`): `cost_usd` is null
only when tokens were spent at an unknown price.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Container
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from .config import Config
from .errors import PipelineError
from .execute import execute
from .signals import Stop
from .summary import EXIT_LOCKED, Summary, append_run_log, write_summary

if TYPE_CHECKING:
    from .batchcollect import BatchOutcome
    from .runner import OpenedInput

log = logging.getLogger(__name__)


def discard(frame: pl.DataFrame) -> None:
    """A detached run writes no output: its rows are only counted."""


def count_batches(
    summary: Summary, outcome: BatchOutcome | None, *, detached: bool = False
) -> None:
    """Add the batches' tokens and cost to what the engine counted (which counted the rows
    they answered as `batch_collected`), and say why rows are left pending. A run that
    spent no tokens cost nothing, whatever the price: its `cost_usd` is 0, not unknown."""
    if outcome is None:
        free(summary)
        return
    summary.prompt_tokens += outcome.prompt_tokens
    summary.completion_tokens += outcome.completion_tokens
    if outcome.cost_usd:
        summary.cost_usd = (summary.cost_usd or 0.0) + outcome.cost_usd
    free(summary)
    if outcome.held_back and not summary.stopped:  # the engine's counting cleared it
        summary.stopped = held_back(outcome)
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


def free(summary: Summary) -> None:
    """A run that sent no request and spent no token (a rerun from the store, a reparse, a
    detached submit, a batch run with nothing new to collect) cost 0 USD: `cost_usd` is
    None only when tokens were spent at an unknown price."""
    spent = summary.requests_sent or summary.prompt_tokens or summary.completion_tokens
    if summary.cost_usd is None and not spent:
        summary.cost_usd = 0.0


def held_back(outcome: BatchOutcome) -> str:
    """Why the run stops early when the budget kept requests from being submitted."""
    return (
        f"run.max_cost_usd: {outcome.held_back} requests were not submitted, their worst "
        "case would pass the budget; they are pending"
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
    held = min(summary.batch_pending, summary.pending)
    if held:  # their requests are unchanged: they wait in a batch not collected yet
        changed = summary.pending - held
        more = (
            f"; {changed} more have no answer for the requests this config makes ({why})"
            if changed
            else ""
        )
        return (
            f"{summary.pending} of {summary.rows} rows have no answer in the store "
            f"{config.store_path}, so {summary.output} was left as it was: {held} wait in an "
            "open batch, which `pipeline run CONFIG --set run.mode=batch` collects (then reparse "
            f"again){more}"
        )
    return (
        f"{summary.pending} of {summary.rows} rows have no answer in the store "
        f"{config.store_path} for the requests this config makes, so {summary.output} was "
        f"left as it was; reparse reuses answers only for unchanged requests, and {why}; "
        "`pipeline run CONFIG` would send them"
    )


def signalled(summary: Summary, stop: Stop) -> None:
    """A signal ended the run: its exit code, and why in `stopped`; the task goes on."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()  # handled: what follows may await, time out, and be cancelled anew
    summary.exit = stop.exit_code
    summary.stopped = f"{stop.reason}; {summary.stopped}" if summary.stopped else stop.reason


RECOUNT_S = 30.0  # a signalled run's count of its rows from the store takes at most this
RECOUNTED = (
    *("rows", "answered", "failed", "row_errors", "invalid", "skipped", "pending"),
    *("batch_collected", "batch_pending"),
)


async def recount(
    config: Config, opened: OpenedInput, summary: Summary, answered: Container[str]
) -> None:
    """After a signal: every row as the store has it now, counted; nothing is sent, and
    no output written. A chunk's rows are counted only once it is finished, so without
    this an interrupted run would count none of the rows it had answered."""
    counted = Summary()
    frames = opened.source.chunks(config.run.chunk_rows)
    log.info(
        "counting the rows from the store for the summary (at most %.0fs; a second signal "
        "quits at once)",
        RECOUNT_S,
    )
    try:
        counting = execute(
            config,
            opened.renderer,
            frames,
            discard,
            summary=counted,
            offline=True,
            batch_answered=answered,
        )
        await asyncio.wait_for(counting, RECOUNT_S)
    except PipelineError as exc:
        log.warning("cannot count the rows from the store %s: %s", config.store_path, exc)
        return
    except TimeoutError:
        why = (
            f"the rows were not all counted within {RECOUNT_S:.0f}s: `pipeline status` counts them"
        )
        log.warning("%s", why)
        summary.stopped = f"{summary.stopped}; {why}" if summary.stopped else why
        return
    for name in RECOUNTED:
        setattr(summary, name, getattr(counted, name))
    summary.from_store = max(0, counted.from_store - summary.received)
    summary.evaluation, summary.evaluation_table = counted.evaluation, counted.evaluation_table


def record(summary: Summary, config: Config, command: str, output: Path | None = None) -> None:
    """Write the summary beside the output (`output`: where a run that writes none, detached,
    would have written it) and a line in the run log, as far as possible."""
    if not summary.batches:  # else the batches' spend is added by `count_batches`, or unknown
        free(summary)
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


def config_hash(config: Config) -> str:
    """A short fingerprint of the validated config, for the run log."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]
