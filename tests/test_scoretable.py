"""The gold-label warning: the values outside output.labels with their rows' numbers."""

from __future__ import annotations

from pipeline.evaluate import score
from pipeline.scores import merge
from pipeline.scoretable import format_table, gold_warning

LABELS = ["billing", "bug"]


def test_the_warning_names_the_first_rows_of_each_value_counted_over_all_chunks() -> None:
    gold = ["billing", "refnd", "bug", *["refund"] * 7, "refnd"]
    answers = ["billing"] * len(gold)
    statuses = ["ok"] * len(gold)
    whole = score("label", answers, gold, statuses, labels=LABELS)
    assert whole.gold_not_in_labels == (("refnd", 2), ("refund", 7))
    assert whole.gold_not_in_labels_rows == (("refnd", (2, 11)), ("refund", (4, 5, 6, 7, 8)))
    parts = [
        score("label", answers[i : i + 3], gold[i : i + 3], statuses[i : i + 3], labels=LABELS)
        for i in range(0, len(gold), 3)
    ]
    assert merge(parts) == whole
    assert whole.to_dict()["gold_not_in_labels_rows"] == {
        "refnd": [2, 11],
        "refund": [4, 5, 6, 7, 8],
    }
    assert format_table(whole).splitlines()[-1] == (
        "warning: gold values not in output.labels: 'refnd' (2 rows: 2, 11), 'refund' (7 rows: "
        "4, 5, 6, 7, 8, ...); no answer can match them, so those rows count as wrong: usually a "
        "typo in the gold column"
    )


def test_without_row_numbers_the_warning_counts_the_rows() -> None:
    assert gold_warning({"refund": 2}) == (
        "gold values not in output.labels: 'refund' (2 rows); no answer can match them, so "
        "those rows count as wrong: usually a typo in the gold column"
    )
    assert gold_warning({}) is None
