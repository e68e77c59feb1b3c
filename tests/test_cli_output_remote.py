"""An oxen:// or s3:// output.path that cannot take the output is refused before anything
is sent, by run and validate alike (exit 2): the input itself, a missing repository, a commit
instead of a branch, a malformed address."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e import Ran, run_cli, write_config
from fake_oxen import FakeOxen
from fake_server import FakeServer
from test_cli_oxen import ENV, HUB_KEY, SOURCE, label, table

from pipeline.configfile import load


def refused_by_both(config: Path, model: FakeServer, env: dict[str, str]) -> list[Ran]:
    """validate and run on `config`: both exit 2 and no chat request reaches the model."""
    done = [run_cli(command, str(config), env=env) for command in ("validate", "run")]
    for ran in done:
        assert ran.code == 2, ran.stdout + ran.stderr
        assert "ok:" not in ran.stdout
        assert HUB_KEY not in ran.stdout + ran.stderr
    assert model.count == 0 and model.requests == []
    return done


def oxen_config(folder: Path, hub: FakeOxen, model: FakeServer, output: str) -> Path:
    return write_config(
        folder,
        model.base_url,
        input={"path": SOURCE},
        output={"path": output, "include_meta": False},
        run={"store": "store.db"},
        oxen={"host": hub.host, "scheme": "http"},
    )


def test_an_oxen_output_that_is_the_input_file_is_refused_at_load(tmp_path: Path) -> None:
    with FakeOxen(require_key=HUB_KEY) as hub, FakeServer(answer=label) as model:
        hub.add_repo("acme", "tickets", {"data/tickets.csv": table(["a", "b"])})
        head = hub.head("acme", "tickets", "main")
        config = oxen_config(tmp_path, hub, model, SOURCE)
        done = refused_by_both(config, model, ENV)
        after = hub.head("acme", "tickets", "main")
        asked = list(hub.requests)
    for ran in done:
        assert "output.path and input.path name the same file" in ran.stderr
        assert "data/tickets.csv on branch main of the Oxen repository acme/tickets" in ran.stderr
        assert "set output.path to another file or branch" in ran.stderr
        assert "config key 'output' (line" in ran.stderr
    assert after == head and asked == []  # refused at load: the hub was not even asked


def test_the_input_file_on_another_branch_is_a_fine_output(tmp_path: Path) -> None:
    with FakeOxen(require_key=HUB_KEY) as hub, FakeServer(answer=label) as model:
        hub.add_repo("acme", "tickets", {"data/tickets.csv": table(["a", "b"])})
        target = "oxen://acme:tickets@labels/data/tickets.csv"
        validated = run_cli("validate", str(oxen_config(tmp_path, hub, model, target)), env=ENV)
    assert validated.code == 0, validated.stderr
    assert validated.stdout.startswith("ok: 2 rows")


@pytest.mark.parametrize(
    ("output", "said"),
    [
        (
            "oxen://acme:nope@labels/out/labeled.csv",
            "repository acme/nope not found on {host} (or the key in $TEST_KEY cannot see it); "
            "create it first, or correct output.path",
        ),
        (
            "oxen://acme:tickets@{commit}/out/labeled.csv",
            "'{commit}' is a commit; the output must name a branch: put a branch name after "
            "the @ in output.path",
        ),
    ],
    ids=["missing-repo", "commit-not-branch"],
)
def test_an_oxen_output_the_hub_cannot_take_is_named_before_sending(
    tmp_path: Path, output: str, said: str
) -> None:
    with FakeOxen(require_key=HUB_KEY) as hub, FakeServer(answer=label) as model:
        hub.add_repo("acme", "tickets", {"data/tickets.csv": table(["a", "b", "c"])})
        head = hub.head("acme", "tickets", "main")
        assert head is not None
        config = oxen_config(tmp_path, hub, model, output.format(commit=head.id))
        done = refused_by_both(config, model, ENV)
        puts, branches = hub.puts, sorted(hub.repos[("acme", "tickets")].branches)
        host = hub.host
    for ran in done:
        assert "error: output.path: oxen://acme:" in ran.stderr, ran.stderr
        assert said.format(host=host, commit=head.id) in ran.stderr
    assert puts == 0 and branches == ["main"]  # no branch made, nothing committed
    run_summary = done[1].summary
    assert run_summary["requests_sent"] == 0 and run_summary["exit_code"] == 2


@pytest.mark.parametrize(
    "output", ["oxen://acme:tickets/data/x.csv", "oxen://acme/tickets/data/x.csv"]
)
def test_a_malformed_oxen_output_is_a_config_error_at_load(tmp_path: Path, output: str) -> None:
    with FakeOxen(require_key=HUB_KEY) as hub, FakeServer(answer=label) as model:
        hub.add_repo("acme", "tickets", {"data/tickets.csv": table(["a"])})
        done = refused_by_both(oxen_config(tmp_path, hub, model, output), model, ENV)
        asked = list(hub.requests)
    for ran in done:
        assert "config key 'output' (line" in ran.stderr
        assert f"output.path: '{output}' is not an Oxen address" in ran.stderr
        # The form survives the masking of config errors (NS:REPO@ is not user info).
        assert "oxen:// followed by NAMESPACE:REPO@BRANCH/PATH" in ran.stderr
        assert "ox:my-repo@main/data.csv" in ran.stderr and "***" not in ran.stderr
    assert asked == []


def test_a_malformed_oxen_input_is_a_config_error_at_load(tmp_path: Path) -> None:
    with FakeServer(answer=label) as model:
        config = write_config(
            tmp_path,
            model.base_url,
            input={"path": "oxen://acme:tickets/data/tickets.csv"},
            output={"path": "out.csv"},
        )
        done = refused_by_both(config, model, ENV)
    for ran in done:
        assert "config key 'input' (line" in ran.stderr
        assert "input.path: 'oxen://acme:tickets/data/tickets.csv' is not an Oxen address" in (
            ran.stderr
        )


@pytest.mark.parametrize(
    ("source", "target", "said"),
    [
        (
            "s3://tickets/in/tickets.csv",
            "s3://tickets/in/tickets.csv",
            "output.path and input.path name the same object, s3://tickets/in/tickets.csv",
        ),
        (
            "s3://tickets/parts/*.parquet",
            "s3://tickets/parts/answers.parquet",
            "output.path s3://tickets/parts/answers.parquet matches input.path's glob "
            "s3://tickets/parts/*.parquet",
        ),
    ],
    ids=["same-object", "in-the-glob"],
)
def test_an_s3_output_that_is_the_input_is_refused_at_load(
    tmp_path: Path, source: str, target: str, said: str
) -> None:
    with FakeServer(answer=label) as model:
        config = write_config(
            tmp_path,
            model.base_url,
            input={"path": source},
            output={"path": target},
        )
        done = refused_by_both(config, model, ENV)
    for ran in done:
        assert "config key 'output' (line" in ran.stderr and said in ran.stderr


def test_the_same_key_at_another_s3_endpoint_is_another_object(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "http://127.0.0.1:9/v1",
        input={
            "path": "s3://tickets/in/tickets.csv",
            "storage_options": {"endpoint_url": "http://127.0.0.1:1"},
        },
        output={
            "path": "s3://tickets/in/tickets.csv",
            "storage_options": {"endpoint_url": "http://127.0.0.1:2"},
        },
    )
    loaded = load(config)  # a copy from one store to another: not refused
    assert loaded.input.url == loaded.output.url == "s3://tickets/in/tickets.csv"
