"""`pipeline run --limit N` in batch mode end to end: only the first N rows' requests are
submitted (the rows an online run with the same limit would send), waited for or detached,
and the summary adds up. The CLI in a subprocess, the fake's Batches routes over real HTTP."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fake_server import FakeServer
from test_cli_batch import answer, job, lines_by_text, run, texts
from test_cli_batch_open import STILL, adds_up


@pytest.fixture
def server() -> Any:
    with FakeServer(answer=answer) as fake:
        yield fake


def submitted_texts(server: FakeServer) -> list[str]:
    """The row texts of every line of every batch the fake holds, in submission order."""
    return [text for batch in server.batches for text in lines_by_text(batch)]


def test_a_limited_batch_run_submits_and_pays_for_the_first_rows_only(
    tmp_path: Path, server: FakeServer
) -> None:
    rows = texts(10)
    config = job(tmp_path, server, rows)
    ran = run(config, "--limit", "2")
    assert ran.code == 0, ran.stderr
    assert submitted_texts(server) == rows[:2]
    summary = ran.summary
    assert (summary["rows"], summary["answered"], summary["pending"]) == (2, 2, 0)
    assert summary["batch_submitted"] == summary["batch_collected"] == 2
    assert summary["requests_sent"] == 0 and adds_up(summary)
    assert [b["requests"] for b in summary["batches"]] == [2]
    limited = pl.read_parquet(tmp_path / "out/answers.first-2.parquet")
    assert limited["answer"].to_list() == [f"ans-{text}" for text in rows[:2]]
    assert not (tmp_path / "out/answers.parquet").exists()

    whole = run(config)  # the rest goes in a batch of its own; nothing is submitted twice
    assert whole.code == 0, whole.stderr
    assert submitted_texts(server) == rows
    assert not [t for t, n in Counter(server.submitted_custom_ids()).items() if n > 1]
    assert (whole.summary["batch_submitted"], whole.summary["from_store"]) == (8, 2)
    assert adds_up(whole.summary)


def test_the_limit_counts_rows_not_requests(tmp_path: Path, server: FakeServer) -> None:
    """Repeated rows share a request: the first 4 rows here are 3 requests."""
    rows = ["a", "b", "a", "c", "d", "e"]
    config = job(tmp_path, server, rows)
    ran = run(config, "--limit", "4")
    assert ran.code == 0, ran.stderr
    assert sorted(submitted_texts(server)) == ["a", "b", "c"]
    summary = ran.summary
    assert (summary["rows"], summary["answered"], summary["batch_collected"]) == (4, 4, 4)
    assert summary["batch_submitted"] == 3


def test_a_limited_detached_run_submits_the_first_rows_only(tmp_path: Path) -> None:
    rows = texts(4)
    with FakeServer(answer=answer, batch_states=STILL) as server:
        config = job(tmp_path, server, rows)
        ran = run(config, "--detach", "--limit", "2")
        assert ran.code == 0, ran.stderr
        assert submitted_texts(server) == rows[:2]
    summary = ran.summary
    assert (summary["rows"], summary["pending"], summary["batch_pending"]) == (2, 2, 2)
    assert summary["batch_submitted"] == 2 and summary["answered"] == 0
    assert "submitted 2 requests in batches" in ran.stderr
