"""`pipeline compare` sends online whatever run.mode says, and says so once, before sending,
when a variant's run.mode is batch."""

from __future__ import annotations

from pathlib import Path

from e2e import run_cli, write_config
from fake_server import FakeServer
from test_cli_compare import KEY, MODELS, answer
from test_cli_compare import job as job  # the fixture: test_cli_compare's 24-row table

SAID = (
    "but compare sends every request online, at the online price, whatever run.mode says "
    "(cost_usd is the online cost; projected_batch_cost_usd estimates the table in batch "
    "mode); a `pipeline run` of the chosen variant submits the rest of the table in batches"
)


def compare(config: Path, *variants: str) -> list[str]:
    args = ["compare", str(config), "-n", "4", "--no-progress"]
    for variant in variants:
        args += ["--variant", variant]
    return args


def test_a_batch_mode_config_is_compared_online_and_warned_about_once(job: Path) -> None:
    with FakeServer(answer=answer, models=MODELS) as server:
        config = write_config(job, server.base_url, run={"mode": "batch"})
        ran = run_cli(
            *compare(config, "a:model.name=fake-model", "b:model.name=other-model"), env=KEY
        )
        sent, batches = server.count, len(server.batches)
    assert ran.code == 0, ran.stderr
    assert (sent, batches) == (8, 0)
    warning = f"run.mode is batch, {SAID}"
    assert ran.summary["warnings"] == [warning]
    logged, table = ran.stderr.index(warning), ran.stderr.rindex(f"warning: {warning}")
    assert logged < table  # said before anything was sent, and again under the table
    assert ran.stderr.count(warning) == 2


def test_a_variant_in_batch_mode_is_named_and_an_online_one_is_not_warned(job: Path) -> None:
    with FakeServer(answer=answer, models=MODELS) as server:
        config = write_config(job, server.base_url)
        online = run_cli(*compare(config, "a:run.concurrency=2"), env=KEY)
        mixed = run_cli(
            *compare(config, "a:run.concurrency=2", "b:model.name=other-model,run.mode=batch"),
            env=KEY,
        )
    assert online.code == 0 and mixed.code == 0, mixed.stderr
    assert online.summary["warnings"] == [] and "run.mode" not in online.stderr
    assert mixed.summary["warnings"] == [f"variant b set run.mode: batch, {SAID}"]
