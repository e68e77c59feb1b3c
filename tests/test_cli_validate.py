"""`pipeline validate` end to end: it fails when a run could not do its job, and says ok only
once every check passed."""

from __future__ import annotations

import socket
from pathlib import Path

import polars as pl
from e2e import run_cli, write_config
from fake_server import FakeServer

SKIP_NULL = {"template": "{{ text }} {{ 1 / 0 }}", "skip_null": ["text"]}


def write_table(folder: Path) -> None:
    """Four rows, the third without text (skipped by prompt.skip_null: never rendered)."""
    texts = ["a", "b", None, "d"]
    pl.DataFrame({"id": [1, 2, 3, 4], "text": texts}).write_csv(folder / "in.csv")


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: a connection there is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_template_that_fails_on_every_rendered_row_fails(tmp_path: Path) -> None:
    write_table(tmp_path)
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url, prompt=SKIP_NULL)
        checked = run_cli("validate", str(config))
        assert server.count == 0
    assert checked.code == 2
    assert checked.stdout == ""
    assert (
        "error: the prompt fails on every row (3 of 3; 1 more skipped by prompt.skip_null); "
        "row 1: template error: ZeroDivisionError: division by zero"
    ) in checked.stderr


def test_a_template_that_fails_on_some_rendered_rows_warns(tmp_path: Path) -> None:
    write_table(tmp_path)
    prompt = {"template": "{{ 1 / (text != 'b') }}", "skip_null": ["text"]}
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url, prompt=prompt)
        checked = run_cli("validate", str(config))
    assert checked.code == 0, checked.stderr
    lines = checked.stdout.splitlines()
    assert lines[0].startswith("ok: 4 rows, ")
    assert lines[1].startswith(
        "warning: the prompt fails on 1 of 3 rows (1 more skipped by prompt.skip_null), "
        "which a run records as failed; first, row 2: "
    )


def test_an_endpoint_that_cannot_be_reached_fails_validate_and_names_the_key(
    tmp_path: Path,
) -> None:
    write_table(tmp_path)
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    config = write_config(tmp_path, dead)
    checked = run_cli("validate", str(config))
    assert checked.code == 3
    assert checked.stdout == ""  # no "ok:" line before the failure
    assert (
        f"stopped: cannot reach the endpoint {dead} (config key model.base_url): ConnectError: "
    ) in checked.stderr
    assert "check the address and that the server is up" in checked.stderr


def test_a_rejected_key_fails_validate_without_an_ok_line(tmp_path: Path) -> None:
    write_table(tmp_path)
    with FakeServer() as server:
        server.require_key = "sk-right"
        config = write_config(tmp_path, server.base_url, prompt={"skip_null": ["text"]})
        checked = run_cli("validate", str(config), env={"TEST_KEY": "sk-wrong"})
        good = run_cli("validate", str(config), env={"TEST_KEY": "sk-right"})
    assert checked.code == 3
    assert checked.stdout == ""
    assert "rejected the API key" in checked.stderr
    assert good.code == 0, good.stderr
    assert good.stdout.startswith("ok: 4 rows, 3 unique requests, 1 skipped")
