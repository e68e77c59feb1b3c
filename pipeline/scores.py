"""What an evaluation holds (see `evaluate` for how rows are scored): the counts, accuracy,
per-label precision/recall/F1 with the confusion matrix, per-field scores, the rows whose
gold is unreadable or outside the labels; `merge` adds up the evaluations of a run's chunks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from .parse import norm_label

Kind = Literal["label", "json", "text"]
NO_ANSWER = "(no answer)"  # the confusion matrix's column for invalid and failed rows
BAD_ROWS_SHOWN = 5


@dataclass(frozen=True, slots=True)
class LabelScore:
    """One label's row of the report; precision is 0.0 when the label was never predicted."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int  # scored rows whose gold is this label
    predicted: int  # scored rows answered with this label


@dataclass(frozen=True, slots=True)
class FieldScore:
    """One JSON field: of the scored rows whose gold holds it, how many answers match."""

    field: str
    scored: int
    correct: int
    accuracy: float | None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """How a column of answers scores against its gold column."""

    kind: str
    rows: int
    scored: int
    correct: int  # for json: rows whose every gold field matches
    accuracy: float | None  # correct / scored; None when nothing was scored
    invalid: int  # scored rows whose answer did not parse: wrong
    failed: int  # scored rows that got no answer: wrong
    unscored_gold_null: int = 0
    unscored_gold_bad: int = 0
    gold_bad_rows: tuple[int, ...] = ()  # the first few, counted from 1
    unscored_skipped: int = 0
    unscored_pending: int = 0
    labels: tuple[LabelScore, ...] = ()
    macro_f1: float | None = None  # mean F1 over the labels with support > 0
    confusion_labels: tuple[str, ...] = ()  # rows: gold; columns: these and NO_ANSWER
    confusion: tuple[tuple[int, ...], ...] = ()
    fields: tuple[FieldScore, ...] = ()
    exact_match: float | None = None  # json: the same as accuracy
    gold_not_in_labels: tuple[tuple[str, int], ...] = ()  # label: (gold label, scored rows)
    # ... and the first few of those rows' numbers, counted from 1, in the same order
    gold_not_in_labels_rows: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, ratios rounded to 4 decimals; label and json keys only for their kind."""
        data: dict[str, Any] = {
            "kind": self.kind,
            "rows": self.rows,
            "scored": self.scored,
            "correct": self.correct,
            "accuracy": round4(self.accuracy),
            "invalid": self.invalid,
            "failed": self.failed,
            "unscored": {
                "gold_null": self.unscored_gold_null,
                "gold_bad": self.unscored_gold_bad,
                "gold_bad_rows": list(self.gold_bad_rows),
                "skipped": self.unscored_skipped,
                "pending": self.unscored_pending,
            },
        }
        if self.kind == "label":
            data["macro_f1"] = round4(self.macro_f1)
            data["labels"] = {
                s.label: {
                    "precision": round4(s.precision),
                    "recall": round4(s.recall),
                    "f1": round4(s.f1),
                    "support": s.support,
                    "predicted": s.predicted,
                }
                for s in self.labels
            }
            data["confusion"] = {
                "gold": list(self.confusion_labels),
                "predicted": [*self.confusion_labels, NO_ANSWER],
                "matrix": [list(row) for row in self.confusion],
            }
            data["gold_not_in_labels"] = dict(self.gold_not_in_labels)
            data["gold_not_in_labels_rows"] = {
                name: list(rows) for name, rows in self.gold_not_in_labels_rows
            }
        if self.kind == "json":
            data["exact_match"] = round4(self.exact_match)
            data["fields"] = {
                f.field: {"scored": f.scored, "correct": f.correct, "accuracy": round4(f.accuracy)}
                for f in self.fields
            }
        return data


def with_labels(base: Evaluation, names: list[str], matrix: list[list[int]]) -> Evaluation:
    """`base` with the label scores its confusion matrix gives (gold rows x answered columns,
    the last column NO_ANSWER)."""
    table = []
    for i, label in enumerate(names):
        hits, support = matrix[i][i], sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        table.append(LabelScore(label, precision, recall, f1, support, predicted))
    present = [s.f1 for s in table if s.support]
    correct = sum(matrix[i][i] for i in range(len(names)))
    return replace(
        base,
        correct=correct,
        accuracy=ratio(correct, base.scored),
        labels=tuple(table),
        macro_f1=sum(present) / len(present) if present else None,
        confusion_labels=tuple(names),
        confusion=tuple(tuple(row) for row in matrix),
    )


def merge(parts: Sequence[Evaluation]) -> Evaluation:
    """One evaluation of consecutive chunks' rows, as if scored at once (a label matched by
    its key and shown as first met, row numbers of bad gold counted over the whole)."""
    if not parts:
        raise ValueError("nothing to merge")
    kind = parts[0].kind
    bad_rows: list[int] = []
    offset = 0
    for part in parts:
        bad_rows += [offset + row for row in part.gold_bad_rows]
        offset += part.rows
    base = Evaluation(
        kind=kind,
        rows=offset,
        scored=sum(p.scored for p in parts),
        correct=sum(p.correct for p in parts),
        accuracy=None,
        invalid=sum(p.invalid for p in parts),
        failed=sum(p.failed for p in parts),
        unscored_gold_null=sum(p.unscored_gold_null for p in parts),
        unscored_gold_bad=sum(p.unscored_gold_bad for p in parts),
        gold_bad_rows=tuple(bad_rows[:BAD_ROWS_SHOWN]),
        unscored_skipped=sum(p.unscored_skipped for p in parts),
        unscored_pending=sum(p.unscored_pending for p in parts),
    )
    if kind == "label":
        shown: dict[str, str] = {}  # a label's key -> its name as first met ("Refund")
        for part in parts:
            for name in part.confusion_labels:
                shown.setdefault(norm_label(name), name)
        names = list(shown.values())
        index = {key: i for i, key in enumerate(shown)}
        matrix = [[0] * (len(names) + 1) for _ in names]
        unknown: Counter[str] = Counter()
        where: dict[str, list[int]] = {}
        offset = 0
        for part in parts:
            for name, rows in part.gold_not_in_labels:
                unknown[shown[norm_label(name)]] += rows
            for name, numbers in part.gold_not_in_labels_rows:
                held = where.setdefault(shown[norm_label(name)], [])
                held += [offset + n for n in numbers][: BAD_ROWS_SHOWN - len(held)]
            offset += part.rows
            columns = [index[norm_label(n)] for n in part.confusion_labels] + [len(names)]
            for name, row in zip(part.confusion_labels, part.confusion, strict=True):
                for column, count in zip(columns, row, strict=True):
                    matrix[index[norm_label(name)]][column] += count
        merged = with_labels(base, names, matrix)
        return replace(
            merged,
            gold_not_in_labels=tuple(unknown.items()),
            gold_not_in_labels_rows=tuple((name, tuple(where.get(name, ()))) for name in unknown),
        )
    accuracy = ratio(base.correct, base.scored)
    if kind == "json":
        scored: Counter[str] = Counter()
        correct: Counter[str] = Counter()
        for part in parts:
            for field in part.fields:
                scored[field.field] += field.scored
                correct[field.field] += field.correct
        table = tuple(
            FieldScore(name, scored[name], correct[name], ratio(correct[name], scored[name]))
            for name in scored
        )
        return replace(base, accuracy=accuracy, fields=table, exact_match=accuracy)
    return replace(base, accuracy=accuracy)


def ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def round4(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# --- the terminal table -------------------------------------------------------------------
