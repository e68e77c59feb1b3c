"""The progress bar of `pipeline run` on a terminal: what its counts say while rows arrive."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
from e2e import ROOT, Ran, write_config
from fake_server import FakeServer, echo, last_content

ROWS = 8
HELD = 4  # rows 4..7 wait at the server until the test has seen the bar


class Terminal:
    """A pseudo-terminal, 250 columns wide, for a child's stderr; a thread reads it all."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 250, 0, 0))
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # the child closed its end
                return
            if not data:
                return
            with self._lock:
                self._chunks.append(data)

    @property
    def text(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self) -> str:
        self._reader.join(timeout=10)
        os.close(self.master)
        return self.text


def test_the_bar_counts_answers_as_they_arrive_and_ends_as_the_summary(tmp_path: Path) -> None:
    """Four rows are answered while four more wait at the server: the bar says answered=4
    then (not ok=0 with an `unparsed` count until the chunk is parsed), and its last frame
    gives the summary's counts."""
    texts = [f"row {i}" for i in range(ROWS)]
    pl.DataFrame({"id": range(ROWS), "text": texts}).write_csv(tmp_path / "in.csv")
    release = threading.Event()

    def answer(body: dict[str, Any]) -> str:
        if int(last_content(body).split()[1]) >= HELD:
            release.wait(timeout=60)
        return echo(body)

    with FakeServer(answer=answer) as server:
        config = write_config(tmp_path, server.base_url, run={"concurrency": ROWS})
        terminal = Terminal()
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(config)],
            stdout=subprocess.PIPE,
            stderr=terminal.slave,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        os.close(terminal.slave)
        try:
            live = f"{HELD}/{ROWS} "
            seen = terminal.wait_for(f"answered={HELD}, invalid=0, failed=0, sent={ROWS}", 60)
        finally:
            release.set()
            stdout, _ = process.communicate(timeout=60)
        shown = terminal.close()
    assert seen, shown
    assert live in shown
    assert "unparsed" not in shown and "ok=" not in shown
    ran = Ran(process.returncode, stdout, shown)
    assert ran.code == 0, shown
    summary = ran.summary
    assert (summary["answered"], summary["invalid"], summary["failed"]) == (ROWS, 0, 0)
    frames = [line for line in shown.replace("\r", "\n").splitlines() if f"/{ROWS} " in line]
    last = frames[-1]  # the bar's final state, drawn once when the run ends
    assert f"{ROWS}/{ROWS} " in last and f"answered={ROWS}, invalid=0, failed=0," in last, last
