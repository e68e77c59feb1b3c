"""Oxen.ai repositories as a run's input and output: the input table read at a commit, the
answered table committed back to a branch, through Oxen's HTTP API (hub.oxen.ai or a
self-hosted oxen-server).

    GET  /api/repos/{ns}/{repo}                         the repository (its default branch)
    GET  /api/repos/{ns}/{repo}/branches/{branch}       {"branch": {"name", "commit_id"}}
    POST /api/repos/{ns}/{repo}/branches                {"new_name", "from_name"}: a new branch
    GET  /api/repos/{ns}/{repo}/commits/{commit_id}     {"commit": {"id", ...}}: it exists
    GET  /api/repos/{ns}/{repo}/file/{revision}/{path}  a file's bytes at a branch or commit
    PUT  /api/repos/{ns}/{repo}/file/{branch}/{dir}     multipart `files[]`, message, name,
                                                        email: ONE commit holding every file

Reads are retried on a 429, a 5xx, a timeout or a dropped connection (a few times, with
backoff). A commit is never blindly retried: after a failure whose outcome is unknown the
branch head is read first, and a branch that already holds the exact bytes is a success.
Input-side failures raise `InputError`, output-side ones `OutputError`; the API key appears
in no message, log line or exception.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

from .client import error_detail, retry_after
from .errors import ConfigError, InputError, OutputError, RateLimited, RetryableError
from .retry import wait_retry_after

log = logging.getLogger(__name__)

RETRIES = 4  # retries of a read after a transient failure
COMMIT_TRIES = 3  # upload-and-commit attempts, each after checking the branch head
DEFAULT_BRANCH = "main"  # oxen-server's DEFAULT_BRANCH_NAME, when the repository names none
EXPECTED = "oxen://NAMESPACE:REPO@REVISION/PATH"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_ADDRESS = re.compile(
    rf"oxen://(?P<namespace>{_NAME}):(?P<repo>{_NAME})@(?P<revision>[^/@:\s]+)/(?P<path>\S+)"
)
_COMMIT_ID = re.compile(r"[A-Za-z0-9]+")

ErrorType = type[InputError] | type[OutputError]


@dataclass(frozen=True)
class OxenAddress:
    """A file in an Oxen repository at a revision (a branch name or a commit id)."""

    namespace: str
    repo: str
    revision: str
    path: str

    @classmethod
    def parse(cls, text: str) -> OxenAddress:
        """`oxen://NAMESPACE:REPO@REVISION/PATH`, the URL form of Oxen's fsspec backend."""
        match = _ADDRESS.fullmatch(text.strip())
        parts = match["path"].split("/") if match else []
        if not match or any(part in ("", ".", "..") for part in parts):
            raise ConfigError(
                f"{text!r} is not an Oxen address: expected {EXPECTED} (REVISION a branch or "
                "a commit id, PATH a file in the repository), e.g. oxen://ox:my-repo@main/data.csv"
            )
        return cls(match["namespace"], match["repo"], match["revision"], match["path"])

    def __str__(self) -> str:
        return f"oxen://{self.namespace}:{self.repo}@{self.revision}/{self.path}"

    @property
    def directory(self) -> str:
        """The directory of `path` in the repository ("" at the root)."""
        return posixpath.dirname(self.path)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


def is_oxen(text: str) -> bool:
    """Whether a path in the config means an Oxen repository (keep it a str: Path() would
    fold the `//`)."""
    return text.strip().startswith("oxen://")


class OxenHub:
    """One session with an Oxen server's repository, branch, commit and file routes."""

    def __init__(
        self,
        host: str = "hub.oxen.ai",
        scheme: str = "https",
        api_key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 120,
        key_env: str = "OXEN_API_KEY",
        retries: int = RETRIES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if scheme not in ("http", "https"):
            raise ConfigError(f"the Oxen scheme must be http or https, not {scheme!r}")
        self.host = host.strip().rstrip("/")
        self.base_url = f"{scheme}://{self.host}"
        self._key = api_key or None
        self._key_env = key_env
        self._retries = retries
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout_s), transport=transport, trust_env=False
        )

    def __enter__(self) -> OxenHub:
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

    # -- reading -------------------------------------------------------------------------

    def resolve(self, address: OxenAddress) -> str:
        """The commit id `address.revision` names now: a branch's head, or a commit id that
        exists in the repository."""
        self._repository(address, InputError)
        head = self._head(address, address.revision, InputError)
        if head is not None:
            return head
        response = self._read(address, InputError, "GET", f"/commits/{_seg(address.revision)}")
        if response.status_code == 404:
            raise InputError(
                f"{address}: no branch or commit {address.revision!r} in "
                f"{address.namespace}/{address.repo}"
            )
        self._check(response, address, InputError, "looking up the commit")
        return self._value(response, address, InputError, "commit", "id")

    def fetch(self, address: OxenAddress, commit: str, cache: Path) -> Path:
        """The file at `commit`, downloaded once to `cache/<commit>/<file name>`."""
        if not _COMMIT_ID.fullmatch(commit):
            raise InputError(f"{address}: {commit!r} is not a commit id")
        target = Path(cache) / commit / address.name
        if target.is_file():
            log.debug("%s at %s: already in %s", address, commit, target)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        url = self._url(address, f"/file/{_res(commit, address.path)}")
        with self._translated(address, InputError):
            for attempt in self._retrying():
                with attempt:
                    status, detail = self._download(url, target)
        if status == 404:
            raise InputError(
                f"{address}: no file {address.path!r} at commit {commit} of "
                f"{address.namespace}/{address.repo}"
            )
        if status >= 400:
            raise self._error(status, detail, address, InputError, "downloading the file")
        return target

    def file_at(self, address: OxenAddress) -> bytes | None:
        """The file's bytes at the head of `address.revision` (a branch); None when the
        branch or the file does not exist. Output side: failures raise OutputError."""
        return self._bytes_at(address, address.revision, OutputError)

    # -- writing -------------------------------------------------------------------------

    def ensure_branch(self, address: OxenAddress) -> None:
        """Create the branch `address.revision` from the repository's default branch, unless
        it exists (or the repository is empty: its first commit creates the branch)."""
        if self._head(address, address.revision, OutputError) is not None:
            return
        repository = self._repository(address, OutputError)
        if repository.get("is_empty") is True:
            return
        commit = self._read(address, OutputError, "GET", f"/commits/{_seg(address.revision)}")
        if commit.status_code == 200:
            raise OutputError(
                f"{address}: {address.revision!r} is a commit; the output must name a branch"
            )
        source = _default_branch(repository)
        body = {"new_name": address.revision, "from_name": source}
        log.info("%s: creating branch %r from %r", address, address.revision, source)
        response = self._read(address, OutputError, "POST", "/branches", json=body)
        if response.status_code == 404:
            raise OutputError(
                f"{address}: cannot create branch {address.revision!r}: the default branch "
                f"{source!r} of {address.namespace}/{address.repo} was not found"
            )
        self._check(response, address, OutputError, "creating the branch")

    def commit(
        self,
        address: OxenAddress,
        files: dict[str, Path],
        message: str,
        *,
        author: str = "pipeline",
        email: str = "pipeline@localhost",
    ) -> str:
        """One commit on branch `address.revision` holding `files` (names in the directory of
        `address.path`); the id of the branch head that holds them."""
        if not files:
            raise ValueError("commit() needs at least one file")
        for name in files:
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"{name!r} is not a file name")
        digests = {name: _digest(path) for name, path in files.items()}
        original = self._head(address, address.revision, OutputError)
        url = self._url(address, f"/file/{_res(address.revision, address.directory)}")
        data = {"message": message, "name": author, "email": email}
        for attempt in range(COMMIT_TRIES):
            if attempt:
                self._sleep(min(30.0, 2.0**attempt))
            try:  # 429s, 5xx and lost answers raise: the commit may or may not have happened
                response = self._put(url, files, data)
            except RetryableError as exc:
                last, fatal = str(exc), False
            else:
                status = response.status_code
                if status < 400:
                    return self._value(response, address, OutputError, "commit", "id")
                detail, last, fatal = self._detail(response), f"HTTP {status}", True
                if status in (401, 403, 404):
                    doing = f"a commit to branch {address.revision!r}"
                    raise self._error(status, detail, address, OutputError, doing)
            log.warning("%s: commit attempt %d failed (%s)", address, attempt + 1, last)
            landed = self._landed(address, digests)
            if landed is not None:  # also a 422 "no changes": the branch holds these bytes
                return landed
            if fatal:
                raise self._error(status, detail, address, OutputError, "the commit")
        head = self._head(address, address.revision, OutputError)
        if head == original:
            state = (
                f"the branch is as it was (at commit {original}): nothing was committed"
                if original
                else "the branch still does not exist: nothing was committed"
            )
        else:
            state = f"the branch moved to commit {head}, which does not hold the new files"
        raise OutputError(
            f"{address}: committing {', '.join(sorted(files))} to branch {address.revision!r} "
            f"failed {COMMIT_TRIES} times (last: {self._redact(last)}); {state}"
        )

    def _landed(self, address: OxenAddress, digests: dict[str, str]) -> str | None:
        """The branch head when it holds every file with exactly these bytes, else None."""
        try:
            head = self._head(address, address.revision, OutputError)
            return head if head is not None and self._holds(address, head, digests) else None
        except OutputError as exc:
            raise OutputError(
                f"{exc}; a commit was sent, and whether it happened could not be checked: "
                f"look at branch {address.revision!r} before running again"
            ) from None

    # -- helpers -------------------------------------------------------------------------

    def _repository(self, address: OxenAddress, error: ErrorType) -> dict[str, Any]:
        response = self._read(address, error, "GET", "")
        if response.status_code == 404:
            raise error(
                f"{address}: repository {address.namespace}/{address.repo} not found on "
                f"{self.host} (or the key in ${self._key_env} cannot see it)"
            )
        self._check(response, address, error, "looking up the repository")
        repository = self._json(response, address, error).get("repository")
        return repository if isinstance(repository, dict) else {}

    def _head(self, address: OxenAddress, branch: str, error: ErrorType) -> str | None:
        """The head commit id of `branch`; None when there is no such branch."""
        response = self._read(address, error, "GET", f"/branches/{quote(branch, safe='/')}")
        if response.status_code == 404:
            return None
        self._check(response, address, error, f"looking up branch {branch!r}")
        return self._value(response, address, error, "branch", "commit_id")

    def _bytes_at(self, address: OxenAddress, revision: str, error: ErrorType) -> bytes | None:
        response = self._read(address, error, "GET", f"/file/{_res(revision, address.path)}")
        if response.status_code == 404:
            self._repository(address, error)  # a missing repository is an error, not None
            return None
        self._check(response, address, error, "reading the file")
        return response.content

    def _holds(self, address: OxenAddress, commit: str, digests: dict[str, str]) -> bool:
        """Whether `commit` holds every file with exactly these contents."""
        for name, digest in digests.items():
            there = OxenAddress(
                address.namespace, address.repo, commit, posixpath.join(address.directory, name)
            )
            found = self._bytes_at(there, commit, OutputError)
            if found is None or hashlib.sha256(found).hexdigest() != digest:
                return False
        return True

    def _url(self, address: OxenAddress, route: str) -> str:
        return f"{self.base_url}/api/repos/{_seg(address.namespace)}/{_seg(address.repo)}{route}"

    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(self._retries + 1),
            wait=wait_retry_after(wait_random_exponential(multiplier=0.5, max=30.0)),
            sleep=self._sleep,
            reraise=True,
        )

    @contextlib.contextmanager
    def _translated(self, address: OxenAddress, error: ErrorType) -> Iterator[None]:
        """The one seam where a transient failure that outlived its retries becomes the
        pipeline's error for this side."""
        try:
            yield
        except RetryableError as exc:
            raise error(
                f"{address}: {self.host} failed {self._retries + 1} times: {self._redact(str(exc))}"
            ) from None

    def _read(
        self, address: OxenAddress, error: ErrorType, method: str, route: str, **kwargs: Any
    ) -> httpx.Response:
        """One idempotent request, retried on transient failures; other answers returned."""
        url = self._url(address, route)
        with self._translated(address, error):
            for attempt in self._retrying():
                with attempt:
                    return self._send(method, url, **kwargs)
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
                f"{what}: HTTP 429: {self._detail(response)}",
                retry_after=retry_after(response.headers),
            )
        if status >= 500:
            raise RetryableError(f"{what}: HTTP {status}: {self._detail(response)}", status=status)

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
                    return response.status_code, self._detail(response)
                for chunk in response.iter_bytes():
                    out.write(chunk)
            Path(temp).replace(target)
            return 200, ""
        finally:
            with contextlib.suppress(FileNotFoundError):
                Path(temp).unlink()

    def _put(self, url: str, files: dict[str, Path], data: dict[str, str]) -> httpx.Response:
        """The upload-and-commit request, sent once; transient failures raised."""
        with contextlib.ExitStack() as stack:
            parts = [
                (
                    "files[]",
                    (name, stack.enter_context(path.open("rb")), "application/octet-stream"),
                )
                for name, path in sorted(files.items())
            ]
            return self._send("PUT", url, files=parts, data=data)

    def _check(
        self, response: httpx.Response, address: OxenAddress, error: ErrorType, doing: str
    ) -> None:
        if response.status_code >= 400:
            raise self._error(response.status_code, self._detail(response), address, error, doing)

    def _error(
        self, status: int, detail: str, address: OxenAddress, error: ErrorType, doing: str
    ) -> InputError | OutputError:
        if status in (401, 403):
            if self._key is None:
                advice = f"no API key was sent: set ${self._key_env}"
            elif status == 401:
                advice = f"check the API key in ${self._key_env}"
            else:
                advice = f"the key in ${self._key_env} has no access to this repository"
            return error(
                f"{address}: {self.host} refused {doing} (HTTP {status}: {detail}): {advice}"
            )
        return error(f"{address}: {doing} failed: {self.host} answered HTTP {status}: {detail}")

    def _detail(self, response: httpx.Response) -> str:
        """The server's message, in Oxen's error shapes (error.detail, status_description)."""
        with contextlib.suppress(ValueError):
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("status_description"), str):
                return self._redact(body["status_description"])
        return self._redact(error_detail(response.status_code, response.text))

    def _json(
        self, response: httpx.Response, address: OxenAddress, error: ErrorType
    ) -> dict[str, Any]:
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

    def _value(
        self, response: httpx.Response, address: OxenAddress, error: ErrorType, key: str, field: str
    ) -> str:
        """`body[key][field]`, a string (a commit's id, a branch's commit_id)."""
        found = self._json(response, address, error).get(key)
        if not isinstance(found, dict) or not isinstance(found.get(field), str):
            raise error(f"{address}: {self.host} answered a {key} without its {field}")
        return str(found[field])

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


@contextlib.contextmanager
def _transient(what: str) -> Iterator[None]:
    """httpx's timeouts and dropped connections as RetryableError: the one seam for them."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise RetryableError(f"{what} timed out ({type(exc).__name__})") from None
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise RetryableError(f"{what}: connection failed: {exc}") from None


def _seg(text: str) -> str:
    """One URL path segment."""
    return quote(text, safe="")


def _res(revision: str, path: str) -> str:
    """A `{revision}/{path}` resource (path may be "": the repository's root)."""
    return quote(f"{revision}/{path}".rstrip("/"), safe="/")


def _digest(path: Path) -> str:
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _default_branch(repository: dict[str, Any]) -> str:
    """The branch the repository view names as its default resource, else "main"."""
    resource = repository.get("default_resource")
    branch = resource.get("branch") if isinstance(resource, dict) else None
    name = branch.get("name") if isinstance(branch, dict) else None
    return name if isinstance(name, str) and name else DEFAULT_BRANCH
