"""Progress: a bar on a terminal, log lines elsewhere, final counts once, nothing when off."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Awaitable, Callable

import pytest

from pipeline.progress import Progress


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), timeout=10))


def capture(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """stderr as a string; set in the test itself (pytest resets stderr after fixtures)."""
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    return captured


def test_a_terminal_gets_a_bar_with_the_counts_and_the_final_state_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = capture(monkeypatch)

    async def body() -> None:
        progress = Progress(tty=True)
        progress.start(10, lambda: {"ok": 4, "sent": 4})
        progress.advance(4)
        progress.close()
        progress.close()  # a second close shows nothing more

    run(body)
    shown = screen.getvalue()
    frames = [f for f in shown.replace("\n", "\r").split("\r") if f.strip()]
    assert "4/10" in frames[-1] and "ok=4, sent=4" in frames[-1]
    assert sum("4/10" in f for f in frames) == 1
    assert shown.count("\n") == 1


def test_off_a_terminal_the_final_line_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.progress")

    async def body() -> None:
        progress = Progress(tty=False)
        progress.start(10, lambda: {"invalid": 2, "sent": 2})
        progress.advance(2)
        progress.close()
        progress.close()

    run(body)
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert line.startswith("end of run: 2/10 rows in ")
    assert "invalid 2, sent 2" in line


@pytest.mark.parametrize("tty", [True, False])
def test_disabled_progress_says_nothing(
    tty: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    screen = capture(monkeypatch)
    caplog.set_level(logging.DEBUG, logger="pipeline")

    async def body() -> None:
        progress = Progress(enabled=False, tty=tty, every_s=0.001, redraw_s=0.001)
        progress.start(3, dict)
        progress.advance(3)
        await asyncio.sleep(0.005)  # a few heartbeats' worth, had there been one
        progress.close()

    run(body)
    assert screen.getvalue() == ""
    assert caplog.text == ""


def test_the_heartbeat_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError, match="every_s"):
        Progress(every_s=0)
