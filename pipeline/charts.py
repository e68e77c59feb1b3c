"""Charts of the report pages: a confusion matrix, cost and accuracy, or counts -> inline SVG.

The heat map of a confusion matrix, the scatter of the variants' accuracy against projected
cost (round ticks, a log scale when the costs span ten times or more), a run's bar of row
statuses and its bars of answers per label. Each returns an `<svg>` element as text, with
every label from the data escaped and long ones cut, their whole text in a tooltip; report.py and
comparereport.py place them on their pages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .htmltext import LABEL_CHARS, _e, _int, _number, _short, _show, _usd

INK, MUTED = "#1f2933", "#5f6b7a"


# --- parts of a chart ----------------------------------------------------------------------


def _mix(low: str, high: str, t: float) -> str:
    """The colour a share `t` (0-1) of the way from `low` to `high`."""
    t = min(max(t, 0.0), 1.0)
    a, b = (tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in (low, high))
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b, strict=True))


def _svg(width: float, height: float, parts: Iterable[str], font: float = 12) -> str:
    return (
        f'<svg width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'role="img" font-size="{font}">{"".join(parts)}</svg>'
    )


def _text(x: float, y: float, text: str, end: bool = False, fill: str = INK, **more: Any) -> str:
    """An SVG label, escaped and cut to LABEL_CHARS with the whole of it as its tooltip;
    `more` are attributes (`text_anchor` is text-anchor)."""
    attrs = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in more.items())
    anchor = ' text-anchor="end"' if end else ""
    tip = f"<title>{_e(text)}</title>" if len(text) > LABEL_CHARS else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}"{anchor} fill="{fill}"{attrs}>{tip}{_e(_short(text))}</text>'
    )


def _rect(x: float, y: float, w: float, h: float, fill: str, tip: str = "", rx: int = 0) -> str:
    """An SVG box; `tip` (HTML, escaped already) is its tooltip."""
    title = f"<title>{tip}</title>" if tip else ""
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{rx}" '
        f'fill="{fill}">{title}</rect>'
    )


def _caption(x: float, y: float, text: str, rotate: bool = False) -> str:
    """An axis title (a fixed text of this module, never cut)."""
    turn = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if rotate else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="middle" fill="{MUTED}"{turn}>{text}</text>'


# --- the comparison ------------------------------------------------------------------------


def _heatmap(confusion: Mapping[str, Any]) -> str:
    """A confusion matrix as an SVG grid: a count in every cell, shaded by its row share."""
    gold = [_show(g) for g in confusion.get("gold") or []]
    answered = [_show(p) for p in confusion.get("predicted") or [*gold, "(no answer)"]]
    matrix = confusion.get("matrix") or []
    size = max(24, min(30, 480 // max(len(answered), 1)))
    font = 12 if size >= 28 else 10
    char = 0.52 * (font + 1)  # the mean width of a label's character, near enough
    left = 10 + char * max(len(_short(t)) for t in gold)
    slants = [char * len(_short(t)) for t in answered]  # the answers' labels, at 42 degrees
    top = 16 + 0.67 * max(slants)
    ends = [size * (j + 0.4 - len(answered)) + 0.75 * w for j, w in enumerate(slants)]
    width = left + size * len(answered) + max(0.0, *ends) + 4
    height = top + size * len(gold) + 4
    out = []
    for j, name in enumerate(answered):
        x = left + size * (j + 0.4)
        out.append(_text(x, top - 6, name, fill=MUTED, transform=f"rotate(-42 {x:.1f} {top - 6})"))
    for i, name in enumerate(gold):
        row = matrix[i] if i < len(matrix) else []
        counts = [
            int(row[j]) if j < len(row) and _number(row[j]) else 0 for j in range(len(answered))
        ]
        total, y = sum(counts) or 1, top + size * i
        out.append(_text(left - 6, y + size / 2 + 3, name, end=True))
        for j, count in enumerate(counts):
            share, x = count / total, left + size * j
            hue = "#1f5fa8" if i == j else "#c0392b"
            fill = _mix("#eef3f9", hue, 0.1 + 0.9 * share) if count else "#f6f7f9"
            ink = "#fff" if share > 0.5 else (INK if count else "#b3bac4")
            fs = min(font, 1.8 * size / max(len(str(count)), 2))
            tip = f"{_e(name)} \u2192 {_e(answered[j])}: {count}"
            out.append(_rect(x, y, size - 2, size - 2, fill, tip, rx=3))
            mid = x + size / 2 - 1
            out.append(
                _text(
                    mid,
                    y + size / 2 + 3,
                    str(count),
                    fill=ink,
                    text_anchor="middle",
                    font_size=f"{fs:.0f}",
                )
            )
    return _svg(width, height, out, font + 1)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values from at most `low` to at least `high`: steps of 1, 2 or 5 times 10^k."""
    raw = ((high - low) or abs(high) or 1.0) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    first = math.floor(low / step + 1e-9) * step
    return [first + k * step for k in range(math.ceil((high - first) / step - 1e-9) + 1)]


def _cost_axis(costs: list[float]) -> tuple[list[float], Callable[[float], float]]:
    """Ticks and a 0-1 position for the costs: a log scale when they span ten times or more."""
    low, high = min(costs), max(costs)
    if low > 0 and high / low >= 10:
        first, last = math.floor(math.log10(low) + 1e-9), math.ceil(math.log10(high) - 1e-9)
        steps = (1,) if last - first > 3 else (1, 2, 5)
        ticks = [m * 10.0**k for k in range(first, last + 1) for m in steps]
        ticks = ticks[: next(i for i, t in enumerate(ticks) if t >= high * (1 - 1e-9)) + 1]
        low, span = math.log10(ticks[0]), math.log10(ticks[-1] / ticks[0])
        return ticks, lambda c: (math.log10(c) - low) / span
    ticks = _ticks(0.0, high or 1.0)
    return ticks, lambda c: c / ticks[-1]


def _scatter_svg(points: list[tuple[str, float, float, str]]) -> str:
    width, height, left, right, top, bottom = 560, 300, 54, 30, 12, 42
    plot_w, plot_h = width - left - right, height - top - bottom
    xs, at = _cost_axis([p[1] for p in points])
    ys = [y for y in _ticks(max(0.0, math.floor(min(p[2] for p in points) * 10 - 0.5) / 10), 1.0)]
    out = []
    for tick in xs:
        x = left + plot_w * at(tick)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#e6e9ef"/>'
        )
        out.append(_text(x, top + plot_h + 16, f"${tick:,g}", fill=MUTED, text_anchor="middle"))

    def py(value: float) -> float:
        return top + plot_h * (1 - (value - ys[0]) / ((ys[-1] - ys[0]) or 1))

    for tick in ys:
        y = py(tick)
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e9ef"/>'
        )
        out.append(_text(left - 8, py(tick) + 4, f"{tick:.0%}", end=True, fill=MUTED))
    scale = " (log scale)" if xs[0] > 0 else ""  # a linear axis starts at $0
    out.append(_caption(left + plot_w / 2, height - 6, f"projected cost of the whole table{scale}"))
    out.append(_caption(14, top + plot_h / 2, "accuracy", rotate=True))
    boxes: list[tuple[float, float, float, float]] = []
    for name, cost, accuracy, fill in sorted(points, key=lambda p: (-p[2], p[1])):
        cx, cy, w = left + plot_w * at(cost), py(accuracy), 7.0 * len(_short(name))
        tries = [
            (cx + 10 if side > 0 else cx - 10 - w, cy + dy)
            for dy in (0, 14, -14, 28, -28)
            for side in (1, -1)
        ]
        fits = [(x, y) for x, y in tries if left <= x and x + w <= width]
        free = [
            (x, y)
            for x, y in fits
            if not any(x < b[2] and b[0] < x + w and abs(y - b[1]) < 13 for b in boxes)
        ]
        x, y = (free or fits or tries)[0]
        boxes.append((x, y, x + w, y))
        out.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" fill="{fill}" stroke="#fff" '
            f'stroke-width="1.5"><title>{_e(name)}: {accuracy:.1%}, {_usd(cost)}</title></circle>'
        )
        out.append(_text(x, y + 4, name))
    return _svg(width, height, out)


# --- a run ---------------------------------------------------------------------------------


_STATUSES = (  # summary key, colour
    ("answered", "#59a14f"),
    ("invalid", "#edc948"),
    ("failed", "#e15759"),
    ("skipped", "#bab0ac"),
    ("pending", "#76b7b2"),
)


def _status_bar(summary: Mapping[str, Any]) -> str:
    counts = [(name, _count(summary.get(name)), fill) for name, fill in _STATUSES]
    total, width, x = sum(c for _, c, _ in counts), 1100.0, 0.0  # the width of a section
    out = [] if total else [_rect(0, 0, width, 30, "#eef1f5")]
    for name, count, fill in counts:
        w = width * count / (total or 1)
        if w:
            out.append(_rect(x, 0, w, 30, fill, f"{name}: {count:,}"))
        if w > 60:
            out.append(
                _text(x + w / 2, 20, f"{count / total:.0%}", fill="#fff", text_anchor="middle")
            )
        x += w
    legend = "".join(
        f'<span style="margin-right:16px"><span class="dot" style="background:{fill}"></span>'
        f"{name} <b>{count:,}</b></span>"
        for name, count, fill in counts
    )
    return (
        _svg(width, 30, out, 13)
        + f'<p class="note">{legend} of <b>{_int(summary.get("rows"))}</b> rows</p>'
    )


def _count(value: Any) -> int:
    return int(value) if _number(value) else 0


def _counted(counts: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The counts as (name, count), largest first (ties in the order given)."""
    pairs = [(_show(k), int(v)) for k, v in counts.items() if _number(v)]
    return sorted(pairs, key=lambda kv: -kv[1])


def _bars(labels: Mapping[str, Any]) -> str:
    """Horizontal bars, largest first: a label, its bar, its count and share."""
    counts = _counted(labels)
    total, most = sum(c for _, c in counts) or 1, max((c for _, c in counts), default=0) or 1
    bar, left, step = 520, 170, 22
    out = []
    for i, (name, count) in enumerate(counts):
        y, w = 2 + step * i, bar * count / most
        out.append(_text(left - 8, y + 14, name, end=True))
        out.append(_rect(left, y + 3, max(w, 1), step - 7, "#4e79a7", rx=2))
        out.append(_text(left + w + 6, y + 14, f"{count:,} · {count / total:.1%}", fill=MUTED))
    return _svg(left + bar + 120, step * len(counts) + 4, out, 12.5)
