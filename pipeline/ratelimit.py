"""Rate-limit headers: what the server says of its budget, in the OpenAI `x-ratelimit-*` form.

`x-ratelimit-limit-requests` / `-tokens` (per minute), `x-ratelimit-remaining-*` and
`x-ratelimit-reset-*` (a duration such as `1s`, `6m0s`, `250ms`, or seconds).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget (requests or tokens) as the server reports it."""

    limit: float | None
    remaining: float | None
    reset_s: float | None


@dataclass(frozen=True, slots=True)
class RateHeaders:
    requests: Budget
    tokens: Budget


def duration(value: str | None) -> float | None:
    """Seconds in `1s`, `6m0s`, `250ms`, `1h2m3.5s` or a plain number; None if unreadable."""
    if value is None:
        return None
    text = value.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        parts = _PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
            return None
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def rate_headers(headers: Mapping[str, str]) -> RateHeaders | None:
    """The server's budgets, or None when it sends no `x-ratelimit-*` header."""
    if (
        "x-ratelimit-limit-requests" not in headers
        and "x-ratelimit-remaining-requests" not in headers
        and "x-ratelimit-limit-tokens" not in headers
    ):
        return None

    def budget(kind: str) -> Budget:
        return Budget(
            _number(headers.get(f"x-ratelimit-limit-{kind}")),
            _number(headers.get(f"x-ratelimit-remaining-{kind}")),
            duration(headers.get(f"x-ratelimit-reset-{kind}")),
        )

    return RateHeaders(budget("requests"), budget("tokens"))
