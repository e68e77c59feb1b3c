"""Raw reference clients for `scripts/bench.py`: the least a Python client can do per row.

`python scripts/bench_raw.py {httpx,aiohttp} --url URL --input CSV [--concurrency 64]` sends
one chat-completions request per row (column `text`), 64 at a time under a semaphore, checks
each answer against the mock's deterministic answer and prints one JSON line: rows, ok, lost,
wrong, seconds. No retries, no store, no output file.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

CLIENT_CPU = 0
MODEL = "bench-model"
MAX_TOKENS = 16
TIMEOUT_S = 60.0

Post = Callable[[dict[str, Any]], Awaitable[str]]


def expected(text: str) -> str:
    return "ans:" + hashlib.sha1(text.encode()).hexdigest()[:12]


async def drive(texts: list[str], post: Post, concurrency: int) -> dict[str, int]:
    """Send every row through `post` under a semaphore; count right, wrong and lost answers."""
    gate = asyncio.Semaphore(concurrency)
    counts = {"ok": 0, "wrong": 0, "lost": 0}

    async def one(text: str) -> None:
        messages = [{"role": "user", "content": text}]
        body = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS}
        async with gate:
            try:
                raw = await post(body)
                answer = json.loads(raw)["choices"][0]["message"]["content"].strip()
            except Exception:
                counts["lost"] += 1
                return
        counts["ok" if answer == expected(text) else "wrong"] += 1

    await asyncio.gather(*(one(text) for text in texts))
    return counts


async def with_httpx(url: str, texts: list[str], concurrency: int) -> dict[str, int]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT_S) as client:

        async def post(body: dict[str, Any]) -> str:
            response = await client.post(url, json=body)
            response.raise_for_status()
            return response.text

        return await drive(texts, post, concurrency)


async def with_aiohttp(url: str, texts: list[str], concurrency: int) -> dict[str, int]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(body: dict[str, Any]) -> str:
            async with session.post(url, json=body) as response:
                response.raise_for_status()
                return await response.text()

        return await drive(texts, post, concurrency)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("client", choices=["httpx", "aiohttp"])
    parser.add_argument("--url", required=True, help="the full chat/completions URL")
    parser.add_argument("--input", required=True, help="CSV with a `text` column")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--cpu", type=int, default=CLIENT_CPU, help="CPU to pin to (-1: none)")
    args = parser.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    with Path(args.input).open(newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    run = with_httpx if args.client == "httpx" else with_aiohttp
    started = time.perf_counter()
    counts = asyncio.run(run(args.url, texts, args.concurrency))
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": len(texts), **counts, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
