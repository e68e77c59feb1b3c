"""Through the CLI against a LiteLLM-style gateway: a per-key fixed window of 600 requests
per 60 s, told in `x-ratelimit-api_key-*-requests` headers, 429 with `retry-after: 60` over it.

The bounds here are ones a slower machine can only meet more easily: counts of requests in
a stretch of time (a slow client sends fewer), spacings that must be at least so long (a slow
client spaces them more), and a resume that must come well inside the 60 s the server asks.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import polars as pl
from e2e import run_cli, write_config
from fake_server import Arrival, FakeServer

QUOTA = 600  # per 60 s window: 10 requests a second
WINDOW_S = 60.0
PACED_S = WINDOW_S / QUOTA  # 0.1 s between requests at the gateway's rate


def make_table(folder: Path, rows: int) -> None:
    pl.DataFrame({"id": range(rows), "text": [f"row-{i}" for i in range(rows)]}).write_csv(
        folder / "in.csv"
    )


def config(folder: Path, base_url: str, concurrency: int) -> Path:
    run = {"concurrency": concurrency, "max_retries": 4, "timeout_s": 10}
    return write_config(folder, base_url, run=run)


def answers(folder: Path) -> list[str]:
    return list(pl.read_parquet(folder / "out/answers.parquet")["answer"])


def by_time(server: FakeServer) -> list[Arrival]:
    # Arrival times are taken before the server's lock: the list may be out of order by a hair.
    return sorted(server.arrivals, key=lambda arrival: arrival.at)


def chat(client: httpx.Client, text: str) -> httpx.Response:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": text}]}
    return client.post("/chat/completions", json=body)


# -- the fake gateway itself --------------------------------------------------------------------


def test_fake_gateway_counts_a_fixed_window_and_says_so_in_headers() -> None:
    with (
        FakeServer(litellm_window=(3, 1.0)) as server,
        httpx.Client(base_url=server.base_url, timeout=5) as client,
    ):
        first = [chat(client, f"q{i}") for i in range(4)]
        assert [r.status_code for r in first] == [200, 200, 200, 429]
        assert [r.headers["x-ratelimit-api_key-limit-requests"] for r in first[:3]] == ["3"] * 3
        left = [r.headers["x-ratelimit-api_key-remaining-requests"] for r in first[:3]]
        assert left == ["2", "1", "0"]
        refused = first[3]
        assert refused.headers["retry-after"] == "1"
        assert not any("ratelimit" in name.lower() for name in refused.headers)
        assert refused.json()["error"]["code"] == "429"
        assert "Rate limit exceeded" in refused.json()["error"]["message"]
        # The window began with the first request and ends a second later; the next request
        # begins a new one.
        while server.arrivals[0].at + 1.0 > time.monotonic():
            time.sleep(0.05)
        again = chat(client, "later")
        assert again.status_code == 200
        assert again.headers["x-ratelimit-api_key-remaining-requests"] == "2"
        assert again.json()["choices"][0]["message"]["content"] == "echo: later"
        assert server.statuses() == [200, 200, 200, 429, 200]
        assert server.count == 5


def test_fake_gateway_can_start_in_a_window_someone_else_spent() -> None:
    with (
        FakeServer(litellm_window=(5, 60.0), litellm_used=4, litellm_resets_in=0.5) as server,
        httpx.Client(base_url=server.base_url, timeout=5) as client,
    ):
        one = chat(client, "a")
        assert one.status_code == 200
        assert one.headers["x-ratelimit-api_key-remaining-requests"] == "0"
        refused = chat(client, "b")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "60"
        while server.arrivals[0].at + 0.5 > time.monotonic():
            time.sleep(0.05)
        fresh = chat(client, "c")
        assert fresh.status_code == 200
        assert fresh.headers["x-ratelimit-api_key-remaining-requests"] == "4"
        assert server.statuses() == [200, 429, 200]


# -- the CLI against it -------------------------------------------------------------------------


def test_a_fresh_gateway_budget_is_paced_from_the_first_answer(tmp_path: Path) -> None:
    rows, concurrency = 60, 16
    make_table(tmp_path, rows)
    with FakeServer(litellm_window=(QUOTA, WINDOW_S)) as server:
        ran = run_cli("run", str(config(tmp_path, server.base_url, concurrency)), timeout=120)
        arrivals = by_time(server)
    assert ran.code == 0, ran.stderr
    assert answers(tmp_path) == [f"echo: row-{i}" for i in range(rows)]
    assert [a.status for a in arrivals] == [200] * rows  # no 429, no retry
    times = [a.at for a in arrivals]
    # Before the first answer the run knows no budget: up to `concurrency` go out at once.
    # From that answer on the gateway's 600/min is paced, the opening burst charged to it, so
    # the first second holds that burst and at most ~10 more (none, if the burst is charged).
    first_second = sum(t < times[0] + 1.0 for t in times)
    assert first_second <= concurrency + 10 + 2, _timeline(arrivals)
    # After the burst, requests leave ~0.1 s apart (600/min less the limiter's margin); a
    # slow machine spaces them more, never less.
    later = times[concurrency:]
    mean_gap = (later[-1] - later[0]) / (len(later) - 1)
    assert mean_gap >= 0.9 * PACED_S, _timeline(arrivals)


def test_a_window_someone_else_spent_resumes_at_its_reset_not_after_retry_after(
    tmp_path: Path,
) -> None:
    rows, concurrency = 40, 4
    make_table(tmp_path, rows)
    # 590 of the 600 already used by another client; the window resets 3 s after our first
    # request. The 11th request gets a 429 with `retry-after: 60`: the whole window, which
    # says nothing of when this window ends.
    gateway = FakeServer(litellm_window=(QUOTA, WINDOW_S), litellm_used=590, litellm_resets_in=3)
    with gateway as server:
        ran = run_cli("run", str(config(tmp_path, server.base_url, concurrency)), timeout=120)
        arrivals = by_time(server)
    assert ran.code == 0, ran.stderr
    assert answers(tmp_path) == [f"echo: row-{i}" for i in range(rows)]
    statuses = [a.status for a in arrivals]
    assert statuses.count(200) == rows
    refused = [a.at for a in arrivals if a.status == 429]
    assert refused, _timeline(arrivals)
    # Each 429 is a probe for the reset (1, 2, 4 s apart) or a worker already queued: few.
    assert len(refused) <= 20, _timeline(arrivals)
    first_429 = refused[0]
    resumed = next(a.at for a in arrivals if a.at > first_429 and a.status == 200)
    # The reset comes ~2-3 s after the first 429 and the probes find it within ~4 s more. A
    # run that honoured the 60 s retry-after would resume only 60 s after; 30 s leaves a
    # slow machine 20+ s of slack while still telling the two apart.
    assert resumed - first_429 < 30.0, _timeline(arrivals)
    assert "429" in ran.stderr
    assert "rate-limit pause" in ran.stderr, ran.stderr


def _timeline(arrivals: list[Arrival]) -> str:
    """The arrivals as `+seconds:status`, from the first, for a failure's message."""
    if not arrivals:
        return "no requests arrived"
    start = arrivals[0].at
    return " ".join(f"+{a.at - start:.2f}:{a.status}" for a in arrivals)
