"""Reading the server's rate-limit headers in each dialect."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ratelimit import Budget, RateHeaders, duration, rate_headers, seconds_until


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


NOW = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC).timestamp()
PLAIN = {"content-type": "application/json", "date": "Fri, 14 Mar 2025 12:00:00 GMT"}


def read(raw: dict[str, str]) -> RateHeaders:
    found = rate_headers({**PLAIN, **raw}, now=NOW)
    assert found is not None
    assert rate_headers(httpx.Headers({**PLAIN, **raw}), now=NOW) == found  # case-insensitive
    return found


def test_names_in_any_case_in_a_plain_dict() -> None:
    found = read({"X-RateLimit-Limit-Requests": "60", "X-RATELIMIT-REMAINING-REQUESTS": "0"})
    assert found.requests == Budget(60, 0, None)


def test_litellm_key_scope_alongside_the_provider_budgets() -> None:
    found = read(
        {
            "x-ratelimit-limit-requests": "10000",  # the provider's, passed on by the proxy
            "x-ratelimit-remaining-requests": "9990",
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-api_key-limit-requests": "100",
            "x-ratelimit-api_key-remaining-requests": "97",
            "x-ratelimit-api_key-limit-tokens": "20000",
            "x-ratelimit-api_key-remaining-tokens": "18800",
            "x-litellm-model-id": "abc123",
        }
    )
    # The key's budget is the tighter; LiteLLM counts it in a fixed 60 s window.
    assert found.requests == Budget(100, 97, None, 60)
    assert found.tokens == Budget(20000, 18800, None, 60)


def test_litellm_tightest_scope_sets_pace_and_scarcity_apart() -> None:
    found = read(
        {
            "x-ratelimit-api_key-limit-requests": "60",
            "x-ratelimit-api_key-remaining-requests": "50",
            "x-ratelimit-model_per_key-limit-requests": "600",
            "x-ratelimit-model_per_key-remaining-requests": "0",
            "x-ratelimit-model_per_key-limit-tokens": "3000",
            "x-ratelimit-model_per_key-remaining-tokens": "2500",
            "x-ratelimit-team-limit-tokens": "100000",
            "x-ratelimit-team-remaining-tokens": "400",
        }
    )
    assert found.requests == Budget(60, 0, None, 60)  # the key's pace, the model's empty budget
    assert found.tokens == Budget(3000, 400, None, 60)


def test_anthropic_headers_with_rfc3339_resets() -> None:
    found = read(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2025-03-14T12:00:01.5Z",
            "anthropic-ratelimit-tokens-limit": "40000",
            "anthropic-ratelimit-tokens-remaining": "39000",
            "anthropic-ratelimit-tokens-reset": "2025-03-14T13:00:30+01:00",
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": "39500",
            "anthropic-ratelimit-output-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-remaining": "7500",
            "request-id": "req_018EeWyXxfu5pfWkrYcMdjWG",
        }
    )
    assert found.requests == Budget(50, 49, pytest.approx(1.5))
    assert found.tokens == Budget(40000, 39000, pytest.approx(30.0))


def test_anthropic_input_tokens_stand_in_for_tokens() -> None:
    found = read(
        {
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": "0",
            "anthropic-ratelimit-input-tokens-reset": "2025-03-14T11:59:00Z",  # past: now
        }
    )
    assert found.tokens == Budget(40000, 0, 0.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2025-03-14T12:00:10Z", 10.0),
        ("2025-03-14T12:00:10.250000+00:00", 10.25),
        ("2025-03-14T14:00:10+02:00", 10.0),
        ("2025-03-14T12:00:10", None),  # no zone: unreadable
        ("tomorrow", None),
        ("", None),
        (None, None),
    ],
)
def test_seconds_until(text: str | None, seconds: float | None) -> None:
    assert seconds_until(text, NOW) == (None if seconds is None else pytest.approx(seconds))


def test_ietf_structured_fields_with_a_window() -> None:
    found = read(
        {
            "RateLimit-Policy": '"burst";q=100;w=60, "day";q=1440;w=86400',
            "RateLimit": '"burst";r=50;t=30, "day";r=1000;t=3600',
        }
    )
    # A day of 1440 is 1 a minute: the slower pace; 50 left of the burst is the scarcer.
    assert found.requests == Budget(1.0, 50, 30, 86400)


def test_ietf_policy_with_a_token_unit() -> None:
    found = read(
        {"RateLimit-Policy": '"tpm";q=30000;w=30;qu="tokens"', "RateLimit": '"tpm";r=0;t=2'}
    )
    assert found.tokens == Budget(60000, 0, 2, 30)
    assert found.requests == Budget(None, None, None)


def test_ietf_older_triple_with_a_window() -> None:
    found = read(
        {"RateLimit-Limit": "100, 100;w=10", "RateLimit-Remaining": "7", "RateLimit-Reset": "4"}
    )
    assert found.requests == Budget(600, 7, 4, 10)
    found = read(
        {
            "RateLimit-Limit": "20",
            "RateLimit-Remaining": "19",
            "RateLimit-Reset": "60",
            "RateLimit-Policy": "20;w=60",
        }
    )
    assert found.requests == Budget(20, 19, 60, 60)
    assert read({"RateLimit-Limit": "30", "RateLimit-Remaining": "3"}).requests == Budget(
        30, 3, None
    )


def test_ietf_draft_07_dictionary_form() -> None:
    found = read({"RateLimit": "limit=100, remaining=50, reset=30", "RateLimit-Policy": "100;w=60"})
    assert found.requests == Budget(100, 50, 30, 60)
    found = read({"RateLimit": "limit=10, remaining=0, reset=1", "RateLimit-Policy": "10;w=1"})
    assert found.requests == Budget(600, 0, 1, 1)  # 10 a second is 600 a minute


def test_the_providers_headers_passed_on_by_litellm_are_one_more_scope() -> None:
    found = read(
        {
            "x-ratelimit-api_key-limit-requests": "1000",
            "x-ratelimit-api_key-remaining-requests": "990",
            "llm_provider-x-ratelimit-limit-requests": "500",  # the provider's, tighter
            "llm_provider-x-ratelimit-remaining-requests": "499",
            "llm_provider-x-ratelimit-reset-requests": "120ms",
            "llm_provider-anthropic-ratelimit-tokens-limit": "80000",
            "llm_provider-anthropic-ratelimit-tokens-remaining": "79000",
        }
    )
    assert found.requests == Budget(500, 499, pytest.approx(0.12))
    assert found.tokens == Budget(80000, 79000, None)


@pytest.mark.parametrize(
    "raw",
    [
        {"RateLimit": '"default";r=abc;t=-1'},
        {"RateLimit-Policy": '"default";q=;w=0'},
        {"RateLimit-Policy": '"unterminated;q=100;w=60'},
        {"RateLimit-Policy": ";;,,;", "RateLimit": ",;"},
        {"RateLimit-Limit": "lots", "RateLimit-Remaining": "-3", "RateLimit-Reset": "1e400"},
        {"anthropic-ratelimit-requests-reset": "2025-13-99T99:99:99Z"},
        {"x-ratelimit-api_key-limit-requests": "nan"},
    ],
)
def test_malformed_values_are_none_never_errors(raw: dict[str, str]) -> None:
    found = rate_headers(raw, now=NOW)
    assert found is None or found.requests.limit is None or found.requests.limit > 0


@given(
    st.dictionaries(
        st.sampled_from(["RateLimit", "RateLimit-Policy", "RateLimit-Limit"]), st.text(max_size=40)
    )
)
def test_ietf_headers_never_raise(raw: dict[str, str]) -> None:
    rate_headers(raw)


def test_unrelated_ratelimit_names_are_none() -> None:
    assert rate_headers({"x-ratelimit-used": "3", "x-ratelimit-resource": "core"}) is None
