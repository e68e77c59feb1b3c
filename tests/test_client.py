"""Unit tests for `pipeline.client`: requests out, completions or typed errors back.

No network: `httpx.MockTransport` answers every request.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.client import ChatClient, Completion, error_detail, parse_completion, retry_after
from pipeline.errors import (
    AuthError,
    FatalRequestError,
    RateLimited,
    RequestError,
    RetryableError,
)

Handler = Callable[[httpx.Request], httpx.Response]
HYPOTHESIS = settings(max_examples=100, deadline=None, database=None)
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def completion_json(content: Any = "hello", usage: Any = None) -> dict[str, Any]:
    return {
        "id": "c-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        "usage": usage if usage is not None else {"prompt_tokens": 12, "completion_tokens": 3},
    }


def complete(
    handler: Handler,
    *,
    base_url: str = "http://api.test/v1",
    api_key: str | None = "KEY",
    body: dict[str, Any] | None = None,
) -> Completion:
    async def go() -> Completion:
        transport = httpx.MockTransport(handler)
        async with ChatClient(
            base_url, api_key, timeout_s=5, concurrency=4, transport=transport
        ) as client:
            return await client.complete(body or BODY)

    return asyncio.run(go())


def answer(status: int, content: bytes | str = b"", **headers: str) -> Handler:
    data = content.encode() if isinstance(content, str) else content
    return lambda request: httpx.Response(status, content=data, headers=headers)


def fails_with(handler: Handler) -> RequestError:
    with pytest.raises(RequestError) as info:
        complete(handler)
    return info.value


# --- the request -------------------------------------------------------------------------


@pytest.mark.parametrize("base_url", ["http://api.test/v1", "http://api.test/v1/"])
def test_request_goes_to_chat_completions_with_json_and_bearer(base_url: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion_json())

    complete(handler, base_url=base_url, api_key="KEY")

    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == "http://api.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer KEY"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == BODY
    assert request.extensions["timeout"]["read"] == 5


@pytest.mark.parametrize("api_key", [None, ""])
def test_no_authorization_header_without_a_key(api_key: str | None) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion_json())

    complete(handler, api_key=api_key)

    assert "authorization" not in seen[0].headers


def test_one_client_serves_many_requests() -> None:
    count = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        content = json.loads(request.content)["messages"][0]["content"]
        return httpx.Response(200, json=completion_json(content.upper()))

    async def go() -> list[str]:
        transport = httpx.MockTransport(handler)
        async with ChatClient(
            "http://x/v1", "K", timeout_s=5, concurrency=4, transport=transport
        ) as c:
            bodies = [{"messages": [{"role": "user", "content": f"m{i}"}]} for i in range(5)]
            results = await asyncio.gather(*(c.complete(b) for b in bodies))
        return [r.content for r in results]

    assert asyncio.run(go()) == ["M0", "M1", "M2", "M3", "M4"]
    assert count == 5


# --- 200 answers -------------------------------------------------------------------------


def test_200_gives_content_usage_raw_and_headers() -> None:
    raw = json.dumps(completion_json("a label"))
    result = complete(answer(200, raw, **{"x-request-id": "abc"}))

    assert result.content == "a label"
    assert result.prompt_tokens == 12
    assert result.completion_tokens == 3
    assert result.raw == raw
    assert result.headers["x-request-id"] == "abc"


def test_200_without_usage_counts_zero_tokens() -> None:
    body = completion_json("x")
    del body["usage"]
    result = complete(answer(200, json.dumps(body)))

    assert (result.content, result.prompt_tokens, result.completion_tokens) == ("x", 0, 0)


def choice_json(choice: Any) -> str:
    return json.dumps({"choices": [choice], "usage": {"prompt_tokens": 1}})


def test_200_with_empty_content_is_an_empty_answer() -> None:
    assert complete(answer(200, json.dumps(completion_json("")))).content == ""


def test_200_with_content_parts_joins_the_text_parts() -> None:
    parts = [
        {"type": "text", "text": "a "},
        "b",
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
        {"type": "text", "text": {"not": "text"}},
        {"text": "c"},
    ]
    result = complete(answer(200, json.dumps(completion_json(parts))))

    assert result.content == "a bc"
    assert result.prompt_tokens == 12


@pytest.mark.parametrize(
    "choice",
    [
        {"message": {"role": "assistant", "content": None}, "finish_reason": "length"},
        {"message": {"role": "assistant"}},
        {"finish_reason": "stop"},
        {"message": None},
        {"message": "just a string"},
        {"message": {"content": 42}},
        {"message": {"content": {"text": "x"}}},
        {"message": {"content": []}},
        {"message": {"content": [{"type": "image_url", "image_url": {}}]}},
        {"message": {"content": None, "refusal": "  "}},
    ],
)
def test_200_without_message_content_is_retryable(choice: dict[str, Any]) -> None:
    error = fails_with(answer(200, choice_json(choice)))

    assert type(error) is RetryableError
    assert error.status == 200
    assert str(error).startswith("HTTP 200 without message content (finish_reason ")


def test_200_without_content_names_the_finish_reason() -> None:
    choice = {"message": {"content": None}, "finish_reason": "length"}

    error = fails_with(answer(200, choice_json(choice)))

    assert str(error) == "HTTP 200 without message content (finish_reason 'length')"


def test_200_content_filter_without_content_is_fatal() -> None:
    choice = {"message": {"role": "assistant", "content": None}, "finish_reason": "content_filter"}

    error = fails_with(answer(200, choice_json(choice)))

    assert type(error) is FatalRequestError
    assert error.status == 200
    assert str(error).startswith("no answer: ")
    assert "content_filter" in str(error)


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": None, "refusal": "I can't\n help with that."},
        {"content": [{"type": "refusal", "refusal": "I can't help with that."}]},
    ],
)
def test_200_refusal_is_fatal_with_the_refusal(message: dict[str, Any]) -> None:
    error = fails_with(answer(200, choice_json({"message": message, "finish_reason": "stop"})))

    assert type(error) is FatalRequestError
    assert error.status == 200
    assert str(error) == "no answer: the model refused: I can't help with that."


def test_200_content_wins_over_a_refusal_field() -> None:
    raw = choice_json({"message": {"content": "billing", "refusal": "no"}})

    assert parse_completion(200, raw, httpx.Headers()).content == "billing"


@pytest.mark.parametrize(
    "content", ['"a\\ud800b"', '[{"type": "text", "text": "a\\ud800"}, "b"]', '"a\\udfffb"']
)
def test_200_lone_surrogate_in_content_is_replaced(content: str) -> None:
    raw = '{"choices": [{"message": {"content": ' + content + "}}]}"

    result = parse_completion(200, raw, httpx.Headers())

    assert result.content == "a\ufffdb"
    result.content.encode("utf-8")
    assert result.raw == raw


@pytest.mark.parametrize(
    "raw",
    ['{"choices": [{"message": {"content": "trunc', "", "<html>502</html>", "null"],
)
def test_200_with_truncated_or_non_json_body_is_retryable(raw: str) -> None:
    error = fails_with(answer(200, raw))

    assert type(error) is RetryableError
    assert error.status == 200


@pytest.mark.parametrize(
    "body",
    [{}, {"choices": []}, {"choices": None}, {"choices": ["x"]}, [1, 2], {"error": "late"}],
)
def test_200_without_choices_is_retryable(body: Any) -> None:
    error = fails_with(answer(200, json.dumps(body)))

    assert type(error) is RetryableError
    assert "without choices" in str(error)


@pytest.mark.parametrize("usage", ["n/a", [1, 2], {"prompt_tokens": "many"}, {"prompt_tokens": -5}])
def test_200_with_malformed_usage_still_gives_the_answer(usage: Any) -> None:
    raw = json.dumps(completion_json("ok", usage=usage))
    result = parse_completion(200, raw, httpx.Headers())

    assert result.content == "ok"
    assert result.prompt_tokens == 0


# --- error answers -----------------------------------------------------------------------

OXEN_DETAIL = {
    "error": {"type": "model_not_found", "title": "Not found", "detail": "No model 'x' here"},
    "status": "error",
    "status_message": "resource_not_found",
}
OXEN_MESSAGE = {"error": {"message": "Too many requests for this key"}}
OPENAI = {
    "error": {
        "message": "Invalid value for 'temperature'",
        "type": "invalid_request_error",
        "code": "invalid_value",
    }
}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (OXEN_DETAIL, "No model 'x' here"),
        (OXEN_MESSAGE, "Too many requests for this key"),
        (OPENAI, "Invalid value for 'temperature'"),
    ],
)
@pytest.mark.parametrize("status", [400, 404, 429, 500])
def test_error_body_detail_is_in_the_exception(
    body: dict[str, Any], detail: str, status: int
) -> None:
    error = fails_with(answer(status, json.dumps(body)))

    assert str(error) == f"HTTP {status}: {detail}"
    assert error.status == status


def test_429_is_rate_limited_with_retry_after_seconds() -> None:
    error = fails_with(answer(429, json.dumps(OXEN_MESSAGE), **{"Retry-After": "7"}))

    assert isinstance(error, RateLimited)
    assert isinstance(error, RetryableError)
    assert error.retry_after == 7.0


def test_429_with_http_date_retry_after() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    header = email.utils.format_datetime(when, usegmt=True)
    error = fails_with(answer(429, "slow down", **{"Retry-After": header}))

    assert isinstance(error, RateLimited)
    assert error.retry_after is not None
    assert 27 <= error.retry_after <= 31


def test_429_from_anthropic_carries_retry_after_and_its_budgets() -> None:
    reset = (datetime.now(UTC) + timedelta(seconds=20)).isoformat()
    headers = {
        "retry-after": "20",
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset,
    }
    error = fails_with(answer(429, "rate_limit_error", **headers))

    assert isinstance(error, RateLimited)
    assert error.retry_after == 20.0
    assert error.rate is not None
    assert error.rate.requests.limit == 50
    assert error.rate.requests.remaining == 0
    assert error.rate.requests.reset_s is not None
    assert 18 <= error.rate.requests.reset_s <= 21


def test_429_without_retry_after() -> None:
    error = fails_with(answer(429, ""))

    assert isinstance(error, RateLimited)
    assert error.retry_after is None
    assert str(error) == "HTTP 429: Too Many Requests"


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409])
def test_server_errors_are_retryable(status: int) -> None:
    error = fails_with(answer(status, "upstream hiccup"))

    assert type(error) is RetryableError
    assert error.status == status
    assert "upstream hiccup" in str(error)


@pytest.mark.parametrize("status", [400, 413, 422])
def test_other_4xx_is_fatal_not_retryable(status: int) -> None:
    error = fails_with(answer(status, json.dumps(OPENAI)))

    assert type(error) is FatalRequestError
    assert not isinstance(error, RetryableError)
    assert error.status == status


@pytest.mark.parametrize("status", [401, 403, 404])
def test_auth_statuses_are_auth_errors(status: int) -> None:
    error = fails_with(answer(status, json.dumps(OXEN_DETAIL)))

    assert isinstance(error, AuthError)
    assert isinstance(error, FatalRequestError)
    assert not isinstance(error, RetryableError)
    assert error.status == status


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (httpx.ConnectError("connection refused"), "connection failed"),
        (httpx.RemoteProtocolError("server hung up"), "connection failed"),
        (httpx.ReadError("reset by peer"), "connection failed"),
        (httpx.ReadTimeout("read timed out"), "timed out"),
        (httpx.ConnectTimeout("connect timed out"), "timed out"),
        (httpx.PoolTimeout("pool"), "timed out"),
    ],
)
def test_transport_failures_are_retryable(exc: httpx.TransportError, words: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    error = fails_with(handler)

    assert type(error) is RetryableError
    assert words in str(error)
    assert error.status is None
    assert error.__cause__ is None  # `from None`: the httpx chain is not shown


def test_gzip_body_is_decoded() -> None:
    raw = json.dumps(completion_json("zipped")).encode()
    result = complete(answer(200, gzip.compress(raw), **{"Content-Encoding": "gzip"}))

    assert result.content == "zipped"


def test_corrupt_compressed_body_is_retryable() -> None:
    error = fails_with(answer(200, b"definitely not gzip", **{"Content-Encoding": "gzip"}))

    assert type(error) is RetryableError
    assert "DecodingError" in str(error)


# --- error_detail ------------------------------------------------------------------------


def test_error_detail_prefers_detail_then_message_then_title_then_type() -> None:
    both = {"error": {"type": "t", "title": "T", "message": "M", "detail": "D"}}

    assert error_detail(400, json.dumps(both)) == "D"
    assert error_detail(400, json.dumps({"error": {"type": "t", "title": "T"}})) == "T"
    assert error_detail(400, json.dumps({"error": {"type": "t"}})) == "t"


def test_error_detail_top_level_shapes() -> None:
    assert error_detail(400, json.dumps({"error": "plain string"})) == "plain string"
    assert error_detail(400, json.dumps({"status_message": "sm", "detail": "d"})) == "sm"
    assert error_detail(422, json.dumps({"detail": "unprocessable"})) == "unprocessable"
    assert error_detail(400, json.dumps({"message": "m"})) == "m"


def test_error_detail_of_html_is_a_short_single_line_snippet() -> None:
    page = "<html>\n  <body>\n" + "Bad   gateway " * 100 + "\n</body></html>"
    detail = error_detail(502, page)

    assert detail.startswith("<html> <body> Bad gateway Bad gateway")
    assert len(detail) == 200
    assert "\n" not in detail


@pytest.mark.parametrize(
    ("status", "expected"), [(503, "Service Unavailable"), (599, "no body"), (400, "Bad Request")]
)
def test_error_detail_of_empty_body_is_the_reason_phrase(status: int, expected: str) -> None:
    assert error_detail(status, "") == expected
    assert error_detail(status, "   \n ") == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=15,
)
error_shaped = st.fixed_dictionaries(
    {},
    optional={
        "error": json_values
        | st.dictionaries(st.sampled_from(["type", "title", "detail", "message"]), json_values),
        "status_message": json_values,
        "detail": json_values,
        "message": json_values,
    },
)


@HYPOTHESIS
@given(status=st.integers(100, 599), text=st.text())
def test_error_detail_never_raises_on_text(status: int, text: str) -> None:
    detail = error_detail(status, text)

    assert isinstance(detail, str)
    assert detail


@HYPOTHESIS
@given(status=st.integers(100, 599), body=json_values | error_shaped)
def test_error_detail_never_raises_on_any_json(status: int, body: Any) -> None:
    detail = error_detail(status, json.dumps(body))

    assert isinstance(detail, str)
    assert detail


def test_error_detail_survives_deeply_nested_json() -> None:
    assert error_detail(500, "[" * 100_000)


surrogates = st.text(st.characters(exclude_categories=[])) | st.sampled_from(["a\ud800"])
text_parts = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["text", "refusal", "image_url"]),
        "text": surrogates | json_values,
    },
)
messages = json_values | st.fixed_dictionaries(
    {},
    optional={
        "content": json_values | st.lists(surrogates | text_parts | json_values, max_size=4),
        "refusal": json_values,
    },
)


@HYPOTHESIS
@given(
    message=messages,
    finish_reason=st.sampled_from(["stop", "length", "content_filter"]) | json_values,
    ascii_only=st.booleans(),
)
def test_parse_completion_gives_storable_text_or_a_request_error(
    message: Any, finish_reason: Any, ascii_only: bool
) -> None:
    body = {"choices": [{"message": message, "finish_reason": finish_reason}]}
    try:
        result = parse_completion(200, json.dumps(body, ensure_ascii=ascii_only), httpx.Headers())
    except RequestError as exc:
        assert exc.status == 200
        str(exc).encode("utf-8")
    else:
        result.content.encode("utf-8")


def test_deeply_nested_200_body_is_retryable() -> None:
    with pytest.raises(RetryableError):
        parse_completion(200, "[" * 100_000, httpx.Headers())


# --- retry_after -------------------------------------------------------------------------


def headers(value: str | None) -> httpx.Headers:
    return httpx.Headers({} if value is None else {"Retry-After": value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2", 2.0), ("0", 0.0), ("1.5", 1.5), (" 3 ", 3.0), ("-4", 0.0), (None, None)],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert retry_after(headers(value)) == expected


def test_retry_after_http_date_is_relative_to_now() -> None:
    value = "Wed, 21 Oct 2015 07:28:00 GMT"
    moment = datetime(2015, 10, 21, 7, 28, tzinfo=UTC).timestamp()

    assert retry_after(headers(value), now=moment - 12.0) == pytest.approx(12.0)
    assert retry_after(headers(value), now=moment + 60.0) == 0.0  # in the past: go now


def test_retry_after_http_date_defaults_to_wall_clock() -> None:
    value = email.utils.formatdate(time.time() + 100, usegmt=True)
    waited = retry_after(headers(value))

    assert waited is not None
    assert 98 <= waited <= 101


@pytest.mark.parametrize("value", ["soon", "", "Wed, 99 Foo 2015", "1 2"])
def test_retry_after_garbage_is_none(value: str) -> None:
    assert retry_after(headers(value)) is None


@pytest.mark.parametrize("value", ["inf", "Infinity", "1e400"])
def test_retry_after_is_never_infinite(value: str) -> None:
    waited = retry_after(headers(value))

    assert waited is None or math.isfinite(waited)


@HYPOTHESIS
@given(value=st.text(st.characters(codec="ascii", exclude_categories=["Cc"])))
def test_retry_after_never_raises_and_is_never_negative(value: str) -> None:
    waited = retry_after(httpx.Headers({"Retry-After": value}), now=0.0)

    assert waited is None or waited >= 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),  # the precise one wins
        ({"Retry-After-Ms": "250"}, 0.25),  # a plain dict, any case
        ({"retry-after-ms": "-5"}, 0.0),
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),  # unreadable: the other one
        ({"retry-after-ms": "inf"}, None),
        ({"RETRY-AFTER": "4"}, 4.0),
    ],
)
def test_retry_after_ms_and_plain_dicts(raw: dict[str, str], expected: float | None) -> None:
    assert retry_after(raw) == expected
    assert retry_after(httpx.Headers(raw)) == expected
