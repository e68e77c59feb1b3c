"""Bad input and a full disk: a clear error, exit code 2, and nothing lost."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
from e2e import ROOT, run_cli, write_config
from fake_server import FakeServer


def test_a_corrupt_input_file_is_named_in_one_message(tmp_path: Path) -> None:
    (tmp_path / "in.parquet").write_bytes(b"PAR1 this is not parquet")
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url, input={"path": "in.parquet"})
        ran = run_cli("run", str(config))
        assert ran.code == 2 and "Traceback" not in ran.stderr
        assert "cannot read input" in ran.stderr and "in.parquet" in ran.stderr
        assert server.count == 0


def _small_files() -> None:
    """In the child: files may not grow past 64 KiB, as on a disk that is full."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_full_disk_keeps_the_previous_output_and_the_store(tmp_path: Path) -> None:
    rows = 3000
    pl.DataFrame(
        {"id": range(rows), "text": [f"row {i} " + "x" * 40 for i in range(rows)]}
    ).write_csv(tmp_path / "in.csv")
    with FakeServer() as server:
        config = write_config(
            tmp_path, server.base_url, output={"path": "out/answers.csv"}, run={"chunk_rows": 500}
        )
        (tmp_path / "out").mkdir()
        before = b"the previous output\n"
        (tmp_path / "out/answers.csv").write_bytes(before)
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            preexec_fn=_small_files,
            check=False,
        )
        assert done.returncode == 5, done.stderr  # stopped part-way, after sending
        assert "Traceback" not in done.stderr and "never retrieved" not in done.stderr
        assert "cannot write" in done.stderr  # the store or the output, whichever fills first
        assert "stopped part-way" in done.stderr and "kept in the store" in done.stderr
        assert (tmp_path / "out/answers.csv").read_bytes() == before
        assert not list((tmp_path / "out").glob(".*.tmp"))

        # With room again, the rerun answers what the store kept and sends the rest.
        sent = server.count
        ran = run_cli("run", str(config))
        assert ran.code == 0
        assert ran.summary["from_store"] + ran.summary["requests_sent"] == rows
        assert server.count - sent == ran.summary["requests_sent"] < rows
        out = pl.read_csv(tmp_path / "out/answers.csv")
        assert out.height == rows and out["answer"].null_count() == 0
