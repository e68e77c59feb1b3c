"""`pipeline reparse` end to end: it never replaces an output with a less answered one."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from e2e import run_cli, write_config
from fake_server import FakeServer, last_content

LABELS = ["billing", "bug", "other"]
TEXTS = ["billing 1", "bug 2", "other 3", "bug 4"]


def first_word(body: dict[str, object]) -> str:
    return last_content(body).split()[0]


def write_table(folder: Path) -> None:
    pl.DataFrame({"id": [1, 2, 3, 4], "text": TEXTS}).write_csv(folder / "in.csv")


def test_changed_labels_in_a_template_that_shows_them_leave_the_output_as_it_was(
    tmp_path: Path,
) -> None:
    write_table(tmp_path)
    with FakeServer(answer=first_word) as server:
        config = write_config(
            tmp_path,
            server.base_url,
            prompt={"system": "Pick one of: {{ labels }}", "template": "{{ text }}"},
            output={"parse": "label", "labels": LABELS},
        )
        ran = run_cli("run", str(config))
        assert ran.code == 0 and ran.summary["answered"] == 4, ran.stderr
        output = tmp_path / "out/answers.parquet"
        before = output.read_bytes()
        sent = server.count
        again = run_cli("reparse", str(config), "--set", "output.labels=[billing, bug, other, x]")
        assert server.count == sent
    assert again.code == 1, again.stderr
    assert output.read_bytes() == before  # not rewritten with 4 null answers
    summary = again.summary
    assert (summary["answered"], summary["pending"], summary["exit_code"]) == (0, 4, 1)
    assert summary["error"] == (
        f"4 of 4 rows have no answer in the store {tmp_path / 'out/store.db'} for the requests "
        f"this config makes, so {output} was left as it was; reparse reuses answers only for "
        "unchanged requests, and the prompt uses {{ labels }}, so changing output.labels "
        "changes every request, as changing the prompt, model.name or model.params does; "
        "`pipeline run CONFIG` would send them"
    )
    assert f"error: {summary['error']}" in again.stderr
    assert f"wrote {output}" not in again.stderr


def test_changed_params_name_the_cause_and_a_partial_store_is_not_written(
    tmp_path: Path,
) -> None:
    write_table(tmp_path)
    with FakeServer(answer=first_word) as server:
        config = write_config(tmp_path, server.base_url, output={"path": "out/a.csv"})
        assert run_cli("run", str(config), "--limit", "2").code == 0
        limited = run_cli("reparse", str(config), "--limit", "3")
        changed = run_cli("reparse", str(config), "--set", "model.params.temperature=1")
        assert server.count == 2
    assert limited.code == 1 and limited.summary["pending"] == 1, limited.stderr
    assert "1 of 3 rows have no answer" in limited.summary["error"]
    assert not (tmp_path / "out/a.first-3.csv").exists()
    assert not (tmp_path / "out/a.csv").exists()
    assert changed.code == 1 and "4 of 4 rows have no answer" in changed.stderr
    assert "{{ labels }}" not in changed.stderr
    assert "changing the prompt, model.name or model.params changes the requests" in (
        changed.stderr
    )


def test_reparse_of_a_store_without_answers_exits_1_as_status_does(tmp_path: Path) -> None:
    write_table(tmp_path)
    with FakeServer(answer=first_word) as server:
        config = write_config(tmp_path, server.base_url)
        reparsed = run_cli("reparse", str(config))
        status = run_cli("status", str(config))
        assert server.count == 0
    assert reparsed.code == status.code == 1
    assert reparsed.summary["pending"] == 4 and "4 of 4 rows have no answer" in reparsed.stderr
    assert not (tmp_path / "out/answers.parquet").exists()
