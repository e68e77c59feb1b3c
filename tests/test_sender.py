"""The sender and its breaker, in process: an `httpx.MockTransport` endpoint, a fake clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx

from pipeline.breaker import SAME_4XX_AFTER, TRIP_AFTER
from pipeline.client import ChatClient
from pipeline.config import Config, InputConfig, ModelConfig, OutputConfig, PromptConfig
from pipeline.limiter import REFUSED_STOP_S, Limiter
from pipeline.records import FAILED, OK, PENDING, Request, Result
from pipeline.runconfig import RunConfig
from pipeline.sender import Sender

BASE_URL = "http://api.test/v1"
CONCURRENCY = 4
Handler = Callable[[httpx.Request], httpx.Response]


class FakeTime:
    """A clock that moves only when someone sleeps; every sleep yields to the loop once."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def config(**run: float) -> Config:
    return Config(
        input=InputConfig(path=Path("in.csv")),
        prompt=PromptConfig(template="{{ text }}"),
        model=ModelConfig(base_url=BASE_URL, name="m"),
        output=OutputConfig(path=Path("out.parquet")),
        run=RunConfig.model_validate({"concurrency": CONCURRENCY, **run}),
    )


def requests(n: int) -> list[Request]:
    return [
        Request(f"k{i}", json.dumps({"messages": [{"content": f"row {i}"}]}).encode(), 10)
        for i in range(n)
    ]


def answer(request: httpx.Request) -> httpx.Response:
    body = {
        "choices": [{"message": {"content": "yes"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    return httpx.Response(200, json=body)


def error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message}})


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


class Run:
    """Rows through a sender with `CONCURRENCY` workers, as the job's workers send them."""

    def __init__(self, handler: Handler, rows: int = 40, **run: float) -> None:
        self.fake = FakeTime()
        self.rows = requests(rows)
        self.results: dict[str, Result] = {}
        transport = httpx.MockTransport(handler)
        self.client = ChatClient(
            BASE_URL, "KEY", timeout_s=5, concurrency=CONCURRENCY, transport=transport
        )
        limiter = Limiter(None, None, clock=self.fake.clock, sleep=self.fake.sleep)
        self.sender = Sender(
            config(**run), self.client, limiter, clock=self.fake.clock, sleep=self.fake.sleep
        )
        self.breaker = self.sender.breaker

    def __call__(self) -> Sender:
        asyncio.run(asyncio.wait_for(self._go(), timeout=30))
        return self.sender

    async def _go(self) -> None:
        queue = list(reversed(self.rows))

        async def worker() -> None:
            while queue:
                request = queue.pop()
                self.results[request.key] = await self.sender.send(request)

        async with self.client:
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    def statuses(self) -> list[str]:
        return [self.results[r.key].status for r in self.rows]


def test_endpoint_down_pauses_probes_and_stops_with_the_rows_pending() -> None:
    run = Run(refused, max_retries=4, max_outage_s=60)
    started = run.fake.now
    sender = run()
    reason = sender.stop_reason or ""
    assert reason.startswith(f"the endpoint {BASE_URL} is down: ")
    assert "connection failed: ConnectError: connection refused" in reason
    assert "rerun to resume" in reason
    assert set(run.statuses()) == {PENDING}
    probes = sender.breaker.probes
    assert 2 <= probes <= 20
    assert sender.counters.requests_sent <= TRIP_AFTER + probes + CONCURRENCY
    assert run.fake.now - started >= 60  # it probed for the whole window


def test_endpoint_back_while_probing_resumes_and_answers_every_row() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if run.breaker.probes < 6:  # down until the sixth probe, about 25 s in
            return refused(request)
        return answer(request)

    run = Run(handler, max_retries=TRIP_AFTER, max_outage_s=60)
    sender = run()
    assert sender.stop_reason is None
    assert set(run.statuses()) == {OK}
    assert sender.counters.retries <= TRIP_AFTER  # the paused workers spent no retries
    assert sender.breaker.probes == 6 and not sender.breaker.paused
    sent_while_down = TRIP_AFTER + 6 + CONCURRENCY
    assert sender.counters.requests_sent <= sent_while_down + len(run.rows)


def test_the_same_400_on_every_row_stops_after_a_few_rows() -> None:
    run = Run(lambda request: error(400, "unknown model 'm'"), max_retries=4)
    sender = run()
    assert sender.stop_reason == (
        f"every request gets the same error: HTTP 400: unknown model 'm' ({SAME_4XX_AFTER} rows"
        " in a row); answered rows are kept, fix the config and rerun"
    )
    statuses = run.statuses()
    assert sender.counters.requests_sent <= SAME_4XX_AFTER + CONCURRENCY
    assert statuses.count(FAILED) == sender.counters.requests_sent
    assert set(statuses) == {FAILED, PENDING}


def test_a_400_on_some_rows_does_not_stop_the_run() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if int(json.loads(request.content)["messages"][0]["content"].split()[1]) % 2:
            return error(400, "flagged")
        return answer(request)

    run = Run(handler)
    sender = run()
    assert sender.stop_reason is None
    assert run.statuses().count(FAILED) == 20 and run.statuses().count(OK) == 20


def test_the_same_500_on_every_row_stops_with_the_same_error() -> None:
    run = Run(lambda request: error(500, "response_format json_schema is not supported"))
    sender = run()
    reason = sender.stop_reason or ""
    assert reason.startswith(
        "every request gets the same error: HTTP 500: response_format json_schema is not "
        "supported ("
    )
    assert set(run.statuses()) == {PENDING}
    assert sender.counters.requests_sent <= TRIP_AFTER + sender.breaker.probes + CONCURRENCY


def test_failures_between_answers_never_pause() -> None:
    failed: set[bytes] = set()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.content not in failed:  # every row fails once, then is answered
            failed.add(request.content)
            return error(503, "busy")
        return answer(request)

    run = Run(handler, max_retries=1)
    sender = run()
    assert sender.stop_reason is None and sender.breaker.probes == 0
    assert set(run.statuses()) == {OK}
    assert sender.counters.requests_sent == 2 * len(run.rows)


def test_429s_never_trip_the_breaker() -> None:
    sent = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        sent[0] += 1
        if sent[0] <= 3 * TRIP_AFTER:
            return httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "slow down"})
        return answer(request)

    run = Run(handler, rows=8, max_retries=20)
    sender = run()
    assert sender.stop_reason is None and sender.breaker.probes == 0
    assert set(run.statuses()) == {OK}
    assert sent[0] == 3 * TRIP_AFTER + 8


def test_only_429s_for_ten_minutes_stop_the_run_with_the_rows_pending() -> None:
    # A spent daily quota: every request gets a 429, whatever the pauses.
    run = Run(lambda request: error(429, "quota exceeded"), rows=8, max_retries=5)
    started = run.fake.now
    sender = run()
    assert (sender.stop_reason or "").startswith("the server has answered only 429")
    # Rows whose 429 allowance ran out first failed (rerun later); the rest were never sent.
    assert PENDING in run.statuses() and set(run.statuses()) <= {PENDING, FAILED}
    assert REFUSED_STOP_S <= run.fake.now - started < REFUSED_STOP_S + 60


def test_an_answer_now_and_then_keeps_a_rate_limited_run_going() -> None:
    sent = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        sent[0] += 1
        if sent[0] % 5:  # mostly 429s, for longer than REFUSED_STOP_S in all
            return httpx.Response(429, headers={"Retry-After": "30"}, json={"error": "slow"})
        return answer(request)

    run = Run(handler, rows=12, max_retries=5)
    started = run.fake.now
    sender = run()
    assert sender.stop_reason is None
    assert set(run.statuses()) == {OK}
    assert run.fake.now - started > REFUSED_STOP_S


def test_a_stop_wakes_the_workers_waiting_for_the_endpoint() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if run.breaker.probes == 1:  # the first probe: the run stops for another reason
            run.sender.stop("the budget is spent")
        return refused(request)

    run = Run(handler, max_outage_s=3600)
    started = run.fake.now
    sender = run()
    assert sender.stop_reason == "the budget is spent"
    assert set(run.statuses()) == {PENDING}
    assert sender.counters.requests_sent <= TRIP_AFTER + 1 + CONCURRENCY
    assert run.fake.now - started < 60  # nobody slept out the hour's window
