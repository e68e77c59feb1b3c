"""Ctrl-C and SIGTERM mid-run, end to end: a graceful stop with a truthful summary.

The fake server answers the first rows at once and holds the rest until the test lets them
go, so the signal always finds the same rows answered and the same requests in flight.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import ROOT, run_cli, write_config
from fake_server import FakeServer, last_content

ROWS = 40
ANSWERED = 10  # the rows the server answers at once; it holds the others
CONCURRENCY = 2
SECRET = "sk-signal-test-0123456789abcdef"
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def held_server(gate: threading.Event) -> FakeServer:
    """A server that answers `item 0` to `item 9` at once, the others once `gate` is set."""

    def answer(body: dict[str, Any]) -> str:
        text = last_content(body)
        if int(text.split()[1]) >= ANSWERED:
            gate.wait(60)
        return f"echo: {text}"

    return FakeServer(answer=answer)


def start_run(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "TEST_KEY": SECRET},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(check: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def last_json_line(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, text
    return dict(json.loads(lines[-1]))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_run_prints_writes_and_logs_what_the_store_kept(
    tmp_path: Path, signum: signal.Signals
) -> None:
    pl.DataFrame({"id": range(ROWS), "text": [f"item {i}" for i in range(ROWS)]}).write_csv(
        tmp_path / "in.csv"
    )
    gate = threading.Event()
    with held_server(gate) as server:
        try:
            config = write_config(tmp_path, server.base_url, run={"concurrency": CONCURRENCY})
            process = start_run(config)
            # Both workers hold a request the server keeps: every earlier one is stored.
            wait_for(lambda: server.count >= ANSWERED + CONCURRENCY)
            process.send_signal(signum)
            out, err = process.communicate(timeout=60)
            sent = server.count
        finally:
            gate.set()
    code = CODES[signum]
    assert process.returncode == code, err
    for noise in ("Traceback", "internal error", "never retrieved", SECRET):
        assert noise not in out + err, err
    said = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    assert f"{said}: answers so far are in the store" in err, err
    assert "the output was left as it was" in err

    printed = last_json_line(out)
    assert printed["exit_code"] == code
    assert signum.name in printed["stopped"]
    assert printed["rows"] == ROWS
    assert printed["answered"] == ANSWERED
    assert printed["pending"] == ROWS - ANSWERED
    assert printed["failed"] == printed["from_store"] == 0
    assert printed["requests_sent"] == sent == ANSWERED + CONCURRENCY
    written = json.loads((tmp_path / "out/answers.summary.json").read_text())
    assert {k: v for k, v in written.items() if k != "seconds"} == {
        k: v for k, v in printed.items() if k != "seconds"
    }
    logged = json.loads((tmp_path / "out/store.runs.jsonl").read_text().splitlines()[-1])
    assert logged["command"] == "run" and logged["exit_code"] == code
    assert (logged["rows"], logged["answered"], logged["pending"]) == (ROWS, ANSWERED, 30)
    assert f"wrote {tmp_path / 'out/answers.summary.json'}" in err
    assert not (tmp_path / "out/answers.parquet").exists()  # the output is left as it was

    status = run_cli("status", str(config))
    assert json.loads(status.stdout)["done"] == ANSWERED  # the store kept every answer

    with FakeServer() as server:  # a rerun sends only what is left
        config = write_config(tmp_path, server.base_url, run={"concurrency": CONCURRENCY})
        rerun = run_cli("run", str(config), env={"TEST_KEY": SECRET})
        assert rerun.code == 0, rerun.stderr
        assert server.count == ROWS - ANSWERED
    assert rerun.summary["from_store"] == ANSWERED


@dataclass
class Stopped:
    server: FakeServer
    process: subprocess.Popen[str]
    lines: list[str]  # the run's stderr, as it comes
    out: str = ""  # its stdout, once it ended


@contextlib.contextmanager
def stopped_at_the_model_check(folder: Path) -> Iterator[Stopped]:
    """A one-row run sent SIGTERM while its model check waits at the server; the check is
    let go when the block ends, then the run's stdout is read."""
    pl.DataFrame({"id": [0], "text": ["item 0"]}).write_csv(folder / "in.csv")
    gate, asked = threading.Event(), threading.Event()
    with FakeServer() as server:
        server.models = HeldModels(server.models, asked, gate)
        config = write_config(folder, server.base_url, run={"concurrency": 1})
        with start_run(config) as process:
            stopped = Stopped(server, process, [])
            reader = threading.Thread(target=lambda: stopped.lines.extend(process.stderr or []))
            reader.start()
            try:
                wait_for(asked.is_set)  # the model check waits at the server
                process.send_signal(signal.SIGTERM)
                wait_for(lambda: any("stopping" in line for line in stopped.lines))
                yield stopped
            finally:
                gate.set()  # the check's thread ends; the run does not go on
            stopped.out = process.stdout.read() if process.stdout else ""
            process.wait(timeout=60)
            reader.join(timeout=60)


def test_a_signal_during_the_model_check_says_nothing_was_sent(tmp_path: Path) -> None:
    """Stopped while the preflight waits on the server: the summary still comes, with the
    row pending and no request sent."""
    with stopped_at_the_model_check(tmp_path) as stopped:
        pass
    process, err = stopped.process, "".join(stopped.lines)
    assert process.returncode == 143, err
    printed = last_json_line(stopped.out)
    assert printed["exit_code"] == 143 and "SIGTERM" in printed["stopped"]
    assert (printed["requests_sent"], printed["rows"], printed["pending"]) == (0, 1, 1)
    assert stopped.server.count == 0
    assert "Traceback" not in err


def test_a_second_signal_ends_the_process_at_once(tmp_path: Path) -> None:
    with stopped_at_the_model_check(tmp_path) as stopped:
        # The graceful stop cannot end while the model check's thread waits here.
        stopped.process.send_signal(signal.SIGTERM)
        stopped.process.wait(timeout=30)
    assert stopped.process.returncode == -signal.SIGTERM, "".join(stopped.lines)
    assert stopped.server.count == 0


class HeldModels(list[dict[str, Any]]):
    """The server's models, which the model route reads only once `gate` is set."""

    def __init__(self, models: list[dict[str, Any]], asked: threading.Event, gate: threading.Event):
        super().__init__(models)
        self.asked, self.gate = asked, gate

    def __iter__(self) -> Any:
        self.asked.set()
        self.gate.wait(60)
        return super().__iter__()


def test_a_recount_that_takes_too_long_says_so_in_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count after a signal is bounded (systemd kills a unit that takes too long to
    stop): past it, the summary says `pipeline status` counts the rows."""
    import asyncio

    from pipeline import ending
    from pipeline.configfile import load
    from pipeline.runner import open_input
    from pipeline.summary import Summary

    pl.DataFrame({"text": [f"item {n}" for n in range(ROWS)]}).write_csv(tmp_path / "in.csv")
    config = load(write_config(tmp_path, "http://127.0.0.1:9/v1"), [])
    monkeypatch.setattr(ending, "RECOUNT_S", 0.0)
    summary = Summary()
    summary.stopped = "interrupted by SIGTERM"
    asyncio.run(ending.recount(config, open_input(config), summary, set()))
    assert summary.stopped == (
        "interrupted by SIGTERM; the rows were not all counted within 0s: `pipeline status` "
        "counts them"
    )
