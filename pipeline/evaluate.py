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
from dataclasses import replace
from typing import Any

from .agreement import as_text, canon, json_equal, missing
from .parse import bare_label, label_key, norm_label
from .records import FAILED, INVALID, OK, PENDING, SKIPPED
from .scores import BAD_ROWS_SHOWN, Evaluation, FieldScore, Kind, ratio, with_labels

_NULL, _BAD = object(), object()  # what a gold cell can be besides a value to score against


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
    return replace(base, correct=correct, accuracy=ratio(correct, len(scored)))


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
        with_labels(base, list(names.values()), matrix),
        gold_not_in_labels=unknown,
        gold_not_in_labels_rows=tuple((names[g], tuple(rows)) for g, rows in where.items()),
    )


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
        FieldScore(name, totals[name], hits[name], ratio(hits[name], totals[name]))
        for name in order
    )
    accuracy = ratio(exact, len(scored))
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
