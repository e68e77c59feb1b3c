"""What makes a comparison say less than it seems, said plainly: variants that share their
answers, a variant with no answers, gold labels outside output.labels; and `-n 0`."""

from __future__ import annotations

import socket
from pathlib import Path

import polars as pl
from e2e import Ran, run_cli, write_config
from fake_server import FakeServer
from test_cli_compare import KEY, MODELS, WORDS, answer
from test_cli_compare import job as job  # the fixture: test_cli_compare's 24-row table

LABELS = {"parse": "label", "labels": ["billing", "bug", "feature"], "gold": "truth"}


def compare(config: Path, n: int, *variants: str, report: Path | None = None) -> Ran:
    """`pipeline compare CONFIG -n N --variant ...` (and `--report`), with the test key."""
    args = ["compare", str(config), "-n", str(n)]
    for variant in variants:
        args += ["--variant", variant]
    if report is not None:
        args += ["--report", str(report)]
    return run_cli(*args, env=KEY)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: a connection there is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_sample_of_no_rows_is_refused_before_anything_runs(job: Path) -> None:
    with FakeServer(answer=answer) as server:
        config = write_config(job, server.base_url)
        ran = run_cli("compare", str(config), "-n", "0", "--variant", "a:run.concurrency=4")
        assert server.count == 0
    assert ran.code == 2
    assert "argument -n: expected 1 or more, got 0" in ran.stderr
    assert "internal error" not in ran.stderr


def test_variants_that_send_identical_requests_are_named(job: Path) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    report = job / "compare.html"
    with FakeServer(answer=answer, models=MODELS) as server:
        config = write_config(job, server.base_url, output=LABELS)
        ran = compare(
            config,
            6,
            "a:run.concurrency=4",
            f"dead:model.base_url={dead}",
            "other:model.name=other-model",
            "relabel:output.labels=[billing, bug, feature, other]",
            report=report,
        )
        sent = server.count
    assert ran.code == 0, ran.stderr
    a, dead_variant, other, _ = ran.summary["variants"]
    assert (a["requests_sent"], dead_variant["requests_sent"], other["requests_sent"]) == (6, 0, 6)
    assert sent == 12
    assert ran.summary["identical_requests"] == [["a", "dead", "relabel"]]
    nothing = (
        "variants a and dead send identical requests: their answers are shared from the "
        "store, so comparing them says nothing; change the model name or a parameter"
    )
    parsing = (
        "variants a, dead and relabel send identical requests: their answers are shared from "
        "the store, so only their output settings (how answers are parsed and scored) differ"
    )
    assert ran.summary["warnings"] == [nothing, parsing]
    assert f"warning: {nothing}\nwarning: {parsing}" in ran.stderr
    page = report.read_text(encoding="utf-8")
    assert nothing in page and parsing in page


def test_two_variants_alike_but_for_the_endpoint_compare_nothing(job: Path) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    with FakeServer(answer=answer) as server:
        config = write_config(job, server.base_url)
        ran = compare(config, 4, "a:run.concurrency=4", f"dead:model.base_url={dead}")
    assert ran.code == 0, ran.stderr
    assert ran.summary["warnings"] == [
        "variants a and dead send identical requests: their answers are shared from the "
        "store, so comparing them says nothing; change the model name or a parameter"
    ]


def test_rows_a_stopped_variant_left_unanswered_are_not_disagreements(job: Path) -> None:
    report = job / "compare.html"
    with FakeServer(answer=answer, models=MODELS) as server:
        config = write_config(job, server.base_url, output=LABELS)
        ran = compare(
            config,
            8,
            "fake:model.name=fake-model",
            "other:model.name=other-model",
            "bad:model.name=nosuch-model",
            report=report,
        )
    assert ran.code == 3  # a variant stopped early, as documented
    disagreements = ran.summary["disagreements"]
    # Of the first 8 rows, rows 3 and 7 are "feature": other-model answers "bug" there.
    assert disagreements["total"] == 2
    assert [r["row"] for r in disagreements["rows"]] == [3, 7]
    assert disagreements["unanswered"] == {"fake": 0, "other": 0, "bad": 8}
    assert ran.summary["identical_requests"] == []
    assert (
        "rows where the variants differ: 2 of 8; not counted: 8 rows unanswered by bad"
        in ran.stderr
    )
    page = report.read_text(encoding="utf-8")
    assert "Rows where the variants disagree: 2 of 2 shown" in page
    assert "Not counted as disagreements: 8 rows unanswered by bad" in page


def test_only_a_stopped_variant_differing_leaves_no_disagreement(job: Path) -> None:
    report = job / "compare.html"
    with FakeServer(answer=answer, models=MODELS) as server:
        config = write_config(job, server.base_url, output=LABELS)
        ran = compare(
            config, 5, "fake:model.name=fake-model", "bad:model.name=nosuch-model", report=report
        )
    assert ran.code == 3
    assert ran.summary["disagreements"]["total"] == 0
    assert ran.summary["disagreements"]["rows"] == []
    assert "rows where the variants differ: 0 of 5; not counted: 5 rows unanswered by bad" in (
        ran.stderr
    )
    page = report.read_text(encoding="utf-8")
    assert "Rows where the variants disagree: 0 of 0 shown" in page
    assert "Not counted as disagreements: 5 rows unanswered by bad" in page


def gold_with_a_typo(folder: Path) -> None:
    """8 rows; the gold of the 2 "feature" rows is "refund", of the first row "Refund"."""
    texts = [f"{word} {i}" for i, word in enumerate(WORDS)]
    truth = ["refund" if t.startswith("feature") else t.split()[0] for t in texts]
    truth[0] = "Refund"  # read as labels are: the same value as "refund"
    pl.DataFrame({"id": range(8), "text": texts, "truth": truth}).write_csv(folder / "in.csv")


WARNING = (
    "gold values not in output.labels: 'Refund' (3 rows); no answer can match them, so those "
    "rows count as wrong: usually a typo in the gold column"
)
NAMED = WARNING.replace("(3 rows)", "(3 rows: 1, 3, 7)")  # run and reparse name the rows


def test_gold_values_outside_the_labels_are_warned_about(tmp_path: Path) -> None:
    gold_with_a_typo(tmp_path)
    output = {"parse": "label", "labels": ["billing", "bug", "feature", "other"], "gold": "truth"}
    with FakeServer(answer=answer, models=MODELS) as server:
        config = write_config(tmp_path, server.base_url, output=output)
        ran = run_cli("run", str(config), "--report", str(tmp_path / "run.html"), env=KEY)
        reparsed = run_cli("reparse", str(config), env=KEY)
        compared = compare(
            config,
            8,
            "fake:model.name=fake-model",
            "other:model.name=other-model",
            report=tmp_path / "compare.html",
        )
    assert ran.code == reparsed.code == compared.code == 0, ran.stderr
    for done in (ran, reparsed):
        evaluation = done.summary["evaluation"]
        assert evaluation["gold_not_in_labels"] == {"Refund": 3}
        assert evaluation["labels"]["Refund"]["support"] == 3  # still scored, as wrong
        assert evaluation["labels"]["Refund"]["f1"] == 0.0
        assert evaluation["gold_not_in_labels_rows"] == {"Refund": [1, 3, 7]}
        assert f"warning: {NAMED}" in done.stderr
    assert compared.summary["warnings"] == [WARNING]
    assert f"warning: {WARNING}" in compared.stderr
    assert NAMED.replace("'", "&#x27;") in (tmp_path / "run.html").read_text(encoding="utf-8")
    assert WARNING.replace("'", "&#x27;") in (tmp_path / "compare.html").read_text(encoding="utf-8")


def test_no_warning_when_every_gold_value_is_a_label(job: Path) -> None:
    with FakeServer(answer=answer) as server:
        config = write_config(job, server.base_url, output=LABELS)
        ran = run_cli("run", str(config), "--limit", "8", env=KEY)
    assert ran.code == 0, ran.stderr
    assert ran.summary["evaluation"]["gold_not_in_labels"] == {}
    assert "gold values not in output.labels" not in ran.stderr
