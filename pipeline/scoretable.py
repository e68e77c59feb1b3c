"""The evaluation as a compact table for the terminal (under 100 columns): the headline,
per-label precision/recall/F1 or per-field accuracy, and a small confusion matrix."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .scores import Evaluation
from .summary import counted

_NAME_WIDTH = 24
_CONFUSION_MAX = 8


def format_table(evaluation: Evaluation) -> str:
    """A compact monospace report, under 100 columns: headline, then per label or field."""
    e = evaluation
    lines = [_headline(e)]
    if e.kind == "label":
        if e.macro_f1 is not None:
            present = sum(1 for s in e.labels if s.support)
            lines.append(
                f"macro-F1 {e.macro_f1:.3f} (mean over the {present} labels with gold rows)"
            )
        lines += _label_rows(e)
        lines += _confusion_rows(e)
        if warning := gold_warning(dict(e.gold_not_in_labels), dict(e.gold_not_in_labels_rows)):
            lines += ["", f"warning: {warning}"]
    elif e.kind == "json" and e.fields:
        width = _width(f.field for f in e.fields)
        lines += ["", f"{'field':<{width}}  accuracy  correct   scored"]
        for f in e.fields:
            lines.append(
                f"{_cut(f.field, width):<{width}}  {_num(f.accuracy):>8}  {f.correct:>7}  "
                f"{f.scored:>7}"
            )
    return "\n".join(lines)


def gold_warning(
    unknown: Mapping[str, int], where: Mapping[str, Sequence[int]] | None = None
) -> str | None:
    """The warning for gold labels outside output.labels (label: rows), None when none;
    `where` (label: the first few row numbers) names the rows: 'featur' (2 rows: 7, 9)."""
    if not unknown:
        return None
    shown = ", ".join(_unknown(name, n, (where or {}).get(name)) for name, n in unknown.items())
    return (
        f"gold values not in output.labels: {shown}; no answer can match them, so "
        "those rows count as wrong: usually a typo in the gold column"
    )


def _unknown(name: str, rows: int, numbers: Sequence[int] | None) -> str:
    said = counted(rows, "row")
    if numbers:
        more = ", ..." if rows > len(numbers) else ""
        said += f": {', '.join(map(str, numbers))}{more}"
    return f"'{name}' ({said})"


def _headline(e: Evaluation) -> str:
    what = "exact match" if e.kind == "json" else "accuracy"
    head = f"{what} {_num(e.accuracy)} ({e.correct}/{e.scored} scored"
    wrong = [f"{n} {name}" for n, name in ((e.invalid, "invalid"), (e.failed, "failed")) if n]
    if wrong:
        verb = "counts" if e.invalid + e.failed == 1 else "count"
        head += f"; {', '.join(wrong)} {verb} as wrong"
    head += ")"
    passed = []
    if e.unscored_gold_null:
        passed.append(f"{e.unscored_gold_null} with no gold")
    if e.unscored_gold_bad:
        shown = ", ".join(map(str, e.gold_bad_rows))
        more = ", ..." if e.unscored_gold_bad > len(e.gold_bad_rows) else ""
        passed.append(f"{e.unscored_gold_bad} with unreadable gold (rows {shown}{more})")
    if e.unscored_skipped:
        passed.append(f"{e.unscored_skipped} skipped")
    if e.unscored_pending:
        passed.append(f"{e.unscored_pending} pending")
    if passed:
        head += "\nnot scored: " + ", ".join(passed)
    return head


def _label_rows(e: Evaluation) -> list[str]:
    if not e.labels:
        return []
    width = _width(s.label for s in e.labels)
    lines = ["", f"{'label':<{width}}  precision  recall      F1  support  predicted"]
    for s in e.labels:
        lines.append(
            f"{_cut(s.label, width):<{width}}  {s.precision:>9.3f}  {s.recall:>6.3f}  "
            f"{s.f1:>6.3f}  {s.support:>7}  {s.predicted:>9}"
        )
    return lines


def _confusion_rows(e: Evaluation) -> list[str]:
    if not e.confusion_labels:
        return []
    if len(e.confusion_labels) > _CONFUSION_MAX:
        return [
            "",
            f"confusion matrix: {len(e.confusion_labels)} labels, too many to show here; "
            "it is in the JSON summary",
        ]
    width = min(_width(e.confusion_labels), 16)
    lines = ["", "confusion (rows: gold, columns: answered; (none): invalid or failed)"]
    lines.append(" " * width + "".join(f"{_cut(n, 7):>8}" for n in [*e.confusion_labels, "(none)"]))
    for name, row in zip(e.confusion_labels, e.confusion, strict=True):
        lines.append(f"{_cut(name, width):<{width}}" + "".join(f"{n:>8}" for n in row))
    return lines


def _width(names: Iterable[str]) -> int:
    return min(max([5, *(len(n) for n in names)]), _NAME_WIDTH)


def _cut(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "~"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
