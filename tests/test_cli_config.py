"""Config mistakes met through the CLI: a key given twice, an empty --set value. Each stops
the command with exit 2 before anything is read or sent."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from e2e import run_cli, write_config
from fake_server import FakeServer


def table(folder: Path) -> None:
    pl.DataFrame({"text": ["a", "b"]}).write_csv(folder / "in.csv")


def test_a_second_run_section_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    table(tmp_path)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    text = config.read_text(encoding="utf-8")
    first = text.splitlines().index("run:") + 1
    config.write_text(text + "run:\n  concurrency: 1\n", encoding="utf-8")
    second = len(text.splitlines()) + 1

    for command in ("validate", "preview", "run"):
        ran = run_cli(command, str(config))
        assert ran.code == 2
        assert ran.stderr == (
            f"error: {config}: config key 'run' is defined twice, lines {first} and {second}; "
            "write it once (YAML would keep only the last)\n"
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("override", "unset"),
    [
        ("model.name=", ""),
        ("prompt.template=", ""),
        ("input.path=", ""),
        ("output.path=", ""),
        ("output.column=", ""),
        ("model.base_url=", ""),
        ("run.store=", " (null, or leaving the key out, means unset)"),
    ],
)
def test_an_empty_set_value_stops_the_run_before_sending(
    tmp_path: Path, override: str, unset: str
) -> None:
    table(tmp_path)
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url)
        ran = run_cli("run", str(config), "--set", override)
        assert server.count == 0 and server.gets == []

    key = override.rstrip("=")
    assert ran.code == 2
    assert ran.stderr == (
        f"error: {config}: config key '{key}' (from --set): may not be empty{unset}\n"
    )
    assert not (tmp_path / "out").exists()
