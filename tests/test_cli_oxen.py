"""oxen:// input and output end to end through the CLI, against the fake Oxen hub."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import polars as pl
from e2e import run_cli, write_config
from fake_oxen import FakeOxen
from fake_server import FakeServer, last_content

HUB_KEY = "oxen-test-key-0123456789abcdef"
ENV = {"TEST_KEY": HUB_KEY}
SOURCE = "oxen://acme:tickets@main/data/tickets.csv"
TARGET = "oxen://acme:tickets@labels/data/labeled.csv"


def table(texts: list[str]) -> bytes:
    out = io.BytesIO()
    pl.DataFrame({"id": list(range(len(texts))), "text": texts}).write_csv(out)
    return out.getvalue()


def label(body: dict[str, Any]) -> str:
    return f"label-{last_content(body)}"


def config_for(folder: Path, hub: FakeOxen, model: FakeServer) -> Path:
    return write_config(
        folder,
        model.base_url,
        input={"path": SOURCE},
        output={"path": TARGET, "commit_message": "nightly labels", "include_meta": False},
        run={"store": "store.db"},
        oxen={"host": hub.host, "scheme": "http"},
    )


def test_read_from_a_repo_commit_to_a_branch_and_a_rerun_commits_nothing(tmp_path: Path) -> None:
    with FakeOxen(require_key=HUB_KEY) as hub, FakeServer(answer=label) as model:
        hub.add_repo("acme", "tickets", {"data/tickets.csv": table(["a", "b", "c"])})
        config = config_for(tmp_path, hub, model)
        first = run_cli("run", str(config), env=ENV)
        commits = hub.commits("acme", "tickets", "labels")
        head = hub.head("acme", "tickets", "labels")
        again = run_cli("run", str(config), env=ENV)
        sent_after_rerun = model.count
        after = hub.commits("acme", "tickets", "labels")
        # The input grows upstream: only the new row is sent, one new commit.
        repo = hub.repos[("acme", "tickets")]
        hub.commit_files(
            repo,
            "main",
            {"data/tickets.csv": table(["a", "b", "c", "d"])},
            "more tickets",
            "ox",
            "ox@oxen.ai",
        )
        grown = run_cli("run", str(config), env=ENV)
        final = hub.head("acme", "tickets", "labels")
        sent_total = model.count
    assert first.code == 0, first.stderr
    summary = first.summary
    assert summary["input_commit"] and summary["commit"] == head.id
    # The branch was made from main, then got one commit with the output and its provenance.
    assert len(commits) == 2 and head.message.startswith("nightly labels\n\n")
    assert f"input: {SOURCE} at commit {summary['input_commit']}" in head.message
    written = pl.read_csv(io.BytesIO(head.files["data/labeled.csv"]))
    assert written["answer"].to_list() == ["label-a", "label-b", "label-c"]
    facts = json.loads(head.files["data/labeled.csv.provenance.json"])
    assert facts["input"] == {"address": SOURCE, "commit": summary["input_commit"]}
    assert facts["rows"]["answered"] == 3 and facts["model"] == "fake-model"
    # Rerun at the same commit: nothing sent, the same bytes, no commit.
    assert again.code == 0 and again.summary["commit"] is None
    assert sent_after_rerun == 3 and len(after) == len(commits)
    assert grown.code == 0, grown.stderr
    assert sent_total == 4 and grown.summary["commit"] == final.id != head.id
    grown_out = pl.read_csv(io.BytesIO(final.files["data/labeled.csv"]))
    assert grown_out["answer"].to_list() == ["label-a", "label-b", "label-c", "label-d"]
    # The key never reaches the store's folder, the logs or the summary.
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".log", ".csv"):
            assert HUB_KEY not in path.read_text(encoding="utf-8", errors="replace"), path
    assert HUB_KEY not in first.stdout + first.stderr


def test_a_missing_repo_or_a_bad_key_is_named_before_anything_is_sent(tmp_path: Path) -> None:
    with FakeOxen(require_key=HUB_KEY) as hub, FakeServer(answer=label) as model:
        config = config_for(tmp_path, hub, model)
        missing = run_cli("run", str(config), env=ENV)
        hub.add_repo("acme", "tickets", {"data/tickets.csv": table(["a"])})
        bad_key = run_cli("run", str(config), env={"TEST_KEY": "wrong"})
        sent = model.count
    assert missing.code == 2 and "acme/tickets" in missing.stderr
    assert bad_key.code == 2 and "TEST_KEY" in bad_key.stderr and "wrong" not in bad_key.stderr
    assert sent == 0


def test_a_commit_that_fails_keeps_the_answers_and_a_rerun_commits_once(tmp_path: Path) -> None:
    with FakeOxen(require_key=HUB_KEY) as hub, FakeServer(answer=label) as model:
        hub.add_repo("acme", "tickets", {"data/tickets.csv": table(["a", "b"])})
        config = config_for(tmp_path, hub, model)
        hub.fail_next_commit("before", times=3)  # every try of the first run
        failed = run_cli("run", str(config), env=ENV)
        before = hub.commits("acme", "tickets", "labels")
        rerun = run_cli("run", str(config), env=ENV)
        after = hub.commits("acme", "tickets", "labels")
        sent = model.count
    assert failed.code != 0 and "commit" in failed.stderr
    assert rerun.code == 0, rerun.stderr
    assert len(after) == len(before) + 1  # exactly one commit, made by the rerun
    assert sent == 2  # the answers of the failed run were kept in the store


def test_with_meta_columns_each_committed_row_names_its_request_and_model(tmp_path: Path) -> None:
    with FakeOxen(require_key=HUB_KEY) as hub, FakeServer(answer=label) as model:
        hub.add_repo("acme", "tickets", {"data/tickets.csv": table(["a", "b"])})
        config = write_config(
            tmp_path,
            model.base_url,
            input={"path": SOURCE},
            output={"path": TARGET, "include_meta": True},
            run={"store": "store.db"},
            oxen={"host": hub.host, "scheme": "http"},
        )
        ran = run_cli("run", str(config), env=ENV)
        head = hub.head("acme", "tickets", "labels")
    assert ran.code == 0, ran.stderr
    written = pl.read_csv(io.BytesIO(head.files["data/labeled.csv"]))
    assert written["_model"].to_list() == ["fake-model", "fake-model"]
    keys = written["_key"].to_list()
    assert all(key.startswith("r1:") for key in keys) and len(set(keys)) == 2
    # The key is the store's: the row's request and answer are found by it.
    with sqlite3.connect(tmp_path / "store.db") as db:
        stored = dict(db.execute("SELECT key, answer FROM responses").fetchall())
    assert [stored[key] for key in keys] == ["label-a", "label-b"]
