"""Compare: the same sample of rows through several variants of a config, side by side.

    config + --variant NAME:KEY=VALUE,... -> sample -> the engine per variant -> scores

Each variant is the config with its overrides (the `--set` syntax; `@file` reads a value
from a file). Every variant answers the same rows through the same engine and the same
store, so a rerun of the comparison sends nothing and a later `pipeline run` of the winner
pays only for the rows outside the sample. Per variant: the evaluation against
`output.gold` (when set), invalid and failed rates, tokens, the sample's cost and the
whole table's projected cost (online and in batch), latency p50/p95 of the requests sent;
between variants: agreement and Cohen's kappa (labels), and the rows where they differ
(a row a variant left pending or failed is counted apart, as unanswered by it).

Warnings: variants that send identical requests (the store's key is model, messages and
params, so they share their answers and comparing them says nothing), and gold labels
outside `output.labels`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from .agreement import agreement, cohen_kappa, percentile
from .answers import META_COLUMNS
from .catalog import price
from .comparereport import unanswered_text
from .config import Config
from .configfile import load
from .errors import ConfigError, LockError, PipelineError
from .execute import execute, model_price
from .parse import Parser
from .progress import Progress
from .records import FAILED, PENDING, SKIPPED
from .runner import open_input, open_source
from .scoretable import gold_warning
from .summary import Summary

log = logging.getLogger(__name__)

SHOWN_DISAGREEMENTS = 50  # rows where variants differ, kept for the report
SHOWN_COLUMNS = 6  # input columns shown beside them
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


async def _answer(
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


def answers_of(config: Config, frame: pl.DataFrame) -> list[Any]:
    """Each row's parsed answer: a label or text, or for json a dict of its fields."""
    names = list(Parser(config.output).columns)
    if config.output.parse == "json":
        return [
            None if status != "ok" else row
            for row, status in zip(
                frame.select(names).to_dicts(), frame.get_column("_status").to_list(), strict=True
            )
        ]
    return frame.get_column(names[0]).to_list()


def _report(
    variant: Variant, ran: dict[str, Any], table_rows: int, key: str | None
) -> dict[str, Any]:
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


def compare(
    path: str,
    overrides: list[str],
    specs: list[str],
    *,
    n: int,
    how: str = "first",
    seed: int | None = None,
    key: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the sample through every variant; the comparison as `pipeline compare` prints it."""
    if n < 1:
        raise ConfigError(f"compare needs a sample of 1 row or more, not {n} (-n)")
    found = variants(path, overrides, specs)
    base = found[0].config
    rows, numbers, table_rows = sample(base, n, how, seed)
    runs = [asyncio.run(_answer(v, rows, _fresh(progress))) for v in found]
    report: dict[str, Any] = {
        "config": str(path),
        "sample": {"rows": rows.height, "how": how, "seed": seed if how == "random" else None},
        "table_rows": table_rows,
        "gold": base.output.gold,
        "kind": base.output.parse,
        "variants": [_report(v, ran, table_rows, key) for v, ran in zip(found, runs, strict=True)],
    }
    answers = {  # a variant that stopped has no answers: None for each row
        v.name: answers_of(v.config, ran["frame"])
        if ran["frame"] is not None
        else [None] * rows.height
        for v, ran in zip(found, runs, strict=True)
    }
    report["agreement"] = [
        {
            "a": a.name,
            "b": b.name,
            "agreement": _round(agreement(answers[a.name], answers[b.name]), 4),
            "kappa": _round(cohen_kappa(answers[a.name], answers[b.name]), 4)
            if base.output.parse == "label"
            else None,
        }
        for i, a in enumerate(found)
        for b in found[i + 1 :]
    ]
    statuses = {v.name: ran["statuses"] for v, ran in zip(found, runs, strict=True)}
    report["disagreements"] = _disagreements(rows, numbers, base, answers, statuses)
    report["identical_requests"] = _identical(found, [ran["keys"] for ran in runs])
    report["warnings"] = _warnings(found, report)
    return report


def _identical(found: list[Variant], keys: list[tuple[str | None, ...]]) -> list[list[str]]:
    """Groups of variants whose requests for the sample are the same, key for key."""
    groups: dict[tuple[str | None, ...], list[str]] = {}
    for variant, requests in zip(found, keys, strict=True):
        if any(requests):
            groups.setdefault(requests, []).append(variant.name)
    return [names for names in groups.values() if len(names) > 1]


def _warnings(found: list[Variant], report: dict[str, Any]) -> list[str]:
    """What makes the comparison say less than it seems: shared answers, odd gold labels."""
    warnings = []
    outputs = {v.name: v.config.output for v in found}
    shared = "send identical requests: their answers are shared from the store, so"
    for names in report["identical_requests"]:
        alike: list[list[str]] = []  # the same requests, parsed alike
        for name in names:
            group = next((g for g in alike if outputs[g[0]] == outputs[name]), None)
            if group is None:
                alike.append([name])
            else:
                group.append(name)
        warnings += [
            f"variants {_names(group)} {shared} comparing them says nothing; change the model "
            "name or a parameter"
            for group in alike
            if len(group) > 1
        ]
        if len(alike) > 1:
            warnings.append(
                f"variants {_names(names)} {shared} only their output settings (how answers "
                "are parsed and scored) differ"
            )
    scored = [v for v in report["variants"] if v["evaluation"]]
    by_text: dict[str, list[str]] = {}
    for v in scored:
        if text := gold_warning(v["evaluation"].get("gold_not_in_labels") or {}):
            by_text.setdefault(text, []).append(v["name"])
    for text, names in by_text.items():
        which = "" if len(names) == len(scored) else f" (variant{'s' * (len(names) > 1)} "
        warnings.append(text + (f"{which}{_names(names)})" if which else ""))
    return warnings


def _names(names: list[str]) -> str:
    """a, b and c."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _fresh(progress: Progress | None) -> Progress | None:
    """A display of its own for each variant's run, shown as `progress` would be."""
    return None if progress is None else Progress(enabled=progress.enabled, tty=progress.tty)


def _disagreements(
    rows: pl.DataFrame,
    numbers: list[int],
    base: Config,
    answers: dict[str, list[Any]],
    statuses: dict[str, list[str]],
) -> dict[str, Any]:
    """The rows where the variants' answers differ, with their input columns and gold.

    A variant with no answer on a row (pending or failed) is left out of that row's
    comparison and counted in `unanswered` instead: no answer is not a different answer.
    """
    meta = set(META_COLUMNS)
    columns = [c for c in rows.columns if c not in meta and c != base.output.gold][:SHOWN_COLUMNS]
    gold = rows.get_column(base.output.gold).to_list() if base.output.gold else None
    names = list(answers)
    shown: list[dict[str, Any]] = []
    total = 0
    unanswered = dict.fromkeys(names, 0)
    for index in range(rows.height):
        given = [answers[name][index] for name in names]
        answering = [name for name in names if statuses[name][index] not in (PENDING, FAILED)]
        for name in names:
            unanswered[name] += name not in answering
        if len({repr(answers[name][index]) for name in answering}) <= 1:
            continue
        total += 1
        if len(shown) < SHOWN_DISAGREEMENTS:
            shown.append(
                {
                    "row": numbers[index],
                    "input": {c: _cell(rows.get_column(c)[index]) for c in columns},
                    "gold": None if gold is None else _cell(gold[index]),
                    "answers": {
                        name: _cell(value) for name, value in zip(names, given, strict=True)
                    },
                }
            )
    return {"columns": columns, "rows": shown, "total": total, "unanswered": unanswered}


def _cell(value: Any) -> Any:
    """A value for the JSON report: long texts cut, structs as they are."""
    if isinstance(value, str) and len(value) > 500:
        return value[:497] + "..."
    return value


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _round(value: float | None, digits: int = 8) -> float | None:
    return None if value is None else round(value, digits)


def format_compare(report: dict[str, Any]) -> str:
    """The per-variant figures as a compact terminal table."""
    head = ("variant", "accuracy", "invalid", "failed", "tokens", "cost", "projected", "p50 s")
    lines = [f"{head[0]:<16}" + "".join(f"{h:>11}" for h in head[1:])]
    for v in report["variants"]:
        evaluation = v["evaluation"] or {}
        cells = (
            _shown(evaluation.get("accuracy"), "{:.3f}"),
            _shown(v["invalid_rate"], "{:.1%}"),
            _shown(v["failed_rate"], "{:.1%}"),
            f"{v['prompt_tokens'] + v['completion_tokens']:,}",
            _shown(v["cost_usd"], "${:.4f}"),
            _shown(v["projected_cost_usd"], "${:.2f}"),
            _shown(v["latency_p50_s"], "{:.2f}"),
        )
        lines.append(f"{v['name'][:16]:<16}" + "".join(f"{c:>11}" for c in cells))
    for pair in report["agreement"]:
        kappa = "" if pair["kappa"] is None else f", kappa {pair['kappa']:.3f}"
        lines.append(
            f"{pair['a']} vs {pair['b']}: agree {_shown(pair['agreement'], '{:.1%}')}{kappa}"
        )
    total = report["disagreements"]["total"]
    line = f"rows where the variants differ: {total} of {report['sample']['rows']}"
    if unanswered := unanswered_text(report["disagreements"].get("unanswered") or {}):
        line += f"; not counted: {unanswered}"
    lines.append(line)
    lines += [f"warning: {warning}" for warning in report.get("warnings") or []]
    return "\n".join(lines)


def _shown(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)
