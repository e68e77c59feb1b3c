"""Reading the input through the CLI: values reach the prompt and the output as written, and
an input that cannot be read as it should is named before anything is sent."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import Ran, run_cli, write_config
from fake_server import FakeServer, last_content

KEY = {"TEST_KEY": "sk-test-input"}
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # what may not reach a terminal


@pytest.fixture
def server() -> Any:
    with FakeServer() as fake:
        yield fake


def refused(ran: Ran, server: FakeServer) -> str:
    """The one-line error of a command stopped before sending (exit 2)."""
    assert ran.code == 2, ran.stderr
    assert "Traceback" not in ran.stderr and not CONTROL.search(ran.stderr), ran.stderr
    assert server.count == 0
    return ran.stderr


GOODS = b'a,zip,price,flag,note\nx,01234,1.50,True,\ny,00007,2.00,false,""\n'


@pytest.mark.parametrize("ext", ["csv", "tsv"])
def test_csv_values_reach_the_prompt_and_the_output_exactly_as_written(
    tmp_path: Path, server: FakeServer, ext: str
) -> None:
    data = GOODS if ext == "csv" else GOODS.replace(b",", b"\t")
    (tmp_path / f"in.{ext}").write_bytes(data)
    config = write_config(
        tmp_path,
        server.base_url,
        input={"path": f"in.{ext}"},
        prompt={"template": "zip {{ zip }} price {{ price }} flag {{ flag }}"},
        output={"path": f"out/answers.{ext}", "include_meta": False},
    )
    ran = run_cli("run", str(config), env=KEY)

    assert ran.code == 0, ran.stderr
    assert sorted(last_content(body) for body in server.requests) == [
        "zip 00007 price 2.00 flag false",  # sent concurrently: in any order
        "zip 01234 price 1.50 flag True",
    ]
    lines = (tmp_path / f"out/answers.{ext}").read_bytes().splitlines()
    sep = b"," if ext == "csv" else b"\t"
    assert lines == [
        sep.join([b"a", b"zip", b"price", b"flag", b"note", b"answer"]),
        # an empty field stays null (empty), a quoted "" stays the empty string
        sep.join([b"x", b"01234", b"1.50", b"True", b"", b"echo: zip 01234 price 1.50 flag True"]),
        sep.join(
            [b"y", b"00007", b"2.00", b"false", b'""', b"echo: zip 00007 price 2.00 flag false"]
        ),
    ]


def test_csv_columns_are_text_in_a_parquet_output_and_nulls_are_skipped(
    tmp_path: Path, server: FakeServer
) -> None:
    (tmp_path / "in.csv").write_bytes(b"id,zip\n1,01234\n2,\n3,0042\n")
    config = write_config(
        tmp_path,
        server.base_url,
        prompt={"template": "zip {{ zip }}", "skip_null": ["zip"]},
    )
    ran = run_cli("run", str(config), env=KEY)

    assert ran.code == 0, ran.stderr
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert out.schema["id"] == pl.String and out.schema["zip"] == pl.String
    assert out["zip"].to_list() == ["01234", None, "0042"]
    assert out["_status"].to_list() == ["ok", "skipped", "ok"]
    assert out["answer"].to_list() == ["echo: zip 01234", None, "echo: zip 0042"]


def test_ndjson_keeps_its_own_types(tmp_path: Path, server: FakeServer) -> None:
    (tmp_path / "in.ndjson").write_text('{"n": 7, "price": 1.5}\n{"n": 8, "price": 2.0}\n')
    config = write_config(
        tmp_path,
        server.base_url,
        input={"path": "in.ndjson"},
        prompt={"template": "{{ n }} {{ price }}"},
    )
    ran = run_cli("run", str(config), env=KEY)

    assert ran.code == 0, ran.stderr
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert out.schema["n"] == pl.Int64 and out.schema["price"] == pl.Float64
    assert out["answer"].to_list() == ["echo: 7 1.5", "echo: 8 2.0"]


def test_a_folder_as_input_is_called_a_folder(tmp_path: Path, server: FakeServer) -> None:
    (tmp_path / "data").mkdir()
    config = write_config(tmp_path, server.base_url, input={"path": "data"})
    for command in ("validate", "run"):
        stderr = refused(run_cli(command, str(config), env=KEY), server)
        assert f"input.path {tmp_path / 'data'} is a folder, not a file" in stderr
        assert "does not exist" not in stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "text\nhello\n".encode("utf-16"),
            "line 1 is not valid UTF-8 (byte 0xFF): the file starts with a UTF-16 byte "
            "order mark; set input.encoding: utf-16",
        ),
        (
            "text\nhello\n".encode("utf-16-le"),
            "line 1 holds a NUL byte (0x00), which UTF-8 text does not",
        ),
        (
            b"\x7fELF\x02\x01\x01\x00\x00\x1b[2J\n\x03\x00>\x00\n",  # an executable's start
            "line 1 holds a NUL byte (0x00), which UTF-8 text does not",
        ),
        (b"text\nfine\nbad\x00row\n", "line 3 holds a NUL byte (0x00)"),
        (b"text,caf\xe9\nhello,x\n", "line 1 is not valid UTF-8 (byte 0xE9); set input.encoding"),
    ],
    ids=["utf-16", "utf-16-le", "binary", "nul-in-row-3", "latin-1-header"],
)
def test_text_that_is_not_in_the_encoding_is_named_by_line(
    tmp_path: Path, server: FakeServer, content: bytes, message: str
) -> None:
    (tmp_path / "in.csv").write_bytes(content)
    config = write_config(tmp_path, server.base_url)
    for command in ("validate", "run"):
        stderr = refused(run_cli(command, str(config), env=KEY), server)
        assert f"cannot read input {tmp_path / 'in.csv'}: {message}" in stderr


def test_a_utf16_input_is_read_with_input_encoding(tmp_path: Path, server: FakeServer) -> None:
    (tmp_path / "in.csv").write_bytes("text\nnaïve 01\n".encode("utf-16"))
    config = write_config(tmp_path, server.base_url, input={"encoding": "utf-16"})
    ran = run_cli("run", str(config), env=KEY)

    assert ran.code == 0, ran.stderr
    assert [last_content(body) for body in server.requests] == ["naïve 01"]


def test_control_bytes_in_column_names_are_escaped_in_errors(
    tmp_path: Path, server: FakeServer
) -> None:
    (tmp_path / "in.csv").write_bytes(b"\x1b[31mred,\x07bell\nx,y\n")
    config = write_config(tmp_path, server.base_url)
    stderr = refused(run_cli("validate", str(config), env=KEY), server)

    assert r"its columns are: \x1b[31mred, \x07bell" in stderr


def test_a_bad_ndjson_line_is_named_with_its_start(tmp_path: Path, server: FakeServer) -> None:
    (tmp_path / "in.ndjson").write_text('{"text": "a"}\nnot json\n{"text": "c"}\n')
    config = write_config(tmp_path, server.base_url, input={"path": "in.ndjson"})
    stderr = refused(run_cli("run", str(config), env=KEY), server)

    assert (
        f"cannot read input {tmp_path / 'in.ndjson'}: line 2 is not valid JSON "
        "(Expecting value, column 1): 'not json'"
    ) in stderr


def test_a_repeated_header_name_is_an_error(tmp_path: Path, server: FakeServer) -> None:
    (tmp_path / "in.csv").write_text("text,a,a,b,b\nx,1,2,3,4\n")
    config = write_config(tmp_path, server.base_url)
    for command in ("validate", "run"):
        stderr = refused(run_cli(command, str(config), env=KEY), server)
        assert (
            f"cannot read input {tmp_path / 'in.csv'}: the header repeats 'a' (columns 2, 3); "
            "'b' (columns 4, 5)"
        ) in stderr
    assert not (tmp_path / "out/answers.parquet").exists()


@pytest.mark.parametrize("output", ["in.csv", "./sub/../in.csv"])
def test_an_output_path_equal_to_the_input_is_refused(
    tmp_path: Path, server: FakeServer, output: str
) -> None:
    (tmp_path / "in.csv").write_text("text\na\n")
    before = (tmp_path / "in.csv").read_bytes()
    (tmp_path / "sub").mkdir()
    config = write_config(tmp_path, server.base_url, output={"path": output})
    for command in ("validate", "run"):
        stderr = refused(run_cli(command, str(config), env=KEY), server)
        assert "is the input file (input.path" in stderr and "output.path" in stderr
        assert "set output.path to another file" in stderr
    assert (tmp_path / "in.csv").read_bytes() == before


def test_an_input_column_named_like_a_meta_column_names_include_meta(
    tmp_path: Path, server: FakeServer
) -> None:
    (tmp_path / "in.csv").write_text("text,_status\na,new\n")
    config = write_config(tmp_path, server.base_url)  # output.column: answer, include_meta
    for command in ("validate", "run"):
        stderr = refused(run_cli(command, str(config), env=KEY), server)
        assert (
            "input column '_status' has the name of a meta column that output.include_meta: "
            "true adds (_status, _error, _prompt_tokens, _completion_tokens, _attempts); "
            "rename the input column, or set output.include_meta: false"
        ) in stderr
        assert "rename it in output.column" not in stderr

    off = write_config(tmp_path, server.base_url, output={"include_meta": False})
    ran = run_cli("run", str(off), env=KEY)
    assert ran.code == 0, ran.stderr
    assert pl.read_parquet(tmp_path / "out/answers.parquet").columns == [
        "text",
        "_status",
        "answer",
    ]


def test_a_csv_gold_column_is_compared_as_written(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("text,truth\n1.50,1.50\n2.0,2\n007,007\n")
    with FakeServer(answer=last_content) as server:
        config = write_config(tmp_path, server.base_url, output={"gold": "truth"})
        ran = run_cli("run", str(config), env=KEY)

    assert ran.code == 0, ran.stderr
    evaluation = ran.summary["evaluation"]
    assert (evaluation["scored"], evaluation["correct"]) == (3, 2)  # "2.0" is not "2"
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert out["answer"].to_list() == ["1.50", "2.0", "007"]
