"""When two answers are the same: values normalised for comparing, and agreement between
two answer columns (the share of equal answers, Cohen's kappa), with the percentile that
`pipeline compare` reports latencies by.

Normalising, as evaluate.py scores: strings compare case-folded with whitespace collapsed,
numbers by value (1 == 1.0, exactly), booleans only to booleans, null to null, objects and
arrays element-wise. Pure functions over plain Python values.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def agreement(a: Sequence[Any], b: Sequence[Any]) -> float | None:
    """The share of rows with equal answers, over the rows where both have an answer.

    Equal as `score` compares JSON values (strings by case and whitespace, 1 == 1.0); None
    when no row has an answer in both.
    """
    pairs = _answered_pairs(a, b)
    if not pairs:
        return None
    return sum(1 for x, y in pairs if x == y) / len(pairs)


def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float | None:
    """Cohen's kappa of two label columns, over the rows where both have an answer.

    (p_o - p_e) / (1 - p_e), computed as (n*agree - S) / (n*n - S) with S the sum over
    categories of the two counts' product, so it is exact and symmetric. None when undefined:
    no row answered by both, or both gave one and the same category on every row (p_e = 1).
    """
    pairs = _answered_pairs(a, b)
    n = len(pairs)
    count_a = Counter(x for x, _ in pairs)
    count_b = Counter(y for _, y in pairs)
    chance = sum(count_a[k] * count_b[k] for k in count_a)
    if n * n == chance:  # also n == 0
        return None
    agree = sum(1 for x, y in pairs if x == y)
    return (n * agree - chance) / (n * n - chance)


def percentile(values: Iterable[float | None], p: float) -> float | None:
    """The p-th percentile (0-100), interpolated linearly between the two nearest ranks.

    As numpy's default: rank p/100 * (n-1) in the sorted values. None and NaN are left out;
    None when no value is left.
    """
    if not 0 <= p <= 100:
        raise ValueError(f"percentile p must be within 0 and 100, not {p}")
    data = sorted(v for v in values if v is not None and not math.isnan(v))
    if not data:
        return None
    rank = (len(data) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def _answered_pairs(a: Sequence[Any], b: Sequence[Any]) -> list[tuple[Any, Any]]:
    if len(a) != len(b):
        raise ValueError(f"the two answer columns differ in length: {len(a)}, {len(b)}")
    return [
        (canon(x), canon(y)) for x, y in zip(a, b, strict=True) if not missing(x) and not missing(y)
    ]


# --- normalising values -------------------------------------------------------------------


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def as_text(value: Any) -> str | None:
    """A label or text cell as a string: numbers and booleans as written in JSON; else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and not missing(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def canon(value: Any) -> Any:
    """A hashable form of a value in which equal-after-normalising values are equal."""
    if missing(value):
        return None
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("num", value)
    if isinstance(value, float):
        return ("num", int(value) if value.is_integer() else value)
    if isinstance(value, str):
        return ("str", " ".join(value.split()).casefold())
    if isinstance(value, Mapping):
        items = sorted(((str(k), canon(v)) for k, v in value.items()), key=lambda kv: kv[0])
        return ("obj", tuple(items))
    if isinstance(value, list | tuple):
        return ("arr", tuple(canon(v) for v in value))
    return ("other", repr(value))


def json_equal(answer: Any, expected: Any) -> bool:
    """Whether a JSON answer value matches the gold value; an object as JSON text is read."""
    try:
        if isinstance(answer, str) and isinstance(expected, Mapping | list):
            answer = json.loads(answer)
        elif isinstance(expected, str) and isinstance(answer, Mapping | list):
            expected = json.loads(expected)
        return bool(canon(answer) == canon(expected))
    except (ValueError, RecursionError):
        return False
