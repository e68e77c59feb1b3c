"""A rerun over unchanged chunks reads them whole from the memo; any change falls through."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import ROOT, run_cli, write_config
from fake_server import FakeServer, last_content

from pipeline import job as job_module
from pipeline import plan as plan_module
from pipeline import runner
from pipeline.configfile import load
from pipeline.summary import Summary

ROWS, CHUNK = 50, 10


@pytest.fixture
def server() -> Any:
    with FakeServer() as fake:
        yield fake


def table(folder: Path, texts: list[str | None]) -> None:
    pl.DataFrame({"id": range(len(texts)), "text": texts}).write_csv(folder / "in.csv")


def texts(n: int = ROWS) -> list[str | None]:
    return [f"row {i}" for i in range(n)]


def run(config: Path, *overrides: str) -> Summary:
    return asyncio.run(runner.run(load(config, list(overrides))))


def memo_rows(folder: Path) -> int:
    with sqlite3.connect(folder / "out/store.db") as db:
        return int(db.execute("SELECT count(*) FROM memo").fetchone()[0])


def output(folder: Path) -> pl.DataFrame:
    return pl.read_parquet(folder / "out/answers.parquet")


class Renders:
    """Counts the rows rendered, i.e. the rows that took the per-row path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows = 0
        real = job_module.render_rows

        def counting(renderer: Any, frame: pl.DataFrame) -> Any:
            self.rows += frame.height
            return real(renderer, frame)

        monkeypatch.setattr(job_module, "render_rows", counting)


def test_an_unchanged_table_is_answered_from_the_memo(
    tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    table(tmp_path, texts())
    config = write_config(tmp_path, server.base_url, run={"chunk_rows": CHUNK})
    first = run(config)
    assert first.answered == ROWS and server.count == ROWS
    assert memo_rows(tmp_path) == ROWS // CHUNK
    before = output(tmp_path)
    renders = Renders(monkeypatch)
    again = run(config)
    assert renders.rows == 0 and server.count == ROWS
    assert (again.answered, again.from_store, again.requests_sent) == (ROWS, ROWS, 0)
    assert output(tmp_path).equals(before)


def test_a_changed_row_misses_only_its_chunk(
    tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    table(tmp_path, texts())
    config = write_config(tmp_path, server.base_url, run={"chunk_rows": CHUNK})
    run(config)
    changed = texts()
    changed[23] = "a new text"
    table(tmp_path, changed)
    renders = Renders(monkeypatch)
    again = run(config)
    assert renders.rows == CHUNK
    assert again.requests_sent == 1 and again.from_store == ROWS - 1
    assert output(tmp_path)["answer"][23] == "echo: a new text"
    assert memo_rows(tmp_path) == ROWS // CHUNK  # the old chunk's entry is pruned


def test_a_grown_table_reads_the_old_chunks_whole(
    tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    table(tmp_path, texts(40))
    config = write_config(tmp_path, server.base_url, run={"chunk_rows": CHUNK})
    run(config)
    table(tmp_path, texts(47))
    renders = Renders(monkeypatch)
    again = run(config)
    assert renders.rows == 7 and again.requests_sent == 7
    assert output(tmp_path)["answer"].to_list() == [f"echo: row {i}" for i in range(47)]


def test_chunks_with_unfinished_rows_are_not_memoised(tmp_path: Path, server: FakeServer) -> None:
    table(tmp_path, texts())
    server.script("row 12", [400])  # a permanent failure: asked again next run
    config = write_config(tmp_path, server.base_url, run={"chunk_rows": CHUNK})
    first = run(config)
    assert first.failed == 1
    assert memo_rows(tmp_path) == ROWS // CHUNK - 1
    again = run(config)
    assert again.failed == 0 and again.requests_sent == 1
    assert memo_rows(tmp_path) == ROWS // CHUNK


def with_a_skipped_row(folder: Path, server: FakeServer) -> tuple[list[str | None], Path]:
    """A table whose row 5 is null, and a config that skips null rows."""
    rows = texts()
    rows[5] = None
    table(folder, rows)
    config = write_config(
        folder, server.base_url, run={"chunk_rows": CHUNK}, prompt={"skip_null": ["text"]}
    )
    return rows, config


def test_skipped_rows_are_final(
    tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, config = with_a_skipped_row(tmp_path, server)
    first = run(config)
    renders = Renders(monkeypatch)
    again = run(config)
    assert renders.rows == 0
    assert (again.skipped, again.answered, again.from_store) == (1, ROWS - 1, ROWS - 1)
    assert first.skipped == 1


def test_status_counts_memoised_chunks_without_rendering(
    tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows, config = with_a_skipped_row(tmp_path, server)
    run(config)
    rendered: list[int] = []
    real = job_module.render_rows

    def counting(renderer: Any, frame: pl.DataFrame) -> Any:
        rendered.append(frame.height)
        return real(renderer, frame)

    monkeypatch.setattr(plan_module, "render_rows", counting)

    def status() -> tuple[int, int, int, int]:
        plan = plan_module.make_plan(load(config), show=0, counts_only=True)
        return plan.rows, plan.done, plan.pending, plan.skipped + plan.row_errors

    assert status() == (ROWS, ROWS - 1, 0, 1)
    assert rendered == []
    rows[17] = "changed"
    table(tmp_path, rows)
    assert status() == (ROWS, ROWS - 2, 1, 1)
    assert rendered == [CHUNK]  # only the changed row's chunk
    shown = run_cli("status", str(config))
    assert json.loads(shown.stdout)["pending"] == 1


@pytest.mark.parametrize(
    "change",
    [
        "output.column=reply",
        "output.include_meta=false",
        "prompt.template=Say {{ text }}",
        "model.params.temperature=0.5",
    ],
)
def test_a_changed_setting_misses_the_memo(
    tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    table(tmp_path, texts())
    config = write_config(tmp_path, server.base_url, run={"chunk_rows": CHUNK})
    run(config)
    renders = Renders(monkeypatch)
    run(config, change)
    assert renders.rows == ROWS
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    table(fresh, texts())
    run(write_config(fresh, server.base_url, run={"chunk_rows": CHUNK}), change)
    assert output(tmp_path).equals(output(fresh))


def test_a_deleted_answer_clears_the_memo(tmp_path: Path, server: FakeServer) -> None:
    table(tmp_path, texts())
    config = write_config(tmp_path, server.base_url, run={"chunk_rows": CHUNK})
    assert run_cli("run", str(config)).code == 0
    with sqlite3.connect(tmp_path / "out/store.db") as db:
        db.execute("DELETE FROM responses WHERE answer = 'echo: row 7'")
    assert memo_rows(tmp_path) == 0
    ran = run_cli("run", str(config))
    assert ran.code == 0 and ran.summary["requests_sent"] == 1
    assert output(tmp_path)["answer"][7] == "echo: row 7"


def test_images_are_never_memoised(tmp_path: Path, server: FakeServer) -> None:
    (tmp_path / "a.png").write_bytes(b"\x89PNG first")
    pl.DataFrame({"text": ["look"], "image": ["a.png"]}).write_csv(tmp_path / "in.csv")
    config = write_config(tmp_path, server.base_url, prompt={"images": ["image"]})
    run(config)
    assert memo_rows(tmp_path) == 0
    (tmp_path / "a.png").write_bytes(b"\x89PNG second")
    assert run(config).requests_sent == 1


def test_the_chunk_digest_is_the_same_in_another_process(tmp_path: Path) -> None:
    table(tmp_path, texts())
    code = f"""
import polars as pl
from pipeline.configfile import load
from pipeline.memo import Memo
config = load({str(write_config(tmp_path, "http://127.0.0.1:9/v1"))!r})
frame = pl.read_csv({str(tmp_path / "in.csv")!r})
print(Memo(None, config, ["text"]).digest(frame).hex())
"""
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(digests) == 1 and len(digests.pop().strip()) == 64


def test_status_from_another_process_during_a_run_loses_nothing(tmp_path: Path) -> None:
    """`status` opens the store and merges `recent` while the run keeps appending to it.

    The server holds rows 15, 30 and 45 on until the test has read a status while the run
    waits for them, so the test does not depend on how fast the machine is.
    """
    rows, holds = 60, (15, 30, 45)
    table(tmp_path, texts(rows))
    gates = {row: threading.Event() for row in holds}

    def held(body: dict[str, Any]) -> str:
        text = last_content(body)
        row = int(text.split()[-1])
        for start, gate in gates.items():
            if row >= start:
                gate.wait(timeout=60)
        return "echo: " + text

    with FakeServer(answer=held) as server:
        config = write_config(tmp_path, server.base_url, run={"concurrency": 2, "chunk_rows": 20})
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = (tmp_path / "run.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            seen: list[int] = []
            deadline = time.monotonic() + 120
            for start, gate in gates.items():
                while server.count_matching(f"row {start}") == 0 and time.monotonic() < deadline:
                    assert process.poll() is None, (tmp_path / "run.log").read_text()
                    time.sleep(0.02)
                seen.append(json.loads(run_cli("status", str(config)).stdout)["done"])
                gate.set()
            assert process.wait(timeout=120) == 0, (tmp_path / "run.log").read_text()
        finally:
            for gate in gates.values():
                gate.set()
            if process.poll() is None:
                process.kill()
            log.close()
        assert seen == sorted(seen) and len(seen) == 3 and seen[0] > 0
        assert seen[-1] < rows and server.count == rows
    with sqlite3.connect(tmp_path / "out/store.db") as db:
        assert db.execute("SELECT count(*) FROM responses").fetchone()[0] == rows
        assert db.execute("SELECT count(*) FROM recent").fetchone()[0] == 0
    assert output(tmp_path)["answer"].to_list() == [f"echo: row {i}" for i in range(rows)]
