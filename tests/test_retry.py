"""Unit tests for `pipeline.retry.policy`: what is retried, how long it waits, how often."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import (
    AuthError,
    FatalRequestError,
    RateLimited,
    RequestError,
    RetryableError,
)
from pipeline.retry import RATE_LIMITED_RETRIES, policy

T = TypeVar("T")


class Flaky:
    """An async call that raises the given errors in turn, then returns "done"."""

    def __init__(self, errors: Sequence[BaseException]) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


class FakeSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def run_with_policy(
    fn: Callable[[], Awaitable[T]], max_retries: int, sleep: FakeSleep, **kwargs: float
) -> T:
    """Drive `fn` the way the sender does: `async for attempt in policy(...)`."""

    async def go() -> T:
        async for attempt in policy(max_retries, sleep=sleep, **kwargs):
            with attempt:
                result = await fn()
        return result

    return asyncio.run(go())


def test_two_retryable_failures_then_success() -> None:
    flaky, sleep = Flaky([RetryableError("a"), RetryableError("b")]), FakeSleep()

    assert run_with_policy(flaky, 5, sleep, initial_s=0.5) == "done"
    assert flaky.calls == 3
    assert len(sleep.waits) == 2
    # Full jitter: between 0 and initial_s * 2 ** (attempt - 1).
    assert 0 <= sleep.waits[0] <= 0.5
    assert 0 <= sleep.waits[1] <= 1.0


def test_policy_can_be_called_with_the_function() -> None:
    flaky, sleep = Flaky([RetryableError("a")]), FakeSleep()

    assert asyncio.run(policy(3, sleep=sleep)(flaky)) == "done"
    assert flaky.calls == 2
    assert len(sleep.waits) == 1


def test_success_first_time_does_not_sleep() -> None:
    flaky, sleep = Flaky([]), FakeSleep()

    assert run_with_policy(flaky, 5, sleep) == "done"
    assert flaky.calls == 1
    assert sleep.waits == []


def test_rate_limited_waits_exactly_retry_after() -> None:
    flaky, sleep = Flaky([RateLimited("429", retry_after=1.5)]), FakeSleep()

    assert run_with_policy(flaky, 5, sleep) == "done"
    assert sleep.waits == [1.5]


def test_retry_after_is_honoured_beyond_the_backoff_cap() -> None:
    flaky, sleep = Flaky([RateLimited("429", retry_after=120.0)]), FakeSleep()

    run_with_policy(flaky, 5, sleep, max_wait_s=60.0)
    assert sleep.waits == [120.0]


def test_rate_limited_without_retry_after_uses_jittered_backoff() -> None:
    errors = [RateLimited("429"), RateLimited("429"), RateLimited("429")]
    flaky, sleep = Flaky(errors), FakeSleep()

    run_with_policy(flaky, 5, sleep, initial_s=0.25)
    assert flaky.calls == 4
    assert len(sleep.waits) == 3
    for attempt, wait in enumerate(sleep.waits):
        assert 0 <= wait <= 0.25 * 2**attempt


def test_backoff_is_capped_at_max_wait() -> None:
    flaky, sleep = Flaky([RetryableError(str(i)) for i in range(8)]), FakeSleep()

    run_with_policy(flaky, 10, sleep, initial_s=1.0, max_wait_s=3.0)
    assert len(sleep.waits) == 8
    assert max(sleep.waits) <= 3.0


@pytest.mark.parametrize(
    "error",
    [
        FatalRequestError("HTTP 400: bad", status=400),
        AuthError("HTTP 401: no key", status=401),
        ValueError("a bug, not a request failure"),
    ],
)
def test_non_retryable_errors_are_raised_at_once(error: Exception) -> None:
    flaky, sleep = Flaky([error, RetryableError("never reached")]), FakeSleep()

    with pytest.raises(type(error)) as info:
        run_with_policy(flaky, 5, sleep)
    assert info.value is error
    assert flaky.calls == 1
    assert sleep.waits == []


def test_last_retryable_error_is_reraised_after_max_retries() -> None:
    errors = [RetryableError(f"attempt {i}", status=503) for i in range(1, 10)]
    flaky, sleep = Flaky(errors), FakeSleep()

    with pytest.raises(RetryableError, match="attempt 4") as info:
        run_with_policy(flaky, 3, sleep)
    assert isinstance(info.value, RequestError)
    assert info.value.status == 503
    assert flaky.calls == 4
    assert len(sleep.waits) == 3


def test_zero_retries_means_one_attempt() -> None:
    flaky, sleep = Flaky([RateLimited("429", retry_after=1)]), FakeSleep()

    with pytest.raises(RateLimited):
        run_with_policy(flaky, 0, sleep)
    assert flaky.calls == 1
    assert sleep.waits == []


@settings(max_examples=40, deadline=None, database=None)
@given(max_retries=st.integers(0, 8), failures=st.integers(0, 10))
def test_attempts_never_exceed_max_retries_plus_one(max_retries: int, failures: int) -> None:
    flaky, sleep = Flaky([RetryableError(str(i)) for i in range(failures)]), FakeSleep()

    if failures <= max_retries:
        assert run_with_policy(flaky, max_retries, sleep, initial_s=0.01) == "done"
        assert flaky.calls == failures + 1
    else:
        with pytest.raises(RetryableError, match=f"^{max_retries}$"):
            run_with_policy(flaky, max_retries, sleep, initial_s=0.01)
        assert flaky.calls == max_retries + 1
    assert len(sleep.waits) == flaky.calls - 1


def test_with_a_limiter_a_429_is_retried_at_once_for_the_limiter_to_hold() -> None:
    flaky, sleep = Flaky([RateLimited("429", retry_after=60.0)]), FakeSleep()

    assert asyncio.run(policy(5, sleep=sleep, limiter_waits=True)(flaky)) == "done"
    assert sleep.waits == [0.0]  # the limiter's pause, shared by every request, waits


def test_with_a_limiter_429s_do_not_use_up_max_retries() -> None:
    errors: list[BaseException] = [RateLimited("429") for _ in range(RATE_LIMITED_RETRIES)]
    errors += [RetryableError("503", status=503)] * 2
    flaky, sleep = Flaky(errors), FakeSleep()

    assert asyncio.run(policy(2, sleep=sleep, limiter_waits=True)(flaky)) == "done"
    assert flaky.calls == RATE_LIMITED_RETRIES + 3


def test_with_a_limiter_429s_have_an_allowance_of_their_own() -> None:
    errors = [RateLimited(f"429 #{i}") for i in range(RATE_LIMITED_RETRIES + 5)]
    flaky, sleep = Flaky(errors), FakeSleep()

    with pytest.raises(RateLimited, match=f"#{RATE_LIMITED_RETRIES}$"):
        asyncio.run(policy(2, sleep=sleep, limiter_waits=True)(flaky))
    assert flaky.calls == RATE_LIMITED_RETRIES + 1


def test_with_a_limiter_zero_retries_still_means_one_attempt() -> None:
    flaky, sleep = Flaky([RateLimited("429")]), FakeSleep()

    with pytest.raises(RateLimited):
        asyncio.run(policy(0, sleep=sleep, limiter_waits=True)(flaky))
    assert flaky.calls == 1
