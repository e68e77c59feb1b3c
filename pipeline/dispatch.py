"""Dispatcher: the worker pool that sends what triage queued, one future per key in flight.

Rows of several chunks that share a request wait on the same future. A worker never dies
and a future always resolves: whatever one request raises becomes that row's `failed`
result, and the pool goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from .records import FAILED, PENDING, Result
from .triage import Work

log = logging.getLogger(__name__)

Handle = Callable[[Work], Awaitable[Result]]
Done = Callable[[Result, int], None]  # a key's result and the rows that waited on it


class Pool(Protocol):
    """What a job asks of its worker pool: this one, or the Ray engine's `RayPool`."""

    def __contains__(self, key: object) -> bool: ...

    def start(self) -> None: ...

    async def close(self) -> None: ...

    async def submit(self, work: Work, rows: int) -> asyncio.Future[Result]: ...

    def join(self, key: str, rows: int) -> asyncio.Future[Result]: ...


class Dispatcher:
    """`concurrency` workers over a bounded queue of `Work`."""

    def __init__(self, concurrency: int, handle: Handle, done: Done) -> None:
        self._concurrency = concurrency
        self._handle = handle
        self._done = done
        self._queue: asyncio.Queue[Work] = asyncio.Queue(maxsize=concurrency * 4)
        self._futures: dict[str, asyncio.Future[Result]] = {}
        self._rows: dict[str, int] = {}  # rows waiting on each key in flight
        self._workers: list[asyncio.Task[None]] = []

    def __contains__(self, key: object) -> bool:
        return key in self._futures

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._concurrency)]

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for key, future in self._futures.items():  # queued, never taken: pending
            if not future.done():
                future.set_result(Result(key, PENDING))

    async def submit(self, work: Work, rows: int) -> asyncio.Future[Result]:
        """Queue `work` for `rows` rows (waits while the queue is full)."""
        key = work[0].key
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._futures[key] = future
        self._rows[key] = rows
        await self._queue.put(work)
        return future

    def join(self, key: str, rows: int) -> asyncio.Future[Result]:
        """`rows` more rows wait on a key already in flight."""
        self._rows[key] += rows
        return self._futures[key]

    async def _work(self) -> None:
        while True:
            work = await self._queue.get()
            key = work[0].key
            result = Result(key, PENDING)
            try:
                result = await self._handle(work)
            except Exception as exc:  # the per-row boundary: record it on the row, go on
                log.exception("unexpected error on request %s", key)
                result = Result(key, FAILED, error=f"{type(exc).__name__}: {exc}")
            finally:
                self._queue.task_done()
                future = self._futures.pop(key)
                rows = self._rows.pop(key)
                if not future.done():
                    future.set_result(result)
                self._done(result, rows)
