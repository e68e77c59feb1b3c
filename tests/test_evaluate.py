"""Unit tests for `pipeline.evaluate`: every metric against a hand-computed example, the rows
that are and are not scored, the terminal table, and properties of the comparison helpers."""

from __future__ import annotations

import json
import math
import string
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pipeline import evaluate, parse
from pipeline.agreement import agreement, cohen_kappa, missing, percentile
from pipeline.config import OutputConfig
from pipeline.evaluate import label_key, score
from pipeline.parse import norm_label
from pipeline.scores import NO_ANSWER, Evaluation, FieldScore, LabelScore, merge
from pipeline.scoretable import format_table

LABELS = ["billing", "bug", "feature_request", "other"]

# One row per line: (gold, answer, status). Rows 8-11 are not scored.
LABEL_ROWS: list[tuple[Any, Any, str]] = [
    ("billing", "billing", "ok"),  # 1
    ("billing", "billing", "ok"),  # 2
    ("billing", "bug", "ok"),  # 3
    ("billing", None, "invalid"),  # 4: wrong, in the (no answer) column
    ("bug", "bug", "ok"),  # 5
    ("bug", "billing", "ok"),  # 6
    ("Feature-Request", None, "failed"),  # 7: gold normalised to feature_request; wrong
    (None, "bug", "ok"),  # 8: no gold
    ("  ", "bug", "ok"),  # 9: blank gold is no gold
    ("bug", None, "skipped"),  # 10
    ("bug", None, "pending"),  # 11
    ("BUG.", "bug", "ok"),  # 12: gold normalised to bug; right
]


def label_example() -> Evaluation:
    gold, answers, statuses = zip(*LABEL_ROWS, strict=True)
    return score("label", list(answers), list(gold), list(statuses), labels=LABELS)


# --- label ----------------------------------------------------------------------------------


def test_label_counts_which_rows_are_scored() -> None:
    e = label_example()
    # scored: rows 1-7 and 12 = 8; right: 1, 2, 5, 12 = 4
    assert (e.rows, e.scored, e.correct, e.accuracy) == (12, 8, 4, 0.5)
    assert (e.invalid, e.failed) == (1, 1)
    assert (e.unscored_gold_null, e.unscored_skipped, e.unscored_pending) == (2, 1, 1)
    assert (e.unscored_gold_bad, e.gold_bad_rows) == (0, ())


def test_label_confusion_matrix_has_a_column_for_rows_without_an_answer() -> None:
    e = label_example()
    assert e.confusion_labels == ("billing", "bug", "feature_request", "other")
    assert e.confusion == (
        # answered: billing, bug, feature_request, other, (no answer)
        (2, 1, 0, 0, 1),  # gold billing: rows 1, 2 | row 3 | row 4 (invalid)
        (1, 2, 0, 0, 0),  # gold bug: row 6 | rows 5, 12
        (0, 0, 0, 0, 1),  # gold feature_request: row 7 (failed)
        (0, 0, 0, 0, 0),  # gold other: none
    )


def test_label_precision_recall_f1_and_macro_f1() -> None:
    e = label_example()
    by_label = {s.label: s for s in e.labels}
    # billing: 2 right of 3 answered billing (rows 1, 2, 6), 2 of 4 gold billing
    # P = 2/3, R = 1/2, F1 = 2PR/(P+R) = (2/3)/(7/6) = 4/7
    billing = by_label["billing"]
    assert (billing.support, billing.predicted) == (4, 3)
    assert billing.precision == pytest.approx(2 / 3)
    assert billing.recall == pytest.approx(1 / 2)
    assert billing.f1 == pytest.approx(4 / 7)
    # bug: 2 right of 3 answered bug (rows 3, 5, 12), 2 of 3 gold bug: P = R = F1 = 2/3
    bug = by_label["bug"]
    assert (bug.precision, bug.recall, bug.f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # feature_request is never answered: precision 0/0 is undefined, reported as 0.0;
    # recall 0/1 = 0; F1 0.0
    assert by_label["feature_request"] == LabelScore("feature_request", 0.0, 0.0, 0.0, 1, 0)
    # other: no gold rows (support 0), so it is left out of macro-F1
    assert by_label["other"] == LabelScore("other", 0.0, 0.0, 0.0, 0, 0)
    # macro-F1 over billing, bug, feature_request: (4/7 + 2/3 + 0) / 3 = 26/63
    assert e.macro_f1 == pytest.approx(26 / 63)


def test_label_gold_outside_the_labels_becomes_a_category_after_them() -> None:
    e = score(
        "label",
        ["billing", "bug", "billing"],
        ["Spam!", "bug", "spam"],
        ["ok"] * 3,
        labels=["bug", "billing"],
    )
    # `labels` order first, then the new gold label as first written, less its punctuation
    assert e.confusion_labels == ("bug", "billing", "Spam")
    assert e.confusion == ((1, 0, 0, 0), (0, 0, 0, 0), (0, 2, 0, 0))
    assert e.accuracy == pytest.approx(1 / 3)
    # macro-F1 over bug (F1 1) and Spam (F1 0); billing has no gold rows: (1 + 0) / 2
    assert e.macro_f1 == 0.5


def test_label_normalises_gold_as_the_parser_normalises_answers() -> None:
    gold = ["Billing", " FEATURE-REQUEST ", "The label is: bug.", "feature request"]
    e = score("label", ["billing", "feature_request", "bug", "feature_request"], gold, ["ok"] * 4)
    assert e.accuracy == 1.0
    assert e.confusion_labels == ("Billing", "FEATURE-REQUEST", "bug")


def test_label_gold_that_is_only_punctuation_cannot_be_read() -> None:
    e = score("label", ["bug"] * 3, ["...", "bug", {"x": 1}], ["ok"] * 3, labels=LABELS)
    assert (e.scored, e.unscored_gold_bad, e.gold_bad_rows) == (1, 2, (1, 3))


def test_the_label_normalisation_is_the_parsers() -> None:
    assert label_key("The label is: Feature-Request.") == "feature request"


@given(st.text(alphabet=string.ascii_letters + " _-.:!'\"\n", max_size=40))
def test_label_key_matches_what_the_parser_accepts(answer: str) -> None:
    parser = parse.Parser(
        OutputConfig.model_validate({"path": "o.csv", "parse": "label", "labels": LABELS})
    )
    parsed = parser.parse(answer)
    by_key = {norm_label(label): label for label in LABELS}
    assert (parsed.values or (None,))[0] == by_key.get(label_key(answer))


# --- json -----------------------------------------------------------------------------------

JSON_ROWS: list[tuple[Any, Any, str]] = [
    # 1: a gold dict; "positive " vs "Positive" and 3.0 vs 3 match: right, exact
    ({"sentiment": "Positive", "score": 3}, {"sentiment": "positive ", "score": 3.0}, "ok"),
    # 2: a gold JSON string; score 2 vs 1 wrong: sentiment, urgent right; not exact
    (
        '{"sentiment": "negative", "score": 1, "urgent": true}',
        {"sentiment": "negative", "score": 2, "urgent": True},
        "ok",
    ),
    # 3: urgent missing from the answer: wrong; sentiment right; not exact
    ('{"sentiment": "neutral", "urgent": false}', {"sentiment": "neutral", "score": 5}, "ok"),
    ('{"sentiment": ', {"sentiment": "neutral"}, "ok"),  # 4: unreadable gold
    ("[1, 2]", {"sentiment": "neutral"}, "ok"),  # 5: not an object
    ({"sentiment": "positive"}, None, "invalid"),  # 6: wrong
    ("", {"sentiment": "neutral"}, "ok"),  # 7: no gold
    ("null", {"sentiment": "neutral"}, "ok"),  # 8: JSON null is no gold
    (float("nan"), {"sentiment": "neutral"}, "ok"),  # 9: NaN is no gold
]


def json_example(fields: list[str] | None = None) -> Evaluation:
    gold, answers, statuses = zip(*JSON_ROWS, strict=True)
    return score("json", list(answers), list(gold), list(statuses), fields=fields)


def test_json_per_field_accuracy_and_exact_match() -> None:
    e = json_example()
    assert (e.scored, e.invalid, e.unscored_gold_null) == (4, 1, 3)
    assert (e.unscored_gold_bad, e.gold_bad_rows) == (2, (4, 5))
    assert e.fields == (
        FieldScore("sentiment", 4, 3, 0.75),  # rows 1, 2, 3 right; 6 invalid
        FieldScore("score", 2, 1, 0.5),  # row 1 right, row 2 wrong
        FieldScore("urgent", 2, 1, 0.5),  # row 2 right, row 3 missing
    )
    # exact: row 1 only, of 4 scored
    assert (e.correct, e.exact_match, e.accuracy) == (1, 0.25, 0.25)


def test_json_fields_given_limit_what_is_scored() -> None:
    e = json_example(fields=["score", "sentiment"])
    # urgent is not scored, so row 3 (sentiment right) is now exact: rows 1 and 3 of 4
    assert e.fields == (FieldScore("score", 2, 1, 0.5), FieldScore("sentiment", 4, 3, 0.75))
    assert e.exact_match == 0.5
    # gold that holds none of the fields cannot be scored
    none = score("json", [{}], [{"urgent": True}], ["ok"], fields=["score"])
    assert (none.scored, none.gold_bad_rows, none.fields) == (
        0,
        (1,),
        (FieldScore("score", 0, 0, None),),
    )


@pytest.mark.parametrize(
    ("answer", "gold", "equal"),
    [
        (None, None, True),
        (True, True, True),
        (True, 1, False),  # a boolean is not a number
        (1, 1.0, True),
        (0.1, 0.1, True),
        (0.1, 0.10000001, False),
        ("  New   York ", "new york", True),
        ("3", 3, False),  # a string is not a number
        ('{"k": [1, "A"]}', {"k": [1.0, "a"]}, True),  # an object column holds JSON text
        ({"k": 1}, '{"k": 1}', True),
        ("not json", {"k": 1}, False),
        ([1, 2], [2, 1], False),
    ],
)
def test_json_values_are_compared_after_light_normalisation(
    answer: Any, gold: Any, equal: bool
) -> None:
    e = score("json", [{"v": answer}], [{"v": gold}], ["ok"])
    assert e.accuracy == (1.0 if equal else 0.0)


# --- text -----------------------------------------------------------------------------------


def test_text_exact_match_after_case_and_whitespace() -> None:
    gold = ["Paris", "New  York", "new york city", "Paris", 42, None]
    answers = ["  paris ", "new\tyork", "new york", None, "42", "x"]
    statuses = ["ok", "ok", "ok", "failed", "ok", "ok"]
    e = score("text", answers, gold, statuses)
    # right: rows 1, 2, 5 (42 as text); wrong: 3 and 4 (failed); 6 has no gold: 3/5
    assert (e.scored, e.correct, e.accuracy, e.failed, e.unscored_gold_null) == (5, 3, 0.6, 1, 1)


def test_nothing_scored_gives_no_accuracy() -> None:
    e = score("text", ["a", "b"], [None, "b"], ["ok", "skipped"])
    assert (e.scored, e.accuracy, e.unscored_gold_null, e.unscored_skipped) == (0, None, 1, 1)
    assert format_table(e).splitlines()[0] == "accuracy n/a (0/0 scored)"


def test_score_refuses_mismatched_lengths_kinds_and_statuses() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        score("text", ["a"], [], ["ok"])
    with pytest.raises(ValueError, match="kind"):
        score("number", [], [], [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="row 2: unknown status 'done'"):
        score("text", ["a", "b"], ["a", "b"], ["ok", "done"])


# --- to_dict and the table ------------------------------------------------------------------


def test_to_dict_is_json_and_rounded() -> None:
    data = json.loads(json.dumps(label_example().to_dict()))
    assert data["accuracy"] == 0.5
    assert data["macro_f1"] == 0.4127  # 26/63 = 0.412698...
    assert data["labels"]["billing"] == {
        "precision": 0.6667,
        "recall": 0.5,
        "f1": 0.5714,
        "support": 4,
        "predicted": 3,
    }
    assert data["confusion"]["predicted"][-1] == NO_ANSWER
    assert data["unscored"] == {
        "gold_null": 2,
        "gold_bad": 0,
        "gold_bad_rows": [],
        "skipped": 1,
        "pending": 1,
    }
    assert "fields" not in data
    fields = json.loads(json.dumps(json_example().to_dict()))
    assert fields["fields"]["sentiment"] == {"scored": 4, "correct": 3, "accuracy": 0.75}
    assert (fields["exact_match"], "labels" in fields) == (0.25, False)


def test_format_table_for_labels() -> None:
    assert format_table(label_example()) == "\n".join(
        [
            "accuracy 0.500 (4/8 scored; 1 invalid, 1 failed count as wrong)",
            "not scored: 2 with no gold, 1 skipped, 1 pending",
            "macro-F1 0.413 (mean over the 3 labels with gold rows)",
            "",
            "label            precision  recall      F1  support  predicted",
            "billing              0.667   0.500   0.571        4          3",
            "bug                  0.667   0.667   0.667        3          3",
            "feature_request      0.000   0.000   0.000        1          0",
            "other                0.000   0.000   0.000        0          0",
            "",
            "confusion (rows: gold, columns: answered; (none): invalid or failed)",
            "                billing     bug featur~   other  (none)",
            "billing               2       1       0       0       1",
            "bug                   1       2       0       0       0",
            "feature_request       0       0       0       0       1",
            "other                 0       0       0       0       0",
        ]
    )


def test_format_table_for_json_and_many_labels() -> None:
    assert format_table(json_example()) == "\n".join(
        [
            "exact match 0.250 (1/4 scored; 1 invalid counts as wrong)",
            "not scored: 3 with no gold, 2 with unreadable gold (rows 4, 5)",
            "",
            "field      accuracy  correct   scored",
            "sentiment     0.750        3        4",
            "score         0.500        1        2",
            "urgent        0.500        1        2",
        ]
    )
    many = [f"label{i}" for i in range(9)]
    table = format_table(score("label", many, many, ["ok"] * 9, labels=many))
    assert table.splitlines()[-1] == (
        "confusion matrix: 9 labels, too many to show here; it is in the JSON summary"
    )


def test_format_table_shows_only_the_first_bad_gold_rows() -> None:
    e = score("json", [None] * 7, ["x"] * 7, ["ok"] * 7)
    assert e.gold_bad_rows == (1, 2, 3, 4, 5)
    assert "7 with unreadable gold (rows 1, 2, 3, 4, 5, ...)" in format_table(e)


@given(st.lists(st.text(min_size=1, max_size=200), min_size=1, max_size=8, unique=True))
def test_format_table_stays_under_100_columns(names: list[str]) -> None:
    e = score("label", names, names[::-1], ["ok"] * len(names), labels=names)
    assert all(len(line) < 100 for line in format_table(e).splitlines())


# --- comparing two columns ------------------------------------------------------------------

A = ["y", "y", "y", "n", "n", "n", "n", None]
B = ["y", "y", "n", "n", "n", "n", "y", "Y"]


def test_agreement_over_rows_both_answered() -> None:
    # row 8 has no answer in A: 7 rows; equal in rows 1, 2, 4, 5, 6: 5/7
    assert agreement(A, B) == pytest.approx(5 / 7)
    assert agreement(["Yes", "no"], ["yes ", None]) == 1.0
    assert agreement([None], ["a"]) is None
    with pytest.raises(ValueError, match="differ in length"):
        agreement(["a"], [])


def test_cohen_kappa_by_hand() -> None:
    # n = 7; A: y 3, n 4; B: y 3, n 4; p_o = 5/7; p_e = (3*3 + 4*4)/49 = 25/49
    # kappa = (5/7 - 25/49) / (1 - 25/49) = (10/49) / (24/49) = 5/12
    assert cohen_kappa(A, B) == pytest.approx(5 / 12)
    # A: x 2; B: x 1, y 1: p_o = 1/2, p_e = (2*1)/4 = 1/2: kappa 0
    assert cohen_kappa(["x", "x"], ["x", "y"]) == 0.0
    assert cohen_kappa(["a", "b"], ["b", "a"]) == -1.0
    assert cohen_kappa(["a", "b"], ["A", "b"]) == 1.0


def test_cohen_kappa_is_undefined_when_chance_agreement_is_certain() -> None:
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None  # one category: p_e = 1, 0/0
    assert cohen_kappa([None, "x"], ["x", None]) is None  # no row answered by both
    assert cohen_kappa([], []) is None


def test_percentile_interpolates_linearly() -> None:
    values = [4.0, 1.0, 3.0, 2.0, None, math.nan]  # None and NaN left out: 1, 2, 3, 4
    assert percentile(values, 50) == 2.5  # rank 0.5 * 3 = 1.5: 2 + 0.5 * (3 - 2)
    assert percentile(values, 95) == pytest.approx(3.85)  # rank 2.85: 3 + 0.85 * (4 - 3)
    assert (percentile(values, 0), percentile(values, 100)) == (1.0, 4.0)
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match="within 0 and 100"):
        percentile([1.0], 101)


# --- properties -----------------------------------------------------------------------------

label_names = st.lists(
    st.text(alphabet=string.ascii_letters + "_- ", min_size=1, max_size=12).filter(
        lambda s: norm_label(s) != ""
    ),
    min_size=1,
    max_size=6,
)
STATUSES = st.sampled_from(["ok", "ok", "ok", "invalid", "failed", "skipped", "pending"])
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
objects = st.dictionaries(st.text(max_size=5), scalars | st.lists(scalars, max_size=3), min_size=1)


@given(label_names, st.data())
def test_a_perfect_label_column_scores_one(labels: list[str], data: st.DataObject) -> None:
    gold = data.draw(st.lists(st.sampled_from(labels), min_size=1))
    e = score("label", gold, gold, ["ok"] * len(gold), labels=labels)
    assert e.accuracy == 1.0
    assert e.macro_f1 == 1.0


@given(st.lists(st.text().filter(str.strip), min_size=1))
def test_a_perfect_text_column_scores_one(gold: list[str]) -> None:
    assert score("text", gold, gold, ["ok"] * len(gold)).accuracy == 1.0


@given(st.lists(objects, min_size=1), st.booleans())
def test_a_perfect_json_column_scores_one(gold: list[dict[str, Any]], as_text: bool) -> None:
    cells: list[Any] = [json.dumps(g) for g in gold] if as_text else gold
    e = score("json", gold, cells, ["ok"] * len(gold))
    assert (e.accuracy, e.exact_match) == (1.0, 1.0)
    assert all(f.accuracy == 1.0 for f in e.fields)


@given(label_names, st.data())
def test_the_confusion_matrix_sums_to_the_scored_rows(
    labels: list[str], data: st.DataObject
) -> None:
    cell = st.none() | st.sampled_from(labels) | st.text(max_size=6)
    rows = data.draw(st.lists(st.tuples(cell, cell, STATUSES)))
    gold, answers, statuses = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [], [])
    e = score("label", answers, gold, statuses, labels=labels)
    assert sum(map(sum, e.confusion)) == e.scored
    assert sum(s.support for s in e.labels) == e.scored
    assert (
        e.scored
        + e.unscored_gold_null
        + e.unscored_gold_bad
        + e.unscored_skipped
        + (e.unscored_pending)
        == e.rows
    )
    assert e.accuracy is None or 0.0 <= e.accuracy <= 1.0
    assert all(0.0 <= x <= 1.0 for s in e.labels for x in (s.precision, s.recall, s.f1))


@given(st.sampled_from(["label", "text", "json"]), st.data())
def test_accuracy_is_a_share(kind: evaluate.Kind, data: st.DataObject) -> None:
    cell = st.none() | st.text(max_size=8) | objects if kind == "json" else st.none() | scalars
    rows = data.draw(st.lists(st.tuples(cell, cell, STATUSES), min_size=1))
    gold, answers, statuses = (list(c) for c in zip(*rows, strict=True))
    e = score(kind, answers, gold, statuses)
    assert e.accuracy is None or 0.0 <= e.accuracy <= 1.0
    assert e.correct <= e.scored <= e.rows
    json.dumps(e.to_dict(), allow_nan=False)
    format_table(e)


answer_columns = st.lists(st.tuples(*[st.none() | st.sampled_from(["a", "b", "c", "A"])] * 2))


@given(answer_columns)
def test_kappa_and_agreement_are_symmetric(pairs: list[tuple[str | None, str | None]]) -> None:
    a = [x for x, _ in pairs]
    b = [y for _, y in pairs]
    assert cohen_kappa(a, b) == cohen_kappa(b, a)
    assert agreement(a, b) == agreement(b, a)
    kappa = cohen_kappa(a, b)
    assert kappa is None or -1.0 <= kappa <= 1.0


@given(st.lists(st.none() | scalars))
def test_agreement_with_itself_is_one(column: list[Any]) -> None:
    assume(any(not missing(v) for v in column))
    assert agreement(column, column) == 1.0


@given(
    st.lists(st.sampled_from(["a", "b", "c", "zz", None]), min_size=1, max_size=40),
    st.lists(st.sampled_from(["a", "b", "c", None, ""]), min_size=40, max_size=40),
    st.lists(
        st.sampled_from(["ok", "ok", "invalid", "failed", "skipped"]), min_size=40, max_size=40
    ),
    st.integers(1, 7),
)
def test_merging_chunks_scores_as_if_at_once(
    answers: list[str | None], gold: list[str | None], statuses: list[str], chunk: int
) -> None:
    n = len(answers)
    gold, statuses = gold[:n], statuses[:n]
    for kind in ("label", "text"):
        whole = score(kind, answers, gold, statuses, labels=["a", "b", "c"])  # type: ignore[arg-type]
        parts = [
            score(
                kind,
                answers[i : i + chunk],
                gold[i : i + chunk],
                statuses[i : i + chunk],
                labels=["a", "b", "c"],
            )  # type: ignore[arg-type]
            for i in range(0, n, chunk)
        ]
        assert merge(parts).to_dict() == whole.to_dict()


def test_merging_json_chunks_sums_fields() -> None:
    answers = [{"x": 1, "y": "a"}, {"x": 2, "y": "b"}, None, {"x": 1}]
    gold = ['{"x": 1, "y": "A"}', {"x": 3, "y": "b"}, {"x": 1}, '{"x": 1, "y": "c"}']
    statuses = ["ok", "ok", "failed", "ok"]
    whole = score("json", answers, gold, statuses)
    parts = [
        score("json", answers[:1], gold[:1], statuses[:1]),
        score("json", answers[1:], gold[1:], statuses[1:]),
    ]
    assert merge(parts).to_dict() == whole.to_dict()


# --- gold labels outside output.labels ---------------------------------------------------


def test_gold_labels_outside_the_labels_are_counted_and_still_scored() -> None:
    gold = ["billing", "refund", "Refund", "bug", "refnd", None, "refund"]  # Refund: refund
    answers = ["billing", "billing", None, "bug", "bug", "bug", "bug"]
    statuses = ["ok", "ok", "failed", "ok", "ok", "ok", "pending"]  # pending: not scored
    e = score("label", answers, gold, statuses, labels=["billing", "bug"])
    assert e.gold_not_in_labels == (("refund", 2), ("refnd", 1))
    data = e.to_dict()
    assert data["gold_not_in_labels"] == {"refund": 2, "refnd": 1}
    assert data["labels"]["refund"]["support"] == 2 and data["labels"]["refund"]["f1"] == 0.0
    assert e.scored == 5 and e.correct == 2
    parts = [
        score(
            "label",
            answers[i : i + 2],
            gold[i : i + 2],
            statuses[i : i + 2],
            labels=["billing", "bug"],
        )
        for i in range(0, len(gold), 2)
    ]
    assert merge(parts).to_dict() == data
    table = format_table(e).splitlines()
    assert table[-1] == (
        "warning: gold values not in output.labels: 'refund' (2 rows: 2, 3), 'refnd' (1 row: 5); "
        "no "
        "answer can match them, so those rows count as wrong: usually a typo in the gold column"
    )


def test_gold_labels_all_in_the_labels_give_no_warning() -> None:
    e = score("label", ["bug"], ["Bug"], ["ok"], labels=["billing", "bug"])
    assert e.gold_not_in_labels == () and e.to_dict()["gold_not_in_labels"] == {}
    assert "warning" not in format_table(e)
    assert "gold_not_in_labels" not in score("text", ["x"], ["y"], ["ok"]).to_dict()
