"""HTTP plumbing for Oxen's repository routes (hub.oxen.ai or a self-hosted oxen-server),
shared by reading and committing: one httpx client, the retry policy, and the translation of
failures into the pipeline's errors.

    /api/repos/{namespace}/{repo}{route}   every route; `route` built by the caller

Reads are retried on a 429, a 5xx, a timeout or a dropped connection (a few times, with
backoff); an upload is sent once, and what follows a failure is the caller's choice. A
transient failure that outlives its retries, and an answer that is an error, become the
caller's side's error: `InputError` or `OutputError`. The API key appears in no message, log
line or exception.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

from .client import error_detail, retry_after
from .errors import ConfigError, InputError, OutputError, RateLimited, RetryableError
from .oxenaddress import OxenAddress
from .redact import hidden
from .retry import wait_retry_after

log = logging.getLogger(__name__)

RETRIES = 4  # retries of a read after a transient failure

ErrorType = type[InputError] | type[OutputError]
T = TypeVar("T")


class OxenSession:
    """One HTTP client for an Oxen server's repository routes, with its key and retries."""

    def __init__(
        self,
        host: str,
        scheme: str,
        api_key: str | None,
        *,
        transport: httpx.BaseTransport | None,
        timeout_s: float,
        key_env: str,
        retries: int,
        sleep: Callable[[float], None],
    ) -> None:
        if scheme not in ("http", "https"):
            raise ConfigError(f"the Oxen scheme must be http or https, not {scheme!r}")
        self.host = host.strip().rstrip("/")
        self.base_url = f"{scheme}://{self.host}"
        self.key_env = key_env
        self._key = api_key or None
        self._retries = retries
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout_s), transport=transport, trust_env=False
        )

    def __enter__(self) -> OxenSession:
        self._http.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.__exit__(exc_type, exc, tb)

    def close(self) -> None:
        self._http.close()

    # -- requests ------------------------------------------------------------------------

    def read(
        self, address: OxenAddress, error: ErrorType, method: str, route: str, **kwargs: Any
    ) -> httpx.Response:
        """One idempotent request, retried on transient failures; other answers returned."""
        url = self._url(address, route)
        return self._retried(address, error, lambda: self._send(method, url, **kwargs))

    def download(
        self, address: OxenAddress, error: ErrorType, route: str, target: Path
    ) -> tuple[int, str]:
        """A file route streamed into `target`, retried like a read; the status and, on an
        error, the server's message."""
        url = self._url(address, route)
        return self._retried(address, error, lambda: self._download(url, target))

    def upload(
        self, address: OxenAddress, route: str, files: dict[str, Path], data: dict[str, str]
    ) -> httpx.Response:
        """The upload-and-commit request, sent once; transient failures raised."""
        url = self._url(address, route)
        with contextlib.ExitStack() as stack:
            parts = [
                (
                    "files[]",
                    (name, stack.enter_context(path.open("rb")), "application/octet-stream"),
                )
                for name, path in sorted(files.items())
            ]
            return self._send("PUT", url, files=parts, data=data)

    def _url(self, address: OxenAddress, route: str) -> str:
        namespace, repo = path_segment(address.namespace), path_segment(address.repo)
        return f"{self.base_url}/api/repos/{namespace}/{repo}{route}"

    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(self._retries + 1),
            wait=wait_retry_after(wait_random_exponential(multiplier=0.5, max=30.0)),
            sleep=self._sleep,
            reraise=True,
        )

    def _retried(self, address: OxenAddress, error: ErrorType, call: Callable[[], T]) -> T:
        """`call`, retried on transient failures; the one seam where one that outlived its
        retries becomes the pipeline's error for this side."""
        try:
            for attempt in self._retrying():
                with attempt:
                    return call()
        except RetryableError as exc:
            raise error(
                f"{address}: {self.host} failed {self._retries + 1} times: {self.redact(str(exc))}"
            ) from None
        raise AssertionError("the retry policy re-raises the last error")

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request; transient failures raised as RetryableError."""
        log.debug("%s %s", method, url)
        with _transient(f"{method} {url}"):
            response = self._http.request(method, url, **kwargs)
        self._raise_transient(response.status_code, response, f"{method} {url}")
        return response

    def _raise_transient(self, status: int, response: httpx.Response, what: str) -> None:
        if status == 429:
            raise RateLimited(
                f"{what}: HTTP 429: {self.detail(response)}",
                retry_after=retry_after(response.headers),
            )
        if status >= 500:
            raise RetryableError(f"{what}: HTTP {status}: {self.detail(response)}", status=status)

    def _download(self, url: str, target: Path) -> tuple[int, str]:
        """Stream `url` into `target` (temp file + rename); the status and, on an error, the
        server's message."""
        log.debug("GET %s -> %s", url, target)
        handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with (
                _transient(f"GET {url}"),
                os.fdopen(handle, "wb") as out,
                self._http.stream("GET", url) as response,
            ):
                if response.status_code >= 400:
                    response.read()
                    self._raise_transient(response.status_code, response, f"GET {url}")
                    return response.status_code, self.detail(response)
                for chunk in response.iter_bytes():
                    out.write(chunk)
            Path(temp).replace(target)
            return 200, ""
        finally:
            with contextlib.suppress(FileNotFoundError):
                Path(temp).unlink()

    # -- answers -------------------------------------------------------------------------

    def check(
        self, response: httpx.Response, address: OxenAddress, error: ErrorType, doing: str
    ) -> None:
        """Nothing for a success; an answer that is an error raised as this side's error."""
        if response.status_code >= 400:
            raise self.error_for(response.status_code, self.detail(response), address, error, doing)

    def error_for(
        self, status: int, detail: str, address: OxenAddress, error: ErrorType, doing: str
    ) -> InputError | OutputError:
        """The error for an HTTP error status, saying what to do about a refused key."""
        if status in (401, 403):
            if self._key is None:
                advice = f"no API key was sent: set ${self.key_env}"
            elif status == 401:
                advice = f"check the API key in ${self.key_env}"
            else:
                advice = f"the key in ${self.key_env} has no access to this repository"
            return error(
                f"{address}: {self.host} refused {doing} (HTTP {status}: {detail}): {advice}"
            )
        return error(f"{address}: {doing} failed: {self.host} answered HTTP {status}: {detail}")

    def detail(self, response: httpx.Response) -> str:
        """The server's message, in Oxen's error shapes (error.detail, status_description)."""
        with contextlib.suppress(ValueError):
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("status_description"), str):
                return self.redact(body["status_description"])
        return self.redact(error_detail(response.status_code, response.text))

    def body(
        self, response: httpx.Response, address: OxenAddress, error: ErrorType
    ) -> dict[str, Any]:
        """The answer's JSON object; anything else is this side's error."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise error(
                f"{address}: {response.request.url.path} did not answer Oxen's JSON: is "
                f"{self.base_url} an Oxen server?"
            )
        return body

    def value(
        self, response: httpx.Response, address: OxenAddress, error: ErrorType, key: str, field: str
    ) -> str:
        """`body[key][field]`, a string (a commit's id, a branch's commit_id)."""
        found = self.body(response, address, error).get(key)
        if not isinstance(found, dict) or not isinstance(found.get(field), str):
            raise error(f"{address}: {self.host} answered a {key} without its {field}")
        return str(found[field])

    def redact(self, text: str) -> str:
        """`text` with the API key replaced by `***`."""
        return hidden(text, self._key)


@contextlib.contextmanager
def _transient(what: str) -> Iterator[None]:
    """httpx's timeouts and dropped connections as RetryableError: the one seam for them."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise RetryableError(f"{what} timed out ({type(exc).__name__})") from None
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise RetryableError(f"{what}: connection failed: {exc}") from None


def path_segment(text: str) -> str:
    """One URL path segment."""
    return quote(text, safe="")


def revision_path(revision: str, path: str) -> str:
    """A `{revision}/{path}` resource (path may be "": the repository's root)."""
    return quote(f"{revision}/{path}".rstrip("/"), safe="/")
