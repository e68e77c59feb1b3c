"""output.commit end to end through the CLI: a local Oxen repository made with Oxen's Python
package (the oxen extra), the output committed there with its provenance.

The test process never opens a repository itself (see oxen_repo.py: oxen would keep it locked
from the CLI under test); it configures an Oxen user in a HOME of its own.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import Ran, run_cli, write_config
from fake_server import FakeServer, last_content
from oxen_repo import OxenRepo

oxen = pytest.importorskip(
    "oxen", reason="Oxen's Python package (oxenai, the oxen extra) is not installed"
)

INPUT = "data/tickets.csv"
OUTPUT = "data/labeled.csv"
RECORD = "data/labeled.csv.provenance.json"
ENV = {"TEST_KEY": "test-key"}


@pytest.fixture(autouse=True)
def oxen_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A HOME of the test's own, with an Oxen user to commit as: the real one is untouched."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("OXEN_CONFIG_DIR", raising=False)
    oxen.user.config_user("Pipeline Test", "test@example.com")
    yield home


def table(texts: list[str]) -> str:
    out = io.BytesIO()
    pl.DataFrame({"id": list(range(len(texts))), "text": texts}).write_csv(out)
    return out.getvalue().decode()


def label(body: dict[str, Any]) -> str:
    return f"label-{last_content(body)}"


def answers(text: str) -> list[str]:
    return list(pl.read_csv(io.StringIO(text))["answer"])


def config_for(
    tmp_path: Path, repo: OxenRepo, model: FakeServer, store: Path | None = None, **output: Any
) -> Path:
    return write_config(
        tmp_path,
        model.base_url,
        input={"path": str(repo.root / INPUT)},
        output={
            "path": str(repo.root / OUTPUT),
            "commit": True,
            "commit_message": "nightly labels",
            "include_meta": False,
            **output,
        },
        # A generous timeout: one test's model answer waits for an oxen child process, which
        # takes seconds on a busy machine; a timeout there would send the row again.
        run={"store": str(store or tmp_path / "store.db"), "timeout_s": 120},
    )


def unchanged(found: dict[str, Any]) -> bool:
    """Nothing staged, no committed file changed (the run's summary file is untracked)."""
    return not any(found["status"].values())


def first_lines(log: list[dict[str, Any]]) -> list[str]:
    return [commit["message"].split("\n")[0] for commit in log]


def only_the_summary(ran: Ran) -> bool:
    """oxen's progress lines stay off stdout, which holds the JSON summary alone."""
    lines = ran.stdout.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("{")


def test_a_run_commits_its_output_to_the_current_branch_once(tmp_path: Path) -> None:
    repo = OxenRepo(tmp_path / "repo")
    start = repo.init({INPUT: table(["a", "b", "c"])}, "tickets")
    during: list[str] = []

    def look_then_label(body: dict[str, Any]) -> str:
        if not during:  # the run does not hold the repository while it sends
            during.append(repo.inspect()["current"])
        return label(body)

    with FakeServer(answer=look_then_label) as model:
        config = config_for(tmp_path, repo, model)
        first = run_cli("run", str(config), env=ENV)
        sent_first = model.count
        after_first = repo.inspect(("main", OUTPUT), ("main", RECORD))
        again = run_cli("run", str(config), env=ENV)
        sent_after_rerun = model.count
        after_again = repo.inspect()
        grew = repo.commit({INPUT: table(["a", "b", "c", "d"])}, "more tickets")
        grown = run_cli("run", str(config), env=ENV)
        sent_total = model.count
    final = repo.inspect(("main", OUTPUT))
    assert first.code == 0, first.stderr
    assert only_the_summary(first) and set(during) == {"main"}
    head = after_first["logs"]["main"][0]
    assert first_lines(after_first["logs"]["main"]) == ["nightly labels", "tickets"]
    assert first.summary["commit"] == head["id"] and head["parent_ids"] == [start]
    assert first.summary["input_commit"] == start  # the input was read unchanged at main
    assert head["message"].startswith("nightly labels\n\n")
    assert f"input: {INPUT} at commit {start}" in head["message"]
    assert after_first["current"] == "main" and unchanged(after_first)
    written = after_first["files"]
    assert answers(written[f"main:{OUTPUT}"]) == ["label-a", "label-b", "label-c"]
    facts = json.loads(written[f"main:{RECORD}"])
    assert facts["input"] == {"address": INPUT, "commit": start}
    assert facts["rows"]["answered"] == 3 and facts["model"] == "fake-model"
    # A rerun: nothing sent, the branch holds the same bytes, no commit.
    assert again.code == 0 and again.summary["commit"] is None, again.stderr
    assert sent_after_rerun == sent_first == 3 and after_again["heads"] == after_first["heads"]
    # The input grows by a committed row: only it is sent, exactly one new commit.
    assert grown.code == 0, grown.stderr
    assert sent_total == 4 and grown.summary["commit"] == final["heads"]["main"]
    log = final["logs"]["main"]
    assert first_lines(log) == ["nightly labels", "more tickets", "nightly labels", "tickets"]
    assert log[1]["id"] == grew and f"input: {INPUT} at commit {grew}" in log[0]["message"]
    assert answers(final["files"][f"main:{OUTPUT}"])[-1] == "label-d"
    assert unchanged(final)


def test_output_branch_is_made_from_the_current_one_which_the_folder_stays_on(
    tmp_path: Path,
) -> None:
    repo = OxenRepo(tmp_path / "repo")
    start = repo.init({INPUT: table(["a", "b", "c"])}, "tickets")
    store = repo.root / "out" / "store.db"  # untracked files in the working folder stay put
    with FakeServer(answer=label) as model:
        config = config_for(tmp_path, repo, model, store, branch="labels")
        first = run_cli("run", str(config), env=ENV)
        sent_first = model.count
        after_first = repo.inspect(("labels", OUTPUT))
        on_disk = (repo.root / OUTPUT).read_text()
        again = run_cli("run", str(config), env=ENV)
        sent_after_rerun = model.count
        after_again = repo.inspect()
        grew = repo.commit({INPUT: table(["a", "b", "c", "d"])}, "more tickets")
        grown = run_cli("run", str(config), env=ENV)
        sent_total = model.count
    final = repo.inspect(("labels", OUTPUT), ("labels", RECORD), ("labels", INPUT))
    assert first.code == 0, first.stderr
    assert only_the_summary(first)
    # The branch was made from main and got one commit; main is as it was, and current.
    labels = after_first["heads"]["labels"]
    assert after_first["heads"]["main"] == start and first.summary["commit"] == labels
    assert [c["id"] for c in after_first["logs"]["labels"]] == [labels, start]
    assert after_first["current"] == "main" and unchanged(after_first) and store.is_file()
    assert answers(after_first["files"][f"labels:{OUTPUT}"]) == ["label-a", "label-b", "label-c"]
    assert on_disk == after_first["files"][f"labels:{OUTPUT}"]  # left in the working folder
    assert again.code == 0 and again.summary["commit"] is None, again.stderr
    assert sent_after_rerun == sent_first == 3 and after_again["heads"] == after_first["heads"]
    # The input grows on main: one new commit on labels, main's history untouched.
    assert grown.code == 0, grown.stderr
    assert sent_total == 4 and final["heads"]["main"] == grew
    assert grown.summary["commit"] == final["heads"]["labels"] != labels
    assert [c["id"] for c in final["logs"]["labels"]] == [final["heads"]["labels"], labels, start]
    assert first_lines(final["logs"]["main"]) == ["more tickets", "tickets"]
    assert final["current"] == "main" and unchanged(final) and store.is_file()
    committed = final["files"]
    assert answers(committed[f"labels:{OUTPUT}"])[-1] == "label-d"
    assert committed[f"labels:{OUTPUT}"] == (repo.root / OUTPUT).read_text()
    assert committed[f"labels:{INPUT}"] == table(["a", "b", "c"])  # labels' own input, as made
    facts = json.loads(committed[f"labels:{RECORD}"])
    assert facts["input"] == {"address": INPUT, "commit": grew}
    rows = facts["rows"]
    assert (rows["total"], rows["answered"], rows["from_store"]) == (4, 4, 3)
    assert not (repo.root / RECORD).exists()  # the provenance lives on the branch


def test_staged_changes_are_not_taken_along_and_a_rerun_commits_once(tmp_path: Path) -> None:
    repo = OxenRepo(tmp_path / "repo")
    repo.init({INPUT: table(["a", "b"])}, "tickets")
    (repo.root / "notes.txt").write_text("work in progress\n")
    repo.stage("notes.txt")
    with FakeServer(answer=label) as model:
        config = config_for(tmp_path, repo, model)
        refused = run_cli("run", str(config), env=ENV)
        repo.stage("notes.txt", staged=False)
        rerun = run_cli("run", str(config), env=ENV)
        sent = model.count
    found = repo.inspect()
    assert refused.code == 2, refused.stderr  # found before anything was sent
    assert "staged changes (notes.txt)" in refused.stderr
    assert rerun.code == 0, rerun.stderr
    assert sent == 2
    assert first_lines(found["logs"]["main"]) == ["nightly labels", "tickets"]
    assert rerun.summary["commit"] == found["heads"]["main"] and unchanged(found)


def test_an_output_outside_any_repository_is_named_by_run_and_validate(
    tmp_path: Path,
) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "in.csv").write_text(table(["a"]))
    with FakeServer(answer=label) as model:
        config = write_config(
            tmp_path,
            model.base_url,
            input={"path": "plain/in.csv"},
            output={"path": "plain/labeled.csv", "commit": True},
        )
        ran = run_cli("run", str(config), env=ENV)
        validated = run_cli("validate", str(config), env=ENV)
        sent = model.count
    assert ran.code == 2 and sent == 0
    assert "plain/labeled.csv is not inside an Oxen repository" in ran.stderr
    assert "oxen init" in ran.stderr
    assert validated.code == 2 and "not inside an Oxen repository" in validated.stderr


def test_no_oxen_user_is_named_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = OxenRepo(tmp_path / "repo")
    repo.init({INPUT: table(["a"])}, "tickets")
    monkeypatch.setenv("HOME", str(tmp_path / "nobody"))
    with FakeServer(answer=label) as model:
        ran = run_cli("run", str(config_for(tmp_path, repo, model)), env=ENV)
        sent = model.count
    assert ran.code == 2 and sent == 0
    assert "oxen config --name NAME --email EMAIL" in ran.stderr
