"""The Ray worker's protocol without Ray: requests in, events out, a slot freed only by an ack.

The worker is plain Python; here its ledger is a `budget.Ledger` in this process and its
endpoint the scripted server, so what the driver relies on is checked directly.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import polars as pl
from e2e import write_config
from fake_server import FakeServer

from pipeline.budget import Grant, Ledger, Report
from pipeline.configfile import load
from pipeline.rayworker import DONE, FINAL, PUT, Drained, Worker
from pipeline.records import OK, PENDING, Request
from pipeline.triage import Work


class LocalLedger:
    """A ledger reached as a Ray actor handle is: `lease.remote(...)` is awaited."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.lease = self

    async def remote(self, want: int, tokens: int, report: Report) -> Grant:
        return self.ledger.lease(want, tokens, report)


def work(text: str) -> Work:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": text}]}
    return (Request(f"key-{text}", json.dumps(body).encode(), 10), 0, None)


def worker(folder: Path, server: FakeServer, share: int, **output: Any) -> Worker:
    pl.DataFrame({"text": ["x"]}).write_csv(folder / "in.csv")
    config = load(write_config(folder, server.base_url, output=output))
    return Worker(config, "worker-key", None, share, LocalLedger())


async def drain_until(w: Worker, acked: int, kinds: int) -> list[Drained]:
    """Polls (acking nothing new) until `kinds` events came back; bounded."""
    polls: list[Drained] = []
    for _ in range(200):
        polls.append(await w.drain(acked, 0.05))
        if sum(len(p.events) for p in polls) >= kinds:
            return polls
    raise AssertionError(f"only {sum(len(p.events) for p in polls)} events of {kinds}")


def test_one_event_per_answer_and_a_slot_waits_for_its_ack(tmp_path: Path) -> None:
    async def scenario() -> None:
        with FakeServer() as server:
            w = worker(tmp_path, server, share=1)
            await w.take([work("a"), work("b")])
            first = await drain_until(w, 0, 1)
            await asyncio.sleep(0.2)  # b may not go out: a's answer is not stored yet
            assert server.count == 1
            events = [e for p in first for e in p.events]
            assert [(kind, r.key, r.status) for _, kind, r in events] == [(FINAL, "key-a", OK)]
            assert events[0][2].answer == "echo: a"
            second = await drain_until(w, events[-1][0], 1)  # the ack frees the slot
            assert server.count == 2
            (_, kind, result), *_ = [e for p in second for e in p.events]
            assert (kind, result.key) == (FINAL, "key-b")
            spent = sum(p.counters.requests_sent for p in first + second)
            assert spent == 2 and not any(p.stop_reason for p in first + second)
            assert server.headers[0]["authorization"] == "Bearer worker-key"
            await w.close()

    asyncio.run(scenario())


def test_re_asks_are_stored_one_by_one_before_the_rows_get_the_last(tmp_path: Path) -> None:
    async def scenario() -> None:
        answers = iter(["maybe", "perhaps", "yes"])
        with FakeServer(answer=lambda body: next(answers)) as server:
            w = worker(
                tmp_path, server, share=2, parse="label", labels=["yes", "no"], retry_invalid=2
            )
            await w.take([work("a")])
            seen: list[tuple[int, str, Any]] = []
            acked = 0
            for _ in range(200):
                polled = await w.drain(acked, 0.05)
                seen += polled.events
                acked = seen[-1][0] if seen else 0
                if any(kind == DONE for _, kind, _ in seen):
                    break
            kinds = [kind for _, kind, _ in seen]
            assert kinds == [PUT, PUT, PUT, DONE]
            assert [r.answer for _, _, r in seen[:3]] == ["maybe", "perhaps", "yes"]
            assert len({r.key for _, _, r in seen[:3]}) == 3  # each re-ask under its own key
            assert seen[-1][2].key == "key-a" and seen[-1][2].answer == "yes"
            await w.close()

    asyncio.run(scenario())


def test_stop_ends_what_is_queued_pending(tmp_path: Path) -> None:
    async def scenario() -> None:
        with FakeServer(latency=0.2) as server:
            w = worker(tmp_path, server, share=1)
            await w.take([work(t) for t in "abc"])
            await asyncio.sleep(0.05)
            w.stop("the driver stops")
            polls = await drain_until(w, 10**6, 3)
            results = {r.key: r.status for p in polls for _, _, r in p.events}
            assert results["key-b"] == results["key-c"] == PENDING
            assert polls[-1].stop_reason == "the driver stops"
            await w.close()

    asyncio.run(scenario())


def test_close_answers_a_waiting_poll_at_once_and_the_two_hand_over_every_request(
    tmp_path: Path,
) -> None:
    """The driver takes both the poll in flight at the stop and what close hands back:
    between them, every request the worker sent is counted once, those cut off included."""

    async def scenario() -> None:
        with FakeServer(latency=5) as server:
            w = worker(tmp_path, server, share=2)
            await w.take([work(t) for t in "abc"])
            for _ in range(200):  # two requests in flight, held by the server
                if server.count == 2:
                    break
                await asyncio.sleep(0.01)
            waiting = asyncio.ensure_future(w.drain(0, 30))  # a long poll, in flight
            await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            began = loop.time()
            last = await w.close()
            polled = await asyncio.wait_for(waiting, 5)
            assert loop.time() - began < 3  # not the poll's 30 s, nor the server's 5
            polls = [polled, last]
            assert sum(p.counters.requests_sent for p in polls) == server.count == 2
            results = {r.key: r.status for p in polls for _, _, r in p.events}
            assert results == {"key-a": PENDING, "key-b": PENDING}  # c was never sent

    asyncio.run(scenario())
