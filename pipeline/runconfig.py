"""Config models, the run section: how the rows are sent (`RunConfig`) and where (`RayConfig`).

Concurrency, pacing, retries, limits, the store and the engine; batch mode's own settings are
in `batchconfig.py`. Each key's `description=` goes into docs/configuration.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from .batchconfig import BatchConfig
from .strict import _Strict, not_blank


class RayConfig(_Strict):
    address: str | None = Field(
        default=None,
        description="the Ray cluster to run on: `auto`, `ray://head:10001` or a head's address; "
        "unset: the RAY_ADDRESS variable, or else a local Ray started for the run and stopped "
        "after it",
    )
    workers: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="worker actors that send the requests; run.concurrency is split among them, "
        "at least one request each, so at most run.concurrency workers start",
    )


class RunConfig(_Strict):
    engine: Literal["local", "ray"] = Field(
        default="local",
        description="local: one process sends every request; ray: worker actors on a Ray "
        "cluster send them under one shared rate budget (the `ray` extra), while this process "
        "reads, stores and writes",
    )
    ray: RayConfig = Field(
        default_factory=RayConfig,
        description="run.engine ray: the cluster and the number of workers",
    )
    mode: Literal["online", "batch"] = Field(
        default="online",
        description="online: one request per row as the limiter allows; batch: the provider's "
        "batch API (POST /files, /batches), half the price, answered within run.batch."
        "completion_window",
    )
    batch: BatchConfig = Field(
        default_factory=BatchConfig,
        description="batch mode's window, deadline, polling, price and file limits",
    )
    concurrency: int = Field(default=32, ge=1, le=4096, description="requests in flight at most")
    requests_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="requests paced evenly under this rate; unset: learnt from the server's "
        "headers and 429s",
    )
    tokens_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="estimated tokens reserved before sending, settled with usage; unset: only a "
        "limit the server's headers name",
    )
    max_retries: int = Field(
        default=5,
        ge=0,
        le=100,
        description="retries per request of a 5xx, timeout, dropped connection or malformed "
        "body; 429s have an allowance of their own (30), each held by the rate limiter until "
        "the server's reset",
    )
    timeout_s: float = Field(default=60, gt=0, description="seconds one request may take")
    max_outage_s: float = Field(
        default=60,
        gt=0,
        description="seconds the endpoint may stay down (no answer to any probe) before the run "
        "stops (exit 3)",
    )
    store: Path | None = Field(
        default=None,
        description="the SQLite checkpoint and cache; unset: the output path with extension .db",
    )
    chunk_rows: int = Field(
        default=20_000,
        ge=1,
        description="rows read, answered and written at a time",
    )
    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        description="stop sending once the spend reaches this many USD (exit 3); unset: no budget",
    )
    fail_threshold: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="fraction of rows that may fail or be invalid with the run still exiting 0",
    )

    @field_validator("store", mode="before")
    @classmethod
    def _store_given(cls, value: Any) -> Any:
        return not_blank(value, optional=True)
