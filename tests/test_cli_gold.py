"""Scoring against a gold column (`output.gold`) end to end through the CLI."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from e2e import run_cli, write_config
from fake_server import FakeServer, last_content

KEY = {"TEST_KEY": "sk-test-gold"}


def first_word(body: dict[str, object]) -> str:
    return last_content(body).split()[0]  # type: ignore[arg-type]


def test_a_run_scores_its_labels_against_the_gold_column_and_a_rerun_scores_the_same(
    tmp_path: Path,
) -> None:
    texts = ["billing a", "bug b", "billing c", "feature d", "bug e", "nonsense f", "bug g"]
    gold = ["billing", "Bug", "bug", "feature", "bug", None, "feature"]
    pl.DataFrame({"text": texts, "truth": gold}).write_csv(tmp_path / "in.csv")
    output = {"parse": "label", "labels": ["billing", "bug", "feature"], "gold": "truth"}
    with FakeServer(answer=first_word) as server:
        config = write_config(tmp_path, server.base_url, output=output, run={"chunk_rows": 2})
        ran = run_cli("run", str(config), env=KEY)
        rerun = run_cli("run", str(config), env=KEY)
        sent = server.count
    # Scored: 6 rows with gold (the "nonsense" row has none). Right: billing a, bug b (gold
    # "Bug" is the label bug), feature d, bug e = 4; wrong: billing c (gold bug), bug g
    # (gold feature). Accuracy 4/6.
    evaluation = ran.summary["evaluation"]
    assert ran.code == 1  # the "nonsense" answer is invalid
    assert evaluation["scored"] == 6 and evaluation["correct"] == 4
    assert evaluation["accuracy"] == round(4 / 6, 4)
    assert evaluation["unscored"]["gold_null"] == 1
    assert evaluation["confusion"]["matrix"] == [[1, 0, 0, 0], [1, 2, 0, 0], [0, 1, 1, 0]]
    # bug: answered 3 times (b, e, g), right twice; gold bug 3 times (b, c, e), found twice.
    assert evaluation["labels"]["bug"] == {
        "precision": round(2 / 3, 4),
        "recall": round(2 / 3, 4),
        "f1": round(2 / 3, 4),
        "support": 3,
        "predicted": 3,
    }
    assert "accuracy 0.667 (4/6 scored)" in ran.stderr
    assert "against truth:" in ran.stderr
    # The rerun answers from the store (memoised chunks included) and scores the same.
    assert sent == len(texts)
    assert rerun.summary["evaluation"] == evaluation
    log = (tmp_path / "out" / "store.runs.jsonl").read_text(encoding="utf-8")
    assert log.count('"evaluation": {') == 2  # each run's line carries its scores


def test_a_missing_gold_column_is_named_before_anything_is_sent(tmp_path: Path) -> None:
    pl.DataFrame({"text": ["a"]}).write_csv(tmp_path / "in.csv")
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url, output={"gold": "truth"})
        ran = run_cli("run", str(config), env=KEY)
        assert server.count == 0
    assert ran.code == 2
    assert "output.gold: the input has no column 'truth' (it has text)" in ran.stderr
