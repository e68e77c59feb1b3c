"""Answer columns: per-row `Result`s -> the parsed answer column(s) and the meta columns.

Rows whose answer does not parse get status `invalid`, a null answer and the reason in
`_error`; the raw answer stays in the store. The parser never raises and gives values of
its columns' types, so building the columns cannot fail on what a model answered.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from .config import Config
from .parse import Parser
from .records import INVALID, OK, Result

META_COLUMNS: dict[str, pl.DataType] = {
    "_status": pl.String(),
    "_error": pl.String(),
    "_prompt_tokens": pl.Int64(),
    "_completion_tokens": pl.Int64(),
    "_attempts": pl.Int64(),
}


def traced(config: Config) -> bool:
    """Whether each output row carries its store key and model: an output committed to a
    repository, with the meta columns."""
    committed = config.output.repo is not None or config.output.commit
    return config.output.include_meta and committed


TRACE_COLUMNS: dict[str, pl.DataType] = {"_key": pl.String(), "_model": pl.String()}


def output_columns(parser: Parser, include_meta: bool, trace: bool = False) -> list[str]:
    """The names a run adds to the input's columns (`trace`: each row's store key and model,
    for an output committed to a repository)."""
    meta = [*META_COLUMNS, *(TRACE_COLUMNS if trace else ())] if include_meta else []
    return [*parser.columns, *meta]


def answer_columns(
    frame: pl.DataFrame,
    results: list[Result],
    parser: Parser,
    *,
    include_meta: bool,
    statuses: list[str] | None = None,
    model: str | None = None,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """`frame` with the answer column(s) (and meta columns) added, and its rows by status;
    `statuses`, when given, gets each row's status; `model`, with the meta columns: each row
    also carries its store key and that model name (`_key`, `_model`)."""
    values: list[list[Any]] = [[] for _ in parser.columns]
    meta: dict[str, list[Any]] = {name: [] for name in META_COLUMNS}
    empty = (None,) * len(parser.columns)
    counts: dict[str, int] = {}
    for result in results:
        status, error, parsed = result.status, result.error, empty
        if status == OK:
            outcome = parser.parse(result.answer or "")
            if outcome.values is None:
                status, error = INVALID, f"invalid answer: {outcome.error}"
            else:
                parsed = outcome.values
        for column, value in zip(values, parsed, strict=True):
            column.append(value)
        meta["_status"].append(status)
        meta["_error"].append(error)
        meta["_prompt_tokens"].append(result.prompt_tokens)
        meta["_completion_tokens"].append(result.completion_tokens)
        meta["_attempts"].append(result.attempts)
        counts[status] = counts.get(status, 0) + 1
    if statuses is not None:
        statuses += meta["_status"]
    columns = [
        pl.Series(name, column, dtype=dtype)
        for (name, dtype), column in zip(parser.columns.items(), values, strict=True)
    ]
    if include_meta:
        columns += [pl.Series(n, meta[n], dtype=dtype) for n, dtype in META_COLUMNS.items()]
        if model is not None:
            keys = [r.key or None for r in results]
            columns.append(pl.Series("_key", keys, dtype=pl.String()))
            columns.append(pl.Series("_model", [model if k else None for k in keys], pl.String()))
    return frame.with_columns(columns), counts
