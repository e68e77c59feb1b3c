"""Variants: `--variant NAME:KEY=VALUE,...` specs -> configs, the sample drawn from the
input, and each variant run over it -> its answered frame and its figures.

Each variant is the config with its overrides (the `--set` syntax; `@file` reads a value
from a file) and its meta columns on. Every variant answers the same rows through the same
engine and the same store, so a rerun of the comparison sends nothing and a later
`pipeline run` of the winner pays only for the rows outside the sample. A variant that
fails ends alone and the others still run; a held store lock ends them all. Per variant:
the evaluation against `output.gold` (when set), invalid and failed rates, tokens, the
sample's cost and the whole table's projected cost (online and in batch), latency p50/p95
of the requests sent. compare.py sets the variants' answers side by side.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from .agreement import percentile
from .catalog import price
from .config import Config
from .configfile import load
from .errors import ConfigError, LockError, PipelineError
from .execute import execute, model_price
from .progress import Progress
from .records import FAILED, PENDING, SKIPPED
from .runner import open_input, open_source
from .summary import Summary

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}")
_NEXT_KEY = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+=)")


@dataclass
class Variant:
    name: str
    overrides: list[str]
    config: Config


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """`NAME:KEY=VALUE[,KEY=VALUE...]` -> (NAME, [KEY=VALUE, ...]); a comma splits only
    where a dotted key follows, so a value may hold commas."""
    name, sep, rest = spec.partition(":")
    if not sep or not _NAME.fullmatch(name):
        raise ConfigError(
            f"--variant {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE...], e.g. "
            "mini:model.name=gpt-4o-mini,model.params.temperature=0"
        )
    items = [item.strip() for item in _NEXT_KEY.split(rest)] if rest.strip() else []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--variant {name}: {item!r} is not KEY=VALUE")
    return name, items


def variants(path: str, overrides: list[str], specs: list[str]) -> list[Variant]:
    """The variants of the config at `path`, each with its meta columns on (compare reads
    every row's status and tokens)."""
    found: list[Variant] = []
    for spec in specs:
        name, items = parse_variant(spec)
        if any(v.name == name for v in found):
            raise ConfigError(f"--variant {name} is named twice")
        config = load(path, [*overrides, *items])
        output = config.output.model_copy(update={"include_meta": True})
        found.append(Variant(name, items, config.model_copy(update={"output": output})))
    if not found:
        raise ConfigError("compare needs at least one --variant NAME:KEY=VALUE")
    return found


def sample(
    config: Config, n: int, how: str, seed: int | None
) -> tuple[pl.DataFrame, list[int], int]:
    """The sample rows, their row numbers in the input (from 1), and the input's row count."""
    source = open_source(config)[1]
    total = source.count()
    if how == "first":
        frames, taken = [], 0
        for frame in source.chunks(min(n, config.run.chunk_rows)):
            frames.append(frame.head(n - taken))
            taken += frames[-1].height
            if taken >= n:
                break
        rows = pl.concat(frames) if frames else pl.DataFrame()
        return rows, list(range(1, rows.height + 1)), total
    whole = pl.concat(list(source.chunks(config.run.chunk_rows)))
    numbered = whole.with_row_index("__row").sample(min(n, whole.height), seed=seed)
    numbered = numbered.sort("__row")  # input order: neighbouring rows share a chunk
    numbers = [int(i) + 1 for i in numbered.get_column("__row").to_list()]
    return numbered.drop("__row"), numbers, total


async def run_variant(
    variant: Variant, rows: pl.DataFrame, progress: Progress | None
) -> dict[str, Any]:
    """Run the sample through one variant: its answered frame, summary and latencies, each
    row's store key (None: skipped or not renderable) and status."""
    from .job import render_rows

    renderer = open_input(variant.config).renderer
    requests, errors = render_rows(renderer, rows)
    keys = tuple(None if r is None else r.key for r in requests)
    answered: list[pl.DataFrame] = []
    summary = Summary(output="", fail_threshold=variant.config.run.fail_threshold)
    latencies: list[float] = []
    try:
        await execute(
            variant.config,
            renderer,
            [rows],
            answered.append,
            summary=summary,
            total=rows.height,
            progress=progress,
            latencies=latencies,
        )
    except PipelineError as exc:  # this variant's end; the others still run
        if isinstance(exc, LockError):
            raise
        summary.fail(exc)
        log.error("variant %s: %s", variant.name, exc)
    frame = answered[0] if answered else None
    statuses = (  # stopped before answering: what it would send is pending
        frame.get_column("_status").to_list()
        if frame is not None
        else [PENDING if k else FAILED if i in errors else SKIPPED for i, k in enumerate(keys)]
    )
    return {
        "frame": frame,
        "summary": summary,
        "latencies": latencies,
        "keys": keys,
        "statuses": statuses,
    }


def figures(
    variant: Variant, ran: dict[str, Any], table_rows: int, key: str | None
) -> dict[str, Any]:
    """One variant's figures over the sample: rows, rates, tokens, cost and projected
    cost, latencies, its evaluation and how it ended."""
    config, summary, frame = variant.config, ran["summary"], ran["frame"]
    rows = frame.height if frame is not None else 0
    prompt = int(frame.get_column("_prompt_tokens").sum()) if frame is not None else 0
    completion = int(frame.get_column("_completion_tokens").sum()) if frame is not None else 0
    try:
        found = model_price(config, key)
    except PipelineError:  # no price known, or the model is not served: priced by config only
        found = price(config.model, None)
    cost = None if found is None else found.cost(prompt, completion)
    projected = None if cost is None or not rows else cost * table_rows / rows
    batch = None if projected is None else projected * config.run.batch.discount
    latencies = ran["latencies"]
    return {
        "name": variant.name,
        "overrides": variant.overrides,
        "model": config.model.name,
        "rows": rows,
        "answered": summary.answered,
        "invalid": summary.invalid,
        "failed": summary.failed,
        "invalid_rate": _rate(summary.invalid, rows),
        "failed_rate": _rate(summary.failed, rows),
        "requests_sent": summary.requests_sent,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cost_usd": _round(cost),
        "projected_cost_usd": _round(projected),
        "projected_batch_cost_usd": _round(batch),
        "latency_p50_s": _round(percentile(latencies, 50), 4),
        "latency_p95_s": _round(percentile(latencies, 95), 4),
        "evaluation": summary.evaluation,
        "stopped": summary.stopped or summary.error,
        "exit_code": summary.exit_code,
    }


def fresh_progress(progress: Progress | None) -> Progress | None:
    """A display of its own for each variant's run, shown as `progress` would be."""
    return None if progress is None else Progress(enabled=progress.enabled, tty=progress.tty)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _round(value: float | None, digits: int = 8) -> float | None:
    return None if value is None else round(value, digits)
