"""Look before sending: render requests and check them against the store, send nothing.

Backs `pipeline preview` (the first requests, row, token and cost estimates) and
`pipeline status` (done / failed / pending / skipped rows by what the store holds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from .config import Config
from .job import render_rows
from .memo import Memo
from .records import FAILED, OK
from .render import completion_reserve
from .runner import open_input
from .store import Store


@dataclass
class Plan:
    """What a run of the config would do now."""

    rows: int = 0
    skipped: int = 0
    row_errors: int = 0
    unique_requests: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0
    estimated_tokens: int = 0
    to_send: int = 0
    to_send_prompt_tokens: int = 0
    to_send_completion_tokens: int = 0
    first: list[dict[str, Any]] = field(default_factory=list)


def make_plan(
    config: Config, *, limit: int | None = None, show: int = 3, counts_only: bool = False
) -> Plan:
    """Render every row and count what is stored, failed and still to send.

    `counts_only` (for `status`): rows by state only, so a chunk the memo holds is counted
    without rendering it, and no set of every request key is kept.
    """
    opened = open_input(config, limit)
    plan = Plan()
    store = Store(config.store_path) if config.store_path.exists() else None
    memo = (
        Memo(store, config, opened.renderer.columns) if store is not None and counts_only else None
    )
    reserve = completion_reserve(config.model.params)
    seen: set[str] = set()
    try:
        for frame in opened.source.chunks(config.run.chunk_rows):
            if memo is not None and _count_memoised(memo, frame, plan):
                continue
            requests, errors = render_rows(opened.renderer, frame)
            plan.rows += len(requests)
            plan.row_errors += len(errors)
            plan.skipped += requests.count(None) - len(errors)
            fresh = {r.key for r in requests if r is not None and r.key not in seen}
            stored = store.lookup(fresh, with_raw=False) if store is not None else {}
            for request in requests:
                if request is None:
                    continue
                if len(plan.first) < show:
                    plan.first.append({"key": request.key, "body": request.body})
                plan.estimated_tokens += request.est_tokens
                status = stored[request.key].status if request.key in stored else None
                if status == OK:
                    plan.done += 1
                elif status == FAILED:
                    plan.failed += 1
                else:
                    plan.pending += 1
                if not counts_only and request.key not in seen:
                    seen.add(request.key)
                    if status != OK:
                        plan.to_send += 1
                        plan.to_send_prompt_tokens += request.est_tokens - reserve
                        plan.to_send_completion_tokens += reserve
            plan.unique_requests = len(seen)
    finally:
        if store is not None:
            store.close()
    return plan


def _count_memoised(memo: Memo, frame: pl.DataFrame, plan: Plan) -> bool:
    """Count a chunk from the memo, if it holds the chunk: every row done or skipped."""
    digest = memo.digest(frame)
    counts = memo.store.memo_counts(digest) if digest is not None else None
    if counts is None:
        return False
    ok, skipped = counts
    plan.rows += frame.height
    plan.done += ok
    plan.skipped += skipped
    return True
