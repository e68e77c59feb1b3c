"""The Ray engine stops as the local engine does: a budget reached, an endpoint that stays down.

The same runs as test_cli_nightly's budget stop and test_cli_breaker's outage, on a local Ray
that each run starts (seconds each), so there are few of them.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from e2e import run_cli, write_config
from fake_server import FakeServer, echo
from test_cli_breaker import ROWS
from test_cli_breaker import make_table as breaker_table
from test_cli_nightly import assert_budget_stop, table
from test_cli_ray import ENV, answers  # without Ray installed, this skips these tests

RAY = {"engine": "ray", "ray": {"workers": 2}}
PRICING = {"pricing": {"input_per_million": 1000, "output_per_million": 1000}}


def test_the_budget_stop_says_the_total_the_other_workers_requests_in_flight_made(
    tmp_path: Path,
) -> None:
    """Two workers, one request each, both sent before either is answered; the first answer
    reaches the budget. The stop says the spend then and the total both workers' answers
    made, which is the summary's cost, as under the local engine."""
    table(tmp_path, 3)  # each request: 1 prompt + 2 completion tokens, at $1,000 per million
    both_sent = threading.Barrier(2, timeout=60)

    def answer(body: dict[str, Any]) -> str:
        both_sent.wait()
        return echo(body)

    with FakeServer(answer=answer) as server:
        run = {"concurrency": 2, "max_cost_usd": 0.002, **RAY}
        config = write_config(tmp_path, server.base_url, model=PRICING, run=run)
        ran = run_cli("run", str(config), env=ENV, timeout=180)
        assert server.count == 2
    assert ran.summary["engine"] == "ray"
    assert_budget_stop(ran, "cost $0.0060, workers 2")


def test_rows_that_gave_up_on_a_down_endpoint_end_pending_on_every_worker(
    tmp_path: Path,
) -> None:
    """Two workers, one request each, one retry: after the last answer, each worker's rows
    spend their two attempts before its tenth failure in a row pauses it. Nothing was
    answered for them: they end pending like the rows never sent, the store keeps nothing
    for them, `status` agrees, and a rerun (on the local engine) sends exactly the rows
    left."""
    breaker_table(tmp_path)
    answered, left = 12, ROWS - 12
    run = {"concurrency": 2, "max_retries": 1, "max_outage_s": 1}
    with FakeServer() as server:
        server.down_after(answered)
        path = write_config(tmp_path, server.base_url, run={**run, **RAY})
        ran = run_cli("run", str(path), env=ENV, timeout=180)
    assert ran.code == 3, ran.stderr
    assert "is down" in ran.stderr and "rows failed" not in ran.stderr
    summary = ran.summary
    assert summary["engine"] == "ray"
    # The worker whose breaker stopped the run failed 10 times in a row first, so four of
    # its rows (two attempts each) gave up; the other's likely did too.
    assert summary["requests_sent"] >= answered + 10
    assert (summary["answered"], summary["failed"], summary["pending"]) == (answered, 0, left)
    out = answers(tmp_path)
    statuses = out["_status"].to_list()  # the workers answer in no set order
    assert (statuses.count("ok"), statuses.count("pending")) == (answered, left)
    assert out["_error"].null_count() == ROWS
    status = json.loads(run_cli("status", str(path), env=ENV).stdout)
    assert (status["done"], status["failed"], status["pending"]) == (answered, 0, left)

    with FakeServer() as server:
        path = write_config(tmp_path, server.base_url, run=run)
        again = run_cli("run", str(path), env=ENV, timeout=60)
        assert again.code == 0, again.stderr
        assert again.summary["requests_sent"] == server.count == left
