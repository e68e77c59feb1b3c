"""A run killed with SIGKILL part-way resumes to the same output, repeating few requests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from e2e import ROOT, run_cli, write_config
from fake_server import FakeServer, last_content

ROWS = 200
CONCURRENCY = 4


def start_run(config: Path, stderr: int) -> subprocess.Popen[str]:
    """`pipeline run CONFIG` in the background, as a user starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def test_kill_9_then_rerun_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    table = pl.DataFrame({"id": range(ROWS), "text": [f"item {i}" for i in range(ROWS)]})
    for name in ("whole", "killed"):
        (tmp_path / name).mkdir()
        table.write_csv(tmp_path / name / "in.csv")
    run = {"concurrency": CONCURRENCY, "chunk_rows": 50}

    with FakeServer(latency=0.01) as server:
        whole = write_config(tmp_path / "whole", server.base_url, run=run)
        assert run_cli("run", str(whole)).code == 0
    expected = pl.read_parquet(tmp_path / "whole/out/answers.parquet")

    with FakeServer(latency=0.02) as server:
        config = write_config(tmp_path / "killed", server.base_url, run=run)
        process = start_run(config, subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while server.count < ROWS // 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert process.returncode == -signal.SIGKILL
        time.sleep(0.2)  # let the server finish requests that were in flight
        first = {last_content(body) for body in server.requests}
        assert ROWS // 2 <= len(first) < ROWS
        assert not (tmp_path / "killed/out/answers.parquet").exists()
        assert list((tmp_path / "killed/out").glob(".*.tmp"))  # chunks were being written

        ran = run_cli("run", str(config))
        assert ran.code == 0, ran.stderr
        second = [last_content(body) for body in server.requests[len(first) :]]

    repeated = first.intersection(second)
    assert len(repeated) <= CONCURRENCY, repeated
    assert first.union(second) == {f"item {i}" for i in range(ROWS)}
    assert ran.summary["from_store"] >= len(first) - CONCURRENCY
    got = pl.read_parquet(tmp_path / "killed/out/answers.parquet")
    assert got.equals(expected)
    assert not list((tmp_path / "killed/out").glob(".*.tmp"))  # the dead run's temp file is gone


def test_ctrl_c_keeps_every_answer_and_says_so(tmp_path: Path) -> None:
    table = pl.DataFrame({"id": range(ROWS), "text": [f"item {i}" for i in range(ROWS)]})
    table.write_csv(tmp_path / "in.csv")
    run = {"concurrency": CONCURRENCY, "chunk_rows": 50}
    with FakeServer(latency=0.02) as server:
        config = write_config(tmp_path, server.base_url, run=run)
        process = start_run(config, subprocess.PIPE)
        deadline = time.monotonic() + 60
        while server.count < ROWS // 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130, stderr
        assert "interrupted: answers so far are in the store" in stderr
        for noise in ("Traceback", "Exception in callback", "never retrieved"):
            assert noise not in stderr, stderr
        time.sleep(0.2)  # let the server finish requests that were in flight
        first = {last_content(body) for body in server.requests}
        assert ROWS // 2 <= len(first) < ROWS

        ran = run_cli("run", str(config))
        assert ran.code == 0, ran.stderr
        second = [last_content(body) for body in server.requests[len(first) :]]

    assert len(first.intersection(second)) <= CONCURRENCY
    assert first.union(second) == {f"item {i}" for i in range(ROWS)}
    got = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert got["id"].to_list() == [str(i) for i in range(ROWS)]  # CSV columns are text
    assert got["_status"].to_list() == ["ok"] * ROWS
