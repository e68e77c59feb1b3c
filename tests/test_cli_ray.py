"""The Ray engine end to end through the CLI, on a local Ray that each run starts and stops.

Each Ray run pays Ray's start-up (a few seconds on 2 cores), so each test does a lot with few
runs. Bounds on timing are ones a slower machine meets more easily.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import ROOT, Ran, run_cli, write_config
from fake_server import FakeServer, last_content

pytest.importorskip(
    "ray", reason="the Ray engine's tests need the `ray` extra (make test installs it)"
)

RAY = {"engine": "ray", "ray": {"workers": 2}}
ENV = {"TEST_KEY": "ray-test-key-0123456789"}


def make_table(folder: Path, rows: int, distinct: int | None = None) -> None:
    """`rows` rows over `distinct` texts (repeats share one request)."""
    distinct = distinct or rows
    texts = [f"item {i % distinct}" for i in range(rows)]
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"id": range(rows), "text": texts}).write_csv(folder / "in.csv")


def job(folder: Path, server: FakeServer, **run: Any) -> Path:
    settings = {"concurrency": 8, "chunk_rows": 50, **run}
    return write_config(folder, server.base_url, run=settings)


def answers(folder: Path, name: str = "answers.parquet") -> pl.DataFrame:
    return pl.read_parquet(folder / "out" / name)


def stored(folder: Path) -> int:
    with sqlite3.connect(folder / "out/store.db") as db:
        union = "SELECT key FROM responses UNION SELECT key FROM recent"
        return int(db.execute(f"SELECT count(*) FROM ({union})").fetchone()[0])


def start_run(config: Path, *args: str) -> subprocess.Popen[str]:
    """`pipeline run CONFIG` in the background, as a user starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(config), "--no-progress", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(check: Any, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def ray_workers(driver: int) -> list[int]:
    """The Ray worker processes a run started: descendants of its process (Ray's own
    processes start them) that name themselves `ray::Worker`."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    family, grew = {driver}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    return [pid for pid in family - {driver} if "ray::Worker" in command(pid)]


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def gone(pids: list[int]) -> bool:
    return not any("ray::Worker" in command(pid) for pid in pids)


def ran_ok(ran: Ran) -> None:
    assert ran.code == 0, ran.stdout + ran.stderr
    assert ENV["TEST_KEY"] not in ran.stdout + ran.stderr


def test_ray_writes_what_local_writes_and_either_engine_finishes_the_others_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows, distinct = 300, 260
    # A short folder (Ray's socket paths must stay short) where each local Ray keeps its files.
    ray_files = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(ray_files))
    with FakeServer() as server:
        make_table(tmp_path / "local", rows, distinct)
        ran_ok(run_cli("run", str(job(tmp_path / "local", server)), env=ENV))
        expected = answers(tmp_path / "local")
        assert server.count == distinct

        for first, then in (("local", "ray"), ("ray", "local")):
            folder = tmp_path / f"{first}-then-{then}"
            make_table(folder, rows, distinct)
            config = job(folder, server, engine=first, ray=RAY["ray"])
            before = server.count
            part = run_cli("run", str(config), "--limit", "120", env=ENV)
            ran_ok(part)
            sent_first = server.count - before
            rest = run_cli("run", str(config), "--set", f"run.engine={then}", env=ENV)
            ran_ok(rest)
            assert sent_first == 120
            assert server.count - before == distinct  # each request paid once, by either engine
            assert rest.summary["from_store"] == 160  # 120 rows, and 40 repeats of them
            got = answers(folder)
            assert got.equals(expected), (first, then)
            assert got["answer"].to_list() == expected["answer"].to_list()
            ray_run = part if first == "ray" else rest
            assert ray_run.summary["engine"] == "ray" and ray_run.summary["workers"] == 2
            assert ray_run.summary["ray_start_s"] > 0
            assert "workers 2" in ray_run.stderr  # the progress's last line says how many
    assert (tmp_path / "ray-then-local/out/answers.first-120.parquet").exists()
    assert list(ray_files.iterdir()) == []  # each run removed its Ray's sessions and logs
    ray_files.rmdir()


def test_the_workers_share_one_budget_under_the_servers_limit(tmp_path: Path) -> None:
    # A LiteLLM-like gateway admits 600 requests a minute (a fixed 60 s window, said in its
    # headers), the budget told is the same: three workers with 12 requests in flight share
    # it, so together they send 10 a second (each alone would send that much), and the
    # gateway answers no 429.
    quota, rows = 600, 100
    make_table(tmp_path, rows)
    with FakeServer(litellm_window=(quota, 60.0), latency=0.02) as server:
        run = {"requests_per_minute": quota, "concurrency": 12}
        config = job(tmp_path, server, **run, engine="ray", ray={"workers": 3})
        ran = run_cli("run", str(config), env=ENV, timeout=240)
        arrivals = sorted(server.arrivals, key=lambda a: a.at)
    ran_ok(ran)
    assert [a.status for a in arrivals] == [200] * rows  # no 429, no retry
    assert answers(tmp_path)["_status"].to_list() == ["ok"] * rows
    times = [a.at for a in arrivals]
    # Send times are booked evenly for the three workers together. A worker kept off the CPU
    # sends what was booked meanwhile when it is back, so a busy machine bunches arrivals:
    # in any 2 s, at most 2 s of the rate plus a second of such delay and the first leases
    # (three workers each spending the whole budget would send 60).
    rate = quota / 60
    for i, at in enumerate(times):
        assert sum(at <= t < at + 2.0 for t in times[i:]) <= 3 * rate + 3, i
    assert times[-1] - times[0] >= (rows - 4) / (quota / 60)
    assert times[-1] - times[0] <= 2 * rows / (quota / 60)  # at least half the rate


def test_a_driver_killed_mid_run_resumes_on_ray_repeating_only_what_was_in_flight(
    tmp_path: Path,
) -> None:
    rows, concurrency = 300, 8
    make_table(tmp_path, rows)
    with FakeServer(latency=0.03) as server:
        config = job(tmp_path, server, concurrency=concurrency, engine="ray", ray=RAY["ray"])
        process = start_run(config)
        wait_for(lambda: server.count >= rows // 3)
        workers = ray_workers(process.pid)
        assert workers, "no Ray worker process found"
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        kept = stored(tmp_path)
        wait_for(lambda: gone(workers), 60)  # the workers die with the driver
        time.sleep(0.2)
        first = [last_content(body) for body in server.requests]
        assert rows // 3 <= len(first) < rows
        assert len(first) - kept <= concurrency  # answered but not stored: in flight only

        ran = run_cli("run", str(config), env=ENV)
        second = [last_content(body) for body in server.requests[len(first) :]]
    ran_ok(ran)
    repeated = set(first) & set(second)
    assert len(repeated) <= concurrency, repeated
    assert set(first) | set(second) == {f"item {i}" for i in range(rows)}
    got = answers(tmp_path)
    assert got["_status"].to_list().count("ok") == rows
    assert got["answer"][0] == "echo: item 0"


def test_a_worker_killed_mid_run_loses_nothing_and_repeats_only_its_requests(
    tmp_path: Path,
) -> None:
    rows, concurrency = 300, 8
    make_table(tmp_path, rows)
    with FakeServer(latency=0.03) as server:
        config = job(tmp_path, server, concurrency=concurrency, engine="ray", ray=RAY["ray"])
        process = start_run(config)
        wait_for(lambda: server.count >= rows // 3)
        victims = ray_workers(process.pid)
        assert victims, "no Ray worker process found"
        os.kill(victims[0], signal.SIGKILL)
        out, err = process.communicate(timeout=180)
        texts = [last_content(body) for body in server.requests]
    assert process.returncode == 0, out + err
    assert "Ray worker" in err and "lost" in err  # said, once per loss
    assert len(texts) - len(set(texts)) <= concurrency  # only the dead worker's in flight
    got = answers(tmp_path)
    assert got["_status"].to_list().count("ok") == rows
    assert got["answer"].to_list()[:3] == ["echo: item 0", "echo: item 1", "echo: item 2"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_stops_the_cluster_and_keeps_every_answer(
    tmp_path: Path, signum: signal.Signals
) -> None:
    rows = 300
    make_table(tmp_path, rows)
    with FakeServer(latency=0.03) as server:
        config = job(tmp_path, server, concurrency=4, engine="ray", ray=RAY["ray"])
        process = start_run(config)
        wait_for(lambda: server.count >= 40)
        workers = ray_workers(process.pid)
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
        sent = server.count
        time.sleep(0.5)
        assert server.count == sent  # nothing is sent after the run ends
    code = 130 if signum == signal.SIGINT else 143
    assert process.returncode == code, err
    assert ("interrupted" if code == 130 else "stopped by SIGTERM") in err
    assert "Traceback" not in err
    assert workers and gone(workers)  # stopped with the run
    kept = stored(tmp_path)
    assert kept >= sent - 4
    summary = Ran(process.returncode, out, err).summary  # printed, counted from the store
    assert summary["exit_code"] == code and summary["engine"] == "ray"
    assert summary["rows"] == rows and summary["answered"] == kept
    assert summary["pending"] == rows - kept


def test_without_ray_installed_the_error_says_what_to_install(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    make_table(tmp_path, 3)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", run={"engine": "ray"})
    env = {**ENV, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}"}
    ran = run_cli("run", str(config), env=env)
    assert ran.code == 2
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'pipeline[ray]'" in lines[0], ran.stderr


def test_a_rejected_key_stops_every_worker_and_the_rows_stay_pending(tmp_path: Path) -> None:
    rows, concurrency = 60, 4
    make_table(tmp_path, rows)
    with FakeServer() as server:
        server.always = 401
        config = job(tmp_path, server, concurrency=concurrency, engine="ray", ray=RAY["ray"])
        ran = run_cli("run", str(config), env=ENV)
        sent = server.count
    assert ran.code == 3, ran.stderr
    assert "Invalid API key" in ran.stderr and "TEST_KEY" in ran.stderr
    assert ENV["TEST_KEY"] not in ran.stderr + ran.stdout
    assert sent <= 2 * 3 + concurrency  # each worker stops after 3 in a row; the rest hear it
    assert ran.summary["stopped"] and ran.summary["pending"] >= rows - sent
    assert set(answers(tmp_path)["_status"]) <= {"pending", "failed"}
