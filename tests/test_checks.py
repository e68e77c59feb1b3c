"""Unit tests for `pipeline.checks`: the output against the input, new columns against the
input's columns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.checks import check_new_columns, check_output
from pipeline.config import Config
from pipeline.errors import ConfigError, InputError


def config(tmp_path: Path, **output: Any) -> Config:
    return Config.model_validate(
        {
            "input": {"path": str(tmp_path / "in.csv")},
            "prompt": {"template": "{{ text }}"},
            "model": {"base_url": "http://127.0.0.1:9/v1", "name": "m"},
            "output": {"path": str(tmp_path / "out.csv"), **output},
        }
    )


def test_an_output_that_is_the_input_by_another_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("text\na\n")
    os.link(tmp_path / "in.csv", tmp_path / "linked.csv")
    (tmp_path / "alias.csv").symlink_to(tmp_path / "in.csv")
    for output in ("linked.csv", "alias.csv", "sub/../in.csv"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(ConfigError) as info:
            check_output(tmp_path / output, tmp_path / "in.csv")
        assert str(info.value) == (
            f"output.path {tmp_path / output} is the input file (input.path "
            f"{tmp_path / 'in.csv'}): the run would overwrite its own input; set output.path "
            "to another file"
        )


def test_an_output_beside_the_input_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("text\na\n")
    check_output(tmp_path / "in.parquet", tmp_path / "in.csv")
    check_output(tmp_path / "new/out.csv", tmp_path / "in.csv")  # neither exists yet


def test_an_answer_column_in_the_input_is_named_with_its_key(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        check_new_columns(config(tmp_path, column="text"), ["text"])
    assert str(info.value) == (
        "output column 'text' already exists in the input; rename it in output.column"
    )


def test_a_meta_column_in_the_input_names_include_meta_not_the_answer_column(
    tmp_path: Path,
) -> None:
    with pytest.raises(InputError) as info:
        check_new_columns(config(tmp_path, include_meta=True), ["text", "_error"])
    message = str(info.value)
    assert message.startswith("input column '_error' has the name of a meta column that ")
    assert message.endswith("or set output.include_meta: false")
    assert "output.column" not in message

    check_new_columns(config(tmp_path, include_meta=False), ["text", "_error"])


def test_column_names_in_errors_have_control_characters_escaped(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        check_new_columns(config(tmp_path, gold="truth"), ["text", "\x1b[2Jx\x00"])
    assert str(info.value) == (
        "output.gold: the input has no column 'truth' (it has text, \\x1b[2Jx\\x00)"
    )
