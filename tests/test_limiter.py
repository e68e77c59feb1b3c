"""Unit tests for `pipeline.limiter.Limiter` on a fake clock: pacing, token budgets, 429 pauses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from pipeline.budgetmath import MIN_ACCEPTED, MIN_SPAN_S
from pipeline.limiter import (
    ACCEPTED_FACTOR,
    DEFAULT_PAUSE_S,
    KNOWN_BACKOFF_FACTOR,
    MARGIN,
    RECOVERY_S,
    RECOVERY_STEP,
    Limiter,
)
from pipeline.ratelimit import RateHeaders

START = 1000.0  # a realistic monotonic clock reading


class FakeTime:
    """A clock that only moves when someone sleeps.

    A sleep yields once to the loop (so concurrent waiters all get to reserve first), then
    moves the clock to its wake-up time unless it is already later. `on_sleep` runs once,
    at the start of the next sleep: something that happens while the limiter waits.
    """

    def __init__(self, now: float = START) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], None] | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the limiter must not sleep for nothing"
        self.sleeps.append(seconds)
        wake = self.now + seconds
        if self.on_sleep is not None:
            hook, self.on_sleep = self.on_sleep, None
            hook()
        await asyncio.sleep(0)
        self.now = max(self.now, wake)


def make(
    rpm: float | None = None, tpm: float | None = None, now: float = START
) -> tuple[Limiter, FakeTime]:
    fake = FakeTime(now)
    return Limiter(rpm, tpm, clock=fake.clock, sleep=fake.sleep, margin=1.0), fake


def send_times(limiter: Limiter, fake: FakeTime, n: int, tokens: int = 1) -> list[float]:
    """When each of `n` sequential acquires was let through."""

    async def go() -> list[float]:
        times = []
        for _ in range(n):
            await limiter.acquire(tokens)
            times.append(fake.now)
        return times

    return asyncio.run(go())


def acquire(limiter: Limiter, tokens: int = 1) -> None:
    asyncio.run(limiter.acquire(tokens))


# --- pacing ------------------------------------------------------------------------------


def test_no_budget_never_waits() -> None:
    limiter, fake = make()

    assert send_times(limiter, fake, 50, tokens=10**6) == [START] * 50
    assert fake.sleeps == []


def test_requests_per_minute_are_evenly_spaced_without_burst() -> None:
    limiter, fake = make(rpm=600)
    times = send_times(limiter, fake, 10)

    assert times == pytest.approx([START + 0.1 * i for i in range(10)])
    assert fake.sleeps == pytest.approx([0.1] * 9)


def test_idle_time_is_not_saved_up_as_a_burst() -> None:
    limiter, fake = make(rpm=60)
    send_times(limiter, fake, 3)  # ends at START + 2
    fake.now += 100.0  # a long quiet spell
    times = send_times(limiter, fake, 3)

    assert times == pytest.approx([START + 102, START + 103, START + 104])


async def gather_send_times(limiter: Limiter, fake: FakeTime, n: int) -> list[float]:
    async def one() -> float:
        await limiter.acquire(1)
        return fake.now

    return list(await asyncio.gather(*(one() for _ in range(n))))


def test_concurrent_acquires_get_distinct_slots() -> None:
    limiter, fake = make(rpm=60)
    times = asyncio.run(gather_send_times(limiter, fake, 4))

    assert sorted(times) == pytest.approx([START, START + 1, START + 2, START + 3])
    assert sorted(fake.sleeps) == pytest.approx([1.0, 2.0, 3.0])  # all waited from START


# --- token budget ------------------------------------------------------------------------


def test_tokens_per_minute_paces_by_estimate() -> None:
    limiter, fake = make(tpm=6000)  # 100 tokens a second
    times = send_times(limiter, fake, 3, tokens=500)

    assert times == pytest.approx([START, START + 5, START + 10])


def test_settle_gives_back_unused_tokens_so_next_goes_sooner() -> None:
    limiter, fake = make(tpm=6000)
    acquire(limiter, 1000)
    limiter.settle(estimated=1000, actual=100)
    acquire(limiter, 1000)

    assert fake.now == pytest.approx(START + 1.0)  # instead of START + 10


def test_without_settle_next_waits_for_the_whole_estimate() -> None:
    limiter, fake = make(tpm=6000)
    acquire(limiter, 1000)
    acquire(limiter, 1000)

    assert fake.now == pytest.approx(START + 10.0)


def test_settle_charges_usage_above_the_estimate() -> None:
    limiter, fake = make(tpm=6000)
    acquire(limiter, 100)
    limiter.settle(estimated=100, actual=700)
    acquire(limiter, 100)

    assert fake.now == pytest.approx(START + 7.0)


def test_settle_with_unknown_usage_keeps_the_estimate() -> None:
    limiter, fake = make(tpm=6000)
    acquire(limiter, 1000)
    limiter.settle(estimated=1000, actual=0)  # the server sent no usage
    acquire(limiter, 1000)

    assert fake.now == pytest.approx(START + 10.0)


def test_settle_without_token_budget_is_harmless() -> None:
    limiter, fake = make(rpm=600)
    acquire(limiter)
    limiter.settle(estimated=1000, actual=10)
    acquire(limiter)

    assert fake.now == pytest.approx(START + 0.1)


def test_both_budgets_the_slower_one_wins() -> None:
    limiter, fake = make(rpm=600, tpm=6000)  # 0.1 s per request, 1 s per 100 tokens
    times = send_times(limiter, fake, 3, tokens=100)

    assert times == pytest.approx([START, START + 1, START + 2])


# --- 429 from the server -----------------------------------------------------------------


def test_rate_limited_pauses_until_retry_after_and_lowers_factor() -> None:
    limiter, fake = make(rpm=600)
    acquire(limiter)
    limiter.rate_limited_by_server(retry_after=2)

    assert limiter.factor == pytest.approx(KNOWN_BACKOFF_FACTOR)
    assert limiter.paused_until == pytest.approx(START + 2)
    assert limiter.rate_limited == 1
    acquire(limiter)
    assert fake.now == pytest.approx(START + 2)


def test_after_a_429_requests_are_spaced_at_the_lowered_rate() -> None:
    limiter, fake = make(rpm=600)
    acquire(limiter)
    limiter.rate_limited_by_server(retry_after=1)  # shorter than RECOVERY_S
    times = send_times(limiter, fake, 3)

    gap = 0.1 / KNOWN_BACKOFF_FACTOR
    assert times == pytest.approx([START + 1, START + 1 + gap, START + 1 + 2 * gap])


def test_429_without_retry_after_pauses_for_the_default() -> None:
    limiter, fake = make(rpm=600)
    limiter.rate_limited_by_server(retry_after=None)
    acquire(limiter)

    assert fake.now == pytest.approx(START + DEFAULT_PAUSE_S)


def test_pause_only_grows() -> None:
    limiter, _ = make()
    limiter.rate_limited_by_server(retry_after=10)
    limiter.rate_limited_by_server(retry_after=1)

    assert limiter.paused_until == pytest.approx(START + 10)


def test_a_burst_of_429s_cuts_the_rate_once() -> None:
    limiter, fake = make(rpm=600)
    for _ in range(5):
        limiter.rate_limited_by_server(retry_after=1)
        fake.now += 0.1

    assert limiter.rate_limited == 5
    assert limiter.factor == pytest.approx(KNOWN_BACKOFF_FACTOR)


def test_separate_429s_cut_again_down_to_a_floor() -> None:
    limiter, fake = make(rpm=600)
    limiter.rate_limited_by_server(retry_after=1)
    fake.now += 1.5
    limiter.rate_limited_by_server(retry_after=1)

    assert limiter.factor == pytest.approx(KNOWN_BACKOFF_FACTOR**2)
    for _ in range(50):
        fake.now += 1.5
        limiter.rate_limited_by_server(retry_after=1)
    assert limiter.factor == pytest.approx(0.05)


def test_429_during_the_wait_voids_the_slot_until_the_pause_ends() -> None:
    limiter, fake = make(rpm=60)
    acquire(limiter)  # takes the slot at START; the next one is at START + 1
    fake.on_sleep = lambda: limiter.rate_limited_by_server(retry_after=5)
    acquire(limiter)

    # Without the check the request would go at START + 1, inside the pause.
    assert fake.now == pytest.approx(START + 5)


def test_all_workers_wait_out_the_pause() -> None:
    limiter, fake = make()
    limiter.rate_limited_by_server(retry_after=3)
    times = asyncio.run(gather_send_times(limiter, fake, 3))

    assert times == pytest.approx([START + 3] * 3)
    assert fake.sleeps == pytest.approx([3.0] * 3)  # every worker waited, not only the first


# --- recovery ----------------------------------------------------------------------------


def test_factor_recovers_one_step_per_quiet_recovery_period() -> None:
    limiter, fake = make(rpm=600)
    limiter.rate_limited_by_server(retry_after=1)
    assert limiter.factor == pytest.approx(KNOWN_BACKOFF_FACTOR)
    quiet = START + 1  # quiet time counts from the end of the pause

    fake.now = quiet + RECOVERY_S - 0.01
    acquire(limiter)
    assert limiter.factor == pytest.approx(KNOWN_BACKOFF_FACTOR)

    fake.now = quiet + RECOVERY_S
    acquire(limiter)
    assert limiter.factor == pytest.approx(KNOWN_BACKOFF_FACTOR + RECOVERY_STEP)

    fake.now = quiet + 2 * RECOVERY_S
    acquire(limiter)
    assert limiter.factor == pytest.approx(KNOWN_BACKOFF_FACTOR + 2 * RECOVERY_STEP)


def test_factor_recovers_fully_and_never_above_one() -> None:
    limiter, fake = make(rpm=600)
    limiter.rate_limited_by_server(retry_after=1)
    for _ in range(20):
        fake.now += RECOVERY_S
        acquire(limiter)

    assert limiter.factor == 1.0
    # Back at full rate: 0.1 s between requests again.
    start = fake.now
    times = send_times(limiter, fake, 3)
    assert times[2] - times[1] == pytest.approx(0.1)
    assert times[0] >= start


def test_factor_recovers_per_quiet_period_even_without_traffic() -> None:
    limiter, fake = make(rpm=600)
    limiter.rate_limited_by_server(retry_after=1)
    fake.now += 12 * RECOVERY_S  # 12 quiet periods: 0.7 + 12 * 0.05 >= 1.0
    acquire(limiter)

    assert limiter.factor == pytest.approx(1.0)


def test_first_429_lowers_rate_even_when_clock_starts_at_zero() -> None:
    limiter, _ = make(rpm=600, now=0.5)
    limiter.rate_limited_by_server(retry_after=1)

    assert limiter.factor == pytest.approx(KNOWN_BACKOFF_FACTOR)


# --- the server's word: headers, bare 429s, learning -----------------------------------------


def headers(limit: float | None, remaining: float | None, reset: str | None) -> RateHeaders:
    from pipeline.ratelimit import rate_headers

    raw = {}
    if limit is not None:
        raw["x-ratelimit-limit-requests"] = str(limit)
    if remaining is not None:
        raw["x-ratelimit-remaining-requests"] = str(remaining)
    if reset is not None:
        raw["x-ratelimit-reset-requests"] = reset
    found = rate_headers(raw)
    assert found is not None
    return found


def test_limit_header_sets_the_budget_when_none_was_told() -> None:
    limiter, fake = make()
    limiter.observe(headers(600, 500, "1s"))
    assert limiter.requests_per_minute == 600
    times = send_times(limiter, fake, 3)
    assert times == pytest.approx([START, START + 0.1, START + 0.2])


def test_limit_header_never_raises_a_told_budget() -> None:
    limiter, _ = make(rpm=300)
    limiter.observe(headers(600, 500, "1s"))
    assert limiter.requests_per_minute == 300
    limiter.observe(headers(120, 100, "1s"))
    assert limiter.requests_per_minute == 120


def test_no_remaining_requests_waits_for_one_request_to_free() -> None:
    limiter, fake = make()
    limiter.observe(headers(600, 0, "1.5s"))  # the reset is when all 600 are back
    acquire(limiter)
    assert fake.now == pytest.approx(START + 0.1)


def test_known_limits_are_paced_a_little_under() -> None:
    fake = FakeTime()
    limiter = Limiter(600, clock=fake.clock, sleep=fake.sleep)
    times = send_times(limiter, fake, 3)
    assert times[2] - times[1] == pytest.approx(0.1 / MARGIN)
    assert limiter.requests_per_minute == pytest.approx(600 * MARGIN)


def test_429_with_only_a_reset_header_waits_for_the_reset() -> None:
    limiter, fake = make(rpm=600)
    limiter.rate_limited_by_server(None, rate=headers(None, None, "2.5s"))
    acquire(limiter)
    assert fake.now == pytest.approx(START + 2.5)


def test_429_on_a_spent_bucket_waits_for_one_request_not_the_full_refill() -> None:
    # OpenAI's reset is when the whole budget is back; it refills evenly before that.
    limiter, fake = make(rpm=600)
    limiter.rate_limited_by_server(None, rate=headers(600, 0, "2.5s"))
    acquire(limiter)
    assert fake.now == pytest.approx(START + 0.1)


def test_bare_429s_double_the_pause_until_an_answer_arrives() -> None:
    limiter, fake = make(rpm=600)
    pauses = []
    for _ in range(6):
        before = fake.now
        limiter.rate_limited_by_server(None, sent_at=fake.now)
        limiter.rate_limited_by_server(None, sent_at=fake.now - 0.5)  # same burst: no doubling
        pauses.append(limiter.paused_until - before)
        fake.now = limiter.paused_until + 0.01
    assert pauses == pytest.approx([1, 2, 4, 4, 4, 4])
    limiter.settle(10, 10)
    limiter.rate_limited_by_server(None, sent_at=fake.now)
    assert limiter.paused_until - fake.now == pytest.approx(DEFAULT_PAUSE_S)


def test_429s_of_requests_sent_before_the_cut_do_not_cut_again() -> None:
    limiter, fake = make(rpm=600)
    sent = asyncio.run(limiter.acquire(1))
    fake.now += 0.5
    limiter.rate_limited_by_server(0.1, sent_at=sent)
    limiter.rate_limited_by_server(0.1, sent_at=sent)  # in flight at the same time
    assert limiter.factor == pytest.approx(KNOWN_BACKOFF_FACTOR)
    fake.now += 1
    later = asyncio.run(limiter.acquire(1))
    limiter.rate_limited_by_server(0.1, sent_at=later)
    assert limiter.factor == pytest.approx(KNOWN_BACKOFF_FACTOR**2)


def test_with_no_budget_the_first_429_learns_one_from_the_accepted_rate() -> None:
    limiter, fake = make()
    for _ in range(21):  # 20 answers a second for a second
        limiter.settle(1, 1)
        fake.now += 0.05
    assert limiter.requests_per_minute is None
    limiter.rate_limited_by_server(1.0, sent_at=fake.now)
    learned = limiter.requests_per_minute
    # The rate accepted since the first answer (not diluted over a longer fixed span),
    # and a step under it.
    assert learned == pytest.approx(1200 * ACCEPTED_FACTOR, rel=0.05)
    # A learned budget may climb past where it started: the real limit may be higher.
    fake.now += 1.0 + 10 * RECOVERY_S  # the pause, then ten quiet periods
    acquire(limiter)
    assert limiter.requests_per_minute == pytest.approx(learned * (1 + RECOVERY_STEP) ** 10)
    assert limiter.requests_per_minute > 1200


def test_a_429_after_too_few_answers_only_pauses() -> None:
    limiter, fake = make()
    for _ in range(MIN_ACCEPTED - 1):
        limiter.settle(1, 1)
        fake.now += 0.01
    limiter.rate_limited_by_server(0.2, sent_at=fake.now)
    assert limiter.requests_per_minute is None  # not a budget of a few requests a minute
    assert limiter.paused_until == pytest.approx(fake.now + 0.2)
    fake.now += 0.2
    for _ in range(MIN_ACCEPTED):  # the server goes on accepting; then a real limit
        limiter.settle(1, 1)
        fake.now += 0.01
    limiter.rate_limited_by_server(0.2, sent_at=fake.now)
    answers = 2 * MIN_ACCEPTED - 1  # in under MIN_SPAN_S: counted as if over MIN_SPAN_S
    expected = answers * 60 / MIN_SPAN_S * ACCEPTED_FACTOR
    assert limiter.requests_per_minute == pytest.approx(expected)


def test_a_long_window_is_learned_from_the_whole_run_not_the_last_seconds() -> None:
    # 3,000 accepted in the first 3 s of a 60 s window, then only 429s until it slides.
    limiter, fake = make()
    for _ in range(3000):
        limiter.settle(1, 1)
        fake.now += 0.001
    probes = 0
    while fake.now < START + 60:  # a probe after each pause (1, 2, 4, 4... s): new bursts
        sent = asyncio.run(limiter.acquire(1))
        fake.now = max(fake.now, sent) + 0.05
        limiter.rate_limited_by_server(None, sent_at=sent)
        fake.now = limiter.paused_until
        probes += 1
    assert probes > 10
    learned = limiter.requests_per_minute
    assert learned is not None
    # Near the 3,000 a minute the server allowed, and a step under it; a 10 s view would
    # have had nothing to learn from, and cutting at each burst would have reached the floor.
    assert 3000 * ACCEPTED_FACTOR * 0.8 < learned < 3000 * ACCEPTED_FACTOR * 1.2


SIX_HUNDRED_A_MINUTE = {
    "openai": {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "599"},
    "litellm key": {
        "x-ratelimit-api_key-limit-requests": "600",
        "x-ratelimit-api_key-remaining-requests": "599",
    },
    "litellm model per key": {
        "x-ratelimit-model_per_key-limit-requests": "600",
        "x-ratelimit-model_per_key-remaining-requests": "599",
    },
    "anthropic": {
        "anthropic-ratelimit-requests-limit": "600",
        "anthropic-ratelimit-requests-remaining": "599",
        "anthropic-ratelimit-requests-reset": "2025-03-14T12:00:01Z",
    },
    "ietf": {"RateLimit-Policy": '"default";q=100;w=10', "RateLimit": '"default";r=99;t=10'},
    "ietf triple": {"RateLimit-Limit": "600", "RateLimit-Remaining": "599", "RateLimit-Reset": "1"},
}


@pytest.mark.parametrize("raw", SIX_HUNDRED_A_MINUTE.values(), ids=SIX_HUNDRED_A_MINUTE.keys())
def test_a_limit_in_any_dialect_paces_from_the_first_response(raw: dict[str, str]) -> None:
    from pipeline.ratelimit import rate_headers

    limiter, fake = make()
    limiter.observe(rate_headers(raw))
    assert limiter.requests_per_minute == pytest.approx(600)
    times = send_times(limiter, fake, 3)
    assert times == pytest.approx([START, START + 0.1, START + 0.2])


def test_a_spent_anthropic_budget_waits_for_one_request_to_free() -> None:
    from datetime import UTC, datetime

    from pipeline.ratelimit import rate_headers

    now = datetime(2025, 3, 14, 12, tzinfo=UTC).timestamp()
    raw = {
        "anthropic-ratelimit-requests-limit": "600",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2025-03-14T12:00:00.05Z",
    }
    limiter, fake = make()
    limiter.observe(rate_headers(raw, now=now))
    acquire(limiter)
    assert fake.now == pytest.approx(START + 0.05)  # the reset came before a 600th of a minute
