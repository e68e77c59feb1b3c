"""Secrets through the CLI: a key written where a variable's name belongs, a password in
model.base_url, the hint when the key's variable is unset. Nothing secret is printed or
written."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import polars as pl
import pytest
from e2e import Ran, run_cli, write_config
from fake_server import FakeServer

KEY = "sk-live-SECRET999"
PASSWORD = "pw-SECRET"
NOT_SHOWN = (
    "is not the name of an environment variable (letters, digits and _, not starting with a "
    "digit); it looks like a key itself, so it is not shown: put the key in an environment "
    "variable and write that variable's name here"
)


def table(folder: Path, rows: int = 2) -> None:
    pl.DataFrame({"text": [f"row-{n}" for n in range(rows)]}).write_csv(folder / "in.csv")


def assert_nowhere(secret: str, ran: Ran, folder: Path) -> None:
    """`secret` is in neither stdout nor stderr, nor in any file under `folder` (bar the
    config that holds it on purpose)."""
    assert secret not in ran.stdout and secret not in ran.stderr
    for path in folder.rglob("*"):
        if path.is_file() and path.name != "job.yaml":
            assert secret.encode() not in path.read_bytes(), path


def line_of(config: Path, text: str) -> int:
    """The number of the config's first line holding `text`."""
    lines = config.read_text(encoding="utf-8").splitlines()
    return next(n for n, line in enumerate(lines, 1) if text in line)


def with_password(base_url: str) -> str:
    return base_url.replace("http://", f"http://user:{PASSWORD}@")


# --- a key where the name of its variable belongs -------------------------------------


def test_validate_with_the_key_substituted_into_api_key_env_does_not_show_it(
    tmp_path: Path,
) -> None:
    table(tmp_path)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", model={"api_key_env": "${MY_KEY}"})
    ran = run_cli("validate", str(config), env={"MY_KEY": KEY})

    assert ran.code == 2
    assert ran.stderr == (
        f"error: {config}: config key 'model.api_key_env' (line {line_of(config, 'MY_KEY')}): "
        "${MY_KEY} is replaced "
        "by the value of MY_KEY, which is not a variable name and looks like a key itself, so "
        "it is not shown; write the variable's name instead: api_key_env: MY_KEY\n"
    )
    assert_nowhere(KEY, ran, tmp_path)


def test_a_variable_that_holds_a_variable_name_still_chooses_the_key(tmp_path: Path) -> None:
    table(tmp_path)
    with FakeServer() as server:
        server.require_key = KEY
        config = write_config(tmp_path, server.base_url, model={"api_key_env": "${WHICH}"})
        ran = run_cli("run", str(config), env={"WHICH": "PROD_KEY", "PROD_KEY": KEY})

    assert ran.code == 0, ran.stderr
    assert_nowhere(KEY, ran, tmp_path)


def test_run_with_a_key_set_as_api_key_env_stops_before_sending(tmp_path: Path) -> None:
    table(tmp_path)
    secret = "sk-proj-AbCdEf0123456789"
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url)
        ran = run_cli("run", str(config), "--set", f"model.api_key_env={secret}")
        assert server.count == 0 and server.gets == []

    assert ran.code == 2
    assert (
        ran.stderr == f"error: {config}: config key 'model.api_key_env' (from --set): {NOT_SHOWN}\n"
    )
    assert ran.stdout == ""
    assert not (tmp_path / "out").exists()  # no summary, no run log, no store
    assert_nowhere(secret, ran, tmp_path)


@pytest.mark.parametrize(
    ("section", "values", "dotted"),
    [
        ("oxen", {"api_key_env": KEY}, "oxen.api_key_env"),
        (
            "input",
            {"path": "s3://bucket/in.csv", "storage_options": {"secret_access_key_env": KEY}},
            "input.storage_options.secret_access_key_env",
        ),
    ],
)
def test_every_key_variable_setting_refuses_a_key_without_showing_it(
    tmp_path: Path, section: str, values: dict[str, object], dotted: str
) -> None:
    table(tmp_path)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", **{section: values})
    ran = run_cli("validate", str(config))

    assert ran.code == 2
    line = line_of(config, KEY)  # the line that holds the key
    assert ran.stderr == f"error: {config}: config key '{dotted}' (line {line}): {NOT_SHOWN}\n"
    assert_nowhere(KEY, ran, tmp_path)


def test_models_list_refuses_a_key_passed_as_api_key_env() -> None:
    ran = run_cli("models", "list", "--base-url", "http://127.0.0.1:9/v1", "--api-key-env", KEY)

    assert ran.code == 2
    assert KEY not in ran.stderr and KEY not in ran.stdout
    assert ran.stderr.startswith("error: --api-key-env takes the name of an environment variable")


# --- a password in model.base_url ------------------------------------------------------


def test_preview_hides_the_base_url_password(tmp_path: Path) -> None:
    table(tmp_path)
    with FakeServer() as server:
        config = write_config(tmp_path, with_password(server.base_url))
        ran = run_cli("preview", str(config))
        port = server.port

    assert ran.code == 0, ran.stderr
    shown = f"http://user:***@127.0.0.1:{port}/v1/chat/completions"
    assert json.loads(ran.stdout)["url"] == shown
    assert_nowhere(PASSWORD, ran, tmp_path)


def test_a_stop_naming_the_base_url_hides_its_password_everywhere(tmp_path: Path) -> None:
    table(tmp_path, rows=4)
    with FakeServer() as server:
        server.always = 404  # every chat request: the model or the URL is wrong
        config = write_config(tmp_path, with_password(server.base_url))
        ran = run_cli("run", str(config), "--no-progress", "--report", str(tmp_path / "r.html"))
        port = server.port

    assert ran.code == 3
    shown = f"model.base_url 'http://user:***@127.0.0.1:{port}/v1'"
    assert shown in ran.summary["stopped"]
    summary = json.loads((tmp_path / "out" / "answers.summary.json").read_text())
    assert shown in summary["stopped"]
    logged = json.loads((tmp_path / "out" / "store.runs.jsonl").read_text().splitlines()[-1])
    assert shown in logged["stopped"]
    assert (tmp_path / "r.html").is_file()
    assert_nowhere(PASSWORD, ran, tmp_path)


def test_an_endpoint_down_message_hides_the_base_url_password(tmp_path: Path) -> None:
    table(tmp_path, rows=20)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(
        tmp_path,
        f"http://user:{PASSWORD}@127.0.0.1:{port}/v1",
        run={"max_outage_s": 1, "max_retries": 0},
    )
    ran = run_cli("run", str(config), "--no-progress")

    assert ran.code == 3
    assert ran.summary["stopped"].startswith(
        f"the endpoint http://user:***@127.0.0.1:{port}/v1 is down: "
    )
    assert f"probing http://user:***@127.0.0.1:{port}/v1 for up to 1 s" in ran.stderr
    assert_nowhere(PASSWORD, ran, tmp_path)


# --- the hint when the key's variable is unset -----------------------------------------


@pytest.mark.parametrize("action", [["list"], ["show", "fake-model"]])
def test_models_name_the_unset_key_variable_on_a_401(action: list[str]) -> None:
    with FakeServer() as server:
        server.require_key = KEY
        ran = run_cli(
            "models",
            *action,
            "--base-url",
            server.base_url,
            "--api-key-env",
            "MYKEY",
            env={"MYKEY": ""},
        )

    what = "cannot list models" if action == ["list"] else "cannot read model 'fake-model'"
    assert ran.code == 2
    assert ran.stderr == (
        f"error: {what}: the endpoint refused the request (HTTP 401: Invalid API key) and the "
        "variable MYKEY is not set: put your API key there (--api-key-env)\n"
    )


def test_models_say_a_set_key_was_rejected_and_name_a_config_s_variable(tmp_path: Path) -> None:
    table(tmp_path)
    with FakeServer() as server:
        server.require_key = KEY
        rejected = run_cli(
            "models",
            "list",
            "--base-url",
            server.base_url,
            "--api-key-env",
            "MYKEY",
            env={"MYKEY": "sk-wrong"},
        )
        config = write_config(tmp_path, server.base_url)
        unset = run_cli("models", "list", "--config", str(config), env={"TEST_KEY": ""})
        accepted = run_cli("models", "list", "--config", str(config), env={"TEST_KEY": KEY})

    assert rejected.code == 2
    assert rejected.stderr == (
        "error: cannot list models: the endpoint rejected the API key (HTTP 401: Invalid API "
        "key): check the variable MYKEY\n"
    )
    assert unset.code == 2
    assert unset.stderr == (
        "error: cannot list models: the endpoint refused the request (HTTP 401: Invalid API "
        f"key) and the variable TEST_KEY is not set: put your API key there (model.api_key_env "
        f"in {config})\n"
    )
    assert accepted.code == 0 and accepted.stdout.split() == ["fake-model"]


def test_a_base_url_password_is_sent_as_basic_auth_and_not_beside_a_key(tmp_path: Path) -> None:
    table(tmp_path)
    with FakeServer() as server:
        config = write_config(tmp_path, with_password(server.base_url))
        both = run_cli("run", str(config), "--no-progress", env={"TEST_KEY": KEY})
        sent_with_both = server.count
        alone = run_cli("run", str(config), "--no-progress")
        headers = list(server.headers)

    assert both.code == 2 and sent_with_both == 0
    assert "carries a user name and password, and TEST_KEY holds a key" in both.stderr
    assert_nowhere(KEY, both, tmp_path)
    assert alone.code == 0, alone.stderr
    auth = {h.get("authorization") or h.get("Authorization") for h in headers}
    assert len(auth) == 1 and next(iter(auth)).startswith("Basic ")  # never a Bearer key
    assert_nowhere(PASSWORD, alone, tmp_path)
