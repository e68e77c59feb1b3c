"""Config errors that quote what the user typed, through the CLI: a YAML line that does not
parse, a --set without its =, a value a check refuses. A key pasted there is shown as ***;
the file, line and column (or the --set's position) are still named. Each stops with exit 2
and nothing secret is printed or written."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e import Ran, run_cli, write_config
from test_cli_secrets import KEY, PASSWORD, assert_nowhere, line_of, table

TOKEN = "Xq7rT2mN9vB4kL8pW3zY6hJ1"  # no known prefix: a token by its shape alone


def broken(folder: Path, model_lines: str) -> Path:
    """A config whose model section ends with `model_lines` (YAML that may not parse)."""
    config = write_config(folder, "http://127.0.0.1:9/v1")
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("model:\n", f"model:\n{model_lines}", 1), encoding="utf-8")
    return config


def refused(folder: Path, secret: str, *args: str) -> Ran:
    """`pipeline run ARGS`, which exits 2 (a config error) before writing anything, and
    shows `secret` nowhere."""
    ran = run_cli("run", *args, "--no-progress")
    assert ran.code == 2
    assert_nowhere(secret, ran, folder)
    assert not (folder / "out").exists()
    return ran


# --- a config line YAML cannot parse ----------------------------------------------------


def test_an_unclosed_quote_around_a_key_names_line_and_column_but_not_the_key(
    tmp_path: Path,
) -> None:
    table(tmp_path)
    config = broken(tmp_path, f'  api_key_env: "{KEY}\n')
    line = line_of(config, KEY)
    ran = refused(tmp_path, KEY, str(config))
    checked = run_cli("validate", str(config))

    assert ran.stderr == (
        f"error: {config}: invalid YAML (line {line}): while scanning a quoted scalar, found "
        f"unexpected end of stream (column 16); line {line} is: api_key_env: ***\n"
    )
    assert (checked.code, checked.stderr) == (2, ran.stderr)


def test_a_header_s_value_on_a_broken_line_is_not_shown(tmp_path: Path) -> None:
    table(tmp_path)
    config = broken(tmp_path, f"  headers: {{X-Trace: on, Authorization: Bearer {PASSWORD}]\n")
    line = line_of(config, PASSWORD)
    ran = refused(tmp_path, PASSWORD, str(config))

    assert ran.stderr == (
        f"error: {config}: invalid YAML (line {line}): while parsing a flow mapping, expected "
        f"',' or '}}', but got ']' (column 57); line {line} is: headers: {{X-Trace: on, "
        "Authorization: ***\n"
    )


@pytest.mark.parametrize("secret", [KEY, TOKEN])
def test_a_token_anywhere_on_a_broken_line_is_not_shown(tmp_path: Path, secret: str) -> None:
    table(tmp_path)
    config = broken(tmp_path, f'  name: "fake-model" {secret}\n')
    line = line_of(config, secret)
    ran = refused(tmp_path, secret, str(config))

    assert ran.stderr == (
        f"error: {config}: invalid YAML (line {line}): while parsing a block mapping, "
        f"expected <block end>, but found '<scalar>' (column 22); line {line} is: name: "
        '"fake-model" ***\n'
    )


def test_yaml_s_own_words_do_not_quote_the_key(tmp_path: Path) -> None:
    table(tmp_path)
    config = broken(tmp_path, f"  name: *{KEY}\n")  # YAML names the undefined alias
    line = line_of(config, KEY)
    ran = refused(tmp_path, KEY, str(config))

    assert ran.stderr == (
        f"error: {config}: invalid YAML (line {line}): found undefined alias '***' (column 9); "
        f"line {line} is: name: ****\n"
    )


def test_a_broken_line_without_a_secret_is_shown_as_it_is(tmp_path: Path) -> None:
    table(tmp_path)
    config = broken(tmp_path, '  name: "claude-3-5-sonnet-20241022\n')
    line = line_of(config, "claude")

    ran = run_cli("validate", str(config))

    assert ran.code == 2
    assert ran.stderr.endswith(f'(column 9); line {line} is: name: "claude-3-5-sonnet-20241022\n')


# --- a --set without its = ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "shown"),
    [
        (f"model.api_key_env {KEY}", "model.api_key_env ***"),
        (f"model.api_key_env {PASSWORD}", "model.api_key_env ***"),  # short, after a key's name
        (KEY, "***"),
        (TOKEN, "***"),
    ],
)
def test_a_set_without_equals_is_named_by_position_and_shown_masked(
    tmp_path: Path, item: str, shown: str
) -> None:
    table(tmp_path)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    secret = item.split()[-1]
    ran = refused(tmp_path, secret, str(config), "--set", "run.concurrency=2", "--set", item)

    assert ran.stderr == (
        f"error: --set #2 expects KEY=VALUE, e.g. run.concurrency=8; got {shown!r}\n"
    )


def test_a_set_without_equals_and_without_a_secret_is_shown_as_it_is(tmp_path: Path) -> None:
    table(tmp_path)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    ran = run_cli("validate", str(config), "--set", "run.concurrency 8")

    assert ran.code == 2
    assert ran.stderr == (
        "error: --set #1 expects KEY=VALUE, e.g. run.concurrency=8; got 'run.concurrency 8'\n"
    )


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_key_typed_after_set_with_a_space_is_not_echoed_by_the_parser(
    tmp_path: Path, command: str
) -> None:
    table(tmp_path)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    ran = run_cli(command, str(config), "--set", "model.api_key_env", KEY)

    assert ran.code == 2
    assert ran.stderr.endswith("pipeline: error: unrecognized arguments: ***\n")
    assert_nowhere(KEY, ran, tmp_path)
    assert not (tmp_path / "out").exists()


# --- values a check refuses ---------------------------------------------------------------


def test_a_refused_value_that_looks_like_a_key_is_masked(tmp_path: Path) -> None:
    table(tmp_path)
    config = write_config(
        tmp_path, "http://127.0.0.1:9/v1", run={"concurrency": KEY, "batch": {"deadline": KEY}}
    )
    ran = refused(tmp_path, KEY, str(config), "--set", f"input.encoding={KEY}")

    assert ran.stderr == (
        f"error: {config}: config key 'input.encoding' (from --set): Value error, unknown "
        "encoding '***': use utf8, utf8-lossy or a Python codec name such as cp1252 or "
        f"latin-1; config key 'run.batch.deadline' (line {line_of(config, 'deadline')}): "
        "Value error, '***' is not a duration such as 6h, 90m or 45s; config key "
        f"'run.concurrency' (line {line_of(config, 'concurrency')}): Input should be a valid "
        "integer, unable to parse string as an integer\n"
    )


def test_an_unknown_key_that_is_a_key_is_masked(tmp_path: Path) -> None:
    table(tmp_path)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    ran = refused(tmp_path, KEY, str(config), "--set", f"run.{KEY}=1")

    assert ran.stderr == f"error: {config}: unknown key 'run.***' (from --set)\n"


def test_refused_values_without_a_secret_are_still_shown(tmp_path: Path) -> None:
    table(tmp_path)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    ran = run_cli("validate", str(config), "--set", "input.encoding=klingon")

    assert ran.code == 2
    assert "unknown encoding 'klingon'" in ran.stderr
