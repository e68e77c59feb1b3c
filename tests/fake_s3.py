"""A local S3-compatible server on 127.0.0.1 for tests: moto's S3 backend in a thread.

moto (`moto[server]`, a dev dependency) answers the S3 REST API offline and in memory; its
WSGI app is served by werkzeug on a free port, wrapped in a small middleware that records
each request as an operation (`requests`: (operation, path) in arrival order) and can refuse
operations (`refuse`: one operation or `*` for every one, optionally only on paths matching
a glob). Operations: `head`, `get` (an object's bytes), `list`, `upload`
(PutObject, CreateMultipartUpload, UploadPart, CompleteMultipartUpload), `copy`
(CopyObject), `delete`, `bucket` (a bucket's HEAD, PUT or DELETE) and `other`.

moto checks no signatures, so any key pair works; the state is moto's, reset on entry.
Seed it with `create_bucket` and `put`; read it with `get` and `keys`.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

# Test credentials: what the CLI under test reads from the environment.
ACCESS_KEY = "AKIAFAKEKEY0123456789"
SECRET_KEY = "fake-secret-Zx9QmN4sT7vW2yB5cE8gJ1kL3pR6"


def operation_of(environ: Environ) -> str:
    """The S3 operation a request is, by its method, path and query."""
    method = environ["REQUEST_METHOD"]
    path = unquote(environ.get("PATH_INFO", "")).lstrip("/")
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    has_key = "/" in path
    if not has_key:
        return "list" if method == "GET" else "bucket"
    if method == "HEAD":
        return "head"
    if method == "GET":
        return "get"
    if method == "DELETE" and "uploadId" not in query:
        return "delete"
    if method == "PUT" and "HTTP_X_AMZ_COPY_SOURCE" in environ:
        return "copy"
    if method in ("PUT", "POST"):
        return "upload"
    return "other"


@dataclass
class _Refusal:
    operation: str
    status: int
    code: str
    times: int | None  # None: until `allow`
    path: str | None = None  # a glob over bucket/key; None: every path

    def applies(self, operation: str, path: str) -> bool:
        return self.operation in (operation, "*") and (
            self.path is None or fnmatch.fnmatchcase(path, self.path)
        )


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class FakeS3:
    """moto's S3 on 127.0.0.1:<free port>, recording and refusing operations."""

    def __init__(self) -> None:
        self._app = DomainDispatcherApplication(create_backend_app)
        self._lock = threading.Lock()
        self._refusals: list[_Refusal] = []
        self.requests: list[tuple[str, str]] = []
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> FakeS3:
        self._server = make_server(
            "127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        httpx.post(f"{self.endpoint}/moto-api/reset", timeout=10).raise_for_status()
        self.requests.clear()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"

    def env(self) -> dict[str, str]:
        """The environment the CLI needs to reach this server with test credentials."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    # -- scripting and records ------------------------------------------------------------

    def refuse(
        self,
        operation: str,
        *,
        status: int = 403,
        code: str = "AccessDenied",
        times: int | None,
        path: str | None = None,
    ) -> None:
        """Answer the next `times` requests of `operation` (`*`: any; None: all, until
        `allow`) whose bucket/key matches the glob `path` (None: any) with an S3 error,
        without passing them on."""
        with self._lock:
            self._refusals.append(_Refusal(operation, status, code, times, path))

    def allow(self) -> None:
        with self._lock:
            self._refusals.clear()

    def count(self, operation: str, prefix: str = "") -> int:
        """Requests of `operation` whose path (bucket/key) starts with `prefix`."""
        with self._lock:
            return sum(
                1 for op, path in self.requests if op == operation and path.startswith(prefix)
            )

    # -- seeding and reading through plain HTTP (moto checks no signatures) ------------------

    def create_bucket(self, bucket: str) -> None:
        httpx.put(
            f"{self.endpoint}/{bucket}", headers=_signed_enough(), timeout=10
        ).raise_for_status()

    def put(self, bucket: str, key: str, data: bytes) -> None:
        httpx.put(
            f"{self.endpoint}/{bucket}/{key}", content=data, headers=_signed_enough(), timeout=10
        ).raise_for_status()

    def get(self, bucket: str, key: str) -> bytes | None:
        found = httpx.get(f"{self.endpoint}/{bucket}/{key}", headers=_signed_enough(), timeout=10)
        if found.status_code == 404:
            return None
        found.raise_for_status()
        return found.content

    def keys(self, bucket: str) -> list[str]:
        listed = httpx.get(
            f"{self.endpoint}/{bucket}", params={"list-type": "2"}, headers=_signed_enough()
        )
        listed.raise_for_status()
        return _between(listed.text, "<Key>", "</Key>")

    # -- the WSGI middleware --------------------------------------------------------------

    def _wsgi(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        operation = operation_of(environ)
        path = unquote(environ.get("PATH_INFO", "")).lstrip("/")
        if path.startswith("moto-api"):
            return self._app(environ, start_response)  # type: ignore[no-any-return]
        with self._lock:
            self.requests.append((operation, path))
            refusal = next((r for r in self._refusals if r.applies(operation, path)), None)
            if refusal is not None and refusal.times is not None:
                refusal.times -= 1
                if refusal.times <= 0:
                    self._refusals.remove(refusal)
        if refusal is None:
            return self._app(environ, start_response)  # type: ignore[no-any-return]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{refusal.code}</Code><Message>refused by the test</Message>"
            f"<Resource>/{path}</Resource><RequestId>fake</RequestId></Error>"
        ).encode()
        start_response(
            f"{refusal.status} Refused",
            [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
        )
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]


def _signed_enough() -> dict[str, str]:
    """An Authorization header moto reads the account from (it checks no signature); without
    one, moto treats a request as anonymous and may refuse it."""
    return {
        "Authorization": f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20260101/us-east-1/s3/"
        "aws4_request, SignedHeaders=host, Signature=0"
    }


def _between(text: str, start: str, end: str) -> list[str]:
    found = []
    for piece in text.split(start)[1:]:
        found.append(piece.split(end, 1)[0])
    return found
