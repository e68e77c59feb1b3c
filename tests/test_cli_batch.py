"""`pipeline run` in batch mode end to end: the CLI in a subprocess, the fake's Files and
Batches routes over real HTTP, outcomes read from the output, the store and the fake."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import ROOT, Ran, run_cli, write_config
from fake_server import Batch, FakeServer, last_content

ENV = {"TEST_KEY": "sk-test"}
POLL_S = 0.05  # the first polls of a batch; doubling, so a few steps take well under 2 s
WAIT_S = 30.0  # the longest any test waits for the fake to see something
HOLD_S = 2.0  # the fake holds an upload or a create this long: the test kills the run meanwhile


def answer(body: dict[str, Any]) -> str:
    return f"ans-{last_content(body)}"


def texts(n: int) -> list[str]:
    return [f"row-{i:02d}" for i in range(n)]


def job(
    folder: Path,
    server: FakeServer,
    rows: list[str],
    *,
    mode: str = "batch",
    batch: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> Path:
    """A config over `rows` in `folder`, polling fast and, unless told, with no deadline."""
    folder.mkdir(exist_ok=True)
    pl.DataFrame({"id": list(range(len(rows))), "text": rows}).write_csv(folder / "in.csv")
    settings = {"mode": mode, "batch": {"poll_s": POLL_S, "deadline": None, **(batch or {})}}
    settings.update(sections.pop("run", {}))
    return write_config(folder, server.base_url, run=settings, **sections)


def run(config: Path, *args: str) -> Ran:
    return run_cli("run", str(config), "--no-progress", *args, env=ENV, timeout=60)


def start(config: Path, *args: str) -> subprocess.Popen[str]:
    """`pipeline run CONFIG` in the background, to be killed."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(config), "--no-progress", *args],
        env={**os.environ, **ENV, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def wait_for(what: Callable[[], bool], why: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not what():
        assert time.monotonic() < deadline, f"gave up waiting for {why}"
        time.sleep(0.01)


def kill_9(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL


def output(config: Path) -> pl.DataFrame:
    return pl.read_parquet(config.parent / "out/answers.parquet")


def stored(config: Path) -> dict[str, tuple[str, str | None]]:
    """The store's responses: key -> (status, error)."""
    with sqlite3.connect(config.parent / "out/store.db") as db:
        rows = db.execute("SELECT key, status, error FROM responses").fetchall()
    return {key: (status, error) for key, status, error in rows}


def batch_states(config: Path) -> list[str]:
    """The state of each batch the store records, oldest first."""
    with sqlite3.connect(config.parent / "out/store.db") as db:
        return [state for (state,) in db.execute("SELECT state FROM batches ORDER BY id")]


def lines_by_text(batch: Batch) -> dict[str, str]:
    """A fake batch's lines: the row text each asks about -> its custom_id."""
    return {last_content(line["body"]): line["custom_id"] for line in batch.lines}


def all_keys(server: FakeServer) -> dict[str, str]:
    """Every line of every batch the fake holds: row text -> custom_id."""
    keys: dict[str, str] = {}
    for batch in server.batches:
        keys.update(lines_by_text(batch))
    return keys


def assert_complete(config: Path, rows: list[str]) -> pl.DataFrame:
    out = output(config)
    assert out["text"].to_list() == rows
    assert out["answer"].to_list() == [f"ans-{text}" for text in rows]
    assert set(out["_status"]) == {"ok"}
    return out


def assert_each_key_submitted_once(server: FakeServer) -> None:
    repeated = [key for key, n in Counter(server.submitted_custom_ids()).items() if n > 1]
    assert not repeated, repeated


def assert_submitted_twice_only(server: FakeServer, again: set[str]) -> None:
    """Each key in one batch, but `again` (unanswered by the first): in two."""
    counts = Counter(server.submitted_custom_ids())
    assert {key for key, n in counts.items() if n > 1} == again
    assert max(counts.values()) == 2


@pytest.fixture
def server() -> Any:
    with FakeServer(answer=answer) as fake:
        yield fake


def test_batch_run_writes_what_an_online_run_writes_and_a_rerun_submits_nothing(
    tmp_path: Path, server: FakeServer
) -> None:
    rows = [*texts(9), "row-03", "row-05"]  # repeated rows: one request each
    online = job(tmp_path / "online", server, rows, mode="online")
    ran = run(online)
    assert ran.code == 0, ran.stderr
    assert server.count == 9 and server.uploads == 0

    batch = job(tmp_path / "batch", server, rows)
    ran = run(batch)
    assert ran.code == 0, ran.stderr
    assert server.count == 9  # no chat request
    assert (server.uploads, server.creates) == (1, 1)
    assert sorted(lines_by_text(server.batches[0])) == texts(9)
    assert output(batch).equals(output(online))
    summary = ran.summary
    assert summary["mode"] == "batch" and summary["batch_submitted"] == 9
    assert summary["answered"] == len(rows) and summary["requests_sent"] == 0
    assert [b["state"] for b in summary["batches"]] == ["completed"]
    assert {status for status, _ in stored(batch).values()} == {"ok"}
    assert batch_states(batch) == ["collected"]

    again = run(batch)
    assert again.code == 0, again.stderr
    assert (server.uploads, server.creates, server.count) == (1, 1, 9)
    assert again.summary["batch_submitted"] == 0 and again.summary["requests_sent"] == 0
    assert again.summary["from_store"] == len(rows)
    assert output(batch).equals(output(online))


def test_detach_submits_and_exits_then_a_plain_run_collects(
    tmp_path: Path, server: FakeServer
) -> None:
    rows = texts(6)
    config = job(tmp_path, server, rows)
    ran = run(config, "--detach")
    assert ran.code == 0, ran.stderr
    summary = ran.summary
    assert summary["mode"] == "batch" and summary["batch_submitted"] == 6
    assert summary["batches"] == [
        {"id": "batch_1", "state": "validating", "requests": 6, "completed": 0, "failed": 0}
    ]
    assert (summary["rows"], summary["pending"], summary["batch_pending"]) == (6, 6, 6)
    assert summary["answered"] == 0 and summary["output"] == ""
    assert "submitted 6 requests in batches" in ran.stderr
    assert not (tmp_path / "out/answers.parquet").exists()
    written = json.loads((tmp_path / "out/answers.summary.json").read_text())
    assert written["batch_submitted"] == 6 and written["pending"] == 6
    assert (server.uploads, server.creates, server.polls, server.count) == (1, 1, 0, 0)
    assert batch_states(config) == ["submitted"]

    collected = run(config)
    assert collected.code == 0, collected.stderr
    assert (server.uploads, server.creates, server.count) == (1, 1, 0)
    assert server.polls >= 3 and server.downloads == 1
    assert collected.summary["batch_submitted"] == 0
    assert collected.summary["answered"] == collected.summary["batch_collected"] == 6
    assert collected.summary["from_store"] == 0
    assert_complete(config, rows)
    assert batch_states(config) == ["collected"]


def test_error_lines_make_their_rows_failed_with_the_error(tmp_path: Path) -> None:
    rows = texts(8)
    with FakeServer(answer=answer, batch_fail=["row-03", "row-06"]) as server:
        config = job(tmp_path, server, rows)
        ran = run(config)
    assert ran.code == 1, ran.stderr
    out = output(config)
    failed = out.filter(pl.col("_status") == "failed")
    assert failed["text"].to_list() == ["row-03", "row-06"]
    assert all("batch_fail failed this request" in error for error in failed["_error"])
    assert "2 rows failed" in ran.stderr


def test_failed_lines_are_stored_with_their_error_and_only_they_go_again(tmp_path: Path) -> None:
    rows = texts(8)
    with FakeServer(answer=answer, batch_fail=["row-03", "row-06"]) as server:
        config = job(tmp_path, server, rows)
        ran = run(config)
        assert ran.code in (1, 3), ran.stderr  # 3 while the output shows those rows pending
        first = lines_by_text(server.batches[0])
        failed = {first["row-03"], first["row-06"]}
        found = stored(config)
        assert {key for key, (status, _) in found.items() if status == "failed"} == failed
        assert all("batch_fail failed this request" in str(found[key][1]) for key in failed)
        out = output(config)
        answered = out.filter(pl.col("_status") == "ok")["text"].to_list()
        assert answered == [text for text in rows if text not in ("row-03", "row-06")]

        server.batch_fail = None
        again = run(config)
        assert again.code == 0, again.stderr
        assert len(server.batches) == 2
        assert set(server.batches[1].custom_ids) == failed
        assert again.summary["batch_submitted"] == 2
        assert server.count == 0
    assert_complete(config, rows)
    assert_submitted_twice_only(server, failed)


def test_expired_batch_keeps_its_answers_and_the_next_run_submits_the_rest(
    tmp_path: Path,
) -> None:
    rows = texts(8)
    states = ["validating", "in_progress", "expired"]
    with FakeServer(answer=answer, batch_states=states, batch_partial=0.5) as server:
        config = job(tmp_path, server, rows)
        ran = run(config)
        assert ran.code == 3, ran.stderr
        assert "4 rows have no answer from the batches" in ran.stderr
        assert "the next run submits them again" in ran.stderr
        out = output(config)
        done = out.filter(pl.col("_status") == "ok")
        assert done["answer"].to_list() == [f"ans-{text}" for text in done["text"]]
        assert done.height == 4
        assert out.filter(pl.col("_status") != "ok")["_status"].to_list() == ["pending"] * 4
        assert ran.summary["pending"] == 4 and ran.summary["answered"] == 4
        assert server.count == 0
        # The lines the batch never ran are no failures: the store leaves them unanswered.
        keys = lines_by_text(server.batches[0])
        answered = {keys[text] for text in done["text"]}
        assert stored(config) == {key: ("ok", None) for key in answered}
        status = run_cli("status", str(config), env=ENV)
        assert json.loads(status.stdout)["pending"] == 4, status.stdout

        server.batch_states = ["validating", "completed"]
        again = run(config)
        assert again.code == 0, again.stderr
        unanswered = set(keys.values()) - answered
        assert set(server.batches[1].custom_ids) == unanswered
        assert server.count == 0
    assert_submitted_twice_only(server, unanswered)
    assert_complete(config, rows)


def test_deadline_cancels_once_keeps_partial_answers_and_sends_the_rest_online(
    tmp_path: Path,
) -> None:
    rows = texts(10)
    states = ["validating", *["in_progress"] * 500, "completed"]
    with FakeServer(answer=answer, batch_states=states, batch_partial=0.4) as server:
        config = job(tmp_path, server, rows, batch={"deadline": "1s"})
        started = time.monotonic()
        ran = run(config)
        took = time.monotonic() - started
        assert ran.code == 0, ran.stderr
        assert server.cancels == 1
        assert server.batches[0].status == "cancelled"
        from_batch = {last_content(line["body"]) for line in server.batches[0].lines[:4]}
        online = [last_content(body) for body in server.requests]
    assert took < 20
    assert len(online) == len(set(online)) == 6  # each key once, none the batch answered
    assert set(online) == set(rows) - from_batch
    out = assert_complete(config, rows)
    assert out["_status"].to_list() == ["ok"] * 10
    summary = ran.summary
    assert summary["requests_sent"] == 6 and summary["answered"] == 10
    assert summary["batches"][0]["state"] == "cancelled"
    assert batch_states(config) == ["collected"]


def test_endpoint_without_batch_api_stops_before_uploading(tmp_path: Path) -> None:
    with FakeServer(answer=answer, batch_routes=False) as server:
        config = job(tmp_path, server, texts(4))
        ran = run(config)
        assert ran.code == 2, ran.stderr
        assert f"{server.base_url}/batches" in ran.stderr
        assert "run.mode: online" in ran.stderr
        assert (server.uploads, server.creates, server.count) == (0, 0, 0)
    assert not (tmp_path / "out/answers.parquet").exists()


def test_budget_submits_what_fits_and_leaves_the_rest_pending(
    tmp_path: Path, server: FakeServer
) -> None:
    rows = texts(10)
    price = 1e-4  # USD a token, in and out: model.pricing 100 per million
    discount = 0.5
    # Each request's worst case: its prompt estimate (6 chars: 2 tokens) plus max_tokens (8).
    worst = (2 + 8) * price * discount
    config = job(
        tmp_path,
        server,
        rows,
        batch={"discount": discount},
        run={"max_cost_usd": 3.5 * worst},
        model={"pricing": {"input_per_million": 100, "output_per_million": 100}},
    )
    ran = run(config)
    assert ran.code == 3, ran.stderr
    assert "run.max_cost_usd" in ran.stderr and "7 requests were not submitted" in ran.stderr
    assert len(server.batches) == 1 and len(server.submitted_custom_ids()) == 3
    assert server.count == 0
    out = output(config)
    done = out.filter(pl.col("_status") == "ok")
    assert done["text"].to_list() == rows[:3]
    assert out["_status"].to_list()[3:] == ["pending"] * 7
    summary = ran.summary
    assert summary["batch_submitted"] == 3 and summary["pending"] == 7
    assert "run.max_cost_usd" in summary["stopped"]
    tokens = int(done["_prompt_tokens"].sum()) + int(done["_completion_tokens"].sum())
    assert tokens > 0
    assert summary["cost_usd"] == pytest.approx(tokens * price * discount)


def test_kill_9_between_upload_and_create_reuses_the_uploaded_file(tmp_path: Path) -> None:
    rows = texts(8)
    with FakeServer(answer=answer, batch_create_delay_s=HOLD_S) as server:
        config = job(tmp_path, server, rows)
        process = start(config)
        wait_for(lambda: server.creates == 1, "the create (held by the fake)")
        kill_9(process)
        wait_for(lambda: server.abandoned_creates == 1, "the fake to drop the create")
        assert server.uploads == 1 and not server.batches
        assert batch_states(config) == ["uploaded"]

        server.batch_create_delay_s = 0
        ran = run(config)
        assert ran.code == 0, ran.stderr
        assert server.uploads == 1  # the file the killed run uploaded, reused
        assert len(server.batches) == 1
        assert server.batches[0].input_file_id == "file-1"
        assert sorted(lines_by_text(server.batches[0])) == rows
        assert server.count == 0
    assert_each_key_submitted_once(server)
    assert_complete(config, rows)
    assert batch_states(config) == ["collected"]


def test_kill_9_during_the_upload_drops_the_record_and_uploads_again(tmp_path: Path) -> None:
    rows = texts(8)
    with FakeServer(answer=answer, upload_delay_s=HOLD_S) as server:
        config = job(tmp_path, server, rows)
        process = start(config)
        wait_for(lambda: server.uploads == 1, "the upload (held by the fake)")
        kill_9(process)
        wait_for(lambda: server.abandoned_uploads == 1, "the fake to drop the upload")
        assert not server.files  # never stored
        assert batch_states(config) == ["prepared"]

        server.upload_delay_s = 0
        ran = run(config)
        assert ran.code == 0, ran.stderr
        assert server.uploads == 2 and len(server.batches) == 1
        assert sorted(lines_by_text(server.batches[0])) == rows
        assert server.count == 0
    assert_each_key_submitted_once(server)
    assert_complete(config, rows)
    assert batch_states(config) == ["collected"]  # the dropped record is gone


def test_lost_create_answer_finds_the_batch_by_its_metadata(tmp_path: Path) -> None:
    rows = texts(6)
    with FakeServer(answer=answer, batch_create_drop=1) as server:
        config = job(tmp_path, server, rows)
        ran = run(config)
        assert ran.code == 0, ran.stderr
        assert server.creates == 1 and len(server.batches) == 1
        assert server.lists >= 2  # the check, then the search by metadata
        assert server.count == 0
    assert_each_key_submitted_once(server)
    assert_complete(config, rows)
    assert ran.summary["batches"][0]["id"] == "batch_1"


def test_kill_9_while_polling_then_rerun_collects_the_same_batch(tmp_path: Path) -> None:
    rows = texts(8)
    states = ["validating", *["in_progress"] * 4, "completed"]
    with FakeServer(answer=answer, batch_states=states) as server:
        config = job(tmp_path, server, rows)
        process = start(config, "--set", "run.batch.poll_s=60")  # asleep after the first poll
        wait_for(lambda: server.polls >= 1, "the first poll")
        kill_9(process)
        assert server.batches[0].status == "in_progress"
        assert batch_states(config) == ["submitted"]

        ran = run(config)
        assert ran.code == 0, ran.stderr
        assert (server.uploads, server.creates, len(server.batches)) == (1, 1, 1)
        assert server.batches[0].status == "completed"
        assert ran.summary["batch_submitted"] == 0
        assert server.count == 0
    assert_complete(config, rows)
    assert batch_states(config) == ["collected"]


def test_requests_past_the_file_limit_go_in_several_batches(
    tmp_path: Path, server: FakeServer
) -> None:
    rows = texts(10)
    config = job(tmp_path, server, rows, batch={"max_requests_per_file": 3})
    ran = run(config)
    assert ran.code == 0, ran.stderr
    sizes = [len(batch.lines) for batch in server.batches]
    assert sizes == [3, 3, 3, 1]
    assert server.uploads == 4 and server.creates == 4
    assert sorted(all_keys(server)) == rows
    assert_each_key_submitted_once(server)
    assert len({batch.input_file_id for batch in server.batches}) == 4
    assert ran.summary["batch_submitted"] == 10 and len(ran.summary["batches"]) == 4
    assert_complete(config, rows)
    assert batch_states(config) == ["collected"] * 4
