"""`pipeline batch export` never writes over what it must keep (the store, the config, its
input and output, a file that is no batch input), and `pipeline batch import` of results
that are not this config's names them and makes no store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import run_cli
from fake_server import FakeServer
from test_cli_batchfile import ENV, answer_batch, export, job, openai_answer, report

TEXTS = ["row-0", "row-1", "row-2", "row-3", "row-4"]


@pytest.fixture
def server() -> Any:
    with FakeServer(answer=lambda body: "online") as fake:
        yield fake


def half_answered(folder: Path, server: FakeServer) -> Path:
    """A config whose store answers the first two rows; three more wait to be exported."""
    config = job(folder, server, TEXTS[:2])
    assert run_cli("run", str(config), env=ENV).code == 0
    pl.DataFrame({"id": list(range(len(TEXTS))), "text": TEXTS}).write_csv(folder / "in.csv")
    return config


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by its path there, with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def refused(ran: Any, *said: str) -> None:
    assert ran.code == 2, ran.stderr
    assert ran.stdout == ""
    assert "the export would overwrite it" in ran.stderr and "nothing was written" in ran.stderr
    for text in said:
        assert text in ran.stderr


def test_export_refuses_the_store_its_files_the_config_its_input_and_output(
    tmp_path: Path, server: FakeServer
) -> None:
    config = half_answered(tmp_path, server)
    before = files(tmp_path)
    store = tmp_path / "out/store.db"
    for out, what in [
        (store, f"is the store {store}, which holds every answer paid for"),
        (tmp_path / "out/store.db-wal", "is the store's write-ahead log"),
        (tmp_path / "out/store.db-journal", "is the store's journal"),
        (tmp_path / "in.csv", "is the config's input file (input.path)"),
        (tmp_path / "out/answers.parquet", "is the config's output file (output.path)"),
        (config, "is the config file itself"),
        (tmp_path / "out", "is a folder"),
    ]:
        refused(export(config, out), f"OUT {out} {what}")
    # Another name for the store is still the store.
    (tmp_path / "link.db").symlink_to(store)
    refused(export(config, tmp_path / "link.db"), f"is the store {store}")
    (tmp_path / "link.db").unlink()
    assert files(tmp_path) == before

    status = run_cli("status", str(config))
    assert report(status)["done"] == 2, status.stderr
    ran = export(config, tmp_path / "requests.jsonl")
    assert ran.code == 0, ran.stderr
    assert report(ran)["requests"] == 3 and report(ran)["already_answered"] == 2


def test_export_refuses_a_file_that_is_no_batch_input_and_writes_over_an_earlier_export(
    tmp_path: Path, server: FakeServer
) -> None:
    config = job(tmp_path, server, TEXTS)
    first = export(config, tmp_path / "req.jsonl")
    assert first.code == 0, first.stderr
    parts = [Path(f["path"]) for f in report(first)["files"]]
    assert [p.name for p in parts] == ["req.jsonl", "req.2.jsonl", "req.3.jsonl"]
    results = tmp_path / "results.jsonl"
    answer_batch(parts, results, openai_answer)
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    log = tmp_path / "log.jsonl"
    log.write_text('{"event": "start"}\n')
    before = files(tmp_path)

    refused(export(config, results), "is a file of batch results, not requests")
    refused(export(config, notes), "its first line is not a JSON object")
    refused(export(config, log), "its first line is no batch request: no custom_id")
    assert files(tmp_path) == before
    # A later part would land on results: refused before the first part is written.
    (tmp_path / "fresh.2.jsonl").write_bytes(results.read_bytes())
    ran = export(config, tmp_path / "fresh.jsonl")
    refused(ran, f"{tmp_path / 'fresh.2.jsonl'}, part 2's name should the export")
    assert not (tmp_path / "fresh.jsonl").exists()
    (tmp_path / "fresh.2.jsonl").unlink()

    again = export(config, tmp_path / "req.jsonl")  # the earlier export: written over
    assert again.code == 0, again.stderr
    assert [p.read_bytes() for p in parts] == [before[p.name] for p in parts]
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert export(config, empty).code == 0 and empty.read_bytes() == before["req.jsonl"]


def test_export_refuses_a_later_part_that_would_be_the_store(
    tmp_path: Path, server: FakeServer
) -> None:
    config = job(tmp_path, server, TEXTS, store="batch/req.2.db")
    assert run_cli("run", str(config), "--limit", "1", env=ENV).code == 0
    store = tmp_path / "batch/req.2.db"
    kept = store.read_bytes()
    ran = export(config, tmp_path / "batch/req.db")
    refused(ran, f"{store}, part 2's name", f"is the store {store}")
    assert store.read_bytes() == kept and not (tmp_path / "batch/req.db").exists()


def test_import_of_another_config_s_results_names_them_and_makes_no_store(
    tmp_path: Path, server: FakeServer
) -> None:
    (tmp_path / "a").mkdir()
    first = job(tmp_path / "a", server, TEXTS)
    assert export(first, tmp_path / "a/req.jsonl").code == 0
    results = tmp_path / "results.jsonl"
    answer_batch(sorted((tmp_path / "a").glob("req*.jsonl")), results, openai_answer)

    (tmp_path / "b").mkdir()
    other = job(tmp_path / "b", server, ["something", "else"])
    ran = run_cli("batch", "import", str(other), str(results))
    assert ran.code == 2, ran.stderr
    assert report(ran)["skipped_not_this_config"] == 5
    assert (
        f"{results}: none of its 5 lines match this config's requests: was it made from "
        f"another config or an earlier prompt? (the config is {other})"
    ) in ran.stderr
    assert "(no store was made)" in ran.stderr
    assert not (tmp_path / "b/out").exists()  # nor its folder, nor a lock

    # Its own results import, one answer: said in the singular.
    line = results.read_text().splitlines()[0]
    one = tmp_path / "one.jsonl"
    one.write_text(line + "\n")
    ran = run_cli("batch", "import", str(first), str(one))
    assert ran.code == 0, ran.stderr
    assert f"imported 1 answer into {tmp_path / 'a/out/store.db'}" in ran.stderr
    assert json.loads(ran.stdout)["ok"] == 1
