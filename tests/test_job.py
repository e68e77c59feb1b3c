"""The core where it lives: triage, the dispatcher and the Job, in process, with fakes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.config import Config
from pipeline.dispatch import Dispatcher
from pipeline.job import Job
from pipeline.records import FAILED, OK, PENDING, Request, Result
from pipeline.render import Renderer
from pipeline.sender import Counters
from pipeline.store import Store
from pipeline.summary import Summary
from pipeline.triage import triage


def request(key: str) -> Request:
    return Request(key, b"{}", 1)


# -- triage ------------------------------------------------------------------------------


def test_triage_never_sends_what_the_store_answered() -> None:
    requests = {k: request(k) for k in ("stored", "reask", "failed", "flying", "new")}
    stored = {
        "stored": (Result("stored", OK, answer="a"), None),
        "reask": (Result("reask", OK, answer="?"), 1),
    }
    plan = triage(
        requests,
        stored,
        {"failed": Result("failed", FAILED, error="e")},
        {"flying"},
        sending=True,
    )
    assert set(plan.settled) == {"stored", "failed"} and plan.from_store == ["stored"]
    assert [(w[0].key, w[1]) for w in plan.send] == [("reask", 1), ("new", 0)]
    assert plan.join == ["flying"]


def test_triage_sends_nothing_once_the_run_stopped() -> None:
    requests = {k: request(k) for k in ("reask", "new")}
    plan = triage(requests, {"reask": (Result("reask", OK), 2)}, {}, (), sending=False)
    assert plan.send == [] and plan.settled["new"].status == PENDING
    assert plan.settled["reask"].status == OK


def test_triage_never_sends_what_an_open_batch_holds() -> None:
    requests = {k: request(k) for k in ("held", "reask", "failed_before", "new")}
    requests["failed_before"].failed_before = "HTTP 500"
    stored = {"reask": (Result("reask", OK, answer="?"), 1)}
    held = {"held", "reask~1", "failed_before"}  # a key, a re-ask, a key that failed before
    for sending in (True, False):
        plan = triage(requests, stored, {}, (), sending=sending, held=held)
        assert plan.held == ["held", "reask", "failed_before"]
        assert [plan.settled[k].status for k in plan.held] == [PENDING] * 3
        assert [w[0].key for w in plan.send] == (["new"] if sending else [])
        assert plan.from_store == []


# -- dispatcher --------------------------------------------------------------------------


def test_a_handler_that_raises_fails_its_row_and_the_pool_goes_on() -> None:
    done: list[tuple[str, int]] = []

    async def handle(work: Any) -> Result:
        key = work[0].key
        if key == "bad":
            raise RecursionError("maximum recursion depth exceeded")
        await asyncio.sleep(0)
        return Result(key, OK, answer=key)

    async def main() -> list[Result]:
        pool = Dispatcher(2, handle, lambda result, rows: done.append((result.key, rows)))
        pool.start()
        futures = [await pool.submit((request(k), 0, None), 1) for k in ("a", "bad", "b")]
        joined = pool.join("b", 2)
        results = await asyncio.wait_for(asyncio.gather(*futures, joined), timeout=10)
        await pool.close()
        return list(results)

    a, bad, b, joined = asyncio.run(main())
    assert (a.status, b.status, joined is not None) == (OK, OK, True)
    assert bad.status == FAILED and bad.error is not None and "RecursionError" in bad.error
    assert sorted(done) == [("a", 1), ("b", 3), ("bad", 1)]


def test_closing_the_pool_resolves_what_was_never_taken() -> None:
    async def handle(work: Any) -> Result:
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    async def main() -> list[Result]:
        pool = Dispatcher(1, handle, lambda result, rows: None)
        pool.start()
        futures = [await pool.submit((request(k), 0, None), 1) for k in ("a", "b")]
        await asyncio.sleep(0)
        await pool.close()
        return [f.result() for f in futures]

    assert [r.status for r in asyncio.run(main())] == [PENDING, PENDING]


# -- job ---------------------------------------------------------------------------------


class FakeSender:
    """A sender that answers from a function of the prompt, without HTTP."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.sent: list[str] = []
        self.stop_reason: str | None = None
        self.counters = Counters()
        self.price = None

    def stop(self, reason: str) -> None:
        self.stop_reason = reason

    async def send(self, req: Request) -> Result:
        text = json.loads(req.payload)["messages"][-1]["content"]
        self.sent.append(text)
        await asyncio.sleep(0)
        return Result(req.key, OK, answer=self.answer(text), raw="{}", attempts=1)


def make_job(tmp_path: Path, answer: Any, **output: Any) -> tuple[Job, FakeSender, Summary]:
    config = Config.model_validate(
        {
            "input": {"path": str(tmp_path / "in.csv")},
            "prompt": {"template": "{{ 100 // n }}"},
            "model": {"name": "m", "base_url": "http://127.0.0.1:9/v1"},
            "output": {"path": str(tmp_path / "out.parquet"), "include_meta": True, **output},
            "run": {"concurrency": 3},
        }
    )
    sender = FakeSender(answer)
    summary = Summary()
    renderer = Renderer(config.prompt, config.model, ["n"], config.output)
    store = Store(tmp_path / "store.db")
    job = Job(config, store, sender, renderer, summary=summary)  # type: ignore[arg-type]
    return job, sender, summary


def answer_chunk(job: Job, frame: pl.DataFrame) -> pl.DataFrame:
    async def main() -> pl.DataFrame:
        job.start()
        try:
            return await asyncio.wait_for(job.answer_chunk(frame), timeout=30)
        finally:
            await job.close()
            job.store.close()

    return asyncio.run(main())


def test_a_chunk_keeps_every_row_whatever_happens_to_it(tmp_path: Path) -> None:
    def answer(text: str) -> str:
        return "[" * 5000 if text == "50" else json.dumps({"v": int(text)})

    schema = {"type": "object", "properties": {"v": {"type": "integer"}}}
    job, sender, summary = make_job(tmp_path, answer, parse="json", schema=schema)
    frame = pl.DataFrame({"n": [1, 0, 2, 1, 4]})  # 0: the template divides by zero
    out = answer_chunk(job, frame)
    assert out["_status"].to_list() == ["ok", "failed", "invalid", "ok", "ok"]
    assert out["v"].to_list() == [100, None, None, 100, 25]
    assert "ZeroDivisionError" in out["_error"][1]
    assert sorted(sender.sent) == ["100", "25", "50"]  # a duplicate row is sent once
    assert (summary.answered, summary.failed, summary.invalid) == (3, 1, 1)


@pytest.mark.parametrize("reasks", [1, 2])
def test_invalid_answers_are_asked_again_and_each_reask_is_stored(
    tmp_path: Path, reasks: int
) -> None:
    schema = {"type": "object", "properties": {"v": {"type": "integer"}}}
    job, sender, _ = make_job(
        tmp_path, lambda text: "[" * 5000, parse="json", retry_invalid=reasks, schema=schema
    )
    out = answer_chunk(job, pl.DataFrame({"n": [1]}))
    assert out["_status"].to_list() == ["invalid"] and len(sender.sent) == 1 + reasks
    store = Store(tmp_path / "store.db")
    try:
        assert store.counts() == {OK: 1 + reasks}
    finally:
        store.close()
