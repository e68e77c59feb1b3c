"""output.commit over a local Oxen repository holding staged changes of the user's own: run
and validate refuse it before anything is sent (exit 2), and the repository is left as it was
and unlocked (the check reads it from a child process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e import run_cli
from fake_server import FakeServer
from oxen_repo import OxenRepo
from test_cli_oxen_local import (  # oxen_user: an Oxen user in a HOME of the test's own
    ENV,
    INPUT,
    OUTPUT,
    config_for,
    label,
    oxen_user,  # noqa: F401 (an autouse fixture)
    table,
)

oxen = pytest.importorskip(
    "oxen", reason="Oxen's Python package (oxenai, the oxen extra) is not installed"
)


def test_staged_changes_of_the_users_own_are_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    repo = OxenRepo(tmp_path / "repo")
    first = repo.init({INPUT: table(["a", "b", "c"])}, "tickets")
    (repo.root / "data/mine.txt").write_text("work in progress\n")
    repo.stage("data/mine.txt")
    with FakeServer(answer=label) as model:
        config = config_for(tmp_path, repo, model)
        validated = run_cli("validate", str(config), env=ENV)
        ran = run_cli("run", str(config), env=ENV)
        sent = model.count
    found = repo.inspect()  # opens the repository: the CLI left it unlocked
    for done in (validated, ran):
        assert done.code == 2, done.stdout + done.stderr
        assert "output.commit: the Oxen repository" in done.stderr
        assert "has staged changes (data/mine.txt)" in done.stderr
        assert "commit or unstage them first" in done.stderr
    assert sent == 0 and ran.summary["requests_sent"] == 0
    assert not (repo.root / OUTPUT).exists()
    assert found["heads"] == {"main": first} and found["status"]["added"] == ["data/mine.txt"]


def test_a_staged_copy_of_the_output_itself_is_not_the_users_change(tmp_path: Path) -> None:
    repo = OxenRepo(tmp_path / "repo")
    repo.init({INPUT: table(["a"])}, "tickets")
    (repo.root / OUTPUT).write_text("id,text,answer\n0,a,old\n")
    repo.stage(OUTPUT)
    with FakeServer(answer=label) as model:
        ran = run_cli("run", str(config_for(tmp_path, repo, model)), env=ENV)
    assert ran.code == 0, ran.stderr
    assert ran.summary["commit"] is not None
