"""Client stage: one chat-completions body -> (answer, usage, raw JSON), or a typed error.

Requests go out over one aiohttp session: measured on this project's bench, httpx's client
layer (URL merging, header models, request objects) cost more CPU per request than all the
rest of the pipeline together. This is the one seam where transport exceptions and HTTP
error bodies become the pipeline's own exceptions.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import httpx
import yarl

from .errors import AuthError, FatalRequestError, RateLimited, RequestError, RetryableError
from .ratelimit import rate_headers
from .redact import redact_in

_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(slots=True)
class Completion:
    """A successful answer: the message content, its token usage and the raw body."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    raw: str
    headers: Mapping[str, str]


def utf8_safe(text: str) -> str:
    """`text` with lone surrogates (JSON's "\\ud800") replaced, so UTF-8 can store it."""
    if text.isascii():  # O(1) in CPython: the common case costs nothing
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


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


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, else `Retry-After` (seconds or an HTTP date), if
    the server sent either."""
    if type(headers) is dict:  # not case-insensitive, unlike the HTTP clients' headers
        headers = {name.lower(): value for name, value in headers.items()}
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            waited = float(milliseconds) / 1000.0
        except ValueError:
            pass
        else:
            if math.isfinite(waited):
                return max(0.0, waited)
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


def parse_completion(status: int, text: str, headers: Mapping[str, str]) -> Completion:
    """Check a 200 body and take the answer out of it.

    A malformed body, or one without message content, is retryable; a refusal or a filtered
    answer is fatal (a retry in this run would answer the same).
    """
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise RetryableError(
            f"HTTP {status} with a truncated or non-JSON body", status=status
        ) from None
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise RetryableError(f"HTTP {status} without choices in the body", status=status)
    choice = choices[0]
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    content = message.get("content")
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        content = _text_parts(content)
    if not isinstance(content, str):
        raise _no_content(status, choice, message)
    usage = body.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return Completion(
        content=utf8_safe(content),
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        raw=text,
        headers=headers,
    )


def _text_parts(parts: list[Any]) -> str | None:
    """The text parts of a content list joined, or None when it has no text part."""
    texts: list[str] = []
    for part in parts:
        if isinstance(part, dict) and part.get("type", "text") == "text":
            part = part.get("text")
        if isinstance(part, str):
            texts.append(part)
    return "".join(texts) if texts else None


def _no_content(status: int, choice: dict[str, Any], message: dict[str, Any]) -> RequestError:
    """A 200 without an answer: fatal when the model refused or was filtered, else retryable."""
    finish = choice.get("finish_reason")
    finish = finish[:50] if isinstance(finish, str) else None
    refusals = [message.get("refusal")]
    if isinstance(message.get("content"), list):
        refusals += [p.get("refusal") for p in message["content"] if isinstance(p, dict)]
    refusal = next((r for r in refusals if isinstance(r, str) and r.strip()), None)
    if refusal is not None:
        said = utf8_safe(" ".join(refusal[:1000].split())[:200])
        return FatalRequestError(f"no answer: the model refused: {said}", status=status)
    if finish == "content_filter":
        return FatalRequestError(
            "no answer: the content filter withheld it (finish_reason 'content_filter')",
            status=status,
        )
    return RetryableError(
        f"HTTP {status} without message content (finish_reason {finish!r})", status=status
    )


def raise_for_status(status: int, text: str, headers: Mapping[str, str]) -> None:
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


class ChatClient:
    """POSTs chat-completions bodies to `{base_url}/chat/completions` over one session.

    The engine is an aiohttp session; a test may hand in an httpx transport instead
    (`httpx.MockTransport`), which takes the same parsing path.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout_s: float,
        concurrency: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._url = yarl.URL(self.url)  # parsed once, not per request
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout_s = timeout_s
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._httpx: httpx.AsyncClient | None = None
        if transport is not None:
            self._httpx = httpx.AsyncClient(
                headers=self._headers, timeout=httpx.Timeout(timeout_s), transport=transport
            )

    async def __aenter__(self) -> ChatClient:
        if self._httpx is not None:
            await self._httpx.__aenter__()
        else:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                headers=self._headers,
                trust_env=False,
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._httpx is not None:
            await self._httpx.__aexit__(exc_type, exc, tb)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def complete(self, body: dict[str, Any] | bytes) -> Completion:
        """Send one body (bytes: JSON sent as is); raise `RetryableError`, `RateLimited` or
        `FatalRequestError`."""
        payload = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        if self._httpx is not None:
            status, text, headers = await self._post_httpx(self._httpx, payload)
        else:
            assert self._session is not None, "use the client inside `async with`"
            try:  # inline, not a helper: one coroutine less per request on the hot path
                async with self._session.post(self._url, data=payload) as response:
                    data = await response.read()
                    status, headers = response.status, response.headers
            except TimeoutError:
                raise RetryableError(f"timed out after {self._timeout_s:g} s") from None
            except aiohttp.ClientError as exc:
                raise RetryableError(
                    f"connection failed: {redact_in(_describe(exc), self.url)}"
                ) from None
            text = data.decode("utf-8", "replace")
        if status != 200:
            raise_for_status(status, text, headers)
        return parse_completion(status, text, headers)

    async def _post_httpx(
        self, client: httpx.AsyncClient, payload: bytes
    ) -> tuple[int, str, Mapping[str, str]]:
        try:
            response = await client.post(self.url, content=payload)
            return response.status_code, response.text, response.headers
        except httpx.TimeoutException as exc:
            raise RetryableError(f"timed out: {type(exc).__name__}") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise RetryableError(
                f"connection failed: {redact_in(_describe(exc), self.url)}"
            ) from None


def _count(value: object) -> int:
    return value if isinstance(value, int) and 0 <= value < 2**62 else 0


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
