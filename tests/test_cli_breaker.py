"""An endpoint that goes down, or gives every request the same error, stops the run: exit 3."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from e2e import run_cli, write_config
from fake_server import FakeServer

ROWS = 60
CONCURRENCY = 4
MAX_RETRIES = 4


def make_table(folder: Path) -> None:
    pl.DataFrame({"id": range(ROWS), "text": [f"row-{i}" for i in range(ROWS)]}).write_csv(
        folder / "in.csv"
    )


def config(folder: Path, base_url: str, max_outage_s: float = 2) -> Path:
    run = {"concurrency": CONCURRENCY, "max_retries": MAX_RETRIES, "max_outage_s": max_outage_s}
    return write_config(folder, base_url, run=run)


def test_an_endpoint_that_goes_down_stops_the_run_and_a_rerun_resumes(tmp_path: Path) -> None:
    make_table(tmp_path)
    answered = 12
    with FakeServer() as server:
        server.down_after(answered)
        ran = run_cli("run", str(config(tmp_path, server.base_url)), timeout=60)
        assert server.went_down.is_set()
    assert ran.code == 3, ran.stderr
    assert "Traceback" not in ran.stderr
    assert "is down" in ran.stderr and "rerun to resume" in ran.stderr
    summary = ran.summary
    assert summary["answered"] == answered
    assert (summary["failed"], summary["pending"]) == (0, ROWS - answered)
    # Without the breaker each of the 48 rows left would be tried 5 times: 240 requests.
    assert summary["requests_sent"] <= answered + 10 + 10 + CONCURRENCY

    with FakeServer() as server:
        again = run_cli("run", str(config(tmp_path, server.base_url)), timeout=60)
        assert again.code == 0, again.stderr
        assert again.summary["from_store"] == answered
        assert again.summary["requests_sent"] == server.count == ROWS - answered
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert out["answer"].to_list() == [f"echo: row-{i}" for i in range(ROWS)]


def test_rows_that_gave_up_before_the_pause_end_pending_like_the_rest(tmp_path: Path) -> None:
    """One worker, one retry: after the last answer, four rows spend their two attempts
    each before the tenth failure in a row (the fifth row's second) pauses sending. Nothing
    was answered for them: they end pending like the rows never sent, the store keeps
    nothing for them, `status` agrees, and the rerun sends exactly the rows left."""
    make_table(tmp_path)
    answered, left = 12, ROWS - 12
    run = {"concurrency": 1, "max_retries": 1, "max_outage_s": 1}
    with FakeServer() as server:
        server.down_after(answered)
        path = write_config(tmp_path, server.base_url, run=run)
        ran = run_cli("run", str(path), timeout=60)
    assert ran.code == 3, ran.stderr
    assert "is down" in ran.stderr and "rows failed" not in ran.stderr
    summary = ran.summary
    assert (summary["answered"], summary["failed"], summary["pending"]) == (answered, 0, left)
    end = next(line for line in ran.stderr.splitlines() if "end of run" in line)
    assert f"answered {answered}, invalid 0, failed 0, pending {left}," in end
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert out["_status"].to_list() == ["ok"] * answered + ["pending"] * left
    assert out["_error"].null_count() == ROWS
    status = json.loads(run_cli("status", str(path)).stdout)
    assert (status["done"], status["failed"], status["pending"]) == (answered, 0, left)

    with FakeServer() as server:
        path = write_config(tmp_path, server.base_url, run=run)
        again = run_cli("run", str(path), timeout=60)
        assert again.code == 0, again.stderr
        assert again.summary["requests_sent"] == server.count == left


def test_the_same_400_on_every_row_stops_after_a_handful(tmp_path: Path) -> None:
    make_table(tmp_path)
    with FakeServer() as server:
        server.always = 400
        ran = run_cli("run", str(config(tmp_path, server.base_url)), timeout=60)
        assert ran.code == 3, ran.stderr
        assert "Traceback" not in ran.stderr
        assert "every request gets the same error: HTTP 400: temperature must be <= 2" in (
            ran.stderr
        )
        assert server.count <= 5 + CONCURRENCY
        assert ran.summary["failed"] == server.count
        assert ran.summary["pending"] == ROWS - server.count


def test_the_same_500_on_every_request_stops_with_the_same_error(tmp_path: Path) -> None:
    make_table(tmp_path)
    with FakeServer() as server:
        server.always = 500
        ran = run_cli("run", str(config(tmp_path, server.base_url, 1)), timeout=60)
        assert ran.code == 3, ran.stderr
        assert "Traceback" not in ran.stderr
        assert "every request gets the same error: HTTP 500: upstream failure" in ran.stderr
        assert server.count <= 10 + 10 + CONCURRENCY
        # A row may spend its 5 attempts before the 10th failure in a row pauses the run:
        # nothing was answered for it either, so it is pending too.
        assert (ran.summary["failed"], ran.summary["pending"]) == (0, ROWS)


def test_rows_that_failed_before_do_not_stop_a_rerun_before_the_new_rows(tmp_path: Path) -> None:
    """Six rows always refused with the same 400, first in the table: the first run stops
    after five, as for a config error; the rerun sends them again but, failing as before,
    they do not stop it, and the new rows are answered."""
    texts = [f"bad-{i}" for i in range(6)] + [f"good-{i}" for i in range(6)]
    pl.DataFrame({"id": range(12), "text": texts}).write_csv(tmp_path / "in.csv")
    with FakeServer() as server:
        server.script("bad", ["400"] * 100)
        path = write_config(tmp_path, server.base_url, run={"concurrency": 1})
        first = run_cli("run", str(path))
        assert first.code == 3 and "same error" in first.stderr, first.stderr
        assert first.summary["failed"] == 5 and first.summary["pending"] == 7
        again = run_cli("run", str(path))
        assert again.code == 1, again.stderr
        assert again.summary["failed"] == 6 and again.summary["answered"] == 6
        assert not again.summary["stopped"]
