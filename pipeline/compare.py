"""Compare: the same sample of rows through several variants of a config, side by side.

    config + --variant NAME:KEY=VALUE,... -> sample -> the engine per variant -> scores

Running the variants over the sample, and each one's figures (scores, invalid and failed
rates, tokens, cost, latency), is variants.py's. This module sets their answers side by
side into the report `pipeline compare` prints: agreement and Cohen's kappa between each
pair of variants (labels), and the rows where they differ (a row a variant left pending or
failed is counted apart, as unanswered by it); `format_compare` is its terminal table.

Warnings: variants that send identical requests (the store's key is model, messages and
params, so they share their answers and comparing them says nothing), gold labels outside
`output.labels`, and run.mode batch, which compare does not follow: it sends online, at
the online price (said before anything is sent, too).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import polars as pl

from .agreement import agreement, cohen_kappa
from .answers import META_COLUMNS
from .comparereport import unanswered_text
from .config import Config
from .errors import ConfigError
from .parse import Parser
from .progress import Progress
from .records import FAILED, PENDING
from .scoretable import gold_warning
from .variants import Variant, _round, figures, fresh_progress, run_variant, sample, variants

log = logging.getLogger(__name__)

SHOWN_DISAGREEMENTS = 50  # rows where variants differ, kept for the report
SHOWN_COLUMNS = 6  # input columns shown beside them


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
    if online := _sent_online(found):
        log.warning("%s", online)
    runs = [asyncio.run(run_variant(v, rows, fresh_progress(progress))) for v in found]
    report: dict[str, Any] = {
        "config": str(path),
        "sample": {"rows": rows.height, "how": how, "seed": seed if how == "random" else None},
        "table_rows": table_rows,
        "gold": base.output.gold,
        "kind": base.output.parse,
        "variants": [figures(v, ran, table_rows, key) for v, ran in zip(found, runs, strict=True)],
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
    report["warnings"] = ([online] if online else []) + _warnings(found, report)
    return report


def _sent_online(found: list[Variant]) -> str | None:
    """What to say when a variant's run.mode is batch: compare sends online all the same,
    at the online price (a batch may take hours; the sample is a few rows)."""
    batch = [v.name for v in found if v.config.run.mode == "batch"]
    if not batch:
        return None
    who = (
        "run.mode is batch"
        if len(batch) == len(found)
        else f"variant{'s' * (len(batch) > 1)} {_names(batch)} set run.mode: batch"
    )
    return (
        f"{who}, but compare sends every request online, at the online price, whatever "
        "run.mode says (cost_usd is the online cost; projected_batch_cost_usd estimates the "
        "table in batch mode); a `pipeline run` of the chosen variant submits the rest of "
        "the table in batches"
    )


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
