"""What the end of a run says, through the CLI: the exit code when something fails after
batches were paid for, the summary's figures (each answered row counted once, a cost that is
0 when nothing was spent and shown with its digits), the gold-label warning naming its rows,
and no password of model.base_url in any message or file."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import ROOT, Ran, run_cli, write_config
from fake_oxen import FakeOxen
from fake_server import FakeServer, last_content
from test_cli_batch import ENV, answer, job, run, texts, wait_for
from test_cli_secrets import PASSWORD, assert_nowhere, with_password

LABELS = {"parse": "label", "labels": ["billing", "bug", "feature"], "gold": "truth"}
# Row 6 is answered "nonsense" (invalid); rows 7 and 8 have the gold typo "featur".
ROWS = ["billing a", "bug b", "billing c", "feature d", "bug e", "nonsense f", "feature g", "bug h"]
GOLD = ["billing", "bug", "billing", "feature", "bug", "bug", "featur", "featur"]
WARNING = (
    "warning: gold values not in output.labels: 'featur' (2 rows: 7, 8); no answer can match "
    "them, so those rows count as wrong: usually a typo in the gold column"
)
UNPRICED = [{"id": "fake-model", "object": "model"}]


def first_word(body: dict[str, Any]) -> str:
    return str(last_content(body)).split()[0]


def labelled(folder: Path, server: FakeServer, mode: str = "online") -> Path:
    """ROWS with their GOLD, answered with their first word, in chunks of 3 rows."""
    folder.mkdir(exist_ok=True)
    pl.DataFrame({"text": ROWS, "truth": GOLD}).write_csv(folder / "in.csv")
    settings = {"mode": mode, "chunk_rows": 3, "batch": {"poll_s": 0.05, "deadline": None}}
    return write_config(folder, server.base_url, output=LABELS, run=settings)


def cli(*args: str) -> Ran:
    return run_cli(*args, env=ENV, timeout=60)


# --- no password of model.base_url shown ----------------------------------------------


def test_an_endpoint_without_the_batch_api_is_named_without_its_password(tmp_path: Path) -> None:
    with FakeServer(answer=answer, batch_routes=False) as server:
        config = job(tmp_path, server, texts(3))
        config.write_text(
            config.read_text().replace(server.base_url, with_password(server.base_url))
        )
        ran = run_cli("run", str(config), "--no-progress", timeout=60)  # the password, no key
        port = server.port
    assert ran.code == 2, ran.stderr
    shown = f"http://user:***@127.0.0.1:{port}/v1/batches answered HTTP 404"
    assert shown in ran.stderr and shown in ran.summary["error"]
    log = (tmp_path / "out" / "store.runs.jsonl").read_text(encoding="utf-8")
    assert shown in (tmp_path / "out" / "answers.summary.json").read_text() and shown in log
    assert_nowhere(PASSWORD, ran, tmp_path)


# --- exit 5 once batch answers were paid for ------------------------------------------


def test_a_commit_that_fails_after_batches_were_collected_exits_5(tmp_path: Path) -> None:
    out = io.BytesIO()
    pl.DataFrame({"id": [0, 1, 2], "text": ["a", "b", "c"]}).write_csv(out)
    key = "oxen-test-key-0123456789abcdef"
    with FakeOxen(require_key=key) as hub, FakeServer(answer=answer) as model:
        hub.add_repo("acme", "tickets", {"data/tickets.csv": out.getvalue()})
        config = write_config(
            tmp_path,
            model.base_url,
            input={"path": "oxen://acme:tickets@main/data/tickets.csv"},
            output={"path": "oxen://acme:tickets@labels/out/labeled.csv"},
            run={"store": "store.db", "mode": "batch", "batch": {"poll_s": 0.05}},
            oxen={"host": hub.host, "scheme": "http"},
        )
        hub.fail_next_commit("before", times=3)  # every try of the run
        ran = run_cli("run", str(config), "--no-progress", env={"TEST_KEY": key}, timeout=60)
        rerun = run_cli("run", str(config), "--no-progress", env={"TEST_KEY": key}, timeout=60)
        sent = (model.count, model.creates)
    assert ran.code == 5, ran.stderr
    summary = ran.summary
    assert (summary["batch_submitted"], summary["batch_collected"]) == (3, 3)
    assert summary["exit_code"] == 5 and "committing" in summary["error"]
    assert "stopped part-way: " in ran.stderr and "kept in the store" in ran.stderr
    assert rerun.code == 0 and rerun.summary["from_store"] == 3
    assert sent == (0, 1)  # the rerun committed the answers the failed run collected


def test_a_report_that_cannot_be_written_after_batches_were_collected_exits_5(
    tmp_path: Path,
) -> None:
    states = ["validating", "in_progress", "in_progress", "in_progress", "completed"]
    with FakeServer(answer=answer, batch_states=states) as server:
        config = job(tmp_path, server, texts(4))
        report = tmp_path / "rep" / "r.html"
        report.parent.mkdir()
        command = [sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"]
        running = subprocess.Popen(
            [*command, "--report", str(report)],
            env={**os.environ, **ENV, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: server.creates == 1, "the batch")
        shutil.rmtree(report.parent)  # the report's folder is now a file: no report
        report.parent.write_text("not a folder")
        stdout, stderr = running.communicate(timeout=60)
    ran = Ran(running.returncode, stdout, stderr)
    assert ran.code == 5, ran.stderr
    assert ran.summary["batch_collected"] == 4 and ran.summary["exit_code"] == 5
    assert "cannot write the report" in ran.summary["error"]
    assert "stopped part-way: " in ran.stderr
    assert (tmp_path / "out" / "answers.parquet").is_file()


# --- the gold-label warning names its rows ----------------------------------------------


def test_gold_values_outside_the_labels_are_named_with_their_rows(tmp_path: Path) -> None:
    with FakeServer(answer=first_word) as server:
        config = labelled(tmp_path, server)
        ran = cli("run", str(config))
        reparsed = cli("reparse", str(config))
    for done in (ran, reparsed):
        assert done.code == 1, done.stderr  # the "nonsense" answer is invalid
        assert WARNING in done.stderr
        evaluation = done.summary["evaluation"]
        assert evaluation["gold_not_in_labels"] == {"featur": 2}
        assert evaluation["gold_not_in_labels_rows"] == {"featur": [7, 8]}


# --- the summary's figures ---------------------------------------------------------------


def test_each_answered_row_is_counted_once_and_an_invalid_one_only_as_invalid(
    tmp_path: Path,
) -> None:
    with FakeServer(answer=first_word) as server:
        config = labelled(tmp_path, server)
        first = cli("run", str(config)).summary
        again = cli("run", str(config)).summary
    assert (first["answered"], first["invalid"], first["from_store"]) == (7, 1, 0)
    assert (again["answered"], again["invalid"], again["requests_sent"]) == (7, 1, 0)
    assert again["from_store"] == again["answered"] == 7


def test_batch_figures_add_up_and_a_run_that_spends_nothing_costs_0(tmp_path: Path) -> None:
    with FakeServer(answer=first_word) as server:
        config = labelled(tmp_path, server, mode="batch")
        first = cli("run", str(config)).summary
        again = cli("run", str(config)).summary
        reparsed = cli("reparse", str(config)).summary
        pl.DataFrame({"text": [*ROWS, "bug i"], "truth": [*GOLD, "bug"]}).write_csv(
            tmp_path / "in.csv"
        )
        detached = cli("run", str(config), "--detach").summary
    assert (first["answered"], first["invalid"], first["batch_collected"]) == (7, 1, 7)
    assert first["from_store"] == 0 and first["cost_usd"] > 0
    assert (again["from_store"], again["batch_collected"], again["cost_usd"]) == (7, 0, 0.0)
    assert (reparsed["from_store"], reparsed["cost_usd"]) == (7, 0.0)
    assert (detached["batch_submitted"], detached["cost_usd"]) == (1, 0.0)


def test_cost_is_unknown_only_when_tokens_were_spent_at_an_unknown_price(
    tmp_path: Path,
) -> None:
    with FakeServer(answer=answer, models=UNPRICED) as server:
        config = job(tmp_path, server, texts(3))
        first = run(config).summary
        again = run(config).summary
    assert first["batch_collected"] == 3 and first["cost_usd"] is None
    assert again["from_store"] == 3 and again["cost_usd"] == 0.0


def test_a_small_cost_is_shown_with_its_digits(tmp_path: Path) -> None:
    """3 rows at $10 per million tokens: a few hundred-thousandths of a dollar."""
    pl.DataFrame({"text": ["row 0", "row 1", "row 2"]}).write_csv(tmp_path / "in.csv")
    with FakeServer() as server:
        pricing = {"input_per_million": 10, "output_per_million": 10}
        config = write_config(tmp_path, server.base_url, model={"pricing": pricing})
        ran = cli("run", str(config))
    assert ran.code == 0, ran.stderr
    summary = ran.summary
    tokens = summary["prompt_tokens"] + summary["completion_tokens"]
    assert summary["cost_usd"] == pytest.approx(tokens * 1e-5) and tokens < 10
    end = next(line for line in ran.stderr.splitlines() if "end of run" in line)
    assert end.endswith(f"cost $0.0000{tokens}0"), end
