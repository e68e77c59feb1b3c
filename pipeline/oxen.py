"""Oxen.ai repositories as a run's input and output: the input table read at a commit, the
answered table committed back to a branch, through Oxen's HTTP API (hub.oxen.ai or a
self-hosted oxen-server; the requests themselves go through oxenhttp.py).

    GET  /api/repos/{ns}/{repo}                         the repository (its default branch)
    GET  /api/repos/{ns}/{repo}/branches/{branch}       {"branch": {"name", "commit_id"}}
    POST /api/repos/{ns}/{repo}/branches                {"new_name", "from_name"}: a new branch
    GET  /api/repos/{ns}/{repo}/commits/{commit_id}     {"commit": {"id", ...}}: it exists
    GET  /api/repos/{ns}/{repo}/file/{revision}/{path}  a file's bytes at a branch or commit
    PUT  /api/repos/{ns}/{repo}/file/{branch}/{dir}     multipart `files[]`, message, name,
                                                        email: ONE commit holding every file

A commit is never blindly retried: after a failure whose outcome is unknown the branch head
is read first, and a branch that already holds the exact bytes is a success. Input-side
failures raise `InputError`, output-side ones `OutputError`.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from .errors import InputError, OutputError, RetryableError
from .oxenaddress import OxenAddress
from .oxenhttp import RETRIES, ErrorType, OxenSession, path_segment, revision_path

log = logging.getLogger(__name__)

COMMIT_TRIES = 3  # upload-and-commit attempts, each after checking the branch head
DEFAULT_BRANCH = "main"  # oxen-server's DEFAULT_BRANCH_NAME, when the repository names none
_COMMIT_ID = re.compile(r"[A-Za-z0-9]+")


class OxenHub:
    """Reads and commits in an Oxen server's repositories, over one `OxenSession`."""

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
        self._api = OxenSession(
            host,
            scheme,
            api_key,
            transport=transport,
            timeout_s=timeout_s,
            key_env=key_env,
            retries=retries,
            sleep=sleep,
        )
        self._sleep = sleep

    def __enter__(self) -> OxenHub:
        self._api.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._api.__exit__(*exc_info)

    def close(self) -> None:
        self._api.close()

    # -- reading -------------------------------------------------------------------------

    def resolve(self, address: OxenAddress) -> str:
        """The commit id `address.revision` names now: a branch's head, or a commit id that
        exists in the repository."""
        self._repository(address, InputError)
        head = self._head(address, address.revision, InputError)
        if head is not None:
            return head
        response = self._api.read(
            address, InputError, "GET", f"/commits/{path_segment(address.revision)}"
        )
        if response.status_code == 404:
            raise InputError(
                f"{address}: no branch or commit {address.revision!r} in "
                f"{address.namespace}/{address.repo}"
            )
        self._api.check(response, address, InputError, "looking up the commit")
        return self._api.value(response, address, InputError, "commit", "id")

    def fetch(self, address: OxenAddress, commit: str, cache: Path) -> Path:
        """The file at `commit`, downloaded once to `cache/<commit>/<file name>`."""
        if not _COMMIT_ID.fullmatch(commit):
            raise InputError(f"{address}: {commit!r} is not a commit id")
        target = Path(cache) / commit / address.name
        if target.is_file():
            log.debug("%s at %s: already in %s", address, commit, target)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        route = f"/file/{revision_path(commit, address.path)}"
        status, detail = self._api.download(address, InputError, route, target)
        if status == 404:
            raise InputError(
                f"{address}: no file {address.path!r} at commit {commit} of "
                f"{address.namespace}/{address.repo}"
            )
        if status >= 400:
            raise self._api.error_for(status, detail, address, InputError, "downloading the file")
        return target

    def file_at(self, address: OxenAddress) -> bytes | None:
        """The file's bytes at the head of `address.revision` (a branch); None when the
        branch or the file does not exist. Output side: failures raise OutputError."""
        return self._bytes_at(address, address.revision, OutputError)

    # -- writing -------------------------------------------------------------------------

    def check_branch(self, address: OxenAddress) -> None:
        """Before anything is sent: the output's repository is there and `address.revision`
        is a branch, or a name for one to make, not a commit id."""
        missing = "; create it first, or correct output.path"
        repository = self._repository(address, OutputError, missing)
        if self._head(address, address.revision, OutputError) is not None:
            return
        if repository.get("is_empty") is not True and self._is_commit(address):
            raise OutputError(_not_a_branch(address))

    def ensure_branch(self, address: OxenAddress) -> None:
        """Create the branch `address.revision` from the repository's default branch, unless
        it exists (or the repository is empty: its first commit creates the branch)."""
        if self._head(address, address.revision, OutputError) is not None:
            return
        repository = self._repository(address, OutputError)
        if repository.get("is_empty") is True:
            return
        if self._is_commit(address):
            raise OutputError(_not_a_branch(address))
        source = _default_branch(repository)
        body = {"new_name": address.revision, "from_name": source}
        log.info("%s: creating branch %r from %r", address, address.revision, source)
        response = self._api.read(address, OutputError, "POST", "/branches", json=body)
        if response.status_code == 404:
            raise OutputError(
                f"{address}: cannot create branch {address.revision!r}: the default branch "
                f"{source!r} of {address.namespace}/{address.repo} was not found"
            )
        self._api.check(response, address, OutputError, "creating the branch")

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
        route = f"/file/{revision_path(address.revision, address.directory)}"
        data = {"message": message, "name": author, "email": email}
        for attempt in range(COMMIT_TRIES):
            if attempt:
                self._sleep(min(30.0, 2.0**attempt))
            try:  # 429s, 5xx and lost answers raise: the commit may or may not have happened
                response = self._api.upload(address, route, files, data)
            except RetryableError as exc:
                last, fatal = str(exc), False
            else:
                status = response.status_code
                if status < 400:
                    return self._api.value(response, address, OutputError, "commit", "id")
                detail, last, fatal = self._api.detail(response), f"HTTP {status}", True
                if status in (401, 403, 404):
                    doing = f"a commit to branch {address.revision!r}"
                    raise self._api.error_for(status, detail, address, OutputError, doing)
            log.warning("%s: commit attempt %d failed (%s)", address, attempt + 1, last)
            landed = self._landed(address, digests)
            if landed is not None:  # also a 422 "no changes": the branch holds these bytes
                return landed
            if fatal:
                raise self._api.error_for(status, detail, address, OutputError, "the commit")
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
            f"failed {COMMIT_TRIES} times (last: {self._api.redact(last)}); {state}"
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

    def _repository(
        self, address: OxenAddress, error: ErrorType, advice: str = ""
    ) -> dict[str, Any]:
        response = self._api.read(address, error, "GET", "")
        if response.status_code == 404:
            raise error(
                f"{address}: repository {address.namespace}/{address.repo} not found on "
                f"{self._api.host} (or the key in ${self._api.key_env} cannot see it){advice}"
            )
        self._api.check(response, address, error, "looking up the repository")
        repository = self._api.body(response, address, error).get("repository")
        return repository if isinstance(repository, dict) else {}

    def _head(self, address: OxenAddress, branch: str, error: ErrorType) -> str | None:
        """The head commit id of `branch`; None when there is no such branch."""
        response = self._api.read(address, error, "GET", f"/branches/{quote(branch, safe='/')}")
        if response.status_code == 404:
            return None
        self._api.check(response, address, error, f"looking up branch {branch!r}")
        return self._api.value(response, address, error, "branch", "commit_id")

    def _is_commit(self, address: OxenAddress) -> bool:
        """Whether `address.revision` is the id of a commit in the repository."""
        response = self._api.read(
            address, OutputError, "GET", f"/commits/{path_segment(address.revision)}"
        )
        return response.status_code == 200

    def _bytes_at(self, address: OxenAddress, revision: str, error: ErrorType) -> bytes | None:
        response = self._api.read(
            address, error, "GET", f"/file/{revision_path(revision, address.path)}"
        )
        if response.status_code == 404:
            self._repository(address, error)  # a missing repository is an error, not None
            return None
        self._api.check(response, address, error, "reading the file")
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


def _not_a_branch(address: OxenAddress) -> str:
    return (
        f"{address}: {address.revision!r} is a commit; the output must name a branch: put a "
        "branch name after the @ in output.path (one that does not exist yet is made from the "
        "default branch)"
    )


def _digest(path: Path) -> str:
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _default_branch(repository: dict[str, Any]) -> str:
    """The branch the repository view names as its default resource, else "main"."""
    resource = repository.get("default_resource")
    branch = resource.get("branch") if isinstance(resource, dict) else None
    name = branch.get("name") if isinstance(branch, dict) else None
    return name if isinstance(name, str) and name else DEFAULT_BRANCH
