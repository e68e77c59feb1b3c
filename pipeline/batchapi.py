"""The provider's Batch API on `model.base_url`: files up, batches created, polled, cancelled,
results down (OpenAI's routes, which Gemini's OpenAI mode and the LiteLLM proxy also serve).

    POST /files (purpose=batch)  POST /batches  GET /batches/{id}  POST /batches/{id}/cancel
    GET /files/{id}/content      GET /files     GET /batches (to find what a killed run made)

Each call is retried on a 429, a 5xx or a dropped connection (a few times, with backoff);
any other error status raises the pipeline's error for it. An endpoint without these routes
(404 on `GET /batches`) is a `ConfigError` naming the URL tried, before anything is uploaded.
No message shows the password of `model.base_url` (`redact.redact_url`).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from .client import error_detail
from .errors import AuthError, ConfigError, FatalRequestError, RetryableError
from .redact import redact_in, redact_url

LIST_PAGES = 20  # pages of 100 batches looked through to find one by its metadata
RETRIES = 4


class BatchAPI:
    """One session with the endpoint's Files and Batches routes."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout_s: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout_s), transport=transport, trust_env=False
        )

    async def __aenter__(self) -> BatchAPI:
        await self._http.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.__aexit__(exc_type, exc, tb)

    async def check(self) -> None:
        """Fail with a clear error if the endpoint has no Batch API."""
        url = redact_url(f"{self.base_url}/batches")
        response = await self._call("GET", "/batches", params={"limit": 1}, check=False)
        if response.status_code in (404, 405, 501):
            raise ConfigError(
                f"run.mode: batch needs the OpenAI Batch API, and {url} answered HTTP "
                f"{response.status_code}: {error_detail(response.status_code, response.text)}; "
                "use run.mode: online for this endpoint"
            )
        self._raise(response, "GET", "/batches")

    async def upload(self, name: str, data: bytes) -> str:
        """Upload a batch input file; its id."""
        files = {"file": (name, data, "application/jsonl")}
        response = await self._call("POST", "/files", data={"purpose": "batch"}, files=files)
        return str(self._json(response)["id"])

    async def find_file(self, name: str) -> str | None:
        """The id of an uploaded batch file named `name`, if there is one."""
        response = await self._call("GET", "/files", params={"purpose": "batch"})
        for item in self._json(response).get("data") or []:
            if isinstance(item, dict) and item.get("filename") == name and item.get("id"):
                return str(item["id"])
        return None

    async def create(self, file_id: str, window: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Create a batch; tried once (a lost answer may hide a batch that was created:
        the caller looks for it by `metadata` before trying again)."""
        body = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": window,
            "metadata": metadata,
        }
        return self._json(await self._call("POST", "/batches", retries=0, json=body))

    async def find_batch(self, metadata: dict[str, str]) -> dict[str, Any] | None:
        """The newest batch whose metadata holds all of `metadata` (a killed run's)."""
        after: str | None = None
        for _ in range(LIST_PAGES):
            params: dict[str, Any] = {"limit": 100}
            if after:
                params["after"] = after
            page = self._json(await self._call("GET", "/batches", params=params))
            items = [item for item in page.get("data") or [] if isinstance(item, dict)]
            for item in items:
                found = item.get("metadata")
                if isinstance(found, dict) and all(found.get(k) == v for k, v in metadata.items()):
                    return item
            if not page.get("has_more") or not items:
                return None
            after = str(items[-1].get("id"))
        return None

    async def get(self, batch_id: str) -> dict[str, Any]:
        return self._json(await self._call("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return self._json(await self._call("POST", f"/batches/{batch_id}/cancel"))

    async def content(self, file_id: str) -> bytes:
        """A result file's bytes."""
        return (await self._call("GET", f"/files/{file_id}/content")).content

    async def _call(
        self, method: str, path: str, *, check: bool = True, retries: int = RETRIES, **kwargs: Any
    ) -> httpx.Response:
        """One call, retried on transient failures; `check`: raise on an error status."""
        from .retry import policy

        async for attempt in policy(retries, initial_s=1.0, max_wait_s=30.0):
            with attempt:
                try:
                    response = await self._http.request(method, self.base_url + path, **kwargs)
                except httpx.TimeoutException as exc:
                    raise RetryableError(
                        f"{method} {path} timed out: {type(exc).__name__}"
                    ) from None
                except (httpx.TransportError, httpx.DecodingError) as exc:
                    why = redact_in(str(exc), self.base_url)
                    raise RetryableError(f"{method} {path}: connection failed: {why}") from None
                if check or response.status_code == 429 or response.status_code >= 500:
                    self._raise(response, method, path)
                return response
        raise AssertionError("the retry policy re-raises the last error")

    @staticmethod
    def _raise(response: httpx.Response, method: str, path: str) -> None:
        status = response.status_code
        if status < 400:
            return
        message = f"{method} {path}: HTTP {status}: {error_detail(status, response.text)}"
        if status == 429 or status >= 500 or status in (408, 409):
            raise RetryableError(message, status=status)
        if status in (401, 403):
            raise AuthError(message, status=status)
        raise FatalRequestError(message, status=status)

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            path = response.request.url.path
            raise RetryableError(f"{path}: the answer is not a JSON object")
        return body
