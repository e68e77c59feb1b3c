"""Execute: frames in, answered frames out, in input order, under the store's lock.

`execute` is the engine loop that `run`, `reparse`, `map_rows` and `compare` share: it
checks the model (`model_price`), enters the engine, streams the frames through one job,
keeping the next chunk's requests flowing while the previous chunk's last answers arrive,
and hands each answered chunk to `write` in order. What was sent and spent is counted into
the summary, also when an error ends the run part-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import polars as pl

from .catalog import Price, check_model, price
from .checks import api_key
from .config import Config
from .engine import Engine, LocalEngine
from .errors import ConfigError, PipelineError
from .job import Chunk, Job
from .lock import Lock
from .progress import Progress
from .render import Renderer
from .scores import merge
from .scoretable import format_table
from .store import Store
from .summary import Summary

if TYPE_CHECKING:
    from .job import Sending

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Priced:
    """`model_price` asked already (once a run): its answer, None when no price is known."""

    price: Price | None


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
    priced: Priced | None = None,
) -> None:
    """The engine: frames in, answered frames to `write`, in order, under the store's lock.

    `summary` counts what happened, also when an error ends the run part-way.
    `prune_memo`: `frames` are the whole input, so memoised chunks not seen are stale.
    `latencies`, when given, gets the seconds each answered request took.
    The keys in open batches are never sent: their rows stay pending (`batch_pending`);
    `batch_answered`: keys this run's batches answered, counted as `batch_collected`.
    `priced`: the model checked already by the caller (else it is checked here, when sending).
    """
    progress = progress or Progress(enabled=False)
    key = None if offline else api_key(config)
    with Lock(config.store_path):
        store = Store(config.store_path)
        try:
            found_price = price(config.model, None)
            if priced is not None and not offline:
                found_price = priced.price
            elif not offline:
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
