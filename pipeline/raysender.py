"""The Ray engine's sender, as the driver's job sees it: the workers' spending added up
and checked against the run's budget, why sending stopped, and which failed requests gave
up while the endpoint was down (each worker's breaker says so of its own). The workers send;
this sends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .catalog import Price
from .config import Config
from .rayworker import Drained
from .records import Request, Result
from .sender import CostCap, Counters

log = logging.getLogger(__name__)


class RaySender:
    """The driver's view of the workers' senders: what they spent, and why sending stopped."""

    def __init__(self, config: Config, price: Price | None, tell: Callable[[str], None]) -> None:
        self.price = price
        self.counters = Counters()
        self.stop_reason: str | None = None
        self.latencies: list[float] | None = None
        self.said: str | None = None  # what the ledger says sending waits for
        self._tell = tell
        self._cap = CostCap(config.run.max_cost_usd)
        self._unanswered: dict[int, frozenset[str]] = {}  # by worker, from its last drain
        self._down = False  # a worker's breaker gave up on the endpoint

    def waiting(self) -> str | None:
        return self.said

    def unanswered(self, key: str) -> bool:
        """`Sender.unanswered` over the workers: request `key` gave up on an outage and its
        worker's endpoint answered nothing since (each worker's breaker sees only its share),
        and the run stopped for no other reason than a worker's breaker giving up."""
        if self.stop_reason is not None and not self._down:
            return False
        return any(key in keys for keys in self._unanswered.values())

    def heard(self, worker: int, drained: Drained) -> None:
        """What a worker's breaker says, before its results are stored (`Job.hold`)."""
        self._unanswered[worker] = drained.unanswered
        self._down = self._down or drained.down

    def stop(self, reason: str) -> None:
        """Stop sending on every worker."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.error("stopping: %s", reason)
            self._tell(reason)

    def add(self, spent: Counters) -> None:
        """A worker's spending since its last poll; the run's budget is checked here, over
        every worker's spending: past it, the reason says the total the requests in flight
        brought it to, as `Sender` does."""
        counters = self.counters
        counters.requests_sent += spent.requests_sent
        counters.retries += spent.retries
        counters.prompt_tokens += spent.prompt_tokens
        counters.completion_tokens += spent.completion_tokens
        counters.cost_usd += spent.cost_usd
        if self.price is None:
            return
        reason = self._cap.check(counters.cost_usd, self.stop_reason)
        if self.stop_reason is None and reason is not None:
            self.stop(reason)
        self.stop_reason = reason

    async def send(self, request: Request) -> Result:
        raise RuntimeError("under the Ray engine, the workers send")
