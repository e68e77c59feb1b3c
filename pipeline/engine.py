"""Engines: who sends a run's requests. The local engine sends from this process; the Ray
engine (`rayengine`, `run.engine: ray`) from worker actors on a Ray cluster.

An engine gives the job its sender and its worker pool, and is entered around the run (the
local engine's HTTP client, the Ray engine's cluster). Everything else (reading, rendering,
the store, parsing, writing) is the job's, whichever engine sends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from .catalog import Price
from .client import ChatClient
from .config import Config
from .limiter import Limiter
from .sender import Sender

if TYPE_CHECKING:
    from .dispatch import Pool
    from .job import Job, Sending


class Engine(Protocol):
    @property
    def sender(self) -> Sending: ...

    @property
    def pool(self) -> Callable[[Job], Pool] | None: ...  # None: the job's own `Dispatcher`

    def stats(self, job: Job) -> Callable[[], Mapping[str, Any]]: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class LocalEngine:
    """Sends from this process: one HTTP client, one limiter, `run.concurrency` workers."""

    pool = None

    def __init__(
        self,
        config: Config,
        api_key: str | None,
        price: Price | None,
        offline: bool,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        run = config.run
        self._client = None
        if not offline:
            self._client = ChatClient(
                config.model.base_url,
                api_key,
                timeout_s=run.timeout_s,
                concurrency=run.concurrency,
                transport=transport,
            )
        limiter = Limiter(run.requests_per_minute, run.tokens_per_minute)
        self.sender: Sender = Sender(config, self._client, limiter, price)

    def stats(self, job: Job) -> Callable[[], Mapping[str, Any]]:
        return job.stats

    async def __aenter__(self) -> LocalEngine:
        if self._client is not None:
            await self._client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.__aexit__(exc_type, exc, tb)
