"""Progress: a bar on a terminal, log lines elsewhere, nothing when disabled."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from pipeline.progress import Progress


def test_a_terminal_gets_a_bar_with_the_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(sys, "stderr", screen)
    progress = Progress(tty=True)
    progress.start(10, lambda: {"sent": 4})
    progress.advance(4)
    progress.close()
    shown = screen.getvalue()
    assert "4/10" in shown and "sent=4" in shown


def test_without_a_terminal_a_line_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    progress = Progress(tty=False, every_s=0.0)
    progress.start(10, lambda: {"sent": 2})
    progress.advance(2)
    progress.close()
    assert "2/10 rows" in caplog.text and "sent 2" in caplog.text


def test_disabled_progress_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    progress = Progress(enabled=False, tty=False, every_s=0.0)
    progress.start(3, dict)
    progress.advance(3)
    progress.close()
    assert caplog.text == ""
