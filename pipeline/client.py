"""Client stage: one chat-completions body -> (answer, usage, raw JSON), or a typed error.

httpx is the interface; aiohttp's engine carries the bytes (measured far cheaper per
request than httpx's own pool). This is the one seam where httpx exceptions and HTTP
error bodies become the pipeline's own exceptions.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from .errors import AuthError, FatalRequestError, RateLimited, RetryableError
from .ratelimit import rate_headers


@dataclass(frozen=True, slots=True)
class Completion:
    """A successful answer: the message content, its token usage and the raw body."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    raw: str
    headers: httpx.Headers


def error_detail(status: int, text: str) -> str:
    """The human part of an error body, in any of the shapes Oxen and OpenAI send."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            for field in ("detail", "message", "title", "type"):
                if isinstance(error.get(field), str) and error[field]:
                    return str(error[field])
        if isinstance(error, str) and error:
            return error
        for field in ("status_message", "detail", "message"):
            if isinstance(body.get(field), str) and body[field]:
                return str(body[field])
    snippet = " ".join(text.split())[:200]
    return snippet or httpx.codes.get_reason_phrase(status) or "no body"


def retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or an HTTP date), if the server sent it."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_completion(status: int, text: str, headers: httpx.Headers) -> Completion:
    """Check a 200 body and take the answer out of it; a malformed body is retryable."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise RetryableError(
            f"HTTP {status} with a truncated or non-JSON body", status=status
        ) from None
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise RetryableError(f"HTTP {status} without choices in the body", status=status)
    message = choices[0].get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    usage = body.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return Completion(
        content=content if isinstance(content, str) else "",
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        raw=text,
        headers=headers,
    )


def raise_for_status(status: int, text: str, headers: httpx.Headers) -> None:
    """Translate an error status into the pipeline's exception tree."""
    detail = error_detail(status, text)
    message = f"HTTP {status}: {detail}"
    if status == 429:
        raise RateLimited(message, retry_after=retry_after(headers), rate=rate_headers(headers))
    if status >= 500 or status in (408, 409):
        raise RetryableError(message, status=status)
    if status in (401, 403, 404):
        raise AuthError(message, status=status)
    raise FatalRequestError(message, status=status)


def make_transport(concurrency: int) -> httpx.AsyncBaseTransport:
    """aiohttp's engine behind httpx's interface, pooled to the concurrency."""
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport: httpx.AsyncBaseTransport = AiohttpTransport(limits=limits, trust_env=False)
    return transport


class ChatClient:
    """POSTs chat-completions bodies to `{base_url}/chat/completions` over one client."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout_s: float,
        concurrency: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            transport=transport or make_transport(concurrency),
        )

    async def __aenter__(self) -> ChatClient:
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.__aexit__(exc_type, exc, tb)

    async def complete(self, body: dict[str, Any]) -> Completion:
        """Send one request; raise `RetryableError`, `RateLimited` or `FatalRequestError`."""
        try:
            response = await self._client.post(self.url, json=body)
            text = response.text
        except httpx.TimeoutException as exc:
            raise RetryableError(f"timed out: {type(exc).__name__}") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise RetryableError(f"connection failed: {_describe(exc)}") from None
        if response.status_code != 200:
            raise_for_status(response.status_code, text, response.headers)
        return parse_completion(response.status_code, text, response.headers)


def _count(value: object) -> int:
    return value if isinstance(value, int) and 0 <= value < 2**62 else 0


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
