"""A simulated rate-limited gateway, driven on a virtual clock, for limiter tests.

`simulate` runs `workers` coroutines that do what the sender does with the real `Limiter`:
acquire, send, and on the answer `settle` + `observe` (200) or `rate_limited_by_server`
(429, then try the same row again). The server decides at a request's arrival (its send
time) and answers `latency` seconds later. No asyncio and no real time: the coroutines yield
their wake-up times to a heap-driven loop, so a ten-minute run takes milliseconds and gives
the same numbers on any machine.

Servers:

- `FixedWindow`: the LiteLLM proxy's per-key limiter: a window of `window_s` begins at the
  first request (its start floored to a whole second) after the last one expired; requests
  over `requests` per window, or arriving when the window's tokens (reserved at arrival as
  `reserve` tokens, settled to the real usage when the answer leaves) would pass `tokens`,
  get a 429 with `retry-after` = the whole window. Answers carry LiteLLM's
  `x-ratelimit-api_key-{limit,remaining}-{requests,tokens}`, unless `headers` is False.
- `SlidingWindow`: at most `requests` admitted in any `window_s`; a bare 429 (no headers,
  no retry-after) over it.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any

from pipeline.limiter import Limiter
from pipeline.ratelimit import rate_headers


class _Wake:
    """Awaited by a simulated coroutine: resume it at `at`."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __await__(self) -> Generator[_Wake, None, None]:
        yield self


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    retry_after: float | None = None


@dataclass
class Outcome:
    """What the server saw: admitted requests (time, tokens) and the 429s."""

    admitted: list[tuple[float, int]] = field(default_factory=list)
    rate_limited: int = 0
    most_429s: int = 0  # the most 429s one row got before its answer
    finished_at: float = 0.0

    def per_window_pct(self, limit: float, window_s: float, *, after: float = 0.0) -> float:
        """Mean over sliding `window_s` windows (ending each second, from `after + window_s`
        to the last admission) of admitted requests / `limit`, in %."""
        return self._pct([t for t, _ in self.admitted], limit, window_s, after)

    def token_pct(self, limit: float, window_s: float, *, after: float = 0.0) -> float:
        """The same over tokens: `limit` tokens per window."""
        times = [t for t, tokens in self.admitted for _ in range(tokens)]
        return self._pct(times, limit, window_s, after)

    @staticmethod
    def _pct(times: list[float], limit: float, window_s: float, after: float) -> float:
        if not times:
            return 0.0
        first, last = times[0], times[-1]
        ends = [first + after + window_s + i for i in range(int(last - first - after - window_s))]
        if not ends:
            raise ValueError("the run is shorter than one window after `after`")
        sums = []
        for end in ends:
            begin = end - window_s
            sums.append(sum(1 for t in times if begin <= t < end))
        return 100.0 * sum(sums) / len(sums) / limit


class FixedWindow:
    def __init__(
        self,
        requests: int | None = None,
        tokens: int | None = None,
        *,
        window_s: float = 60.0,
        headers: bool = True,
    ) -> None:
        self.requests, self.tokens = requests, tokens
        self.window_s, self.headers = window_s, headers
        self.start: float | None = None
        self.count = 0
        self.used = 0

    def _roll(self, now: float) -> None:
        if self.start is None or math.floor(now) - self.start >= self.window_s:
            self.start, self.count, self.used = float(math.floor(now)), 0, 0

    def arrive(self, now: float, reserve: int) -> Answer:
        self._roll(now)
        over_requests = self.requests is not None and self.count + 1 > self.requests
        over_tokens = self.tokens is not None and self.used + reserve > self.tokens
        if over_requests or over_tokens:
            return Answer(429, {"retry-after": str(int(self.window_s))}, self.window_s)
        self.count += 1
        self.used += reserve
        return Answer(200, self._headers())

    def leave(self, now: float, reserve: int, actual: int) -> None:
        """The answer leaves: the reservation becomes the real usage (in the window then)."""
        self._roll(now)
        self.used = max(0, self.used + actual - reserve)

    def _headers(self) -> dict[str, str]:
        if not self.headers:
            return {}
        out = {}
        if self.requests is not None:
            out["x-ratelimit-api_key-limit-requests"] = str(self.requests)
            out["x-ratelimit-api_key-remaining-requests"] = str(self.requests - self.count)
        if self.tokens is not None:
            out["x-ratelimit-api_key-limit-tokens"] = str(self.tokens)
            out["x-ratelimit-api_key-remaining-tokens"] = str(max(0, self.tokens - self.used))
        return out


class SlidingWindow:
    def __init__(self, requests: int, *, window_s: float = 60.0) -> None:
        self.requests, self.window_s = requests, window_s
        self.times: deque[float] = deque()

    def arrive(self, now: float, reserve: int) -> Answer:
        while self.times and self.times[0] <= now - self.window_s:
            self.times.popleft()
        if len(self.times) >= self.requests:
            return Answer(429, {})
        self.times.append(now)
        return Answer(200, {})

    def leave(self, now: float, reserve: int, actual: int) -> None:
        pass


Server = FixedWindow | SlidingWindow


def simulate(
    server: Server,
    limiter_args: Callable[[Callable[[], float], Callable[[float], Any]], Limiter],
    *,
    rows: int,
    workers: int = 32,
    latency: float = 0.05,
    estimate: int = 26,
    usage: int = 14,
    start: float = 1000.0,
    max_s: float = 3600.0,
) -> Outcome:
    """Send `rows` requests through a `Limiter` built by `limiter_args(clock, sleep)`."""
    now = [start]
    outcome = Outcome()

    def clock() -> float:
        return now[0]

    async def sleep(seconds: float) -> None:
        await _Wake(now[0] + seconds)

    limiter = limiter_args(clock, sleep)
    queue = list(range(rows))

    async def worker() -> None:
        while queue:
            queue.pop()
            refused = 0
            while True:
                sent_at = await limiter.acquire(estimate)
                answer = server.arrive(now[0], estimate)
                await sleep(latency)
                rate = rate_headers(answer.headers)
                if answer.status == 429:
                    outcome.rate_limited += 1
                    refused += 1
                    outcome.most_429s = max(outcome.most_429s, refused)
                    limiter.rate_limited_by_server(answer.retry_after, sent_at=sent_at, rate=rate)
                    continue
                server.leave(now[0], estimate, usage)
                outcome.admitted.append((sent_at, usage))
                limiter.settle(estimate, usage)
                limiter.observe(rate, sent_at=sent_at)
                break

    heap: list[tuple[float, int, Coroutine[Any, Any, None]]] = []
    for i in range(workers):
        heap.append((start, i, worker()))
    heapq.heapify(heap)
    seq = workers
    while heap:
        at, _, coro = heapq.heappop(heap)
        now[0] = max(now[0], at)
        if now[0] - start > max_s:
            coro.close()
            raise AssertionError(f"the simulated run passed {max_s:g} s")
        try:
            wake = coro.send(None)
        except StopIteration:
            continue
        assert isinstance(wake, _Wake)
        heapq.heappush(heap, (wake.at, seq, coro))
        seq += 1
    outcome.admitted.sort()
    outcome.finished_at = now[0]
    return outcome
