"""Signals: SIGINT (Ctrl-C) and SIGTERM (systemd's stop, `timeout`) stop a command gracefully.

During a run (`stoppable`), the first signal cancels the run's task with the signal's name
as the cancellation's message; the runner reads it back (`stop_for`), counts what the store
kept and records its summary, and the command exits 130 or 143. The signals' default
actions are back in place at once, so a second signal ends the process without waiting
(also one that came before the loop acted on the first): the store survives that as it
survives kill -9. Outside a run, SIGTERM raises like Ctrl-C does (`terminate_like_ctrl_c`),
and `exit_code` tells the two apart. A signal is acted on only while the loop runs: what
may block for long (starting Ray) runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .summary import EXIT_INTERRUPTED, EXIT_TERMINATED

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Stop:
    """What a signal means for a run: its exit code, and what the run's summary says."""

    exit_code: int
    said: str  # the first words of the message on stderr
    reason: str  # the summary's `stopped`


STOPS = {
    signal.SIGINT: Stop(EXIT_INTERRUPTED, "interrupted", "interrupted (SIGINT, Ctrl-C)"),
    signal.SIGTERM: Stop(EXIT_TERMINATED, "stopped by SIGTERM", "stopped by SIGTERM"),
}
BY_NAME = {sig.name: stop for sig, stop in STOPS.items()}
BY_CODE = {stop.exit_code: stop for stop in STOPS.values()}


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside a run: raised where Ctrl-C raises KeyboardInterrupt."""


def stop_for(exc: BaseException) -> Stop | None:
    """The stop a signal asked for, when `exc` is the cancellation `stoppable` made."""
    if isinstance(exc, asyncio.CancelledError) and exc.args and exc.args[0] in BY_NAME:
        return BY_NAME[exc.args[0]]
    return None


def exit_code(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 for SIGTERM."""
    return STOPS[signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT].exit_code


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


@contextlib.contextmanager
def terminate_like_ctrl_c() -> Iterator[None]:
    """While inside, SIGTERM raises a KeyboardInterrupt (`exit_code` says 143 of it)."""
    if not _in_main_thread():  # signal handlers belong to the main thread
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


async def stoppable(main: Coroutine[Any, Any, T]) -> T:
    """Await `main` in this task, which the first SIGINT or SIGTERM cancels gracefully.

    The cancellation's message is the signal's name (`stop_for`). Should `main` let it
    through, it rises here as the KeyboardInterrupt that the signal means. Once a signal
    came, the signals keep their default actions until the process ends.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None or not _in_main_thread():
        return await main
    previous = {sig: signal.getsignal(sig) for sig in STOPS}
    received: list[Stop] = []

    def on_signal(sig: signal.Signals) -> None:
        if received:  # a second signal, come before the loop acted on the first
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)  # ends the process at once, as the first one said
            return
        for each in STOPS:
            loop.remove_signal_handler(each)
            signal.signal(each, signal.SIG_DFL)  # a second signal ends the process at once
        received.append(STOPS[sig])
        log.warning("%s: stopping; a second signal ends the process at once", STOPS[sig].said)
        task.cancel(msg=sig.name)

    for sig in STOPS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await main
    except asyncio.CancelledError:
        if not received:
            raise
        if received[0].exit_code == EXIT_TERMINATED:
            raise _Terminated from None
        raise KeyboardInterrupt from None
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None and not received:  # stopping: a signal still ends it
                signal.signal(sig, handler)
