"""Unit tests for `pipeline.redact` and the places that print model.base_url through it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.breaker import Breaker
from pipeline.catalog import Catalog
from pipeline.client import ChatClient
from pipeline.errors import CatalogUnavailable, RetryableError
from pipeline.redact import redact_in, redact_url


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
