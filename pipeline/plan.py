"""Look before sending: render requests and check them against the store, send nothing.

Backs `pipeline preview` (the first requests, row, token and cost estimates) and
`pipeline status` (done / invalid / failed / pending / skipped rows by what the store
holds, and the last run in the run log). A request in an open batch is pending and not to
send: a run waits for the batch, it does not pay for the request again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from .config import Config
from .job import render_rows
from .memo import Memo
from .parse import Parser
from .reask import Reasker, is_valid
from .records import FAILED, OK, Result
from .render import completion_reserve
from .runner import open_input
from .store import Store
from .summary import run_log_path


@dataclass
class Plan:
    """What a run of the config would do now."""

    rows: int = 0
    skipped: int = 0
    row_errors: int = 0  # rows the template (or an image) fails on
    first_error: str | None = None  # the first of them: "row N: error"
    unique_requests: int = 0
    done: int = 0
    invalid: int = 0  # answered, but not parsed by the output settings (`counts_only` only)
    failed: int = 0
    pending: int = 0
    batch_pending: int = 0  # of `pending`: rows whose request waits in an open batch
    estimated_tokens: int = 0
    to_send: int = 0
    to_send_prompt_tokens: int = 0
    to_send_completion_tokens: int = 0
    first: list[dict[str, Any]] = field(default_factory=list)


def make_plan(
    config: Config, *, limit: int | None = None, show: int = 3, counts_only: bool = False
) -> Plan:
    """Render every row and count what is stored, failed and still to send.

    Each distinct request is kept as 17 bytes (a 64-bit prefix of its key, its token
    estimate, whether it is answered), not as its key: 10 M of them take about 170 MB.
    `counts_only` (for `status`): rows by state only, so a chunk the memo holds is counted
    without rendering it, and no request is kept; answers that do not parse (after their
    stored re-asks) count as invalid rather than done.
    """
    opened = open_input(config, limit)
    plan = Plan()
    store = Store(config.store_path) if config.store_path.exists() else None
    memo = (
        Memo(store, config, opened.renderer.columns) if store is not None and counts_only else None
    )
    invalid = _invalid_keys(config, store) if store is not None and counts_only else None
    held = store.open_batch_keys() if store is not None else set()
    distinct: list[pl.DataFrame] = []  # per chunk, its distinct requests
    try:
        for frame in opened.source.chunks(config.run.chunk_rows):
            if memo is not None and _count_memoised(memo, frame, plan):
                continue
            requests, errors = render_rows(opened.renderer, frame)
            if errors and plan.first_error is None:
                index = min(errors)
                plan.first_error = f"row {plan.rows + index + 1}: {errors[index]}"
            plan.rows += len(requests)
            plan.row_errors += len(errors)
            plan.skipped += requests.count(None) - len(errors)
            keys = {r.key for r in requests if r is not None}
            stored = store.lookup(keys, with_raw=False) if store is not None else {}
            unparsed = invalid(stored) if invalid is not None else set()
            firsts: dict[str, tuple[int, bool]] = {}
            for request in requests:
                if request is None:
                    continue
                if len(plan.first) < show:
                    plan.first.append({"key": request.key, "body": request.body})
                plan.estimated_tokens += request.est_tokens
                status = stored[request.key].status if request.key in stored else None
                if status == OK and request.key in unparsed:
                    plan.invalid += 1
                elif status == OK:
                    plan.done += 1
                elif request.key in held:  # sent once already: a run waits for the batch
                    plan.pending += 1
                    plan.batch_pending += 1
                elif status == FAILED:
                    plan.failed += 1
                else:
                    plan.pending += 1
                if not counts_only and request.key not in firsts:
                    firsts[request.key] = (request.est_tokens, status == OK or request.key in held)
            if firsts:
                distinct.append(_requests_frame(firsts))
    finally:
        if store is not None:
            store.close()
    if distinct:
        _count_to_send(pl.concat(distinct), completion_reserve(config.model.params), plan)
    return plan


def _requests_frame(firsts: dict[str, tuple[int, bool]]) -> pl.DataFrame:
    """Requests as (64-bit key prefix, token estimate, answered or in an open batch): 17
    bytes each."""
    return pl.DataFrame(
        {
            "key": [int(key.partition(":")[2][:16], 16) for key in firsts],  # r1:<sha256>
            "tokens": [tokens for tokens, _ in firsts.values()],
            "answered": [answered for _, answered in firsts.values()],
        },
        schema={"key": pl.UInt64, "tokens": pl.Int64, "answered": pl.Boolean},
    )


def _count_to_send(requests: pl.DataFrame, reserve: int, plan: Plan) -> None:
    """Count each distinct request once, and what those neither answered nor in an open
    batch would cost."""
    first = pl.col("key").ne_missing(pl.col("key").shift(1))  # in key order: a new key
    todo = first & ~pl.col("answered")
    counts = (
        requests.lazy()
        .sort("key")  # a sort and a pass: less memory than a hash table of every key
        .select(
            unique=first.sum(),
            to_send=todo.sum(),
            tokens=pl.col("tokens").filter(todo).sum(),
        )
        .collect()
        .row(0, named=True)
    )
    plan.unique_requests = int(counts["unique"])
    plan.to_send = int(counts["to_send"])
    plan.to_send_prompt_tokens = int(counts["tokens"]) - reserve * plan.to_send
    plan.to_send_completion_tokens = reserve * plan.to_send


def _count_memoised(memo: Memo, frame: pl.DataFrame, plan: Plan) -> bool:
    """Count a chunk from the memo, if it holds the chunk: every row done or skipped."""
    digest = memo.digest(frame)
    counts = memo.counts(digest) if digest is not None else None
    if counts is None:
        return False
    ok, skipped = counts
    plan.rows += frame.height
    plan.done += ok
    plan.skipped += skipped
    return True


def _invalid_keys(config: Config, store: Store) -> Callable[[dict[str, Result]], set[str]]:
    """The keys of a chunk's stored answers that do not parse, nor their last stored re-ask."""
    parser = Parser(config.output)
    reasker = Reasker(parser, config.output.retry_invalid, store)

    def invalid(stored: dict[str, Result]) -> set[str]:
        found = set()
        for key, result in stored.items():
            if result.status == OK and not is_valid(parser, reasker.from_store(key, result)[0]):
                found.add(key)
        return found

    return invalid


def last_run(store: Path) -> dict[str, Any] | None:
    """The date, command and exit code of the run log's last line; None: no run logged."""
    try:
        with run_log_path(store).open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - 65_536))  # a line is well under 64 KiB
            tail = log.read()
    except FileNotFoundError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut short by a kill, or the cut start of the tail
            continue
        if isinstance(entry, dict):
            return {name: entry.get(name) for name in ("date", "command", "exit_code")}
    return None
