"""After `pipeline run --detach`, end to end: `preview` and `status` count the rows in open
batches apart (`batch_pending`), not as requests to send or to pay for; `--detach` with
`--report` is refused before anything is submitted. The CLI in a subprocess, the fake's
Batches routes over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from e2e import run_cli
from fake_server import FakeServer
from test_cli_batch import ENV, answer, job, run, texts
from test_cli_batch_open import STILL, grow, online, status


@pytest.fixture
def server() -> Any:
    with FakeServer(answer=answer, batch_states=STILL) as fake:
        yield fake


def preview(config: Path, *args: str) -> dict[str, Any]:
    ran = run_cli("preview", str(config), "-n", "0", *args, env=ENV)
    assert ran.code == 0, ran.stderr
    return dict(json.loads(ran.stdout))


def test_preview_and_status_count_the_rows_in_open_batches_apart(
    tmp_path: Path, server: FakeServer
) -> None:
    rows = texts(6)
    config = job(tmp_path, server, rows)
    before = preview(config)
    assert (before["to_send"], before["batch_pending"]) == (6, 0)
    assert before["estimated_cost_usd"] > 0

    grow(config, rows[:4])
    assert run(config, "--detach").code == 0
    grow(config, rows)
    after = preview(config)
    assert (after["rows"], after["already_answered"], after["batch_pending"]) == (6, 0, 4)
    assert (after["unique_requests"], after["to_send"]) == (6, 2)  # the 4 are paid for already
    # Every row's request is the same size here: 2 of 6 are left to pay for.
    assert after["estimated_prompt_tokens_to_send"] * 3 == before["estimated_prompt_tokens_to_send"]
    assert after["max_completion_tokens_to_send"] * 3 == before["max_completion_tokens_to_send"]
    assert after["estimated_cost_usd"] == pytest.approx(before["estimated_cost_usd"] / 3)
    online_preview = preview(config, "--set", "run.mode=online")
    assert (online_preview["to_send"], online_preview["batch_pending"]) == (2, 4)

    counted = status(config)
    assert (counted["rows"], counted["pending"], counted["batch_pending"]) == (6, 6, 4)
    assert [b["requests"] for b in counted["batches"]] == [4]
    assert preview(config, "--limit", "3")["batch_pending"] == 3
    assert status(config, "--limit", "5")["batch_pending"] == 4

    ran = online(config)  # sends what preview said it would, and only that
    assert len(server.requests) == after["to_send"] == 2
    assert ran.summary["batch_pending"] == after["batch_pending"]


def test_detach_with_report_is_refused_before_anything_is_submitted(
    tmp_path: Path, server: FakeServer
) -> None:
    config = job(tmp_path, server, texts(4))
    report = tmp_path / "rep/r.html"
    ran = run(config, "--detach", "--report", str(report))
    assert ran.code == 2, ran.stderr
    assert "--report" in ran.stderr and "--detach" in ran.stderr
    assert ran.summary["exit_code"] == 2 and ran.summary["batch_submitted"] == 0
    assert (server.uploads, server.creates, len(server.requests)) == (0, 0, 0)
    assert not report.parent.exists()  # not even its folder
    assert status(config)["batches"] == []

    submitted = run(config, "--detach")  # submitted without it, then
    assert submitted.code == 0, submitted.stderr
    batch = server.batch("batch_1")  # the batch ends at its next poll
    batch.states = [*batch.states[: batch.step + 1], "completed"]
    collected = run(config, "--report", str(report))  # the run that writes the output
    assert collected.code == 0, collected.stderr
    assert collected.summary["batch_collected"] == 4 and server.creates == 1
    assert "<html" in report.read_text().lower()
