"""Batch mode's settings (`BatchConfig`) and the durations they are written in."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from .strict import _Strict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(value: Any) -> float:
    """Seconds in `6h`, `90m`, `45s`, `1d` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration such as 6h, 90m or 45s")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        found = _DURATION.match(str(value))
        if found is None:
            raise ValueError(f"{value!r} is not a duration such as 6h, 90m or 45s")
        seconds = float(found[1]) * _DURATION_UNITS[found[2] or "s"]
    if seconds <= 0:
        raise ValueError("a duration must be more than 0")
    return seconds


class BatchConfig(_Strict):
    completion_window: str = Field(
        default="24h",
        description="the batch API's completion window, sent as is (OpenAI accepts 24h)",
    )
    deadline: float | None = Field(
        default=6 * 3600.0,
        description="unfinished this long after its submission (6h, 90m, or seconds): cancel "
        "the batch, keep what completed and send the rest online in the same run; null: wait "
        "for the batch to end. The running config's value counts, so a later run (--set) "
        "may shorten or lengthen the wait of a batch already submitted",
    )
    poll_s: float = Field(
        default=30,
        gt=0,
        description="seconds between the first polls of a batch; doubles up to 10 minutes",
    )
    discount: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="batch answers cost this fraction of the model's price",
    )
    max_requests_per_file: int = Field(
        default=50_000,
        ge=1,
        description="requests per uploaded batch file at most; more make more batches",
    )
    max_file_mb: float = Field(
        default=200,
        gt=0,
        description="megabytes per uploaded batch file at most",
    )

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, value: Any) -> float | None:
        return None if value is None else duration_s(value)
