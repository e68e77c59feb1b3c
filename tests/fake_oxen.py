"""A fake Oxen hub on 127.0.0.1 for tests: repositories, branches, commits and files in memory.

It serves the routes `pipeline.oxen` uses, with the JSON shapes of oxen-server as read from
its source and Oxen's HTTP API reference:

- https://github.com/Oxen-AI/Oxen (commit 4e0e659, August 2026): crates/oxen-server/src/
  routes.rs and services/{branches,commits,file}.rs (the routes), controllers/{repositories,
  branches,commits,file}.rs (the handlers), errors.rs (the error bodies), auth/validator.rs;
  crates/liboxen/src/model/{branch,commit}.rs, view/{branch,commit,repository,pagination,
  status_message}.rs and core/v_latest/resource.rs (the shapes, how a resource is parsed)
- the same files on docs.rs, e.g. https://docs.rs/crate/oxen-server/0.65.1/source/src/
  controllers/file.rs and https://docs.rs/crate/liboxen/0.65.0/source/src/view/commit.rs
- https://docs.oxen.ai/http-api/files/upload-files, .../files/put-file,
  .../branches/create-a-new-branch and https://docs.oxen.ai/http-api/example

    GET  /api/repos/{ns}/{repo}
         controllers/repositories.rs `show` -> RepositoryDataTypesResponse:
         {status, status_message, repository: {namespace, name, min_version, is_empty,
         storage_kind, size, data_types, branch_count, default_resource: {branch: {name,
         commit_id}, commit, path, version, resource, workspace}}} (liboxen view/repository.rs;
         default_resource only when the default branch has a commit)
    GET  /api/repos/{ns}/{repo}/branches            -> {status, status_message, branches: [Branch]}
    GET  /api/repos/{ns}/{repo}/branches/{name}     -> {status, status_message, branch: Branch}
         Branch = {name, commit_id} (liboxen model/branch.rs, view/branch.rs;
         docs.oxen.ai/http-api/branches/create-a-new-branch)
    POST /api/repos/{ns}/{repo}/branches  {new_name, from_name} or {new_name, commit_id}
         controllers/branches.rs `create`: an existing `new_name` is answered as it is
         (status_message resource_found); a missing `from_name` is a bare 404
         {status: error, status_message: resource_not_found}
    GET  /api/repos/{ns}/{repo}/commits/{id}        -> {status, status_message, commit: Commit}
         Commit = {id, parent_ids, message, author, email, timestamp (RFC 3339)}
         (liboxen model/commit.rs, view/commit.rs CommitResponse)
    GET  /api/repos/{ns}/{repo}/commits/history/{revision}?page=&page_size=
         -> {status, status_message, commits: [Commit] newest first, page_size, page_number,
         total_pages, total_entries} (view/commit.rs PaginatedCommits, view/pagination.rs)
    GET  /api/repos/{ns}/{repo}/file/{revision}/{path}  -> the bytes (controllers/file.rs `get`)
    PUT  /api/repos/{ns}/{repo}/file/{branch}/{dir}     multipart/form-data: `files[]` (each
         part's filename, sanitised to a base name, placed in {dir}), `message`, `name`,
         `email` -> one commit, answered as CommitResponse (controllers/file.rs `put`,
         FileUploadBody; docs.oxen.ai/http-api/files/upload-files). The deprecated single
         `file` part is refused here (400), as is a payload with both. On a repository with
         no commits yet, the first path component names the branch the commit creates.

A `{revision}/{path}` resource is parsed as oxen-server does (liboxen core/v_latest/
resource.rs): the first component as a commit id, else the longest prefix that names a branch.
Error bodies follow oxen-server's errors.rs: a missing repository answers 404 {status: error,
status_message: resource_not_found, status_description: "Repository 'ns/repo' not found"}; a
missing branch, revision or path answers 404 {error: {type: resource_not_found, title,
detail}, status, status_message}; an unparsable body 400 {error: {type: bad_request, ...}};
a 500 {status: error, status_message: internal_server_error}; a bad key 401 with the plain
body "unauthorized" (oxen-server's bearer validator, auth/validator.rs).

Scripting: `require_key` (every route answers 401 to any other bearer key, or none);
`fail_next_commit("before" | "after", times)`: the next PUTs answer 500 without committing, or
after committing; `fail_reads = N`: the next N GETs answer 503. Records: `requests` ((method,
path) in arrival order), `puts`, `commits(ns, repo, branch)` (that branch's history, newest
first). Seed a repository with `add_repo(ns, name, files)`.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

OXEN_VERSION = "0.65.1"


@dataclass
class Commit:
    """A commit and the whole tree it holds (path -> bytes)."""

    id: str
    parent_ids: list[str]
    message: str
    author: str
    email: str
    timestamp: str
    files: dict[str, bytes]

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent_ids": self.parent_ids,
            "message": self.message,
            "author": self.author,
            "email": self.email,
            "timestamp": self.timestamp,
        }


@dataclass
class Repo:
    namespace: str
    name: str
    branches: dict[str, str] = field(default_factory=dict)  # name -> head commit id
    commits: dict[str, Commit] = field(default_factory=dict)
    default_branch: str = "main"


class FakeOxen:
    """An in-memory Oxen hub behind a real HTTP server on 127.0.0.1."""

    def __init__(self, *, require_key: str | None = None) -> None:
        self.require_key = require_key
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.puts = 0
        self.fail_reads = 0
        self._fail_commit: list[str] = []
        self._serial = 0
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FakeOxen:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def host(self) -> str:
        """host:port, for OxenHub(host=..., scheme="http")."""
        if self._server is None:
            raise RuntimeError("FakeOxen is not started: use `with`")
        return f"127.0.0.1:{self._server.server_address[1]}"

    # -- seeding and scripting -------------------------------------------------------------

    def add_repo(
        self,
        namespace: str,
        name: str,
        files: dict[str, bytes] | None = None,
        *,
        branch: str = "main",
        message: str = "Initial commit",
    ) -> Repo:
        """A repository; with `files`, a first commit holding them on `branch`."""
        with self.lock:
            repo = self.repos[(namespace, name)] = Repo(namespace, name, default_branch=branch)
            if files:
                self.commit_files(repo, branch, files, message, "ox", "ox@oxen.ai")
            return repo

    def commit_files(
        self,
        repo: Repo,
        branch: str,
        files: dict[str, bytes],
        message: str,
        author: str,
        email: str,
    ) -> Commit:
        """A commit on `branch` (created if new) adding or replacing `files`."""
        with self.lock:
            parent = repo.branches.get(branch)
            tree = dict(repo.commits[parent].files) if parent else {}
            tree.update(files)
            self._serial += 1
            seed = f"{parent}|{message}|{self._serial}|" + "|".join(
                f"{path}:{hashlib.sha256(data).hexdigest()}" for path, data in sorted(tree.items())
            )
            commit = Commit(
                id=hashlib.sha256(seed.encode()).hexdigest()[:32],
                parent_ids=[parent] if parent else [],
                message=message,
                author=author,
                email=email,
                timestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                files=tree,
            )
            repo.commits[commit.id] = commit
            repo.branches[branch] = commit.id
            return commit

    def fail_next_commit(self, when: Literal["before", "after"], times: int = 1) -> None:
        """The next `times` PUTs answer 500, without committing ("before") or after ("after")."""
        with self.lock:
            self._fail_commit.extend([when] * times)

    def commits(self, namespace: str, name: str, branch: str) -> list[Commit]:
        """The branch's history, newest first."""
        with self.lock:
            repo = self.repos[(namespace, name)]
            found, commit_id = [], repo.branches.get(branch)
            while commit_id:
                commit = repo.commits[commit_id]
                found.append(commit)
                commit_id = commit.parent_ids[0] if commit.parent_ids else None
            return found

    def head(self, namespace: str, name: str, branch: str) -> Commit | None:
        history = self.commits(namespace, name, branch)
        return history[0] if history else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeOxen


def _not_found(title: str, detail: str) -> dict[str, Any]:
    return {
        "error": {"type": "resource_not_found", "title": title, "detail": detail},
        "status": "error",
        "status_message": "resource_not_found",
    }


def _bad_request(detail: str) -> dict[str, Any]:
    return {
        "error": {"type": "bad_request", "title": "Bad Request", "detail": detail},
        "status": "error",
        "status_message": "bad_request",
    }


def _ok(message: str = "resource_found", **body: Any) -> dict[str, Any]:
    return {"status": "success", "status_message": message, "oxen_version": OXEN_VERSION, **body}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: avoid a 40 ms stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request logging."""

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    # -- plumbing --------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _route(self, method: str) -> None:
        fake = self.server.fake
        split = urlsplit(self.path)
        body = self._body()
        with fake.lock:
            fake.requests.append((method, split.path))
            if fake.require_key is not None and (
                self.headers.get("Authorization") != f"Bearer {fake.require_key}"
            ):
                self._send(401, b"unauthorized", "text/plain")
                return
            if method == "GET" and fake.fail_reads > 0:
                fake.fail_reads -= 1
                self._json(503, {"status": "error", "status_message": "service_unavailable"})
                return
            parts = [unquote(part) for part in split.path.split("/")]
            if parts[:3] != ["", "api", "repos"] or len(parts) < 5:
                self._json(404, {"status": "error", "status_message": "resource_not_found"})
                return
            namespace, name, rest = parts[3], parts[4], parts[5:]
            repo = fake.repos.get((namespace, name))
            if repo is None:
                self._json(
                    404,
                    {
                        "status": "error",
                        "status_message": "resource_not_found",
                        "oxen_version": OXEN_VERSION,
                        "status_description": f"Repository '{namespace}/{name}' not found",
                    },
                )
                return
            self._dispatch(method, repo, rest, body, parse_qs(split.query))

    def _dispatch(
        self, method: str, repo: Repo, rest: list[str], body: bytes, query: dict[str, list[str]]
    ) -> None:
        route = (method, rest[0] if rest else "")
        if route == ("GET", ""):
            self._json(200, _ok(repository=_repository_view(repo)))
        elif route == ("GET", "branches") and len(rest) == 1:
            branches = [{"name": n, "commit_id": c} for n, c in sorted(repo.branches.items())]
            self._json(200, _ok(branches=branches))
        elif route == ("GET", "branches"):
            self._show_branch(repo, "/".join(rest[1:]))
        elif route == ("POST", "branches") and len(rest) == 1:
            self._create_branch(repo, body)
        elif route == ("GET", "commits") and len(rest) >= 3 and rest[1] == "history":
            self._history(repo, "/".join(rest[2:]), query)
        elif route == ("GET", "commits") and len(rest) == 2:
            commit = repo.commits.get(rest[1])
            if commit is None:
                detail = f"Could not find branch or commit: {rest[1]}"
                self._json(404, _not_found("Revision not found", detail))
            else:
                self._json(200, _ok(commit=commit.view()))
        elif route == ("GET", "file"):
            self._get_file(repo, "/".join(rest[1:]))
        elif route == ("PUT", "file"):
            self._put_file(repo, "/".join(rest[1:]), body)
        else:
            self._json(404, {"status": "error", "status_message": "resource_not_found"})

    # -- routes ----------------------------------------------------------------------------

    def _show_branch(self, repo: Repo, name: str) -> None:
        if name not in repo.branches:
            self._json(404, _not_found("Branch does not exist", f"Could not find branch: {name}"))
            return
        self._json(200, _ok(branch={"name": name, "commit_id": repo.branches[name]}))

    def _create_branch(self, repo: Repo, body: bytes) -> None:
        try:
            data = json.loads(body)
            new_name = data["new_name"]
        except (ValueError, KeyError, TypeError):
            self._json(400, {"status": "error", "status_message": "Invalid request body"})
            return
        if new_name in repo.branches:
            branch = {"name": new_name, "commit_id": repo.branches[new_name]}
            self._json(200, _ok(branch=branch))
            return
        source = repo.branches.get(data.get("from_name", "")) or (
            data.get("commit_id") if data.get("commit_id") in repo.commits else None
        )
        if source is None:
            self._json(404, {"status": "error", "status_message": "resource_not_found"})
            return
        repo.branches[new_name] = source
        self._json(200, _ok("resource_created", branch={"name": new_name, "commit_id": source}))

    def _history(self, repo: Repo, revision: str, query: dict[str, list[str]]) -> None:
        resolved = _parse_resource(repo, revision)
        if resolved is None:
            self._json(404, _not_found("Path does not exist", f"Could not find path: {revision}"))
            return
        commits, commit_id = [], resolved[0].id
        while commit_id:
            commit = repo.commits[commit_id]
            commits.append(commit.view())
            commit_id = commit.parent_ids[0] if commit.parent_ids else ""
        page = int(query.get("page", ["1"])[0])
        size = int(query.get("page_size", ["100"])[0])
        pages = max(1, -(-len(commits) // size))
        chosen = commits[(page - 1) * size : page * size]
        self._json(
            200,
            _ok(
                commits=chosen,
                page_size=size,
                page_number=page,
                total_pages=pages,
                total_entries=len(commits),
            ),
        )

    def _get_file(self, repo: Repo, resource: str) -> None:
        resolved = _parse_resource(repo, resource)
        data = resolved[0].files.get(resolved[2]) if resolved else None
        if data is None:
            self._json(404, _not_found("Path does not exist", f"Could not find path: {resource}"))
            return
        self._send(200, data, "application/octet-stream")

    def _put_file(self, repo: Repo, resource: str, body: bytes) -> None:
        fake = self.server.fake
        fake.puts += 1
        form = _multipart(self.headers.get("Content-Type", ""), body)
        if form is None or not form["files[]"] or form["file"]:
            detail = "Missing file data: expected `file` or `files[]` multipart parts"
            if form is not None and form["file"] and form["files[]"]:
                detail = "Ambiguous multipart payload: use either `file` or `files[]`, not both"
            elif form is not None and form["file"]:
                detail = "this fake takes `files[]` only"
            self._json(400, _bad_request(detail))
            return
        if repo.branches:
            resolved = _parse_resource(repo, resource)
            if resolved is None or resolved[1] is None:
                detail = f"Could not find branch: {resource.split('/')[0]}"
                self._json(404, _not_found("Branch does not exist", detail))
                return
            branch, directory = resolved[1], resolved[2]
        else:  # an empty repository: the first component names the branch
            branch, _, directory = resource.partition("/")
            branch = branch or "main"
        when = fake._fail_commit.pop(0) if fake._fail_commit else None
        if when == "before":
            self._json(500, {"status": "error", "status_message": "internal_server_error"})
            return
        files = {
            posixpath.join(directory, posixpath.basename(filename)): data
            for filename, data in form["files[]"]
        }
        text = form["text"]
        message = text.get("message") or f"Auto-commit files to {directory}"
        commit = fake.commit_files(
            repo, branch, files, message, text.get("name", ""), text.get("email", "")
        )
        if when == "after":
            self._json(500, {"status": "error", "status_message": "internal_server_error"})
            return
        self._json(200, _ok("resource_created", commit=commit.view()))


def _repository_view(repo: Repo) -> dict[str, Any]:
    view: dict[str, Any] = {
        "namespace": repo.namespace,
        "name": repo.name,
        "min_version": "0.36.0",
        "is_empty": not repo.branches,
        "storage_kind": "local",
        "size": 0,
        "data_types": [],
        "branch_count": len(repo.branches),
    }
    head = repo.branches.get(repo.default_branch)
    if head is not None:
        view["default_resource"] = {
            "workspace": None,
            "commit": repo.commits[head].view(),
            "branch": {"name": repo.default_branch, "commit_id": head},
            "path": "",
            "version": repo.default_branch,
            "resource": repo.default_branch,
        }
    return view


def _parse_resource(repo: Repo, resource: str) -> tuple[Commit, str | None, str] | None:
    """(commit, branch or None, path) for `{commit id | branch}/{path}`, as oxen-server
    resolves it: a commit id first, then the longest prefix that is a branch name."""
    parts = [part for part in resource.split("/") if part]
    if not parts:
        return None
    if parts[0] in repo.commits:
        return repo.commits[parts[0]], None, "/".join(parts[1:])
    for split in range(len(parts), 0, -1):
        name = "/".join(parts[:split])
        if name in repo.branches:
            return repo.commits[repo.branches[name]], name, "/".join(parts[split:])
    return None


def _multipart(content_type: str, body: bytes) -> dict[str, Any] | None:
    """The form's `files[]` and `file` parts ((filename, bytes)) and text fields."""
    if not content_type.startswith("multipart/form-data"):
        return None
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    form: dict[str, Any] = {"files[]": [], "file": [], "text": {}}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None and name in ("files[]", "file"):
            form[name].append((filename, data))
        elif isinstance(name, str):
            form["text"][name] = data.decode()
    return form
