"""A damaged or read-only store through the CLI: one message naming the file, then salvage."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from e2e import run_cli, write_config
from fake_server import FakeServer
from test_store import corrupt, pages_of

from pipeline.lock import Lock

ROWS = 3000


def make_table(folder: Path) -> None:
    """Longish distinct texts: the store spans a thousand pages or so."""
    texts = [f"row {i} " + "x" * 200 for i in range(ROWS)]
    pl.DataFrame({"id": range(ROWS), "text": texts}).write_csv(folder / "in.csv")


def test_a_damaged_store_is_named_then_salvaged(tmp_path: Path) -> None:
    make_table(tmp_path)
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url, run={"chunk_rows": 500})
        assert run_cli("run", str(config)).code == 0
        store = tmp_path / "out/store.db"
        answers = pages_of(store, "responses", leaves_only=True)
        middle = len(answers) // 2
        corrupt(store, [*answers[middle : middle + 5], *pages_of(store, "memo")])
        sent = server.count

        for command in ("status", "run"):
            ran = run_cli(command, str(config))
            assert ran.code == 2, (command, ran.stderr)
            assert "Traceback" not in ran.stderr
            assert f"the store {store} is damaged" in ran.stderr, ran.stderr
            assert "pipeline store salvage CONFIG" in ran.stderr
        assert server.count == sent

        ran = run_cli("store", "check", str(config))
        assert ran.code == 2 and "Traceback" not in ran.stderr
        assert f"damaged: {store}" in ran.stdout
        assert f"pipeline store salvage {config}" in ran.stderr

        ran = run_cli("store", "salvage", str(config))
        assert ran.code == 0, ran.stderr
        kept = int(ran.stdout.split("kept ")[1].split()[0])
        assert ROWS - 100 < kept < ROWS  # five pages of answers are lost, no more
        damaged = Path(ran.stdout.split("the damaged file is now ")[1].split()[0])
        assert damaged.is_file() and damaged.name.startswith("store.db.damaged-")

        ran = run_cli("store", "check", str(config))
        assert ran.code == 0 and ran.stdout.strip() == f"ok: {store}, {kept} answers stored"

        ran = run_cli("run", str(config))
        assert ran.code == 0, ran.stderr
        assert ran.summary["from_store"] == kept
        assert ran.summary["requests_sent"] == server.count - sent == ROWS - kept
        out = pl.read_parquet(tmp_path / "out/answers.parquet")
        assert out.height == ROWS and out["answer"].null_count() == 0


def test_salvage_while_a_run_holds_the_store_is_refused(tmp_path: Path) -> None:
    make_table(tmp_path)
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url)
        assert run_cli("run", str(config), "--limit", "10").code == 0
    with Lock(tmp_path / "out/store.db"):  # as a running job holds it
        ran = run_cli("store", "salvage", str(config))
    assert ran.code == 4 and "another run" in ran.stderr
    assert not list((tmp_path / "out").glob("store.db.damaged-*"))


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """`path` cannot be written, even by root (an immutable file); skips where impossible."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"running as root and `chattr +i` failed here: {made.stderr!r}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_store_is_found_before_anything_is_sent(tmp_path: Path) -> None:
    make_table(tmp_path)
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url)
        assert run_cli("run", str(config), "--limit", "10").code == 0
        store = tmp_path / "out/store.db"
        sent = server.count
        with unwritable(store):
            ran = run_cli("run", str(config))
        assert ran.code == 2 and "Traceback" not in ran.stderr
        assert f"the store {store} is read-only" in ran.stderr
        assert "set run.store to another path" in ran.stderr
        assert server.count == sent
