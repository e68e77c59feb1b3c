"""Progress display: a tqdm bar on a terminal, a plain log line every few seconds otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger("pipeline.progress")

Stats = Callable[[], dict[str, int]]


class Progress:
    """Counts settled rows; `stats` supplies tokens and failures for the display."""

    def __init__(self, *, enabled: bool = True, tty: bool | None = None, every_s: float = 10.0):
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.every_s = every_s
        self._bar: tqdm[None] | None = None
        self._stats: Stats = dict
        self._done = 0
        self._total: int | None = None
        self._started = 0.0
        self._last_log = 0.0

    def start(self, total: int | None, stats: Stats) -> None:
        self._total, self._stats = total, stats
        self._started = self._last_log = time.monotonic()
        if self.enabled and self.tty:
            from tqdm import tqdm  # only a terminal shows the bar; cron and CI skip the import

            self._bar = tqdm(total=total, unit="row", dynamic_ncols=True, file=sys.stderr)

    def advance(self, rows: int) -> None:
        self._done += rows
        if self._bar is not None:
            self._bar.update(rows)
            self._bar.set_postfix(self._stats(), refresh=False)
            return
        now = time.monotonic()
        if self.enabled and now - self._last_log >= self.every_s:
            self._last_log = now
            self._log_line(now)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix(self._stats(), refresh=True)
            self._bar.close()
            self._bar = None
        elif self.enabled and self._done:
            self._log_line(time.monotonic())

    def _log_line(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-9)
        rate = self._done / elapsed
        total = f"/{self._total}" if self._total is not None else ""
        eta = ""
        if self._total and rate > 0:
            eta = f", eta {max(self._total - self._done, 0) / rate:.0f}s"
        extra = ", ".join(f"{k} {v}" for k, v in self._stats().items())
        log.info("%d%s rows, %.1f rows/s%s, %s", self._done, total, rate, eta, extra)
