"""The progress heartbeat on a fake clock: it draws while no row moves and says what the run
waits for (a rate-limit pause, retries, an endpoint down); the counts it draws are current."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from pipeline.breaker import TRIP_AFTER, Breaker
from pipeline.client import ChatClient
from pipeline.config import Config
from pipeline.errors import RetryableError
from pipeline.job import Job
from pipeline.limiter import Limiter
from pipeline.progress import Progress
from pipeline.records import FAILED, OK, Request, Result
from pipeline.render import Renderer
from pipeline.sender import Counters, Sender
from pipeline.store import Store
from pipeline.summary import Summary

BASE_URL = "http://api.test/v1"


class FakeTime:
    """A clock that moves only in `advance`; a sleeper wakes when the clock passes its time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, woken))
        await woken

    async def advance(self, seconds: float) -> None:
        """Move the clock `seconds` on, waking each sleeper at its time, in order."""
        end = self.now + seconds
        for _ in range(10_000):
            await settle()
            due = [wake for wake, _ in self._sleepers if wake <= end]
            if not due:
                break
            self.now = max(self.now, min(due))
            for pair in [p for p in self._sleepers if p[0] <= self.now]:
                self._sleepers.remove(pair)
                if not pair[1].done():
                    pair[1].set_result(None)
        else:
            raise AssertionError("the sleepers never stopped waking")
        self.now = end
        await settle()


async def settle() -> None:
    """Let the tasks that can run, run (a bounded number of loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), timeout=10))


def frames(shown: str) -> list[str]:
    return [f for f in shown.replace("\n", "\r").split("\r") if f.strip()]


def capture(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """stderr as a string; set in the test itself (pytest resets stderr after fixtures)."""
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    return captured


def lines(caplog: pytest.LogCaptureFixture, logger: str = "pipeline.progress") -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


# -- the clock, not the rows, draws --------------------------------------------------------


def test_the_bar_redraws_every_half_second_while_no_row_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = capture(monkeypatch)
    counts = {"ok": 0, "sent": 0}

    async def body() -> None:
        fake = FakeTime()
        progress = Progress(tty=True, clock=fake.clock, sleep=fake.sleep)
        progress.start(40, lambda: dict(counts))
        drawn = len(frames(screen.getvalue()))
        await fake.advance(5)
        assert len(frames(screen.getvalue())) - drawn == 10  # every 0.5 s, no row settled
        counts["sent"] = 7  # requests go out, still no row settled: the next drawing says so
        await fake.advance(0.5)
        assert "0/40" in frames(screen.getvalue())[-1]
        assert "sent=7" in frames(screen.getvalue())[-1]
        progress.close()

    run(body)


def test_the_postfix_is_read_when_drawn_not_a_row_late(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = capture(monkeypatch)
    sent = [0]

    async def body() -> None:
        fake = FakeTime()
        progress = Progress(tty=True, clock=fake.clock, sleep=fake.sleep)
        progress.start(25, lambda: {"sent": sent[0]})
        for _ in range(7):
            sent[0] += 1
            progress.advance(1)
        await fake.advance(0.5)
        assert "7/25" in frames(screen.getvalue())[-1]
        assert "sent=7" in frames(screen.getvalue())[-1]
        progress.close()

    run(body)


def test_off_a_terminal_a_line_every_every_s_and_one_final_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.progress")

    async def body() -> None:
        fake = FakeTime()
        progress = Progress(tty=False, every_s=10, clock=fake.clock, sleep=fake.sleep)
        progress.start(40, lambda: {"ok": 3, "invalid": 1, "failed": 0})
        progress.advance(4)
        await fake.advance(35)  # no row settles in 35 s: three lines anyway
        assert len(lines(caplog)) == 3
        progress.advance(36)
        progress.close()
        await settle()

    run(body)
    logged = lines(caplog)
    assert logged[0].startswith("4/40 rows, 0.4 rows/s, eta 90s, ok 3, invalid 1, failed 0")
    assert logged[2].startswith("4/40 rows, 0.1 rows/s")
    assert [line.startswith("end of run: 40/40 rows in 35s") for line in logged] == [
        False,
        False,
        False,
        True,
    ]


def test_the_heartbeat_stops_with_the_progress(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.progress")

    async def body() -> None:
        fake = FakeTime()
        progress = Progress(tty=False, every_s=10, clock=fake.clock, sleep=fake.sleep)
        progress.start(None, dict)
        await fake.advance(10)
        progress.close()
        await fake.advance(60)

    run(body)
    assert len(lines(caplog)) == 2  # one heartbeat line, the final line, nothing after


# -- what the run waits for ----------------------------------------------------------------


def test_a_limiter_pause_shows_in_the_lines_and_goes_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline")

    async def body() -> None:
        fake = FakeTime()
        limiter = Limiter(clock=fake.clock, sleep=fake.sleep)
        progress = Progress(tty=False, every_s=10, clock=fake.clock, sleep=fake.sleep)
        progress.start(40, dict, limiter.waiting)
        await fake.advance(10)
        for _ in range(100):  # a burst of 429s: one pause, one line when it begins
            limiter.rate_limited_by_server(60.0)
        waiter = asyncio.create_task(limiter.acquire(10))
        await fake.advance(50)
        assert not waiter.done()
        await fake.advance(15)  # the pause ends at 70 s; the waiter goes and says so
        assert waiter.done()
        progress.close()

    run(body)
    limiter_lines = lines(caplog, "pipeline.limiter")
    assert limiter_lines == [
        "the server answered 429, retry-after 60s: every request waits 60s",
        "rate-limit pause over after 60s (429 answers during it: 100): sending resumes",
    ]
    logged = lines(caplog)
    assert logged[0] == "0/40 rows, 0.0 rows/s"  # at 10 s, before the 429s
    waits = [line.split("; waiting for: ")[-1] for line in logged[1:6]]
    assert waits == [
        f"rate-limit pause, {left}s left (429, retry-after 60s)" for left in (50, 40, 30, 20, 10)
    ]
    assert logged[6] == "0/40 rows, 0.0 rows/s"  # at 70 s, the pause is over
    assert logged[7].startswith("end of run: ")
    assert len(logged) == 8


def test_the_bar_shows_the_pause_before_the_counts_and_drops_it_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = capture(monkeypatch)

    async def body() -> None:
        fake = FakeTime()
        limiter = Limiter(clock=fake.clock, sleep=fake.sleep)
        progress = Progress(tty=True, clock=fake.clock, sleep=fake.sleep)
        progress.start(40, lambda: {"sent": 16}, limiter.waiting)
        limiter.rate_limited_by_server(3.0)
        await fake.advance(0.5)
        assert frames(screen.getvalue())[-1].startswith(
            "rate-limit pause, 3s left (429, retry-after 3s): "
        )
        await fake.advance(3)
        assert frames(screen.getvalue())[-1].startswith("  0%")
        progress.close()

    run(body)


def test_a_tokens_per_minute_wait_is_named() -> None:
    fake = FakeTime()
    limiter = Limiter(None, 1000, clock=fake.clock, sleep=fake.sleep, margin=1.0)

    async def body() -> None:
        assert limiter.waiting() is None
        first = asyncio.create_task(limiter.acquire(1000))  # the whole minute's budget
        await settle()
        assert first.done()
        assert limiter.waiting() == "tokens/minute budget, sends booked 60s ahead"
        second = asyncio.create_task(limiter.acquire(10))
        await fake.advance(61)
        assert second.done()

    run(body)


def test_retries_waiting_are_counted() -> None:
    fake = FakeTime()
    config = make_config(tmp=Path("in"), run={"max_retries": 5, "concurrency": 3})

    def unavailable(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": {"message": "busy"}})

    async def body() -> None:
        client = ChatClient(
            BASE_URL, "KEY", timeout_s=5, concurrency=3, transport=httpx.MockTransport(unavailable)
        )
        limiter = Limiter(clock=fake.clock, sleep=fake.sleep)
        sender = Sender(config, client, limiter, clock=fake.clock, sleep=fake.sleep)
        async with client:
            rows = [Request(f"k{i}", json.dumps({"i": i}).encode(), 10) for i in range(3)]
            sends = [asyncio.create_task(sender.send(r)) for r in rows]
            for _ in range(50):  # the three first tries fail and back off
                await settle()
                if sender.waiting() == "3 requests waiting to retry":
                    break
            assert sender.waiting() == "3 requests waiting to retry"
            sender.stop("test over")
            await asyncio.gather(*sends)
        assert sender.waiting() is None

    run(body)


def test_an_endpoint_down_pause_is_named() -> None:
    fake = FakeTime()
    breaker = Breaker(BASE_URL, 300, clock=fake.clock, sleep=fake.sleep)
    assert breaker.waiting() is None
    for _ in range(TRIP_AFTER):
        breaker.record(RetryableError("HTTP 503: busy", status=503))
    fake.now += 42
    assert breaker.waiting() == (
        f"endpoint down 42s, probing {BASE_URL} (0 probes; gives up after 300s)"
    )
    breaker.record(None)
    assert breaker.waiting() is None


# -- the counts ----------------------------------------------------------------------------


class AnswerSender:
    """Answers `{"v": n}` for a row's n, garbage for n == 13 and fails n == 7."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.price = None
        self.stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        self.stop_reason = reason

    def unanswered(self, key: str) -> bool:
        return False

    async def send(self, request: Request) -> Result:
        n = int(json.loads(request.payload)["messages"][-1]["content"])
        self.counters.requests_sent += 1
        await asyncio.sleep(0)
        if n == 7:
            return Result(request.key, FAILED, error="HTTP 500", attempts=1)
        answer = "no json here" if n == 13 else json.dumps({"v": n})
        return Result(request.key, OK, answer=answer, raw="{}", attempts=1)


def make_config(tmp: Path, run: dict[str, object] | None = None) -> Config:
    return Config.model_validate(
        {
            "input": {"path": str(tmp / "in.csv")},
            "prompt": {"template": "{{ n + 0 * (100 // d) }}"},
            "model": {"name": "m", "base_url": BASE_URL},
            "output": {
                "path": str(tmp / "out.parquet"),
                "parse": "json",
                "schema": {"type": "object", "properties": {"v": {"type": "integer"}}},
            },
            "run": run or {"concurrency": 2},
        }
    )


def test_answers_count_as_they_arrive_and_invalid_ones_move_when_parsed(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    renderer = Renderer(config.prompt, config.model, ["d", "n"], config.output)
    sender: Any = AnswerSender()
    job = Job(config, Store(tmp_path / "s.db"), sender, renderer, summary=Summary())
    # d == 0 cannot be rendered; n == 7 fails; n == 13 answers garbage; n == 2 twice: one request
    frame = pl.DataFrame({"d": [1, 1, 0, 1, 1, 1], "n": [1, 2, 3, 7, 13, 2]})

    async def body() -> None:
        job.start()
        try:
            chunk = await job.prepare(frame)
            await asyncio.gather(*chunk.waiting.values())
            await settle()
            settled = job.stats()
            await job.finish(chunk)
            final = job.stats()
        finally:
            await job.close()
            job.store.close()
        # every row settled: the 4 answered count at once; the chunk is parsed when it is
        # finished, and the garbage answer then moves from answered to invalid
        assert dict(settled) == {
            "answered": 4,
            "invalid": 0,
            "failed": 2,
            "sent": 4,
            "retries": 0,
            "tokens": 0,
        }
        assert dict(final) == {
            "answered": 3,
            "invalid": 1,
            "failed": 2,
            "sent": 4,
            "retries": 0,
            "tokens": 0,
        }
        assert (job.summary.answered, job.summary.invalid, job.summary.failed) == (3, 1, 2)

    run(body)
