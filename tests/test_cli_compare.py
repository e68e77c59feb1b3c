"""`pipeline compare` end to end: variants that answer differently, exact figures, reuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import run_cli, write_config
from fake_server import FakeServer, last_content

KEY = {"TEST_KEY": "sk-test-compare"}
WORDS = ["billing", "bug", "feature", "bug", "billing", "bug", "feature", "billing"]
MODELS = [{"id": "fake-model", "object": "model"}, {"id": "other-model", "object": "model"}]
VARIANTS = [
    "--variant",
    "fake:model.name=fake-model",
    "--variant",
    "other:model.name=other-model,model.params.temperature=0.5",
]


def answer(body: dict[str, Any]) -> str:
    """fake-model answers the first word; other-model takes every feature for a bug."""
    word = last_content(body).split()[0]
    return "bug" if body["model"] == "other-model" and word == "feature" else word


@pytest.fixture
def job(tmp_path: Path) -> Path:
    texts = [f"{word} {i}" for i, word in enumerate(WORDS * 3)]  # 24 rows
    frame = pl.DataFrame({"id": range(24), "text": texts, "truth": [t.split()[0] for t in texts]})
    frame.write_csv(tmp_path / "in.csv")
    return tmp_path


def test_compare_scores_each_variant_and_a_rerun_sends_nothing(job: Path) -> None:
    output = {"parse": "label", "labels": ["billing", "bug", "feature"], "gold": "truth"}
    pricing = {"pricing": {"input_per_million": 1.0, "output_per_million": 2.0}}
    with FakeServer(answer=answer, models=MODELS) as server:
        config = write_config(job, server.base_url, output=output, model=pricing)
        ran = run_cli("compare", str(config), "-n", "16", *VARIANTS, env=KEY)
        first = server.count
        again = run_cli("compare", str(config), "-n", "16", *VARIANTS, env=KEY)
        rerun_sent = server.count - first
        # The chosen variant's full run pays only for the 8 rows outside the sample.
        full = run_cli(
            "run",
            str(config),
            "--set",
            "model.name=other-model",
            "--set",
            "model.params.temperature=0.5",
            env=KEY,
        )
        full_sent = server.count - first
    assert ran.code == 0, ran.stderr
    report = ran.summary
    assert report["sample"] == {"rows": 16, "how": "first", "seed": None}
    assert report["table_rows"] == 24
    fake, other = report["variants"]
    # Of the 16 sampled rows 4 are "feature": fake-model gets all 16, other-model 12.
    assert fake["evaluation"]["accuracy"] == 1.0
    assert other["evaluation"]["accuracy"] == 0.75
    assert other["evaluation"]["labels"]["feature"]["recall"] == 0.0
    assert fake["requests_sent"] == other["requests_sent"] == 16
    assert fake["invalid_rate"] == fake["failed_rate"] == 0.0
    # Cost from the answers' usage at $1 / $2 per million, projected from 16 rows to 24.
    tokens_in, tokens_out = fake["prompt_tokens"], fake["completion_tokens"]
    assert fake["cost_usd"] == pytest.approx((tokens_in * 1 + tokens_out * 2) / 1e6)
    assert fake["projected_cost_usd"] == pytest.approx(fake["cost_usd"] * 24 / 16)
    assert fake["projected_batch_cost_usd"] == pytest.approx(fake["projected_cost_usd"] * 0.5)
    assert fake["latency_p50_s"] is not None
    # Agreement 12/16; kappa: chance agreement (6*6 + 6*10 + 4*0) / 16^2 = 0.375, so
    # (0.75 - 0.375) / (1 - 0.375) = 0.6.
    assert report["agreement"] == [{"a": "fake", "b": "other", "agreement": 0.75, "kappa": 0.6}]
    disagreements = report["disagreements"]
    assert disagreements["total"] == 4
    assert [r["row"] for r in disagreements["rows"]] == [3, 7, 11, 15]
    assert disagreements["rows"][0] == {
        "row": 3,
        "input": {"id": "2", "text": "feature 2"},  # CSV columns are text
        "gold": "feature",
        "answers": {"fake": "feature", "other": "bug"},
    }
    assert "fake vs other: agree 75.0%, kappa 0.600" in ran.stderr
    assert again.code == 0 and rerun_sent == 0
    assert again.summary["variants"][1]["evaluation"] == other["evaluation"]
    assert full.code == 0, full.stderr
    assert full_sent == 8


def test_a_random_sample_is_the_same_for_a_seed_and_a_bad_variant_is_named(job: Path) -> None:
    with FakeServer(answer=answer, models=MODELS) as server:
        config = write_config(job, server.base_url)
        args = ["compare", str(config), "-n", "5", "--sample", "random", "--seed", "3"]
        one = run_cli(*args, *VARIANTS[:2], env=KEY)
        two = run_cli(*args, *VARIANTS[:2], env=KEY)
        bad = run_cli("compare", str(config), "--variant", "no-colon", env=KEY)
    assert one.code == two.code == 0, one.stderr
    assert one.summary["sample"] == {"rows": 5, "how": "random", "seed": 3}
    assert one.summary["variants"][0]["requests_sent"] == 5
    assert two.summary["variants"][0]["requests_sent"] == 0  # the same rows, from the store
    assert bad.code == 2
    assert "expected NAME:KEY=VALUE" in bad.stderr


def test_a_variant_that_stops_is_reported_and_the_others_still_run(job: Path) -> None:
    with FakeServer(answer=answer, models=MODELS[:1]) as server:
        config = write_config(job, server.base_url)
        ran = run_cli("compare", str(config), "-n", "4", *VARIANTS, env=KEY)
    assert ran.code == 3
    fake, other = ran.summary["variants"]
    assert fake["answered"] == 4 and fake["exit_code"] == 0
    assert other["answered"] == 0 and "other-model" in other["stopped"]
    assert "variant other:" in ran.stderr
