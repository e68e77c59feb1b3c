"""What `run` and `reparse` print counts its nouns right: one answer, two answers."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from e2e import run_cli, write_config
from fake_server import FakeServer, last_content

ENV = {"TEST_KEY": "sk-test"}
LABELS = {"parse": "label", "labels": ["pos", "neg"]}


def test_one_answer_that_does_not_parse_is_one_answer(tmp_path: Path) -> None:
    texts = ["pos", "neg", "meh", "pos"]
    pl.DataFrame({"id": range(4), "text": texts}).write_csv(tmp_path / "in.csv")
    with FakeServer(answer=last_content) as server:
        config = write_config(tmp_path, server.base_url, output=LABELS)
        ran = run_cli("run", str(config), "--no-progress", env=ENV)
    assert ran.code == 1, ran.stderr
    assert ran.summary["invalid"] == 1
    assert "1 answer did not parse; the reasons are in the output's _error column" in ran.stderr

    # Reparse with one label fewer: the stored answers are read again, two now invalid.
    ran = run_cli("reparse", str(config), "--set", "output.labels=[pos]", env=ENV)
    assert ran.code == 1, ran.stderr
    assert ran.summary["invalid"] == 2
    assert "2 answers did not parse" in ran.stderr
