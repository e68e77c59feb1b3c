"""Text of the report pages: a value from the data as escaped HTML, a number as shown.

Shared by the pages (report.py, comparereport.py) and their SVG charts (charts.py), so that
every value is escaped and every figure formatted by the same few functions.
"""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any, TypeGuard

DASH = "\u2013"  # a value that is not known
LABEL_CHARS = 22  # a label longer than this is cut, the whole of it in a tooltip


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _show(value: Any) -> str:
    """A cell or answer as text: None as a dash, strings as they are, the rest as JSON."""
    if value is None:
        return DASH
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _cut(value: Any, limit: int = LABEL_CHARS) -> str:
    """Escaped text, cut to `limit` characters with the whole of it as a tooltip."""
    text = _show(value)
    if len(text) <= limit:
        return _e(text)
    return f'<span title="{_e(text)}">{_e(_short(text, limit))}</span>'


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _pct(value: Any) -> str:
    return f"{value:.1%}" if _number(value) else DASH


def _usd(value: Any) -> str:
    """Dollars to three significant digits ($0.0555, $0.111, $3.41), cents from $1, whole
    dollars from $100."""
    if not _number(value):
        return DASH
    if value == 0 or abs(value) >= 100:
        return f"${value:,.0f}"
    return f"${value:.{max(2, 2 - math.floor(math.log10(abs(value))))}f}"


def _int(value: Any) -> str:
    return f"{value:,.0f}" if _number(value) else DASH


def _fixed(value: Any, digits: int = 2, unit: str = "") -> str:
    return f"{value:.{digits}f}{unit}" if _number(value) else DASH
