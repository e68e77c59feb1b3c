"""A fast OpenAI-compatible mock for `scripts/bench.py` (aiohttp.web, one process, CPU 1).

POST /v1/chat/completions answers `"ans:" + sha1(last user message)[:12]` after `--latency`
seconds, with usage prompt_tokens = characters of all messages // 4 (at least 1) and
completion_tokens = 4. GET /v1/models and /v1/models/{id} serve any model name (so the
client's preflight passes). GET /stats returns the counters; SIGTERM/SIGINT writes them to
`--stats` and exits.

Per-second series in the stats, second 0 starting at the first request: `admitted_per_s`
(requests let through the limit, by arrival second), `rate_limited_per_s` (429s, by arrival),
`ok_per_s` (full 200 answers, by the second they are sent) and `tokens_per_s` (usage
prompt_tokens + completion_tokens of each full 200 answer, by the request's arrival second, so
it lines up with `admitted_per_s`); `tokens` is that series' total. A truncated 200 (error
injection) is not counted in `ok_per_s`, `tokens_per_s` or `tokens`.

Rate limit (`--rpm`/`--tpm`): a sliding window of `--window` seconds admits at most
rpm * window / 60 requests and tpm * window / 60 tokens; a request is charged
prompt_tokens + its `max_tokens` (or `max_completion_tokens`; 4 when it sets neither), at
arrival, before the latency. Over the limit: 429 at once. With `--headers` every 200 and 429
carries OpenAI-style `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` as of the
request's arrival: limit is per minute, remaining is what the window would admit now, reset
is when the window is empty again ("1.2s", "350ms"); the 429 adds `retry-after` (whole
seconds, rounded up, as HTTP wants) and `retry-after-ms` (exact) for when enough of the
window frees. `--no-headers` sends a bare 429 with `{"error": {"message": "rate limited"}}`
and nothing else.

Error injection (`--error-rate-5xx`, `--drop-rate`, `--truncate-rate`) draws from a seeded
generator, one draw per admitted request: 500/503 alternating, a closed connection with no
answer, or a 200 whose body is the first half of the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from array import array
from collections import deque
from pathlib import Path
from typing import Any

from aiohttp import web

SERVER_CPU = 1
MAX_SECONDS = 6 * 3600.0  # the server stops by itself after this, whatever happens
COMPLETION_TOKENS = 4
MODEL = "bench-model"
JSON_TYPE = "application/json"
ERROR_5XX = json.dumps({"error": {"message": "injected server error"}}).encode()
ERROR_429 = json.dumps({"error": {"message": "rate limited"}}).encode()


def answer_for(content: str) -> str:
    """The deterministic answer to a user message."""
    return "ans:" + hashlib.sha1(content.encode()).hexdigest()[:12]


def format_reset(seconds: float) -> str:
    """OpenAI's reset format: `350ms`, `1.2s`, `6m0s`."""
    if seconds < 1.0:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60.0:
        return f"{seconds:.1f}s".replace(".0s", "s")
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{int(rest)}s"


class Window:
    """Sliding-window admission of requests and tokens."""

    def __init__(self, rpm: float | None, tpm: float | None, window: float) -> None:
        self.rpm, self.tpm, self.window = rpm, tpm, window
        self.max_requests = rpm * window / 60.0 if rpm else math.inf
        self.max_tokens = tpm * window / 60.0 if tpm else math.inf
        self.entries: deque[tuple[float, int]] = deque()
        self.tokens = 0

    def _expire(self, now: float) -> None:
        entries, edge = self.entries, now - self.window
        while entries and entries[0][0] <= edge:
            self.tokens -= entries.popleft()[1]

    def admit(self, now: float, tokens: int) -> bool:
        """Count the request in the window if it fits."""
        self._expire(now)
        if len(self.entries) + 1 > self.max_requests or self.tokens + tokens > self.max_tokens:
            return False
        self.entries.append((now, tokens))
        self.tokens += tokens
        return True

    def wait_s(self, now: float, tokens: int) -> float:
        """Seconds until a request of `tokens` would fit."""
        need_requests = len(self.entries) + 1 - self.max_requests
        need_tokens = self.tokens + tokens - self.max_tokens
        freed_tokens, until = 0, now
        for freed_requests, (when, used) in enumerate(self.entries):
            if freed_requests >= need_requests and freed_tokens >= need_tokens:
                break
            freed_tokens += used
            until = when + self.window
        return max(0.0, until - now)

    def headers(self, now: float) -> dict[str, str]:
        """OpenAI-style `x-ratelimit-*` headers for the window as it is now."""
        reset = format_reset(self.entries[-1][0] + self.window - now if self.entries else 0.0)
        out: dict[str, str] = {}
        if self.rpm:
            left = max(0, math.floor(self.max_requests - len(self.entries)))
            out["x-ratelimit-limit-requests"] = str(int(self.rpm))
            out["x-ratelimit-remaining-requests"] = str(left)
            out["x-ratelimit-reset-requests"] = reset
        if self.tpm:
            left = max(0, math.floor(self.max_tokens - self.tokens))
            out["x-ratelimit-limit-tokens"] = str(int(self.tpm))
            out["x-ratelimit-remaining-tokens"] = str(left)
            out["x-ratelimit-reset-tokens"] = reset
        return out


class Mock:
    """The request handler and its counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.latency: float = args.latency
        self.send_headers: bool = args.headers
        self.window = Window(args.rpm, args.tpm, args.window) if args.rpm or args.tpm else None
        self.rng = random.Random(args.seed)
        self.p5xx: float = args.error_rate_5xx
        self.pdrop: float = self.p5xx + args.drop_rate
        self.ptrunc: float = self.pdrop + args.truncate_rate
        self.inject = self.ptrunc > 0
        self.track: bool = args.track
        self.loop = asyncio.get_running_loop()
        self.t0 = 0.0  # loop time of the first request
        self.t_last = 0.0
        self.wall0 = 0.0
        self.cpu0 = 0.0
        self.requests = self.ok = self.limited = self.errors = self.drops = self.truncated = 0
        self.admitted_per_s: list[int] = []
        self.ok_per_s: list[int] = []
        self.limited_per_s: list[int] = []
        self.tokens_per_s: list[int] = []
        self.tokens = 0
        self.answered = array("q")  # hash of each message answered 200, for distinct/twice

    def _second(self, series: list[int], now: float, count: int = 1) -> None:
        index = int(now - self.t0)
        if index >= len(series):
            series.extend([0] * (index + 1 - len(series)))
        series[index] += count

    async def complete(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        now = self.loop.time()
        if not self.requests:
            self.t0, self.wall0, self.cpu0 = now, time.time(), time.process_time()
        self.requests += 1
        self.t_last = now
        body = json.loads(await request.read())
        messages = body["messages"]
        content = ""
        chars = 0
        for message in messages:
            text = message.get("content") or ""
            if not isinstance(text, str):  # content parts: count and answer the text parts
                text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
            chars += len(text)
            if message.get("role") == "user":
                content = text
        prompt = max(1, chars // 4)
        headers: dict[str, str] | None = None
        window = self.window
        if window is not None:
            charged = prompt + int(
                body.get("max_tokens") or body.get("max_completion_tokens") or COMPLETION_TOKENS
            )
            if not window.admit(now, charged):
                self.limited += 1
                self._second(self.limited_per_s, now)
                if not self.send_headers:
                    return web.Response(status=429, body=ERROR_429, content_type=JSON_TYPE)
                wait = window.wait_s(now, charged)
                headers = window.headers(now)
                headers["retry-after"] = str(max(1, math.ceil(wait)))
                headers["retry-after-ms"] = str(math.ceil(wait * 1000))
                return web.Response(
                    status=429, body=ERROR_429, content_type=JSON_TYPE, headers=headers
                )
            if self.send_headers:
                headers = window.headers(now)
        self._second(self.admitted_per_s, now)
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if self.inject:
            draw = self.rng.random()
            if draw < self.ptrunc:
                return self._fault(request, draw, body, content, prompt, headers)
        answer = self._answer(body, content, prompt)
        self.ok += 1
        self._second(self.ok_per_s, self.loop.time())
        used = prompt + COMPLETION_TOKENS  # the usage `_answer` reports
        self.tokens += used
        self._second(self.tokens_per_s, now, used)
        if self.track:
            self.answered.append(hash(content))
        return web.Response(body=answer, content_type=JSON_TYPE, headers=headers)

    def _answer(self, body: dict[str, Any], content: str, prompt: int) -> bytes:
        model = json.dumps(body.get("model", "bench"))
        return (
            '{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":'
            f'{model},"choices":[{{"index":0,"message":{{"role":"assistant","content":'
            f'"{answer_for(content)}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":'
            f'{prompt},"completion_tokens":{COMPLETION_TOKENS},"total_tokens":'
            f"{prompt + COMPLETION_TOKENS}}}}}"
        ).encode()

    def _fault(
        self,
        request: web.Request,
        draw: float,
        body: dict[str, Any],
        content: str,
        prompt: int,
        headers: dict[str, str] | None,
    ) -> web.StreamResponse:
        if draw < self.p5xx:
            self.errors += 1
            status = 500 if self.errors % 2 else 503
            return web.Response(status=status, body=ERROR_5XX, content_type=JSON_TYPE)
        if draw < self.pdrop:
            self.drops += 1
            request.protocol.force_close()  # closes the socket: nothing reaches the client
            return web.Response(status=200)
        self.truncated += 1
        full = self._answer(body, content, prompt)
        return web.Response(body=full[: len(full) // 2], content_type=JSON_TYPE, headers=headers)

    def stats(self) -> dict[str, Any]:
        """The counters as one JSON-able object."""
        cpu = time.process_time() - self.cpu0 if self.requests else 0.0  # before pyarrow loads
        distinct = twice = 0
        if len(self.answered):
            import pyarrow as pa  # a dependency of the project; numpy may not be installed
            import pyarrow.compute as pc

            data = pa.py_buffer(bytes(self.answered))  # a copy: `answered` may grow later
            hashes = pa.Array.from_buffers(pa.int64(), len(data) // 8, [None, data])
            counts = pc.value_counts(hashes).field("counts")
            distinct, twice = len(counts), int(pc.sum(pc.greater(counts, 1)).as_py() or 0)
        window = self.window
        return {
            "requests": self.requests,
            "ok": self.ok,
            "rate_limited": self.limited,
            "errors_5xx": self.errors,
            "drops": self.drops,
            "truncated": self.truncated,
            "distinct_answered": distinct if self.track else None,
            "answered_twice": twice if self.track else None,
            "first_request": self.wall0 if self.requests else None,
            "last_request": self.wall0 + (self.t_last - self.t0) if self.requests else None,
            "span_s": self.t_last - self.t0,
            "cpu_s": cpu,
            "admitted_per_s": self.admitted_per_s,
            "ok_per_s": self.ok_per_s,
            "rate_limited_per_s": self.limited_per_s,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
            "limit": None
            if window is None
            else {"rpm": window.rpm, "tpm": window.tpm, "window_s": window.window},
        }

    async def get_stats(self, request: web.Request) -> web.Response:
        """GET /stats."""
        return web.json_response(self.stats())

    async def models(self, request: web.Request) -> web.Response:
        """GET /v1/models: the one model, whatever name the client uses."""
        return web.json_response({"object": "list", "data": [model_object(MODEL)]})

    async def model(self, request: web.Request) -> web.Response:
        """GET /v1/models/{id}: every id is served (no pricing, no request schema)."""
        return web.json_response(model_object(request.match_info["id"]))


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "owned_by": "bench"}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)


async def serve(args: argparse.Namespace) -> None:
    """Listen until SIGTERM/SIGINT (or MAX_SECONDS), then write the stats."""
    mock = Mock(args)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", mock.complete)
    app.router.add_get("/stats", mock.get_stats)
    app.router.add_get("/v1/models", mock.models)
    app.router.add_get("/v1/models/{id:.+}", mock.model)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.ready:
        write_json(Path(args.ready), {"port": port, "pid": os.getpid()})
    print(f"ready on 127.0.0.1:{port}", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    except TimeoutError:
        print("stopping: --max-seconds reached", file=sys.stderr)
    if args.stats:
        write_json(Path(args.stats), mock.stats())
    await runner.cleanup()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (see --ready)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--rpm", type=float, help="requests per minute (sliding window)")
    parser.add_argument("--tpm", type=float, help="tokens per minute (sliding window)")
    parser.add_argument("--window", type=float, default=10.0, help="window seconds")
    parser.add_argument("--headers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--error-rate-5xx", type=float, default=0.0)
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--truncate-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--track",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="remember answered messages (8 bytes each) for the distinct/twice counts",
    )
    parser.add_argument("--stats", help="write the stats JSON here on exit")
    parser.add_argument("--ready", help="write {port, pid} here once listening")
    parser.add_argument("--cpu", type=int, default=SERVER_CPU, help="CPU to pin to (-1: none)")
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
