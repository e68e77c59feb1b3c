"""The limiter against simulated gateways (`gateway_sim`): fixed windows, long windows.

Each case runs minutes of virtual time in milliseconds on the real `Limiter`; the figures
are the simulated server's, so they do not depend on this machine's speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from gateway_sim import FixedWindow, SlidingWindow, simulate

from pipeline.budgetmath import RESET_GUARD_S
from pipeline.limiter import MAX_PAUSE_S, Limiter
from pipeline.ratelimit import rate_headers

START = 1000.0


def limiter(
    rpm: float | None = None, tpm: float | None = None
) -> Callable[[Callable[[], float], Callable[[float], Awaitable[None]]], Limiter]:
    return lambda clock, sleep: Limiter(rpm, tpm, clock=clock, sleep=sleep)


def on_a_clock(margin: float = 0.995) -> tuple[Limiter, list[float]]:
    """A limiter on a clock that moves only when it sleeps (or a test moves `now[0]`)."""
    now = [START]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    return Limiter(clock=lambda: now[0], sleep=sleep, margin=margin), now


def answer(lim: Limiter, remaining: int, sent_at: float) -> None:
    """An answer through the LiteLLM proxy under a key allowed 600 a minute."""
    raw = {
        "x-ratelimit-api_key-limit-requests": "600",
        "x-ratelimit-api_key-remaining-requests": str(remaining),
    }
    lim.observe(rate_headers(raw), sent_at=sent_at)


# --- the LiteLLM proxy's per-key fixed window ----------------------------------------------


@pytest.mark.parametrize("told", [True, False], ids=["told", "untold"])
def test_fixed_window_request_limit_is_used_to_the_full_without_429s(told: bool) -> None:
    out = simulate(FixedWindow(600), limiter(600 if told else None), rows=1500)
    assert out.per_window_pct(600, 60) >= 98.5
    assert out.rate_limited == 0  # untold too: paced from the first answer, burst included


@pytest.mark.parametrize("told", [True, False], ids=["told", "untold"])
def test_fixed_window_token_limit_is_used_to_the_full(told: bool) -> None:
    out = simulate(FixedWindow(tokens=9000), limiter(None, 9000 if told else None), rows=1500)
    assert out.token_pct(9000, 60) >= 97.0
    assert out.rate_limited <= 1


def test_telling_the_limit_is_never_slower_than_not_telling_it() -> None:
    told = simulate(FixedWindow(600), limiter(600), rows=1500)
    untold = simulate(FixedWindow(600), limiter(), rows=1500)
    assert told.finished_at <= untold.finished_at + 0.5


def test_a_window_spent_by_someone_else_resumes_at_its_reset() -> None:
    server = FixedWindow(600)
    server.start, server.count = START - 50, 590  # 10 left, the window resets at START + 10
    out = simulate(server, limiter(), rows=1500)
    first_429_free = [t for t, _ in out.admitted if t > START + 5]
    # Probing found the reset within a few seconds, not after retry-after's full 60 s.
    assert first_429_free[0] < START + 10 + MAX_PAUSE_S + 1
    assert out.rate_limited <= 64
    assert out.per_window_pct(600, 60, after=15) >= 95.0


def test_a_whole_window_retry_after_resumes_at_the_estimated_reset() -> None:
    lim, now = on_a_clock()
    answer(lim, 599, asyncio.run(lim.acquire(1)))  # the run's first request began the window
    now[0] = START + 40
    lim.rate_limited_by_server(60.0, sent_at=now[0])  # the proxy's "retry-after: 60"
    assert lim.paused_until == pytest.approx(START + 60 + RESET_GUARD_S)
    # A request sent at that estimated reset is refused too: the estimate is dropped, and
    # short pauses probe for the real reset instead of waiting 60 s.
    now[0] = lim.paused_until
    probe = asyncio.run(lim.acquire(1))
    lim.rate_limited_by_server(60.0, sent_at=probe)
    assert lim.paused_until - now[0] <= MAX_PAUSE_S
    # The first answer after the refusal dates the window: the next 429 resumes 60 s later.
    now[0] = lim.paused_until
    answered = asyncio.run(lim.acquire(1))
    answer(lim, 599, answered)
    now[0] = answered + 30
    lim.rate_limited_by_server(60.0, sent_at=now[0])
    assert lim.paused_until == pytest.approx(answered + 60 + RESET_GUARD_S)


def test_remaining_jumping_back_up_dates_the_window() -> None:
    lim, now = on_a_clock()
    answer(lim, 100, START)  # 500 used before this run: where the window began is unknown
    answer(lim, 99, START + 1)
    answer(lim, 598, START + 7)  # a new window began by the time this request arrived
    now[0] = START + 20
    lim.rate_limited_by_server(60.0, sent_at=now[0])
    assert lim.paused_until == pytest.approx(START + 67 + RESET_GUARD_S)


def test_the_first_answer_charges_the_burst_sent_before_it() -> None:
    lim, _ = on_a_clock(margin=1.0)

    async def burst() -> None:
        for _ in range(32):
            await lim.acquire(1)

    asyncio.run(burst())  # 32 requests before any answer: no budget known yet
    answer(lim, 568, START)
    # 600 a minute is one every 0.1 s: the 32 sent count as if paced from the first.
    assert asyncio.run(lim.acquire(1)) == pytest.approx(START + 3.2)


# --- windows longer than ten seconds, learned from bare 429s --------------------------------


def test_a_60s_sliding_window_is_learned_within_two_windows() -> None:
    out = simulate(SlidingWindow(3000), limiter(), rows=12_000, workers=64)
    assert out.per_window_pct(3000, 60, after=120) >= 90.0
    assert out.most_429s <= 10  # no row near its allowance of 429s


def test_a_10s_sliding_window_is_still_learned() -> None:
    out = simulate(SlidingWindow(500, window_s=10), limiter(), rows=3000, workers=64)
    assert out.per_window_pct(500, 10, after=10) >= 80.0


def test_a_spent_fixed_window_pauses_until_its_reset_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="pipeline.limiter")
    lim, now = on_a_clock()
    answer(lim, 599, asyncio.run(lim.acquire(1)))  # the run's first request began the window
    now[0] = START + 45
    answer(lim, 0, now[0])  # the window's last request: nothing frees before its reset
    assert lim.paused_until == pytest.approx(START + 60 + RESET_GUARD_S)
    asyncio.run(lim.acquire(1))
    assert now[0] == pytest.approx(START + 60 + RESET_GUARD_S)
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "the server's requests budget is spent until its window resets: every request waits 15.1s",
        "rate-limit pause over after 15s (429 answers during it: 0): sending resumes",
    ]
