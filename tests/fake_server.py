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

Run `python tests/fake_server.py --help` to serve in the foreground, with the same behaviours.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

Action = str | int
Answer = Callable[[dict[str, Any]], str]

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


@dataclass
class Arrival:
    """One chat request: when it arrived (`time.monotonic()`, before any latency) and the
    status it was answered (None: no answer, the connection was dropped or the server went
    down)."""

    at: float
    status: int | None


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
        self._send_not_found()

    def do_POST(self) -> None:
        body_bytes = self._read_body()
        path = urlsplit(self.path).path.rstrip("/")
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
        self, status: int, data: bytes, extra_headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in {**self._gateway_headers, **(extra_headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


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


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground until interrupted; prints the base URL first."""
    parser = argparse.ArgumentParser(
        description="Serve a fake OpenAI-compatible API on 127.0.0.1 in the foreground "
        "(GET /v1/models, GET /v1/models/ID, POST /v1/chat/completions, answering "
        "'echo: ' + the last message), with failures drawn at random rates. The first "
        "line printed is 'fake server listening on URL'; Ctrl-C stops it.",
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
