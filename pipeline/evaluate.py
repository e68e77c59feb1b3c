"""Evaluate stage: parsed answers + a gold column -> accuracy, per-label or per-field scores.

Pure functions over plain Python lists (no I/O, no polars), for `pipeline run` with
`output.gold` and for `pipeline compare`. Which rows count:

- skipped and pending rows are not scored (counted apart);
- a row whose gold is null (None, NaN, a string that is empty or only whitespace, for json
  also the JSON text `null`) is not scored (`unscored_gold_null`); nor is one whose gold
  cannot be read (`unscored_gold_bad`, with the first few row numbers, counted from 1):
  for `json` a cell that is not an object
  or holds none of the fields scored, for `label` one that is only punctuation, for `label`
  and `text` one that is not a string, number or boolean;
- invalid and failed rows are scored, as wrong, and counted (`invalid`, `failed`);
- for `label`, a gold label outside `labels` is scored (no answer can match it) and counted
  in `gold_not_in_labels`, with the first few of its row numbers (counted from 1) in
  `gold_not_in_labels_rows`: usually a typo in the gold column.

Comparing: `label` answers and gold go through the label parser's normalisation (case,
whitespace, `_`/`-`, surrounding punctuation, a "label:" prefix), so gold "Billing" is the
label "billing"; `text` compares case-folded with whitespace collapsed; `json` compares
field by field: strings as for text, numbers by value (1 == 1.0, exactly), booleans only to
booleans, null to null, objects and arrays element-wise (a JSON string on one side is read).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from .agreement import as_text, canon, json_equal, missing
from .parse import bare_label, label_key, norm_label
from .records import FAILED, INVALID, OK, PENDING, SKIPPED

Kind = Literal["label", "json", "text"]
NO_ANSWER = "(no answer)"  # the confusion matrix's column for invalid and failed rows
BAD_ROWS_SHOWN = 5

_NULL, _BAD = object(), object()  # what a gold cell can be besides a value to score against


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
            "accuracy": _round(self.accuracy),
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
            data["macro_f1"] = _round(self.macro_f1)
            data["labels"] = {
                s.label: {
                    "precision": _round(s.precision),
                    "recall": _round(s.recall),
                    "f1": _round(s.f1),
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
            data["exact_match"] = _round(self.exact_match)
            data["fields"] = {
                f.field: {"scored": f.scored, "correct": f.correct, "accuracy": _round(f.accuracy)}
                for f in self.fields
            }
        return data


def score(
    kind: Kind,
    answers: Sequence[Any],
    gold: Sequence[Any],
    statuses: Sequence[str],
    *,
    labels: Sequence[str] | None = None,
    fields: Sequence[str] | None = None,
) -> Evaluation:
    """Score one answer per row against the gold cell of that row (see the module docstring)."""
    if not len(answers) == len(gold) == len(statuses):
        raise ValueError(
            f"answers, gold and statuses differ in length: "
            f"{len(answers)}, {len(gold)}, {len(statuses)}"
        )
    if kind not in ("label", "json", "text"):
        raise ValueError(f"kind must be label, json or text, not {kind!r}")
    read = _gold_reader(kind, fields)
    scored: list[tuple[str, Any, Any]] = []  # (status, answer, gold value)
    numbers: list[int] = []  # each scored row's number, counted from 1
    counts: Counter[str] = Counter()
    bad_rows: list[int] = []
    for number, (answer, cell, status) in enumerate(zip(answers, gold, statuses, strict=True), 1):
        if status in (SKIPPED, PENDING):
            counts[status] += 1
            continue
        if status not in (OK, INVALID, FAILED):
            raise ValueError(f"row {number}: unknown status {status!r}")
        expected = read(cell)
        if expected is _NULL:
            counts["gold_null"] += 1
        elif expected is _BAD:
            counts["gold_bad"] += 1
            if len(bad_rows) < BAD_ROWS_SHOWN:
                bad_rows.append(number)
        else:
            counts[status] += 1
            scored.append((status, answer, expected))
            numbers.append(number)
    base = Evaluation(
        kind=kind,
        rows=len(statuses),
        scored=len(scored),
        correct=0,
        accuracy=None,
        invalid=counts[INVALID],
        failed=counts[FAILED],
        unscored_gold_null=counts["gold_null"],
        unscored_gold_bad=counts["gold_bad"],
        gold_bad_rows=tuple(bad_rows),
        unscored_skipped=counts[SKIPPED],
        unscored_pending=counts[PENDING],
    )
    if kind == "label":
        return _score_labels(base, scored, labels or (), numbers)
    if kind == "json":
        return _score_json(base, scored, fields)
    correct = sum(  # canon(None) is None, never the form of a gold string
        1
        for status, answer, gold_text in scored
        if status == OK and canon(as_text(answer)) == canon(gold_text)
    )
    return replace(base, correct=correct, accuracy=_ratio(correct, len(scored)))


def _score_labels(
    base: Evaluation,
    scored: list[tuple[str, Any, Any]],
    labels: Sequence[str],
    numbers: Sequence[int],
) -> Evaluation:
    names: dict[str, str] = {}  # label key -> the label as shown: `labels` first, then as met
    for label in labels:
        names.setdefault(norm_label(label), label)  # as the parser keys its labels
    allowed = set(names)

    def key(text: str) -> str:
        """The parser's key for an answer; a label as written (even "Answer A") is itself."""
        norm = norm_label(text)
        found = norm if norm in allowed else (label_key(text) or norm)
        names.setdefault(found, bare_label(text))
        return found

    pairs: list[tuple[str, str | None]] = []  # (gold key, answered key or None)
    for status, answer, expected in scored:
        text = as_text(answer) if status == OK else None
        pairs.append((key(expected), None if text is None else key(text)))
    index = {k: i for i, k in enumerate(names)}
    matrix = [[0] * (len(names) + 1) for _ in names]
    for gold_key, answered in pairs:
        matrix[index[gold_key]][len(names) if answered is None else index[answered]] += 1
    outside = Counter(g for g, _ in pairs if allowed and g not in allowed)  # in order met
    unknown = tuple((names[g], n) for g, n in outside.items())
    where: dict[str, list[int]] = {g: [] for g in outside}
    for (gold_key, _), number in zip(pairs, numbers, strict=True):
        if gold_key in where and len(where[gold_key]) < BAD_ROWS_SHOWN:
            where[gold_key].append(number)
    return replace(
        _with_labels(base, list(names.values()), matrix),
        gold_not_in_labels=unknown,
        gold_not_in_labels_rows=tuple((names[g], tuple(rows)) for g, rows in where.items()),
    )


def _with_labels(base: Evaluation, names: list[str], matrix: list[list[int]]) -> Evaluation:
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
        accuracy=_ratio(correct, base.scored),
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
        merged = _with_labels(base, names, matrix)
        return replace(
            merged,
            gold_not_in_labels=tuple(unknown.items()),
            gold_not_in_labels_rows=tuple((name, tuple(where.get(name, ()))) for name in unknown),
        )
    accuracy = _ratio(base.correct, base.scored)
    if kind == "json":
        scored: Counter[str] = Counter()
        correct: Counter[str] = Counter()
        for part in parts:
            for field in part.fields:
                scored[field.field] += field.scored
                correct[field.field] += field.correct
        table = tuple(
            FieldScore(name, scored[name], correct[name], _ratio(correct[name], scored[name]))
            for name in scored
        )
        return replace(base, accuracy=accuracy, fields=table, exact_match=accuracy)
    return replace(base, accuracy=accuracy)


def _score_json(
    base: Evaluation, scored: list[tuple[str, Any, Any]], fields: Sequence[str] | None
) -> Evaluation:
    order: dict[str, None] = dict.fromkeys(fields or ())
    totals: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    exact = 0
    for status, answer, expected in scored:
        given = answer if status == OK and isinstance(answer, Mapping) else {}
        every = True
        for name, value in expected.items():
            order.setdefault(name)
            totals[name] += 1
            if name in given and json_equal(given[name], value):
                hits[name] += 1
            else:
                every = False
        exact += every
    table = tuple(
        FieldScore(name, totals[name], hits[name], _ratio(hits[name], totals[name]))
        for name in order
    )
    accuracy = _ratio(exact, len(scored))
    return replace(base, correct=exact, accuracy=accuracy, fields=table, exact_match=accuracy)


def _gold_reader(kind: str, fields: Sequence[str] | None) -> Callable[[Any], Any]:
    """The function that reads one gold cell into a value to score against, `_NULL` or `_BAD`."""
    wanted = None if fields is None else set(fields)

    def text(cell: Any) -> Any:
        if missing(cell):
            return _NULL
        value = as_text(cell)
        if value is None:
            return _BAD
        if not value.strip():
            return _NULL
        return _BAD if kind == "label" and not norm_label(value) else value

    def obj(cell: Any) -> Any:
        if missing(cell) or (isinstance(cell, str) and not cell.strip()):
            return _NULL
        if isinstance(cell, str):
            try:
                cell = json.loads(cell)
            except (ValueError, RecursionError):
                return _BAD
            if cell is None:
                return _NULL
        if not isinstance(cell, Mapping):
            return _BAD
        held = {str(k): v for k, v in cell.items() if wanted is None or k in wanted}
        return held or _BAD

    return obj if kind == "json" else text


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# --- the terminal table -------------------------------------------------------------------
