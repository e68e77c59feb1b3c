"""Look before sending: render requests and check them against the store, send nothing.

Backs `pipeline preview` (the first requests, row and token counts) and `pipeline status`
(done / failed / pending / skipped rows by what the store holds).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .records import FAILED, OK, Request
from .render import Renderer
from .runner import check_output_column, render_rows
from .source import Source
from .store import Store


@dataclass
class Plan:
    """What a run of the config would do now."""

    rows: int = 0
    skipped: int = 0
    render_errors: int = 0
    unique_requests: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0
    estimated_tokens: int = 0
    estimated_tokens_to_send: int = 0
    first: list[dict[str, Any]] = field(default_factory=list)


def _requests(config: Config, limit: int | None) -> Iterator[list[Request | None]]:
    source = Source(config.input.path, limit)
    renderer = Renderer(config.prompt, config.model, source.columns)
    check_output_column(config, source.columns)
    for frame in source.chunks(config.run.chunk_rows):
        requests, _ = render_rows(renderer, frame)
        yield requests


def make_plan(config: Config, *, limit: int | None = None, show: int = 3) -> Plan:
    """Render every row and count what is stored, failed and still to send."""
    plan = Plan()
    store = Store(config.store_path) if config.store_path.exists() else None
    seen: set[str] = set()
    try:
        for requests in _requests(config, limit):
            plan.rows += len(requests)
            fresh = {r.key for r in requests if r is not None and r.key not in seen}
            stored = store.lookup(fresh) if store is not None else {}
            for request in requests:
                if request is None:
                    plan.skipped += 1
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
                if request.key not in seen:
                    seen.add(request.key)
                    if status != OK:
                        plan.estimated_tokens_to_send += request.est_tokens
            plan.unique_requests = len(seen)
    finally:
        if store is not None:
            store.close()
    return plan
