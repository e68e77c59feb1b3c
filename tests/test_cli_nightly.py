"""Nightly operation through the CLI: incremental reruns, budgets, thresholds, run log, lock."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import ROOT, Ran, run_cli, write_config
from fake_server import FakeServer, echo

from pipeline.lock import Lock


@pytest.fixture
def server() -> Any:
    with FakeServer() as fake:
        yield fake


def table(folder: Path, n: int) -> None:
    pl.DataFrame({"id": range(n), "text": [f"row {i}" for i in range(n)]}).write_csv(
        folder / "in.csv"
    )


def test_a_grown_table_sends_exactly_the_new_rows(tmp_path: Path, server: FakeServer) -> None:
    table(tmp_path, 20)
    config = write_config(tmp_path, server.base_url)
    assert run_cli("run", str(config)).code == 0
    assert server.count == 20
    table(tmp_path, 27)
    ran = run_cli("run", str(config))
    assert ran.code == 0
    assert server.count == 27 and ran.summary["requests_sent"] == 7
    assert ran.summary["from_store"] == 20
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert out["answer"].to_list() == [f"echo: row {i}" for i in range(27)]


def test_the_budget_stops_sending_and_the_next_run_continues(
    tmp_path: Path, server: FakeServer
) -> None:
    table(tmp_path, 40)
    # 1,000 USD per million tokens: each request costs about a cent.
    config = write_config(
        tmp_path,
        server.base_url,
        model={"pricing": {"input_per_million": 1000, "output_per_million": 1000}},
        run={"concurrency": 2, "max_cost_usd": 0.05},
    )
    preview = json.loads(run_cli("preview", str(config)).stdout)
    assert preview["estimated_cost_usd"] > 0.05
    ran = run_cli("run", str(config))
    assert ran.code == 3, ran.stderr
    assert "max_cost_usd" in ran.stderr
    summary = ran.summary
    assert 0.05 <= summary["cost_usd"] < 0.05 + 3 * 0.01
    assert summary["pending"] == 40 - summary["answered"] and summary["pending"] > 20
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert out["_status"].value_counts().sort("_status").to_dicts() == [
        {"_status": "ok", "count": summary["answered"]},
        {"_status": "pending", "count": summary["pending"]},
    ]
    sent = server.count
    done = run_cli("run", str(config), "--set", "run.max_cost_usd=10")
    assert done.code == 0
    assert server.count == 40 and done.summary["requests_sent"] == 40 - sent


def test_the_budget_stop_says_the_spend_then_and_the_total_the_requests_in_flight_made(
    tmp_path: Path,
) -> None:
    """Two requests in flight, neither answered before both were sent; the first answer
    reaches the budget. The second is still paid for: the stop says what was spent when the
    budget was reached and the total after, which is the summary's cost."""
    table(tmp_path, 3)  # each request: 1 prompt + 2 completion tokens, at $1,000 per million
    both_sent = threading.Barrier(2, timeout=30)

    def answer(body: dict[str, Any]) -> str:
        both_sent.wait()
        return echo(body)

    with FakeServer(answer=answer) as server:
        config = write_config(
            tmp_path,
            server.base_url,
            model={"pricing": {"input_per_million": 1000, "output_per_million": 1000}},
            run={"concurrency": 2, "max_cost_usd": 0.002},
        )
        ran = run_cli("run", str(config))
        assert server.count == 2
    assert_budget_stop(ran, "cost $0.0060")


def assert_budget_stop(ran: Ran, end_of_run: str) -> None:
    """Two requests of $0.003 each in flight past a $0.002 budget: the stop says the spend
    then and the total they brought; the third row pending; the run's last line ends so."""
    assert ran.code == 3, ran.stderr
    reached = "spent $0.0030 when the budget run.max_cost_usd ($0.002) was reached"
    assert f"stopping: {reached}; rerun with a higher budget to continue" in ran.stderr
    stopped = (
        f"{reached}; requests in flight then brought the total to $0.0060; rerun with a "
        "higher budget to continue"
    )
    assert f"stopped early: {stopped}\n" in ran.stderr
    summary = ran.summary
    assert summary["stopped"] == stopped
    assert summary["cost_usd"] == pytest.approx(0.006)
    assert (summary["answered"], summary["pending"]) == (2, 1)
    end = next(line for line in ran.stderr.splitlines() if "end of run" in line)
    assert end.endswith(end_of_run)


def test_validate_and_preview_only_read_so_a_held_store_does_not_stop_them(
    tmp_path: Path, server: FakeServer
) -> None:
    """The CLI reference lists exit 4 (another run holds the store) for the commands that
    take the lock, and not for validate and preview, which never do."""
    table(tmp_path, 3)
    config = write_config(tmp_path, server.base_url)
    assert run_cli("run", str(config)).code == 0
    with Lock(tmp_path / "out/store.db"):
        busy = run_cli("run", str(config))
        validate = run_cli("validate", str(config))
        preview = run_cli("preview", str(config))
    assert busy.code == 4, busy.stderr
    assert validate.code == 0 and validate.stdout.startswith("ok: 3 rows"), validate.stderr
    assert preview.code == 0 and json.loads(preview.stdout)["already_answered"] == 3
    reference = (ROOT / "docs/cli.md").read_text(encoding="utf-8")
    for command, listed in (("run", True), ("validate", False), ("preview", False)):
        text = reference.partition(f"\n## pipeline {command}\n")[2].partition("\n## ")[0]
        assert bool(re.search(r"^\| 4 \| another run", text, re.M)) is listed, command


def test_cost_comes_from_the_endpoint_or_is_unknown(tmp_path: Path) -> None:
    table(tmp_path, 5)
    with FakeServer() as priced:
        config = write_config(tmp_path, priced.base_url)
        ran = run_cli("run", str(config))
        tokens = ran.summary["prompt_tokens"], ran.summary["completion_tokens"]
        assert ran.summary["cost_usd"] == pytest.approx(tokens[0] * 1e-7 + tokens[1] * 4e-7)
        assert json.loads(run_cli("preview", str(config)).stdout)["estimated_cost_usd"] == 0
    (tmp_path / "out").rename(tmp_path / "old")
    with FakeServer(models=[{"id": "fake-model", "object": "model"}]) as unpriced:
        config = write_config(tmp_path, unpriced.base_url)
        ran = run_cli("run", str(config))
        assert ran.code == 0 and ran.summary["cost_usd"] is None
        preview = json.loads(run_cli("preview", str(config)).stdout)
        assert preview["estimated_cost_usd"] is None
        budget = run_cli("run", str(config), "--set", "run.max_cost_usd=1")
        assert budget.code == 2 and "model.pricing" in budget.stderr


@pytest.mark.parametrize(("threshold", "code"), [(0.0, 1), (0.05, 1), (0.2, 0)])
def test_fail_threshold_decides_the_exit_code(
    tmp_path: Path, server: FakeServer, threshold: float, code: int
) -> None:
    table(tmp_path, 10)
    server.script("row 4", [400])
    config = write_config(tmp_path, server.base_url, run={"fail_threshold": threshold})
    ran = run_cli("run", str(config))
    assert ran.code == code and ran.summary["failed"] == 1


def test_each_run_appends_a_line_to_the_run_log(tmp_path: Path, server: FakeServer) -> None:
    table(tmp_path, 3)
    config = write_config(tmp_path, server.base_url)
    run_cli("run", str(config))
    run_cli("run", str(config))
    lines = (tmp_path / "out/store.runs.jsonl").read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["requests_sent"] == 3 and second["requests_sent"] == 0
    assert first["config_hash"] == second["config_hash"] and len(first["config_hash"]) == 16
    assert first["date"].startswith("20") and second["exit_code"] == 0
    assert {"rows", "answered", "failed", "prompt_tokens", "cost_usd", "seconds"} <= set(first)


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path, server: FakeServer) -> None:
    table(tmp_path, 3)
    config = write_config(tmp_path, server.base_url)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from pipeline.lock import Lock\n"
            "with Lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)",
            str(tmp_path / "out/store.db"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        busy = run_cli("run", str(config))
        assert busy.code == 4 and f"pid {holder.pid}" in busy.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
    time.sleep(0.05)
    assert run_cli("run", str(config)).code == 0
