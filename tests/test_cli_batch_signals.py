"""Ctrl-C and SIGTERM while a batch run waits for its batches, end to end: the summary counts
every row as the store has it then (the rows in open batches pending, those a collected
batch answered answered), with what the batches cost so far, and a rerun collects the rest
without submitting anything again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from e2e import ROOT
from fake_server import FakeServer
from test_cli_batch import ENV, answer, assert_complete, job, run, texts, wait_for
from test_cli_batch_open import STILL

CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def start(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(config), "--no-progress", *args],
        env={**os.environ, **ENV, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def last_json_line(text: str) -> dict[str, object]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, text
    return dict(json.loads(lines[-1]))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_waiting_for_batches_counts_the_rows_in_them(
    tmp_path: Path, signum: signal.Signals
) -> None:
    rows = texts(6)
    with FakeServer(answer=answer, batch_states=STILL) as server:
        server.script_batch(["validating", "completed"])  # the first batch ends at once
        config = job(tmp_path, server, rows, batch={"max_requests_per_file": 3})
        process = start(config)
        # The first batch was collected; the second is polled and stays open.
        wait_for(lambda: server.downloads >= 1 and server.polls >= 4, "the second batch's polls")
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
        code = CODES[signum]
        assert process.returncode == code, err
        assert "Traceback" not in err

        printed = last_json_line(out)
        assert printed["exit_code"] == code and signum.name in str(printed["stopped"])
        assert (printed["rows"], printed["answered"], printed["batch_collected"]) == (6, 3, 3)
        assert (printed["pending"], printed["batch_pending"]) == (3, 3)
        assert printed["batch_submitted"] == 6 and printed["requests_sent"] == 0
        assert printed["prompt_tokens"] > 0 and printed["cost_usd"] > 0  # the first batch's
        written = json.loads((tmp_path / "out/answers.summary.json").read_text())
        assert {k: v for k, v in written.items() if k != "seconds"} == {
            k: v for k, v in printed.items() if k != "seconds"
        }
        logged = json.loads((tmp_path / "out/store.runs.jsonl").read_text().splitlines()[-1])
        assert (logged["rows"], logged["answered"], logged["pending"]) == (6, 3, 3)

        still = server.batch("batch_2")  # the open batch ends at its next poll
        still.states = [*still.states[: still.step + 1], "completed"]
        rerun = run(config)
        assert rerun.code == 0, rerun.stderr
        assert server.creates == 2  # nothing submitted again
        assert (rerun.summary["from_store"], rerun.summary["batch_collected"]) == (3, 3)
    assert_complete(config, rows)


def test_a_signal_while_a_detached_run_uploads_counts_the_rows(tmp_path: Path) -> None:
    rows = texts(4)
    with FakeServer(answer=answer, batch_states=STILL, upload_delay_s=2.0) as server:
        config = job(tmp_path, server, rows)
        process = start(config, "--detach")
        wait_for(lambda: server.uploads >= 1, "the upload")  # held by the fake
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    printed = last_json_line(out)
    assert (printed["rows"], printed["pending"], printed["answered"]) == (4, 4, 0)
    assert printed["batch_submitted"] == 0 and server.creates == 0
