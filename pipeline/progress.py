"""Progress display: a tqdm bar on a terminal, a plain log line every `every_s` seconds otherwise.

Rows only add to a count (`advance`, on the hot path). A heartbeat task started with the
display draws it on a clock, whatever the rows do: the bar every `redraw_s` seconds, a log
line every `every_s` seconds. Each drawing reads the counts (`stats`) and what the run waits
for (`waiting`) at that moment, so a stalled run shows its elapsed time and why it stalls.
`close` shows the final counts once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

log = logging.getLogger("pipeline.progress")

Stats = Callable[[], Mapping[str, object]]
Waiting = Callable[[], str | None]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

REDRAW_S = 0.5  # the bar's heartbeat: the elapsed time moves every second or faster


def nothing() -> str | None:
    """The `waiting` of a run that never waits for anything in particular."""
    return None


class Progress:
    """Counts settled rows and shows them with `stats` and `waiting`, read when drawn."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        tty: bool | None = None,
        every_s: float = 10.0,
        redraw_s: float = REDRAW_S,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if every_s <= 0 or redraw_s <= 0:
            raise ValueError(f"every_s ({every_s}) and redraw_s ({redraw_s}) must be positive")
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.every_s = every_s
        self.redraw_s = redraw_s
        self._clock = clock
        self._sleep = sleep
        self._bar: Any = None  # a tqdm bar, imported only on a terminal
        self._beat: asyncio.Task[None] | None = None
        self._stats: Stats = dict
        self._waiting: Waiting = nothing
        self._done = 0
        self._total: int | None = None
        self._started = 0.0
        self._showing = False
        self._undo = contextlib.ExitStack()  # what `start` changed, for `close` to put back

    def start(self, total: int | None, stats: Stats, waiting: Waiting = nothing) -> None:
        """Show progress until `close`; call it inside the run's event loop (the heartbeat's)."""
        self._total, self._stats, self._waiting = total, stats, waiting
        self._started = self._clock()
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        self._showing = True
        if self.tty:
            from tqdm import tqdm  # only a terminal shows the bar; cron and CI skip the import
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=total, unit="row", dynamic_ncols=True, file=sys.stderr)
            self._undo.enter_context(logging_redirect_tqdm())  # log lines above the bar
        every = self.redraw_s if self._bar is not None else self.every_s
        self._beat = loop.create_task(self._heartbeat(every))

    def advance(self, rows: int) -> None:
        """`rows` more rows settled; the next drawing shows them."""
        self._done += rows

    def close(self) -> None:
        """Stop the heartbeat and show the final counts, once."""
        if not self._showing:
            return
        self._showing = False
        beat, self._beat = self._beat, None
        failed = beat is not None and beat.done() and not beat.cancelled() and beat.exception()
        if beat is not None:
            beat.cancel()
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.set_description_str("", refresh=False)
            bar.set_postfix_str(self._counts("="), refresh=False)
            bar.n = self._done
            bar.close()  # draws the final state, once, and ends the line
            self._undo.close()
        else:
            self._log_line(final=True)
        if failed:
            raise failed  # a bug in drawing: not to be lost with the task

    async def _heartbeat(self, every: float) -> None:
        """Draw every `every` seconds, one wake-up each; a late wake-up skips the missed beats."""
        due = self._started
        while True:
            due += every
            now = self._clock()
            if due <= now:
                due = now + every
            await self._sleep(due - now)
            if not self._showing:
                return
            if self._bar is not None:
                self._redraw(self._bar)
            else:
                self._log_line(final=False)

    def _redraw(self, bar: Any) -> None:
        bar.set_description_str(self._waiting() or "", refresh=False)
        bar.set_postfix_str(self._counts("="), refresh=False)
        if not bar.update(self._done - bar.n):  # update draws only now and then: draw anyway
            bar.refresh()

    def _counts(self, sep: str) -> str:
        return ", ".join(f"{name}{sep}{value}" for name, value in self._stats().items())

    def _log_line(self, *, final: bool) -> None:
        elapsed = max(self._clock() - self._started, 1e-9)
        rate = self._done / elapsed
        total = f"/{self._total}" if self._total is not None else ""
        parts = [f"{self._done}{total} rows", f"{rate:.1f} rows/s"]
        if final:
            parts[0] = f"end of run: {parts[0]} in {elapsed:.0f}s"
        elif self._total and rate > 0:
            parts.append(f"eta {max(self._total - self._done, 0) / rate:.0f}s")
        counts = self._counts(" ")
        if counts:
            parts.append(counts)
        line = ", ".join(parts)
        waiting = None if final else self._waiting()
        if waiting:
            line += f"; waiting for: {waiting}"
        log.info("%s", line)
