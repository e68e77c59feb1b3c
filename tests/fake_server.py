"""A scriptable OpenAI-compatible HTTP server on 127.0.0.1 for end-to-end tests.

It runs in a background thread of the test process; the CLI under test runs as a subprocess
and talks to it over real HTTP. Tests script failures per prompt (`script`) or for every
request (`always`), draw them at random rates (`error_rate`, `rate_limit_rate`,
`truncate_rate`), or make it go down after some requests (`down_after`), and inspect what
arrived (`requests`, `headers`) and when, with the status answered (`arrivals`).

Gateway mode (`litellm_window=(quota, window_s)`) puts a LiteLLM proxy's per-key limiter in
front of the model: a fixed window of `window_s` seconds begins at the first chat request
after the previous window ended, and admits `quota` requests. An admitted request goes on to
the model (scripts, `always`, random rates as usual), and its answer carries
`x-ratelimit-api_key-limit-requests: <quota>` and `x-ratelimit-api_key-remaining-requests:
<left after this one>`; a request over the quota gets a 429 with only `retry-after: <window_s>`
(the whole window, whenever the window under way ends) and a LiteLLM-like JSON error, and
reaches neither the scripts nor the random draws. `litellm_used=N` with `litellm_resets_in=S`
says someone else already spent N of the window under way when the first chat request
arrives, a window that ends S seconds after that request (default `window_s`; measured from
the first request, not from `start()`, so a slow-starting client sees the same window).

Batch mode: the OpenAI Files and Batches routes, under the same /v1 prefix. `POST /v1/files`
(multipart/form-data, `purpose=batch` and a JSONL `file`) stores an input file and answers a file
object `file-<n>`; `GET /v1/files[?purpose=]`, `GET /v1/files/{id}`, `GET /v1/files/{id}/content`
and `DELETE /v1/files/{id}` list, describe, download and delete files. `POST /v1/batches`
creates a batch `batch_<n>` over an input file; `GET /v1/batches/{id}` answers it, each GET first
moving it one step along its script; `GET /v1/batches?limit=&after=` lists batches newest first;
`POST /v1/batches/{id}/cancel` makes it `cancelling`, and its next GET `cancelled`. The input file
is validated when the batch leaves `validating` (each line a JSON object with a string `custom_id`
unique in the file, `method` "POST", `url` "/v1/chat/completions" and an object `body`): a bad file
fails the batch there, with `errors.data` naming the line, not the upload.

A batch's script is fixed when it is created: `batch_states` (the status the create answers, then
one more per GET; the last is final: completed, failed, expired or cancelled), `batch_partial`
(the share of lines, the first ones, answered when it ends expired or cancelled) and `batch_fail`
(a predicate of a line's request body, or substrings of its last message: those lines fail).
`script_batch(states, partial)` scripts the next batch created alone. When a batch ends, each
answered line gets the answer the chat route gives that body (`answer`, the same usage), in the
output file; failed lines, and for `expired` the lines not answered (code `batch_expired`), go to
the error file; a cancelled batch's unanswered lines get no line at all. Crash hooks:
`upload_delay_s` and `batch_create_delay_s` sleep before acting on an upload or a create, which
then does nothing if the client hung up meanwhile (killed); `batch_create_drop=N` creates the next
N batches and hangs up without answering. `batch_routes=False` answers 404 on /files and /batches,
as llama.cpp's server. Records: `files`, `batches` (each with its metadata, input lines and served
object), `submitted_custom_ids()`, and counters `uploads`, `creates`, `polls`, `downloads`,
`cancels`, `lists`, `file_lists`, `deletes` (requests that arrived on each route, whatever the
answer). Batch lines are not chat requests: they appear in neither `requests` nor `count`.

Run `python tests/fake_server.py --help` to serve in the foreground, with the same behaviours.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import email.message
import email.utils
import json
import random
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

Action = str | int
Answer = Callable[[dict[str, Any]], str]
# Which batch lines fail: a predicate of the line's request body, or substrings of its last
# message (one string is one substring); None: none.
BatchFail = Callable[[dict[str, Any]], bool] | Collection[str] | None

DEFAULT_MODELS: list[dict[str, Any]] = [
    {
        "id": "fake-model",
        "object": "model",
        "pricing": {
            "method": "per_token",
            "input_cost_per_token": 1e-07,
            "output_cost_per_token": 4e-07,
        },
        "request_schema": {
            "type": "object",
            "properties": {
                "temperature": {"type": "number", "maximum": 2},
                "max_tokens": {"type": "integer"},
                "top_p": {"type": "number"},
                "seed": {"type": "integer"},
                "response_format": {"type": "object"},
            },
        },
    }
]

_STATUS_ACTIONS = {"200", "400", "401", "403", "404", "429", "500", "503"}
_OTHER_ACTIONS = {"drop", "truncate", "nochoices", "down"}
_RETRY_AFTER = "429:retry-after="
_GATEWAY_429 = "gateway-429"  # internal: the gateway's limiter refused the request

BATCH_ENDPOINT = "/v1/chat/completions"
DEFAULT_BATCH_STATES = ("validating", "in_progress", "finalizing", "completed")
BATCH_FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
BATCH_INTERIM = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
# The batch object's timestamp set when it reaches each status ("validating": created_at).
_BATCH_STAMP = {
    "in_progress": "in_progress_at",
    "finalizing": "finalizing_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelling": "cancelling_at",
    "cancelled": "cancelled_at",
}


@dataclass
class Arrival:
    """One chat request: when it arrived (`time.monotonic()`, before any latency) and the
    status it was answered (None: no answer, the connection was dropped or the server went
    down)."""

    at: float
    status: int | None


@dataclass
class BatchFile:
    """A stored file: an uploaded batch input (purpose "batch") or a batch's output or error
    file (purpose "batch_output")."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def object(self) -> dict[str, Any]:
        """The OpenAI file object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class Batch:
    """A created batch: its input lines as submitted and the object served for it."""

    id: str
    input_file_id: str
    metadata: dict[str, Any] | None
    lines: list[dict[str, Any]]  # the input file's lines, parsed (those that parse, if invalid)
    invalid: list[dict[str, Any]]  # the validation errors of the input file ([]: valid)
    states: list[str]  # its script: the status the create answered, then one per GET
    partial: float  # the share of lines answered if it ends expired or cancelled
    fail: BatchFail  # lines that fail when answered
    object: dict[str, Any]  # the batch object as served now
    step: int = 0  # the index in `states` of the current status
    cancel_asked: bool = False  # a client cancelled it: the next GET ends it cancelled
    polls: int = 0  # GETs of this batch
    output_lines: list[dict[str, Any]] = field(default_factory=list)  # the output file's
    error_lines: list[dict[str, Any]] = field(default_factory=list)  # the error file's

    @property
    def status(self) -> str:
        return str(self.object["status"])

    @property
    def custom_ids(self) -> list[str]:
        """The custom_id of each input line, in file order."""
        return [str(line.get("custom_id")) for line in self.lines]


def check_batch_states(states: Collection[str]) -> list[str]:
    """A batch script as a list; ValueError unless it is interim statuses then one final."""
    checked = list(states)
    if isinstance(states, str) or not checked:
        raise ValueError("batch_states must be a non-empty list of statuses")
    *interim, final = checked
    if final not in BATCH_FINAL:
        raise ValueError(
            f"the last batch state must be one of {sorted(BATCH_FINAL)}, got {final!r}"
        )
    for state in interim:
        if state not in BATCH_INTERIM:
            raise ValueError(
                f"batch states before the last must be among {sorted(BATCH_INTERIM)}, got {state!r}"
            )
    return checked


def _check_partial(partial: float) -> float:
    if not 0 <= partial <= 1:
        raise ValueError(f"batch_partial must be a share from 0 to 1, got {partial}")
    return float(partial)


def _fails(fail: BatchFail, body: dict[str, Any]) -> bool:
    """Whether a batch line with this request body fails by `fail`."""
    if fail is None:
        return False
    if callable(fail):
        return bool(fail(body))
    text = last_content(body)
    if isinstance(fail, str):
        return fail in text
    return any(match in text for match in fail)


def _openai_error(message: str, param: str | None = None, code: str | None = None) -> Any:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }


def validate_batch_input(data: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Parse a batch input file: (the lines that parse as JSON objects, the validation errors as
    OpenAI's `errors.data` entries, each naming its 1-based line; [] when the file is valid)."""
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def error(number: int | None, message: str) -> None:
        errors.append(
            {"code": "invalid_request", "message": message, "param": None, "line": number}
        )

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        error(None, f"the file is not UTF-8: {exc}")
        return lines, errors
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            error(number, f"line {number} is not JSON: {exc}")
            continue
        if not isinstance(line, dict):
            error(number, f"line {number} is not a JSON object")
            continue
        lines.append(line)
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            error(number, f"line {number}: custom_id must be a non-empty string")
        elif custom_id in seen:
            error(number, f"line {number}: the custom_id {custom_id!r} is a duplicate")
        else:
            seen.add(custom_id)
        if line.get("method") != "POST":
            error(number, f"line {number}: method must be 'POST', got {line.get('method')!r}")
        if line.get("url") != BATCH_ENDPOINT:
            error(number, f"line {number}: url must be {BATCH_ENDPOINT!r}, got {line.get('url')!r}")
        if not isinstance(line.get("body"), dict):
            error(number, f"line {number}: body must be a JSON object")
    if not lines and not errors:
        error(None, "the file has no requests")
    return lines, errors


def parse_multipart(content_type: str, data: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename or None, bytes).

    ValueError if it is not multipart/form-data with a boundary."""
    header = email.message.Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not boundary:
        raise ValueError("expected a multipart/form-data body with a boundary")
    delimiter = b"\r\n--" + email.utils.collapse_rfc2231_value(boundary).encode("latin-1")
    fields: dict[str, tuple[str | None, bytes]] = {}
    # Each part follows "CRLF--boundary" (the first one may come without the CRLF).
    for part in (b"\r\n" + data).split(delimiter)[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        _, _, part = part.partition(b"\r\n")  # transport padding after the delimiter
        head, _, content = part.partition(b"\r\n\r\n")
        disposition = email.message.Message()
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition["content-disposition"] = value.strip()
        field_name = disposition.get_param("name", header="content-disposition")
        if field_name is None:
            continue
        filename = disposition.get_filename()
        fields[email.utils.collapse_rfc2231_value(field_name)] = (filename, content)
    return fields


def _status_of(action: str) -> int | None:
    """The HTTP status an action answers with (None: no answer)."""
    if action in ("drop", "down"):
        return None
    if action in ("truncate", "nochoices"):
        return 200
    if action == _GATEWAY_429 or action.startswith(_RETRY_AFTER):
        return 429
    return int(action)


def _oxen_error(kind: str, title: str, detail: str) -> dict[str, Any]:
    return {
        "error": {"type": kind, "title": title, "detail": detail},
        "status": "error",
        "status_message": kind,
    }


def _check_action(action: Action) -> str:
    """Normalise an action to its string form; raise ValueError for an unknown one."""
    text = str(action).strip()
    if text in _STATUS_ACTIONS or text in _OTHER_ACTIONS:
        return text
    if text.startswith(_RETRY_AFTER) and text[len(_RETRY_AFTER) :]:
        return text
    raise ValueError(
        f"unknown fake-server action {action!r}: use one of "
        f"{sorted(_STATUS_ACTIONS | _OTHER_ACTIONS)} or '429:retry-after=SECONDS'"
    )


def content_text(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text"
        )
    return ""


def last_content(body: dict[str, Any]) -> str:
    """The text of the last message of a chat request body ("" if there is none)."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return content_text(messages[-1].get("content"))
    return ""


def echo(body: dict[str, Any]) -> str:
    """The default answer: "echo: " + the last message's text."""
    return "echo: " + last_content(body)


class FakeServer:
    """An OpenAI-compatible chat-completions server whose failures tests script."""

    def __init__(
        self,
        *,
        answer: Answer | None = None,
        latency: float = 0.0,
        models: list[dict[str, Any]] | None = None,
        port: int = 0,
        seed: int | None = None,
        litellm_window: tuple[int, float] | None = None,
        litellm_used: int = 0,
        litellm_resets_in: float | None = None,
        batch_routes: bool = True,
        batch_states: Collection[str] = DEFAULT_BATCH_STATES,
        batch_partial: float = 0.5,
        batch_fail: BatchFail = None,
        batch_create_delay_s: float = 0.0,
        upload_delay_s: float = 0.0,
        batch_create_drop: int = 0,
        batch_shuffle: bool = False,
    ) -> None:
        if litellm_window is None and (litellm_used or litellm_resets_in is not None):
            raise ValueError("litellm_used and litellm_resets_in need litellm_window")
        if litellm_window is not None:
            quota, window_s = litellm_window
            if quota < 1 or window_s <= 0:
                raise ValueError(
                    f"litellm_window needs a quota >= 1 and a window > 0, got {litellm_window}"
                )
            if not 0 <= litellm_used <= quota:
                raise ValueError(f"litellm_used must be 0 to the quota {quota}")
            if litellm_resets_in is not None and not 0 < litellm_resets_in <= window_s:
                raise ValueError(f"litellm_resets_in must be over 0 and at most {window_s:g}")
        # The gateway's fixed window: quota, length, when the window under way began (None:
        # none yet) and the requests it admitted.
        self.litellm_window = litellm_window
        self._window_start: float | None = None
        self._window_count = 0
        self._pre_spent = (litellm_used, litellm_resets_in)
        self.answer: Answer = answer or echo
        self.latency = latency
        self.models: list[dict[str, Any]] = copy.deepcopy(
            DEFAULT_MODELS if models is None else models
        )
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.gets: list[str] = []  # paths of GET requests, in arrival order
        self.arrivals: list[Arrival] = []  # one per chat request, in arrival order
        self.model_route = True  # False: no /models/{id} route, as llama.cpp's server
        self.require_key: str | None = None  # set: every route answers 401 to another key
        # Shares of unscripted chat requests that fail at random (drawn from `seed`):
        self.error_rate = 0.0  # a 500
        self.rate_limit_rate = 0.0  # a 429, with `retry_after` / `ratelimit_headers`
        self.truncate_rate = 0.0  # a 200 whose body stops half-way
        self.retry_after: float | None = None  # seconds in Retry-After of the random 429s
        self.ratelimit_headers = False  # every 429 carries x-ratelimit-* headers (60 rpm)
        self._random = random.Random(seed)
        self._port = port
        self._always: str | None = None
        self._always_as_set: str | int | None = None
        self._scripts: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._serial = 0
        self._down_after: int | None = None
        self.went_down = threading.Event()  # set once the "down" action closed the server
        # Batch mode (the options are read when a batch is created, or an upload arrives):
        self.batch_routes = batch_routes  # False: /files and /batches answer 404
        self._batch_states = check_batch_states(batch_states)
        self.batch_partial = _check_partial(batch_partial)  # answered share if expired/cancelled
        self.batch_fail: BatchFail = batch_fail  # lines that fail (400) in the error file
        self.batch_create_delay_s = batch_create_delay_s  # sleep before acting on a create
        self.upload_delay_s = upload_delay_s  # sleep before acting on an upload
        self.batch_create_drop = batch_create_drop  # creates left to hang up on once done
        self.batch_shuffle = batch_shuffle  # output/error lines in a random order (from `seed`)
        self.files: dict[str, BatchFile] = {}  # by id, in creation order
        self.batches: list[Batch] = []  # in creation order
        self.uploads = 0  # POST /v1/files
        self.creates = 0  # POST /v1/batches
        self.polls = 0  # GET /v1/batches/{id}
        self.downloads = 0  # GET /v1/files/{id}/content
        self.cancels = 0  # POST /v1/batches/{id}/cancel
        self.lists = 0  # GET /v1/batches
        self.file_lists = 0  # GET /v1/files
        self.deletes = 0  # DELETE /v1/files/{id}
        self.abandoned_creates = 0  # creates not acted on: the client hung up during the delay
        self.abandoned_uploads = 0  # uploads not stored: the client hung up during the delay
        self._batch_scripts: list[tuple[list[str], float | None]] = []
        self._batch_random = random.Random(seed)
        self._batch_lock = threading.RLock()
        self._file_serial = 0
        self._batch_serial = 0
        self._batch_line_serial = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeServer:
        """Bind 127.0.0.1 (an OS-chosen port unless `port` was given) and serve in a thread."""
        if self._server is not None:
            raise RuntimeError("FakeServer is already started")
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"fake-server-{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and hang up on open keep-alive connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port the server listens on (valid after start)."""
        if self._server is None:
            raise RuntimeError("FakeServer is not started: call start() or use `with`")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, e.g. http://127.0.0.1:PORT/v1 (valid after start)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting -------------------------------------------------------------------------

    @property
    def always(self) -> str | int | None:
        """An action every chat request gets while set (scripts are neither used nor consumed)."""
        return self._always_as_set

    @always.setter
    def always(self, action: str | int | None) -> None:
        checked = None if action is None else _check_action(action)
        with self._lock:
            self._always, self._always_as_set = checked, action

    def script(self, match: str, actions: list[str | int]) -> None:
        """Give the next len(actions) requests whose last message contains `match` these actions.

        Scripts are consulted in the order they were added; a request uses the first one that
        matches and still has actions left. Unscripted requests get a normal 200 answer.
        """
        checked = [_check_action(action) for action in actions]
        if checked:
            with self._lock:
                self._scripts.append((match, checked))

    def down_after(self, answered: int) -> None:
        """Answer the next `answered` chat requests, then go down ("down") for good."""
        with self._lock:
            self._down_after = self._serial + answered

    @property
    def count(self) -> int:
        """How many chat requests have arrived."""
        with self._lock:
            return len(self.requests)

    def count_matching(self, match: str) -> int:
        """How many chat requests have arrived whose last message contains `match`."""
        with self._lock:
            return sum(match in last_content(body) for body in self.requests)

    def _go_down(self) -> None:
        """Stop listening and hang up on every open connection, as a crashed server does.

        Runs in a thread of its own (a handler thread must not wait for its own server), and
        leaves `stop()` to the test: it only closes the sockets."""
        server = self._server
        if server is None or self.went_down.is_set():
            return
        self.went_down.set()
        server.shutdown()
        server.server_close()
        server.close_connections()

    # -- request handling (called from handler threads) ------------------------------------

    def _record(
        self, body: dict[str, Any], headers: dict[str, str], at: float
    ) -> tuple[str, int, Arrival, dict[str, str]]:
        """Record a chat request that arrived at `at` and pick its action; returns (action,
        serial number, its arrival record, the gateway's headers for its answer)."""
        text = last_content(body)
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            self._serial += 1
            action, extra = self._pick(text, at)
            arrival = Arrival(at, _status_of(action))
            self.arrivals.append(arrival)
            return action, self._serial, arrival, extra

    def _pick(self, text: str, at: float) -> tuple[str, dict[str, str]]:
        """The action of a chat request and the gateway's headers (under the lock)."""
        if self._down_after is not None and self._serial > self._down_after:
            return "down", {}
        extra: dict[str, str] = {}
        if self.litellm_window is not None:
            left = self._admit(at)
            if left is None:
                return _GATEWAY_429, {"retry-after": str(int(self.litellm_window[1]))}
            extra = {
                "x-ratelimit-api_key-limit-requests": str(self.litellm_window[0]),
                "x-ratelimit-api_key-remaining-requests": str(left),
            }
        if self._always is not None:
            return self._always, extra
        for match, actions in self._scripts:
            if actions and match in text:
                return actions.pop(0), extra
        return self._draw(), extra

    def _admit(self, at: float) -> int | None:
        """The gateway's fixed window: count a request arriving at `at`; returns the quota
        left after it, or None when it is over the quota (under the lock)."""
        assert self.litellm_window is not None
        quota, window_s = self.litellm_window
        if self._window_start is None:
            used, resets_in = self._pre_spent
            if used or resets_in is not None:  # someone else's window, ending resets_in from now
                ends = at + (window_s if resets_in is None else resets_in)
                self._window_start, self._window_count = ends - window_s, used
        if self._window_start is None or at >= self._window_start + window_s:
            self._window_start, self._window_count = at, 0
        if self._window_count >= quota:
            return None
        self._window_count += 1
        return quota - self._window_count

    # -- batches: scripting and records --------------------------------------------------

    @property
    def batch_states(self) -> list[str]:
        """The script of each batch created (unless `script_batch` gave it one): the status the
        create answers, then the status after each GET of it; the last one is final."""
        return list(self._batch_states)

    @batch_states.setter
    def batch_states(self, states: Collection[str]) -> None:
        self._batch_states = check_batch_states(states)

    def script_batch(self, states: Collection[str], partial: float | None = None) -> None:
        """Give the next batch created (after those already scripted) these states and, unless
        None, this answered share instead of `batch_states` and `batch_partial`."""
        checked = check_batch_states(states)
        share = None if partial is None else _check_partial(partial)
        with self._batch_lock:
            self._batch_scripts.append((checked, share))

    def batch(self, batch_id: str) -> Batch:
        """The created batch with this id (KeyError if none)."""
        with self._batch_lock:
            for batch in self.batches:
                if batch.id == batch_id:
                    return batch
        raise KeyError(batch_id)

    def submitted_custom_ids(self) -> list[str]:
        """The custom_id of every line of every batch created, in order (repeats kept)."""
        with self._batch_lock:
            return [custom_id for batch in self.batches for custom_id in batch.custom_ids]

    # -- batches: the routes (called from handler threads) -----------------------------------

    def _new_file(self, filename: str, purpose: str, data: bytes) -> BatchFile:
        """Store a file (under the batch lock)."""
        self._file_serial += 1
        stored = BatchFile(f"file-{self._file_serial}", filename, purpose, data, int(time.time()))
        self.files[stored.id] = stored
        return stored

    def _upload(self, fields: dict[str, tuple[str | None, bytes]]) -> tuple[int, Any]:
        """POST /v1/files: (status, JSON payload)."""
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace").strip()
        if purpose != "batch":
            return 400, _openai_error(f"purpose must be 'batch', got {purpose!r}", "purpose")
        if "file" not in fields:
            return 400, _openai_error("the 'file' field is missing", "file")
        filename, data = fields["file"]
        with self._batch_lock:
            stored = self._new_file(filename or "upload.jsonl", purpose, data)
            return 200, stored.object()

    def _list_files(self, query: dict[str, list[str]]) -> dict[str, Any]:
        purpose = query.get("purpose", [None])[-1]
        with self._batch_lock:
            self.file_lists += 1
            data = [
                stored.object()
                for stored in reversed(self.files.values())
                if purpose is None or stored.purpose == purpose
            ]
        return {"object": "list", "data": data, "has_more": False}

    def _create_batch(self, body: Any) -> tuple[int, Any]:
        """POST /v1/batches: (status, JSON payload)."""
        if not isinstance(body, dict):
            return 400, _openai_error("the JSON body must be an object")
        endpoint = body.get("endpoint")
        if endpoint != BATCH_ENDPOINT:
            return 400, _openai_error(f"endpoint must be {BATCH_ENDPOINT!r}", "endpoint")
        window = body.get("completion_window")
        if window != "24h":
            return 400, _openai_error("completion_window must be '24h'", "completion_window")
        metadata = body.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            return 400, _openai_error("metadata must map strings to strings", "metadata")
        file_id = body.get("input_file_id")
        with self._batch_lock:
            stored = self.files.get(str(file_id))
            if stored is None or stored.purpose != "batch":
                return 400, _openai_error(f"No such File object: {file_id}", "input_file_id")
            lines, invalid = validate_batch_input(stored.data)
            states, partial = self._batch_states, self.batch_partial
            if self._batch_scripts:
                states, scripted = self._batch_scripts.pop(0)
                partial = partial if scripted is None else scripted
            self._batch_serial += 1
            now = int(time.time())
            batch = Batch(
                id=f"batch_{self._batch_serial}",
                input_file_id=stored.id,
                metadata=copy.deepcopy(metadata),
                lines=lines,
                invalid=invalid,
                states=list(states),
                partial=partial,
                fail=self.batch_fail,
                object={
                    "id": f"batch_{self._batch_serial}",
                    "object": "batch",
                    "endpoint": endpoint,
                    "errors": None,
                    "input_file_id": stored.id,
                    "completion_window": window,
                    "status": "validating",
                    "output_file_id": None,
                    "error_file_id": None,
                    "created_at": now,
                    "in_progress_at": None,
                    "expires_at": now + 24 * 3600,
                    "finalizing_at": None,
                    "completed_at": None,
                    "failed_at": None,
                    "expired_at": None,
                    "cancelling_at": None,
                    "cancelled_at": None,
                    "request_counts": {
                        "total": 0 if invalid else len(lines),
                        "completed": 0,
                        "failed": 0,
                    },
                    "metadata": copy.deepcopy(metadata),
                },
            )
            self.batches.append(batch)
            self._enter(batch, batch.states[0])
            return 200, copy.deepcopy(batch.object)

    def _poll_batch(self, batch_id: str) -> tuple[int, Any]:
        """GET /v1/batches/{id}: move the batch one step along its script, then answer it."""
        with self._batch_lock:
            self.polls += 1
            batch = self._find_batch(batch_id)
            if batch is None:
                return 404, _openai_error(f"No batch found with id '{batch_id}'.")
            batch.polls += 1
            if batch.cancel_asked and batch.status == "cancelling":
                self._enter(batch, "cancelled")
            elif batch.status not in BATCH_FINAL and batch.step + 1 < len(batch.states):
                batch.step += 1
                self._enter(batch, batch.states[batch.step])
            return 200, copy.deepcopy(batch.object)

    def _cancel_batch(self, batch_id: str) -> tuple[int, Any]:
        """POST /v1/batches/{id}/cancel: `cancelling` now, `cancelled` at the next GET."""
        with self._batch_lock:
            self.cancels += 1
            batch = self._find_batch(batch_id)
            if batch is None:
                return 404, _openai_error(f"No batch found with id '{batch_id}'.")
            if batch.status in BATCH_FINAL:
                message = f"Cannot cancel a batch with status '{batch.status}'."
                return 400, _openai_error(message)
            if batch.status != "cancelling":
                batch.cancel_asked = True  # off the script: the next GET ends it cancelled
                self._enter(batch, "cancelling")
            return 200, copy.deepcopy(batch.object)

    def _list_batches(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        """GET /v1/batches?limit=&after=: newest first, a page after the batch `after`."""
        try:
            limit = int(query.get("limit", ["20"])[-1])
        except ValueError:
            return 400, _openai_error("limit must be an integer", "limit")
        if not 1 <= limit <= 100:
            return 400, _openai_error("limit must be from 1 to 100", "limit")
        after = query.get("after", [None])[-1]
        with self._batch_lock:
            self.lists += 1
            newest = list(reversed(self.batches))
            if after is not None:
                ids = [batch.id for batch in newest]
                if after not in ids:
                    return 400, _openai_error(f"No batch found with id '{after}'.", "after")
                newest = newest[ids.index(after) + 1 :]
            page = [copy.deepcopy(batch.object) for batch in newest[:limit]]
        return 200, {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(newest) > limit,
        }

    def _file(self, file_id: str, *, download: bool = False) -> BatchFile | None:
        with self._batch_lock:
            if download:
                self.downloads += 1
            return self.files.get(file_id)

    def _delete_file(self, file_id: str) -> tuple[int, Any]:
        with self._batch_lock:
            self.deletes += 1
            if self.files.pop(file_id, None) is None:
                return 404, _openai_error(f"No such File object: {file_id}")
        return 200, {"id": file_id, "object": "file", "deleted": True}

    def _find_batch(self, batch_id: str) -> Batch | None:
        for batch in self.batches:
            if batch.id == batch_id:
                return batch
        return None

    def _enter(self, batch: Batch, status: str) -> None:
        """Move a batch to `status` (under the batch lock): a bad input file fails it on leaving
        `validating`; a final status writes its output and error files."""
        if batch.invalid and status not in ("validating", "cancelling", "cancelled"):
            status = "failed"
        now = int(time.time())
        batch.object["status"] = status
        stamp = _BATCH_STAMP.get(status)
        if stamp is not None:
            batch.object[stamp] = now
        if status in BATCH_FINAL:
            self._end(batch, status)

    def _end(self, batch: Batch, status: str) -> None:
        """Answer a batch that ended with `status` (under the batch lock)."""
        if status == "failed":
            data = batch.invalid or [
                {
                    "code": "batch_failed",
                    "message": "The fake server's script failed this batch.",
                    "param": None,
                    "line": None,
                }
            ]
            batch.object["errors"] = {"object": "list", "data": data}
            return
        answered = 0 if batch.invalid else len(batch.lines)
        if status in ("expired", "cancelled") and not batch.invalid:
            answered = int(len(batch.lines) * batch.partial)
        for line in batch.lines[:answered]:
            self._answer_line(batch, line)
        if status == "expired":
            for line in batch.lines[answered:]:
                self._batch_line_serial += 1
                error = {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion "
                    "window expired.",
                }
                batch.error_lines.append(
                    {
                        "id": f"batch_req_{self._batch_line_serial}",
                        "custom_id": line.get("custom_id"),
                        "response": None,
                        "error": error,
                    }
                )
        if self.batch_shuffle:
            self._batch_random.shuffle(batch.output_lines)
            self._batch_random.shuffle(batch.error_lines)
        for lines, key, kind in (
            (batch.output_lines, "output_file_id", "output"),
            (batch.error_lines, "error_file_id", "error"),
        ):
            if lines:
                content = "".join(json.dumps(line) + "\n" for line in lines).encode()
                stored = self._new_file(f"{batch.id}_{kind}.jsonl", "batch_output", content)
                batch.object[key] = stored.id
        batch.object["request_counts"] = {
            "total": len(batch.lines),
            "completed": len(batch.output_lines),
            "failed": len(batch.error_lines),
        }

    def _answer_line(self, batch: Batch, line: dict[str, Any]) -> None:
        """Answer one batch line as the chat route would, into the output or error lines."""
        self._batch_line_serial += 1
        serial = self._batch_line_serial
        body = line["body"]
        status, payload = 200, None
        if _fails(batch.fail, body):
            status = 400
            message = "The fake server's batch_fail failed this request."
            payload = _openai_error(message)
        else:
            try:
                payload = self._completion(body, serial)
                payload["id"] = f"chatcmpl-fake-batch-{serial}"
            except Exception as exc:  # a broken test callback shows as a failed line
                status = 500
                message = f"fake server answer() raised {type(exc).__name__}: {exc}"
                payload = {"error": {"message": message, "type": "server_error"}}
        record = {
            "id": f"batch_req_{serial}",
            "custom_id": line.get("custom_id"),
            "response": {
                "status_code": status,
                "request_id": f"req_fake_{serial}",
                "body": payload,
            },
            "error": None,
        }
        (batch.output_lines if status == 200 else batch.error_lines).append(record)

    def statuses(self) -> list[int | None]:
        """The status each chat request was answered, in arrival order."""
        with self._lock:
            return [arrival.status for arrival in self.arrivals]

    def _draw(self) -> str:
        """The action of an unscripted request, by the random rates (under the lock)."""
        if not (self.error_rate or self.rate_limit_rate or self.truncate_rate):
            return "200"
        draw = self._random.random()
        if draw < self.error_rate:
            return "500"
        draw -= self.error_rate
        if draw < self.rate_limit_rate:
            return "429" if self.retry_after is None else f"{_RETRY_AFTER}{self.retry_after:g}"
        draw -= self.rate_limit_rate
        return "truncate" if draw < self.truncate_rate else "200"

    def _completion(self, body: dict[str, Any], serial: int) -> dict[str, Any]:
        answer = self.answer(body)
        messages = body.get("messages")
        chars = 0
        if isinstance(messages, list):
            chars = sum(
                len(content_text(m.get("content"))) for m in messages if isinstance(m, dict)
            )
        prompt_tokens = max(1, chars // 4)
        completion_tokens = max(1, len(answer) // 4)
        return {
            "id": f"chatcmpl-fake-{serial}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its FakeServer and its open connections."""

    daemon_threads = True
    request_queue_size = 1024  # the default backlog of 5 drops connects under concurrency
    fake: FakeServer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        """Shut down open connections so their handler threads see EOF and end."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that hang up; report anything else."""
        if isinstance(sys.exception(), OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: avoid a 40 ms stall
    server: _Server

    def setup(self) -> None:
        super().setup()
        self._gateway_headers: dict[str, str] = {}  # the gateway's, on a chat answer
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request logging."""

    # -- routing ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        models = self.server.fake.models
        with self.server.fake._lock:
            self.server.fake.gets.append(path)
        if not self._key_accepted():
            return
        if path.startswith("/v1/models/") and not self.server.fake.model_route:
            self._send_not_found()
            return
        if path == "/v1/models":
            self._send_json(200, {"object": "list", "data": models})
            return
        if path.startswith("/v1/models/"):
            model_id = unquote(path[len("/v1/models/") :])
            for model in models:
                if model.get("id") == model_id:
                    self._send_json(200, model)
                    return
            self._send_model_not_found(model_id)
            return
        if _is_batch_route(path):
            self._batch_get(path)
            return
        self._send_not_found()

    def do_POST(self) -> None:
        body_bytes = self._read_body()
        path = urlsplit(self.path).path.rstrip("/")
        if _is_batch_route(path):
            self._batch_post(path, body_bytes)
            return
        if path != "/v1/chat/completions":
            self._send_not_found()
            return
        try:
            body = json.loads(body_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._send_json(400, {"error": {"message": f"invalid JSON body: {exc}"}})
            return
        if not isinstance(body, dict):
            self._send_json(400, {"error": {"message": "the JSON body must be an object"}})
            return
        if not self._key_accepted():
            return
        fake = self.server.fake
        headers = {name.lower(): value for name, value in self.headers.items()}
        action, serial, arrival, extra = fake._record(body, headers, time.monotonic())
        if fake.latency > 0:
            time.sleep(fake.latency)
        self._gateway_headers = extra
        try:
            self._act(action, body, serial, arrival)
        finally:
            self._gateway_headers = {}

    def do_DELETE(self) -> None:
        self._read_body()
        path = urlsplit(self.path).path.rstrip("/")
        fake = self.server.fake
        parts = path.split("/")  # "", "v1", "files", ID
        if len(parts) != 4 or parts[2] != "files":
            self._send_not_found()
            return
        if not self._key_accepted():
            return
        if not fake.batch_routes:
            self._send_not_found()
            return
        self._send_json(*fake._delete_file(unquote(parts[3])))

    # -- batch routes ----------------------------------------------------------------------

    def _batch_get(self, path: str) -> None:
        """GET /v1/files, /v1/files/{id}, /v1/files/{id}/content, /v1/batches, /v1/batches/{id}."""
        fake = self.server.fake
        query = parse_qs(urlsplit(self.path).query)
        parts = [unquote(part) for part in path.split("/")[2:]]  # after "", "v1"
        if not fake.batch_routes:
            self._send_not_found()
        elif parts == ["files"]:
            self._send_json(200, fake._list_files(query))
        elif parts == ["batches"]:
            self._send_json(*fake._list_batches(query))
        elif len(parts) == 2 and parts[0] == "batches":
            self._send_json(*fake._poll_batch(parts[1]))
        elif len(parts) in (2, 3) and parts[0] == "files" and parts[2:] in ([], ["content"]):
            download = len(parts) == 3
            stored = fake._file(parts[1], download=download)
            if stored is None:
                self._send_json(404, _openai_error(f"No such File object: {parts[1]}", "file_id"))
            elif download:
                self._send_bytes(200, stored.data, content_type="application/octet-stream")
            else:
                self._send_json(200, stored.object())
        else:
            self._send_not_found()

    def _batch_post(self, path: str, body_bytes: bytes) -> None:
        """POST /v1/files, /v1/batches, /v1/batches/{id}/cancel."""
        fake = self.server.fake
        parts = [unquote(part) for part in path.split("/")[2:]]
        route = "upload" if parts == ["files"] else "create" if parts == ["batches"] else None
        if len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel":
            route = "cancel"
        with fake._batch_lock:
            if route == "upload":
                fake.uploads += 1
            elif route == "create":
                fake.creates += 1
        if not self._key_accepted():
            return
        if route is None or not fake.batch_routes:
            self._send_not_found()
        elif route == "cancel":
            self._send_json(*fake._cancel_batch(parts[1]))
        elif route == "upload":
            try:
                fields = parse_multipart(self.headers.get("Content-Type", ""), body_bytes)
            except ValueError as exc:
                self._send_json(400, _openai_error(str(exc)))
                return
            if self._hung_up_after(fake.upload_delay_s):
                with fake._batch_lock:
                    fake.abandoned_uploads += 1
                return
            self._send_json(*fake._upload(fields))
        else:
            self._create(body_bytes)

    def _create(self, body_bytes: bytes) -> None:
        """POST /v1/batches, with the crash hooks: the delay, and the dropped answer."""
        fake = self.server.fake
        try:
            body = json.loads(body_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._send_json(400, _openai_error(f"invalid JSON body: {exc}"))
            return
        if self._hung_up_after(fake.batch_create_delay_s):
            with fake._batch_lock:
                fake.abandoned_creates += 1
            return
        with fake._batch_lock:
            status, payload = fake._create_batch(body)
            drop = status == 200 and fake.batch_create_drop > 0
            if drop:
                fake.batch_create_drop -= 1
        if drop:
            self.close_connection = True  # created, never answered
            return
        self._send_json(status, payload)

    def _hung_up_after(self, delay_s: float) -> bool:
        """Sleep `delay_s` (if over 0), then whether the client has hung up meanwhile (then the
        connection is closed without an answer)."""
        if delay_s <= 0:
            return False
        time.sleep(delay_s)
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            gone = bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            gone = True
        if gone:
            self.close_connection = True
        return gone

    # -- actions ---------------------------------------------------------------------------

    def _act(self, action: str, body: dict[str, Any], serial: int, arrival: Arrival) -> None:
        model = str(body.get("model", ""))
        if action == "200":
            self._send_answer(body, serial, arrival)
        elif action == _GATEWAY_429:
            quota = self.server.fake.litellm_window[0] if self.server.fake.litellm_window else 0
            message = (
                "Rate limit exceeded for api_key: fake-key-hash. Limit type: requests. "
                f"Current limit: {quota}, Remaining: 0."
            )
            error = {"message": message, "type": "None", "param": "None", "code": "429"}
            self._send_json(429, {"error": error})
        elif action == "429" or action.startswith(_RETRY_AFTER):
            extra = {}
            if action.startswith(_RETRY_AFTER):
                extra["Retry-After"] = action[len(_RETRY_AFTER) :]
            if self.server.fake.ratelimit_headers:
                reset = extra.get("Retry-After", "1")
                extra.update(
                    {
                        "x-ratelimit-limit-requests": "60",
                        "x-ratelimit-remaining-requests": "0",
                        "x-ratelimit-reset-requests": f"{reset}s",
                    }
                )
            error = {
                "message": "Rate limit reached",
                "type": "requests",
                "code": "rate_limit_exceeded",
            }
            self._send_json(429, {"error": error}, extra)
        elif action in ("500", "503"):
            self._send_json(int(action), {"error": {"message": "upstream failure"}})
        elif action == "401":
            payload = _oxen_error("unauthenticated", "Unauthenticated", "Invalid API key")
            self._send_json(401, payload)
        elif action == "403":
            self._send_json(403, {"error": {"message": "Forbidden: key lacks access"}})
        elif action == "404":
            self._send_model_not_found(model)
        elif action == "400":
            payload = _oxen_error("invalid_params", "Invalid Params", "temperature must be <= 2")
            self._send_json(400, payload)
        elif action == "drop":
            self.close_connection = True
        elif action == "down":
            self.close_connection = True
            threading.Thread(target=self.server.fake._go_down, daemon=True).start()
        elif action == "truncate":
            full = json.dumps(self.server.fake._completion(body, serial)).encode()
            self._send_bytes(200, full[: len(full) // 2])
        elif action == "nochoices":
            self._send_json(200, {"id": "x", "object": "chat.completion"})
        else:  # pragma: no cover - actions are checked when scripted
            raise AssertionError(f"unhandled action {action!r}")

    def _send_answer(self, body: dict[str, Any], serial: int, arrival: Arrival) -> None:
        try:
            payload = self.server.fake._completion(body, serial)
        except Exception as exc:  # a broken test callback must show, not hang the client
            arrival.status = 500
            message = f"fake server answer() raised {type(exc).__name__}: {exc}"
            self._send_json(500, {"error": {"message": message}})
            return
        self._send_json(200, payload)

    def _key_accepted(self) -> bool:
        """With `require_key` set, anything but that bearer key gets a 401 (and False)."""
        key = self.server.fake.require_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        payload = _oxen_error("unauthenticated", "Unauthenticated", "Invalid API key")
        self._send_json(401, payload)
        return False

    # -- wire helpers ----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_not_found(self) -> None:
        detail = f"No route for {self.command} {urlsplit(self.path).path}"
        self._send_json(404, _oxen_error("resource_not_found", "Not Found", detail))

    def _send_model_not_found(self, model: str) -> None:
        detail = f"Model '{model}' not found"
        self._send_json(404, _oxen_error("resource_not_found", "Not Found", detail))

    def _send_json(
        self, status: int, payload: Any, extra_headers: dict[str, str] | None = None
    ) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), extra_headers)

    def _send_bytes(
        self,
        status: int,
        data: bytes,
        extra_headers: dict[str, str] | None = None,
        *,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in {**self._gateway_headers, **(extra_headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _is_batch_route(path: str) -> bool:
    """Whether a path is one of the Files or Batches routes (or under them)."""
    return any(path == root or path.startswith(root + "/") for root in ("/v1/files", "/v1/batches"))


def _rate(text: str) -> float:
    """A share of requests, 0 to 1."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1, got {text}")
    return value


def _window(text: str) -> tuple[int, float]:
    """A gateway window, QUOTA/SECONDS (e.g. 600/60)."""
    quota, _, seconds = text.partition("/")
    try:
        window = int(quota), float(seconds or "60")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected QUOTA/SECONDS, e.g. 600/60, got {text}"
        ) from None
    if window[0] < 1 or window[1] <= 0:
        raise argparse.ArgumentTypeError(f"expected a quota >= 1 and seconds > 0, got {text}")
    return window


def _states(text: str) -> list[str]:
    """A batch script, comma-separated statuses."""
    try:
        return check_batch_states([state.strip() for state in text.split(",")])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground until interrupted; prints the base URL first."""
    parser = argparse.ArgumentParser(
        description="Serve a fake OpenAI-compatible API on 127.0.0.1 in the foreground "
        "(GET /v1/models, GET /v1/models/ID, POST /v1/chat/completions, answering "
        "'echo: ' + the last message; the Files and Batches routes of the Batch API), with "
        "failures drawn at random rates. The first line printed is 'fake server listening on "
        "URL'; Ctrl-C stops it.",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        metavar="N",
        help="port (default 0: any free port; 8787 is the local model's)",
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, metavar="S", help="seconds before each answer"
    )
    parser.add_argument(
        "--error-rate", type=_rate, default=0.0, metavar="SHARE", help="share of 500 answers"
    )
    parser.add_argument(
        "--rate-limit-rate", type=_rate, default=0.0, metavar="SHARE", help="share of 429 answers"
    )
    parser.add_argument(
        "--retry-after", type=float, metavar="S", help="a Retry-After header on those 429s"
    )
    parser.add_argument(
        "--ratelimit-headers",
        action="store_true",
        help="x-ratelimit-{limit,remaining,reset}-requests headers on every 429",
    )
    parser.add_argument(
        "--truncate-rate",
        type=_rate,
        default=0.0,
        metavar="SHARE",
        help="share of 200s whose body stops half-way",
    )
    parser.add_argument(
        "--down-after", type=int, metavar="N", help="answer N chat requests, then go down for good"
    )
    parser.add_argument(
        "--no-model-route",
        action="store_true",
        help="answer 404 to GET /v1/models/ID, as llama.cpp's server does",
    )
    parser.add_argument(
        "--seed", type=int, metavar="N", help="seed of the random draws (default: random)"
    )
    parser.add_argument(
        "--litellm-window",
        type=_window,
        metavar="QUOTA/SECONDS",
        help="a LiteLLM proxy's per-key fixed window in front of the model, e.g. 600/60: "
        "x-ratelimit-api_key-{limit,remaining}-requests on answers, a 429 with retry-after "
        "SECONDS over the quota",
    )
    parser.add_argument(
        "--litellm-used",
        type=int,
        default=0,
        metavar="N",
        help="with --litellm-window: N of the quota already spent when the first request comes",
    )
    parser.add_argument(
        "--litellm-resets-in",
        type=float,
        metavar="S",
        help="with --litellm-window: the window under way ends S seconds after the first request",
    )
    parser.add_argument(
        "--no-batch-routes",
        action="store_true",
        help="answer 404 on /v1/files and /v1/batches, as a server without a batch API",
    )
    parser.add_argument(
        "--batch-states",
        type=_states,
        default=list(DEFAULT_BATCH_STATES),
        metavar="S,S,...",
        help="each batch's statuses: the create's, then one more per GET; the last is final "
        f"(default {','.join(DEFAULT_BATCH_STATES)})",
    )
    parser.add_argument(
        "--batch-partial",
        type=_rate,
        default=0.5,
        metavar="SHARE",
        help="share of a batch's lines answered when it ends expired or cancelled (default 0.5)",
    )
    parser.add_argument(
        "--batch-fail",
        action="append",
        default=[],
        metavar="TEXT",
        help="batch lines whose last message contains TEXT fail with a 400 (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.error_rate + args.rate_limit_rate + args.truncate_rate > 1:
        parser.error("--error-rate, --rate-limit-rate and --truncate-rate add up to more than 1")
    try:
        server = FakeServer(
            latency=args.latency,
            port=args.port,
            seed=args.seed,
            litellm_window=args.litellm_window,
            litellm_used=args.litellm_used,
            litellm_resets_in=args.litellm_resets_in,
            batch_routes=not args.no_batch_routes,
            batch_states=args.batch_states,
            batch_partial=args.batch_partial,
            batch_fail=args.batch_fail or None,
        )
    except ValueError as exc:
        parser.error(str(exc))
    server.error_rate = args.error_rate
    server.rate_limit_rate = args.rate_limit_rate
    server.truncate_rate = args.truncate_rate
    server.retry_after = args.retry_after
    server.ratelimit_headers = args.ratelimit_headers
    server.model_route = not args.no_model_route
    if args.down_after is not None:
        server.down_after(args.down_after)
    server.start()
    print(f"fake server listening on {server.base_url}", flush=True)
    try:
        server.went_down.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
