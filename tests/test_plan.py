"""`preview` / `status` accounting: each distinct request counted once, across chunks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import polars as pl
from e2e import write_config
from fake_server import FakeServer

from pipeline import runner
from pipeline.configfile import load
from pipeline.job import render_rows
from pipeline.plan import make_plan

ROWS, DISTINCT, CHUNK, RESERVE = 40, 20, 7, 8  # RESERVE: max_tokens in write_config


def test_duplicates_across_chunks_are_counted_once(tmp_path: Path) -> None:
    texts = [f"text number {i % DISTINCT}" + "!" * (i % DISTINCT) for i in range(ROWS)]
    pl.DataFrame({"text": texts}).write_csv(tmp_path / "in.csv")
    with FakeServer() as server:
        config_path = write_config(tmp_path, server.base_url, run={"chunk_rows": CHUNK})
        config = load(config_path)
        opened = runner.open_input(config)
        requests, _ = render_rows(opened.renderer, pl.read_csv(tmp_path / "in.csv"))
        tokens = {r.key: r.est_tokens for r in requests if r is not None}
        assert len(tokens) == DISTINCT

        before = make_plan(config)
        assert (before.rows, before.unique_requests, before.to_send) == (ROWS, DISTINCT, DISTINCT)
        assert before.pending == ROWS and before.done == 0
        assert before.to_send_prompt_tokens == sum(tokens.values()) - DISTINCT * RESERVE
        assert before.to_send_completion_tokens == DISTINCT * RESERVE

        asyncio.run(runner.run(config, limit=10))  # answers the first 10 distinct requests
        assert server.count == 10

    after = make_plan(config)
    answered = {r.key for r in requests[:10] if r is not None}
    left = {key: n for key, n in tokens.items() if key not in answered}
    assert (after.unique_requests, after.to_send, after.done) == (DISTINCT, 10, 20)
    assert after.to_send_prompt_tokens == sum(left.values()) - 10 * RESERVE
    status = make_plan(config, counts_only=True)
    assert (status.rows, status.done, status.pending, status.to_send) == (ROWS, 20, 20, 0)
