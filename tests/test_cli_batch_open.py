"""Open batches and every other command end to end: an online run, a detached run, a later
deadline, `status`, `batch export` and `batch import` over a store with batches not collected
yet. The CLI in a subprocess, the fake's Files and Batches routes over real HTTP; what is paid
for is read from what the fake received."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import Ran, run_cli
from fake_server import FakeServer
from test_cli_batch import ENV, answer, assert_complete, batch_states, job, output, run, texts

from pipeline.batchresults import A_REQUEST

STILL = ["validating", *["in_progress"] * 200, "completed"]  # open for as long as a test runs


def summary_file(config: Path) -> dict[str, Any]:
    return dict(json.loads((config.parent / "out/answers.summary.json").read_text()))


def status(config: Path, *args: str) -> dict[str, Any]:
    ran = run_cli("status", str(config), *args, env=ENV)
    return dict(json.loads(ran.stdout))


def grow(config: Path, rows: list[str]) -> None:
    """The input becomes `rows`."""
    pl.DataFrame({"id": list(range(len(rows))), "text": rows}).write_csv(config.parent / "in.csv")


def online(config: Path, *args: str) -> Ran:
    return run(config, "--set", "run.mode=online", *args)


def adds_up(summary: dict[str, Any]) -> bool:
    """Each answered row came from the store, from a batch, or from a request of this run (no
    row here repeats another, none is re-asked)."""
    return bool(
        summary["answered"]
        == summary["from_store"] + summary["batch_collected"] + summary["requests_sent"]
    )


@pytest.fixture
def server() -> Any:
    with FakeServer(answer=answer, batch_states=STILL) as fake:
        yield fake


def test_an_online_run_sends_nothing_in_an_open_batch_and_says_how_to_proceed(
    tmp_path: Path, server: FakeServer
) -> None:
    rows = texts(10)
    config = job(tmp_path, server, rows[:6], mode="online")
    assert run(config).code == 0
    assert server.count == 6
    grow(config, rows)

    detached = run(config, "--set", "run.mode=batch", "--detach")
    assert detached.code == 0, detached.stderr
    assert len(server.submitted_custom_ids()) == 4

    server.gets.clear()
    ran = online(config)
    assert ran.code == 3, ran.stderr
    assert server.count == 6  # not one chat request for the 4 rows in the open batch
    assert [path for path in server.gets if "/models" in path] == ["/v1/models/fake-model"]
    assert server.polls == 1 and server.cancels == 0  # one look, as a batch run takes
    summary = ran.summary
    assert (summary["rows"], summary["answered"], summary["pending"]) == (10, 6, 4)
    assert (summary["from_store"], summary["batch_pending"], summary["requests_sent"]) == (6, 4, 0)
    assert "4 rows wait on open batches (batch_1) and were not sent online" in summary["stopped"]
    assert "--set run.mode=batch" in ran.stderr and "--set run.batch.deadline=" in ran.stderr
    assert output(config)["_status"].to_list() == ["ok"] * 6 + ["pending"] * 4
    assert batch_states(config) == ["submitted"]

    server.batches[0].states = ["validating", "in_progress", "completed"]  # the next poll ends it
    collected = run(config, "--set", "run.mode=batch")
    assert collected.code == 0, collected.stderr
    assert server.count == 6 and len(server.submitted_custom_ids()) == 4  # each paid once
    summary = collected.summary
    assert (summary["answered"], summary["from_store"], summary["batch_collected"]) == (10, 6, 4)
    assert summary["requests_sent"] == 0 and summary["batch_pending"] == 0 and adds_up(summary)
    assert_complete(config, rows)


def test_an_online_run_collects_what_an_open_batch_finished_and_sends_only_the_rest(
    tmp_path: Path,
) -> None:
    rows = texts(8)
    with FakeServer(answer=answer, batch_states=["validating", "completed"]) as server:
        config = job(tmp_path, server, rows[:5])
        assert run(config, "--detach").code == 0
        grow(config, rows)  # 3 rows no batch holds

        ran = online(config)
        assert ran.code == 0, ran.stderr
        assert server.polls == 1 and server.downloads == 1
        assert sorted(body["messages"][-1]["content"] for body in server.requests) == rows[5:]
    summary = ran.summary
    assert (summary["answered"], summary["batch_collected"], summary["requests_sent"]) == (8, 5, 3)
    assert summary["from_store"] == 0 and summary["pending"] == 0 and adds_up(summary)
    assert summary["batches"][0]["state"] == "completed"
    assert batch_states(config) == ["collected"]
    assert_complete(config, rows)


def test_an_online_run_cancels_a_batch_past_a_shorter_deadline_and_sends_its_rest(
    tmp_path: Path,
) -> None:
    rows = texts(8)
    with FakeServer(answer=answer, batch_states=STILL, batch_partial=0.5) as server:
        config = job(tmp_path, server, rows)
        assert run(config, "--detach").code == 0  # deadline null: no deadline at submission
        time.sleep(1.1)
        ran = online(config, "--set", "run.batch.deadline=1s")
        assert ran.code == 0, ran.stderr
        assert server.cancels == 1 and server.batches[0].status == "cancelled"
        answered = {line["body"]["messages"][-1]["content"] for line in server.batches[0].lines[:4]}
        sent = [body["messages"][-1]["content"] for body in server.requests]
    assert sorted(sent) == sorted(set(rows) - answered)  # the 4 the batch never ran, once each
    summary = ran.summary
    assert (summary["batch_collected"], summary["requests_sent"], summary["answered"]) == (4, 4, 8)
    assert adds_up(summary)
    assert batch_states(config) == ["collected"]
    assert_complete(config, rows)


def test_the_deadline_is_the_running_config_s_measured_from_the_submission(
    tmp_path: Path,
) -> None:
    rows = texts(6)
    with FakeServer(answer=answer, batch_states=STILL, batch_partial=0.5) as server:
        config = job(tmp_path, server, rows, batch={"deadline": "6h"})
        assert run(config, "--detach").code == 0
        [shown] = status(config)["batches"]
        assert 6 * 3600 - 60 < shown["deadline_in_s"] <= 6 * 3600
        [shown] = status(config, "--set", "run.batch.deadline=2s")["batches"]
        assert shown["deadline_in_s"] <= 2
        assert (
            status(config, "--set", "run.batch.deadline=null")["batches"][0]["deadline_in_s"]
            is None
        )

        time.sleep(1.1)
        started = time.monotonic()
        ran = run(config, "--set", "run.batch.deadline=1s")  # batch mode, a shorter deadline
        took = time.monotonic() - started
        assert ran.code == 0, ran.stderr
        assert server.cancels == 1 and server.polls <= 3
        assert len(server.requests) == 3  # the half the cancelled batch never ran, online
    assert took < 20
    assert ran.summary["batch_collected"] == 3 and ran.summary["requests_sent"] == 3
    assert_complete(config, rows)


def test_a_detached_run_counts_the_rows_and_writes_its_summary_beside_the_output(
    tmp_path: Path, server: FakeServer
) -> None:
    rows = texts(8)
    config = job(tmp_path, server, rows[:5], mode="online")
    assert run(config).code == 0
    before = summary_file(config)
    grow(config, rows)

    ran = run(config, "--set", "run.mode=batch", "--detach")
    assert ran.code == 0, ran.stderr
    summary = ran.summary
    assert (summary["rows"], summary["answered"], summary["from_store"]) == (8, 5, 5)
    assert (summary["pending"], summary["batch_pending"], summary["batch_submitted"]) == (3, 3, 3)
    assert summary["output"] == "" and summary["requests_sent"] == 0
    assert summary["exit_code"] == 0 and summary["stopped"] is None
    written = summary_file(config)
    assert written != before and {k: v for k, v in written.items() if k != "seconds"} == {
        k: v for k, v in summary.items() if k != "seconds"
    }
    assert pl.read_parquet(config.parent / "out/answers.parquet").height == 5  # left as it was
    assert status(config)["pending"] == summary["pending"]


@pytest.mark.parametrize(
    ("states", "deadline", "code", "pending", "online_sent"),
    [
        (["validating", "failed"], None, 1, 0, 0),  # a whole batch fails: its rows failed
        (["validating", "in_progress", "expired"], "6h", 0, 0, 2),  # the rest goes online
        (["validating", "in_progress", "expired"], None, 3, 2, 0),  # the rest left pending
    ],
)
def test_exit_codes_of_a_batch_that_did_not_complete(
    tmp_path: Path,
    states: list[str],
    deadline: str | None,
    code: int,
    pending: int,
    online_sent: int,
) -> None:
    rows = texts(4)
    with FakeServer(answer=answer, batch_states=states, batch_partial=0.5) as server:
        config = job(tmp_path, server, rows, batch={"deadline": deadline})
        ran = run(config)
        assert len(server.requests) == online_sent
    assert ran.code == code, ran.stderr
    assert ran.summary["pending"] == pending
    assert ran.summary["failed"] == (4 if states[-1] == "failed" else 0)


def test_export_leaves_out_the_requests_in_an_open_batch(
    tmp_path: Path, server: FakeServer
) -> None:
    rows = texts(6)
    config = job(tmp_path, server, rows[:4])
    assert run(config, "--detach").code == 0
    grow(config, rows)

    out = tmp_path / "requests.jsonl"
    ran = run_cli("batch", "export", str(config), str(out))
    assert ran.code == 0, ran.stderr
    found = json.loads(ran.stdout)
    assert (found["requests"], found["in_open_batches"], found["rows"]) == (2, 4, 6)
    exported = [
        json.loads(line)["body"]["messages"][-1]["content"] for line in out.read_text().splitlines()
    ]
    assert exported == rows[4:]
    assert "4 rows are not exported: their requests are in open batches (batch_1)" in ran.stderr


def test_importing_the_exported_requests_marks_no_row_failed_and_exits_2(
    tmp_path: Path, server: FakeServer
) -> None:
    rows = texts(5)
    config = job(tmp_path, server, rows, mode="online")
    requests = tmp_path / "requests.jsonl"
    assert run_cli("batch", "export", str(config), str(requests)).code == 0

    ran = run_cli("batch", "import", str(config), str(requests))
    assert ran.code == 2, ran.stderr
    found = json.loads(ran.stdout)
    assert (found["ok"], found["failed"], found["unreadable"]) == (0, 0, 5)
    assert found["first_unreadable"][0]["why"] == A_REQUEST
    assert "5 lines are batch requests (method, url, body), not results" in ran.stderr
    assert "did you import the file `pipeline batch export` wrote?" in ran.stderr
    assert "nothing imported" in ran.stderr
    assert status(config)["failed"] == 0 and status(config)["pending"] == 5
    ran = run(config)
    assert ran.code == 0 and ran.summary["requests_sent"] == 5


def test_importing_another_config_s_results_says_so_and_exits_2(
    tmp_path: Path, server: FakeServer
) -> None:
    first = job(tmp_path / "a", server, texts(3), mode="online")
    requests = tmp_path / "a" / "requests.jsonl"
    assert run_cli("batch", "export", str(first), str(requests)).code == 0
    results = tmp_path / "results.jsonl"
    lines = []
    for line in requests.read_text().splitlines():
        request = json.loads(line)
        body = {"choices": [{"message": {"role": "assistant", "content": "x"}}], "usage": {}}
        response = {"status_code": 200, "body": body}
        lines.append(json.dumps({"custom_id": request["custom_id"], "response": response}))
    results.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    other = job(tmp_path / "b", server, ["something", "else"], mode="online")
    ran = run_cli("batch", "import", str(other), str(results))
    assert ran.code == 2, ran.stderr
    assert json.loads(ran.stdout)["skipped_not_this_config"] == 3
    assert (
        "none of its 3 lines match this config's requests: was it made from another config "
        "or an earlier prompt?"
    ) in ran.stderr


def test_an_online_run_that_cannot_poll_the_open_batches_still_sends_none_of_their_rows(
    tmp_path: Path, server: FakeServer
) -> None:
    rows = texts(5)
    config = job(tmp_path, server, rows[:3])
    assert run(config, "--detach").code == 0
    grow(config, rows)
    server.batch_routes = False  # /batches answers 404 now

    ran = online(config)
    assert ran.code == 3, ran.stderr
    assert "cannot poll the open batches" in ran.stderr
    assert sorted(body["messages"][-1]["content"] for body in server.requests) == rows[3:]
    assert ran.summary["batch_pending"] == 3 and ran.summary["answered"] == 2
    assert batch_states(config) == ["submitted"]


def test_reparse_over_an_open_batch_says_the_rows_wait_in_it(
    tmp_path: Path, server: FakeServer
) -> None:
    rows = texts(6)
    config = job(tmp_path, server, rows[:4], mode="online")
    assert run(config).code == 0
    before = (config.parent / "out/answers.parquet").read_bytes()
    grow(config, rows)
    assert run(config, "--set", "run.mode=batch", "--detach").code == 0

    ran = run_cli("reparse", str(config), env=ENV)
    assert ran.code == 1, ran.stderr
    assert "2 of 6 rows have no answer in the store" in ran.summary["error"]
    assert (
        "2 wait in an open batch, which `pipeline run CONFIG --set run.mode=batch` collects"
        in (ran.summary["error"])
    )
    assert "changes the requests" not in ran.summary["error"]  # the prompt did not change
    assert (config.parent / "out/answers.parquet").read_bytes() == before
    assert server.count == 4
