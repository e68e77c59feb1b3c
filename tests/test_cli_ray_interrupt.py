"""Ctrl-C under the Ray engine: the summary counts what the workers spent up to the stop.

One run on a local Ray, stopped while requests flow: each worker's poll in flight then
carries the requests it sent since the one before, some of them cut off at the stop.
"""

from __future__ import annotations

import signal
from pathlib import Path

import polars as pl
from e2e import Ran, write_config
from fake_server import FakeServer
from test_cli_ray import start_run, stored, wait_for  # skips without Ray

PRICING = {"pricing": {"input_per_million": 1000, "output_per_million": 1000}}


def test_ctrl_c_counts_every_request_sent_and_every_answer_paid_for(tmp_path: Path) -> None:
    rows = 3000
    texts = [f"item {i:04d}" for i in range(rows)]  # 2 prompt, 3 completion tokens each
    pl.DataFrame({"id": range(rows), "text": texts}).write_csv(tmp_path / "in.csv")
    with FakeServer(latency=0.05) as server:
        run = {"concurrency": 16, "chunk_rows": 100, "engine": "ray", "ray": {"workers": 2}}
        config = write_config(tmp_path, server.base_url, model=PRICING, run=run)
        process = start_run(config)
        try:
            wait_for(lambda: server.count >= 300)
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=90)
        finally:
            if process.poll() is None:  # failed before the stop: not left behind
                process.kill()
                process.communicate()
        sent = server.count
    assert process.returncode == 130, err
    summary = Ran(process.returncode, out, err).summary
    assert summary["engine"] == "ray" and sent < rows
    # Every request that reached the server is counted, those cut off at the stop among them
    # (as the local engine counts them), and nothing else.
    assert summary["requests_sent"] == sent, (summary["requests_sent"], sent)
    # Every answer that came back was stored and paid for, at $1,000 per million tokens.
    answered = stored(tmp_path)
    assert summary["answered"] == answered
    assert (summary["prompt_tokens"], summary["completion_tokens"]) == (2 * answered, 3 * answered)
    assert abs(summary["cost_usd"] - 5 * answered / 1000) < 1e-9
