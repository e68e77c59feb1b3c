"""Unit tests for `pipeline.redact` and the places that print model.base_url through it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pipeline.breaker import Breaker
from pipeline.catalog import Catalog
from pipeline.client import ChatClient
from pipeline.errors import CatalogUnavailable, RetryableError
from pipeline.redact import masked, redact_in, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw-SECRET@host/v1", "http://user:***@host/v1"),
        ("https://user:pw@host:8443/v1?x=1", "https://user:***@host:8443/v1?x=1"),
        ("https://sk-token@host/v1", "https://***@host/v1"),  # a user name alone may be a token
        ("http://user:@host/v1", "http://user:***@host/v1"),
        ("http://u:p@ss@host/v1", "http://u:***@host/v1"),  # the host follows the last @
        ("http://host/v1", "http://host/v1"),
        ("http://host/v1?to=a@b", "http://host/v1?to=a@b"),  # an @ after the host is no user
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


passwords = st.text(
    st.characters(codec="ascii", exclude_characters="/?#@", exclude_categories=["Cc"]),
    min_size=1,
    max_size=30,
)


@given(user=st.from_regex(r"[a-z]{1,8}", fullmatch=True), password=passwords)
def test_no_password_survives_redaction(user: str, password: str) -> None:
    url = f"https://{user}:{password}@api.example.com/v1"
    shown = redact_url(url)

    assert shown == f"https://{user}:***@api.example.com/v1"
    assert redact_in(f"cannot reach {url}/chat/completions", url) == (
        f"cannot reach {shown}/chat/completions"
    )


def test_redact_in_leaves_text_without_the_url_alone() -> None:
    assert redact_in("connection refused", "http://u:p@h/v1") == "connection refused"
    assert redact_in("no user info: http://h/v1", "http://h/v1") == "no user info: http://h/v1"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('api_key: "hunter2', "api_key: ***"),  # the value of a key named like a secret
        (
            "  headers: {X-Trace: on, Authorization: Bearer pw]",
            "headers: {X-Trace: on, Authorization: ***",
        ),
        ("- apiKey = hunter2", "- apiKey = ***"),
        ("session_token_env: MY_TOKEN", "session_token_env: ***"),
        ("model.api_key_env hunter2", "model.api_key_env ***"),  # a --set without its =
        ("got Bearer pw-SECRET, then", "got Bearer ***, then"),
        ("name: sk-live-SECRET999", "name: ***"),  # a known prefix
        ("x 3f2a9c8e1b7d4f6a0e5c2b9d8a7f6e5d y", "x *** y"),  # a long run with digits
        ("id: 123e4567-e89b-12d3-a456-426614174000", "id: ***"),
        ("base_url: http://user:pw@host/v1", "base_url: http://user:***@host/v1"),
        ("at http://u:p@ss@host/v1 now", "at http://u:***@host/v1 now"),  # the last @
        # an Oxen address's NS:REPO@BRANCH is no user info
        ("path: oxen://ox:my-repo@main/a.csv", "path: oxen://ox:my-repo@main/a.csv"),
        ("found undefined alias 'ghp_abcdef123456'", "found undefined alias '***'"),
        # kept: nothing here may be a secret, and seeing it helps
        ("max_tokens: 100", "max_tokens: 100"),
        ("tokens_per_minute: 5000", "tokens_per_minute: 5000"),
        ("name: claude-3-5-sonnet-20241022", "name: claude-3-5-sonnet-20241022"),
        ("api_key_env is not set", "api_key_env is not set"),
        ("sent as basic auth", "sent as basic auth"),
        ("OPENAI_API_KEY_PRODUCTION", "OPENAI_API_KEY_PRODUCTION"),
        ("it looks like a key itself, so", "it looks like a key itself, so"),
        ("unknown encoding 'klingon': use utf8", "unknown encoding 'klingon': use utf8"),
    ],
)
def test_masked(text: str, shown: str) -> None:
    assert masked(text.strip()) == shown


@given(
    key=st.from_regex(
        r"([a-z]{1,5}[_.-])?(api_key|apiKey|token|secret|password|Authorization)([_-][a-z]{1,5})?",
        fullmatch=True,
    ),
    value=st.text(st.characters(codec="ascii", categories=["L", "N", "P", "S"]), min_size=1),
)
def test_no_value_of_a_secret_key_survives_masking(key: str, value: str) -> None:
    assume(masked(key) == key)  # sk_token: the name itself looks like a key
    for before in (f"{key}: ", f"  {key}=", f"{{a: 1, {key}: "):
        assert masked(before + value) == before + "***"


@given(
    st.text(st.sampled_from("abcdefXYZ0123456789"), min_size=24).filter(
        lambda t: any(c.isdigit() for c in t) and any(c.isalpha() for c in t)
    )
)
def test_no_token_survives_masking(token: str) -> None:
    assert masked(f"line 3 is: {token}") == "line 3 is: ***"


def test_the_chat_client_hides_the_password_in_a_connection_error() -> None:
    url = "ftp://user:pw-SECRET@host/v1"  # aiohttp refuses the scheme, naming the URL

    async def send() -> None:
        async with ChatClient(url, None, timeout_s=5, concurrency=1) as client:
            await client.complete({"model": "m", "messages": []})

    with pytest.raises(RetryableError) as info:
        asyncio.run(send())
    assert "pw-SECRET" not in str(info.value)
    assert str(info.value) == (
        "connection failed: NonHttpUrlClientError: ftp://user:***@host/v1/chat/completions"
    )


def test_the_catalog_hides_the_password_in_a_transport_error() -> None:
    url = "http://user:pw-SECRET@host.invalid/v1"

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {request.url}", request=request)

    catalog = Catalog(url, None, transport=httpx.MockTransport(refuse))
    try:
        with pytest.raises(CatalogUnavailable) as info:
            catalog.list()
    finally:
        catalog.close()
    assert "pw-SECRET" not in str(info.value)
    assert "user:***@host.invalid" in str(info.value)


def test_the_breaker_names_the_endpoint_without_its_password() -> None:
    breaker = Breaker("http://user:pw-SECRET@host/v1", 60)

    assert breaker.base_url == "http://user:***@host/v1"
