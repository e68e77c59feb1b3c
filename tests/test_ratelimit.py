"""Reading the server's `x-ratelimit-*` headers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ratelimit import Budget, duration, rate_headers


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("250ms", 0.25),
        ("1h2m3.5s", 3723.5),
        ("2.5", 2.5),
        ("0s", 0.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["soon", "1x", "-1", "inf", "", "s"])
def test_unreadable_durations_are_none(text: str) -> None:
    assert duration(text) is None


@given(st.text(max_size=20))
def test_duration_never_raises(text: str) -> None:
    value = duration(text)
    assert value is None or value >= 0


def test_headers_in_the_openai_form() -> None:
    found = rate_headers(
        {
            "x-ratelimit-limit-requests": "3000",
            "x-ratelimit-remaining-requests": "2999",
            "x-ratelimit-reset-requests": "20ms",
            "x-ratelimit-limit-tokens": "400000",
            "x-ratelimit-remaining-tokens": "junk",
        }
    )
    assert found is not None
    assert found.requests == Budget(3000, 2999, 0.02)
    assert found.tokens == Budget(400000, None, None)


def test_no_rate_headers_is_none() -> None:
    assert rate_headers({"retry-after": "1", "content-type": "application/json"}) is None
