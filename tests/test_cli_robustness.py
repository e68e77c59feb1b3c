"""Hostile answers, bad templates and bad outputs, through the CLI: every row survives and
every exit code tells the truth (one test per case the robustness issue lists)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
from e2e import run_cli, write_config
from fake_server import FakeServer, last_content

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer"}, "word": {"type": "string"}},
    "required": ["n"],
}


def texts(folder: Path, values: list[str]) -> None:
    pl.DataFrame({"id": range(len(values)), "text": values}).write_csv(folder / "in.csv")


def hostile(body: dict[str, Any]) -> str:
    """JSON answers, except for rows that ask for something hostile."""
    text = last_content(body)
    if "deep" in text:
        return "[" * 5000
    if "huge" in text:
        return '{"n": 100000000000000000000000000000, "word": "big"}'
    return json.dumps({"n": len(text), "word": text})


def run_log(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "out/store.runs.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def output(folder: Path, name: str = "answers.parquet") -> pl.DataFrame:
    return pl.read_parquet(folder / "out" / name)


@pytest.mark.parametrize("reasks", [0, 1])
def test_deeply_nested_and_out_of_range_answers_are_invalid_and_never_block(
    tmp_path: Path, reasks: int
) -> None:
    texts(tmp_path, ["fine", "deep", "huge", "also fine"])
    with FakeServer(answer=hostile) as server:
        json_output = {"parse": "json", "schema": SCHEMA, "retry_invalid": reasks}
        config = write_config(tmp_path, server.base_url, output=json_output)
        ran = run_cli("run", str(config), timeout=60)  # it used to hang with re-asks
        assert ran.code == 1, ran.stderr
        assert "Traceback" not in ran.stderr
        out = output(tmp_path)
        assert out["_status"].to_list() == ["ok", "invalid", "invalid", "ok"]
        assert out["n"].to_list() == [4, None, None, 9]
        errors = out["_error"].to_list()
        assert "not JSON" in errors[1] and "out of range" in errors[2]
        assert server.count == 4 + 2 * reasks  # each invalid answer asked again once
        for command in ("run", "reparse"):  # what the store holds never crashes a later run
            again = run_cli(command, str(config), timeout=60)
            assert again.code == 1 and "Traceback" not in again.stderr, again.stderr
            assert again.summary["invalid"] == 2 and again.summary["requests_sent"] == 0


def test_a_template_error_fails_its_row_and_the_rest_are_answered(tmp_path: Path) -> None:
    prices = pl.DataFrame({"id": [1, 2, 3, 4], "price": [10.0, None, 0.0, 2.5]})
    prices.write_parquet(tmp_path / "in.parquet")  # typed: CSV columns are text
    with FakeServer() as server:
        config = write_config(
            tmp_path,
            server.base_url,
            input={"path": "in.parquet"},
            prompt={"template": "{{ price * 1.2 }} {{ 1 / price }}"},
        )
        checked = run_cli("validate", str(config))
        assert checked.code == 0, checked.stderr
        assert "fails on 2 of 4 rows" in checked.stdout and "row 2:" in checked.stdout
        ran = run_cli("run", str(config))
        assert ran.code == 1 and "Traceback" not in ran.stderr
        out = output(tmp_path)
        assert out["_status"].to_list() == ["ok", "failed", "failed", "ok"]
        assert "TypeError" in out["_error"][1] and "ZeroDivisionError" in out["_error"][2]
        assert server.count == 2 and ran.summary["failed"] == 2
        preview = run_cli("preview", str(config))
        assert preview.code == 0 and json.loads(preview.stdout)["rows"] == 4


def test_a_template_that_fails_on_every_row_fails_validate(tmp_path: Path) -> None:
    texts(tmp_path, ["a", "b", "c"])
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url, prompt={"template": "{{ text.nope }}"})
        checked = run_cli("validate", str(config))
        assert checked.code == 2 and "fails on every row (3 of 3)" in checked.stderr
        assert "nope" in checked.stderr
        ran = run_cli("run", str(config))
        assert ran.code == 1 and ran.summary["failed"] == 3 and server.count == 0


def test_an_answer_column_named_like_a_meta_column_is_refused_before_sending(
    tmp_path: Path,
) -> None:
    texts(tmp_path, ["a", "b"])
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url, output={"column": "_status"})
        for command in ("validate", "run"):
            ran = run_cli(command, str(config))
            assert ran.code == 2 and "meta column" in ran.stderr, ran.stderr
            assert "Traceback" not in ran.stderr
        assert server.count == 0
        assert ran.summary["exit_code"] == 2 and "_status" in ran.summary["error"]


class Odd(FakeServer):
    """Answers whose message content is a list of parts, null or filtered."""

    def _completion(self, body: dict[str, Any], serial: int) -> dict[str, Any]:
        payload = super()._completion(body, serial)
        choice = payload["choices"][0]
        text = last_content(body)
        if "parts" in text:
            choice["message"]["content"] = [
                {"type": "text", "text": "one "},
                {"type": "text", "text": "two"},
            ]
        elif "null" in text:
            choice["message"]["content"] = None
        elif "gone" in text:
            del choice["message"]
        elif "filtered" in text:
            choice["message"]["content"] = None
            choice["finish_reason"] = "content_filter"
        return payload


def test_content_parts_are_joined_and_missing_content_fails_its_row(tmp_path: Path) -> None:
    texts(tmp_path, ["parts", "null", "gone", "filtered", "plain"])
    with Odd() as server:
        config = write_config(tmp_path, server.base_url, run={"max_retries": 1})
        ran = run_cli("run", str(config))
        assert ran.code == 1, ran.stderr
        out = output(tmp_path)
        assert out["_status"].to_list() == ["ok", "failed", "failed", "failed", "ok"]
        assert out["answer"][0] == "one two"
        assert "content_filter" in out["_error"][3]
        assert server.count_matching("null") == 2  # retried: it may pass next time
        assert server.count_matching("filtered") == 1  # not retried in this run
        sent = server.count
        again = run_cli("run", str(config))
        assert again.code == 1 and server.count > sent  # failed rows are asked again


def test_a_parquet_input_corrupt_part_way_stops_with_exit_5_and_keeps_the_answers(
    tmp_path: Path,
) -> None:
    rows = 3000
    frame = pl.DataFrame({"id": range(rows), "text": [f"row {i} " + "x" * 40 for i in range(rows)]})
    frame.write_parquet(tmp_path / "good.parquet", row_group_size=500)
    data = bytearray((tmp_path / "good.parquet").read_bytes())
    column = pq.ParquetFile(tmp_path / "good.parquet").metadata.row_group(4).column(1)
    at = column.data_page_offset + 40
    data[at : at + 200] = b"\xff" * 200  # the fifth of six row groups can't be read
    (tmp_path / "in.parquet").write_bytes(bytes(data))
    with FakeServer() as server:
        config = write_config(
            tmp_path,
            server.base_url,
            input={"path": "in.parquet"},
            run={"chunk_rows": 500, "concurrency": 8},
        )
        ran = run_cli("run", str(config), "--no-progress")
        assert ran.code == 5, ran.stderr
        assert "Traceback" not in ran.stderr and "stopped part-way" in ran.stderr
        assert "cannot read input" in ran.stderr and "kept in the store" in ran.stderr
        summary = ran.summary
        assert summary["exit_code"] == 5 and summary["requests_sent"] == server.count == 2000
        assert not (tmp_path / "out/answers.parquet").exists()
        assert run_log(tmp_path)[-1]["exit_code"] == 5

        (tmp_path / "in.parquet").write_bytes((tmp_path / "good.parquet").read_bytes())
        sent = server.count
        done = run_cli("run", str(config), "--no-progress")
        assert done.code == 0, done.stderr
        assert done.summary["requests_sent"] == server.count - sent == rows - sent


@pytest.mark.parametrize(
    ("output_section", "expected"),
    [
        ({"path": "blocker/out.csv"}, "cannot write in"),
        ({"path": "out/answers.xlsx"}, "unknown table format '.xlsx'"),
    ],
)
def test_an_unusable_output_is_found_before_sending(
    tmp_path: Path, output_section: dict[str, str], expected: str
) -> None:
    texts(tmp_path, ["a", "b"])
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url, output=output_section)
        for command in ("validate", "run"):
            ran = run_cli(command, str(config))
            assert ran.code == 2 and expected in ran.stderr, (command, ran.stderr)
            assert "Traceback" not in ran.stderr
        assert server.count == 0


def test_a_missing_api_key_is_found_by_validate_and_before_sending(tmp_path: Path) -> None:
    texts(tmp_path, ["a"])
    config = write_config(tmp_path, "https://models.example.invalid/v1")
    for command in ("validate", "run"):
        ran = run_cli(command, str(config), env={"TEST_KEY": ""})
        assert ran.code == 2 and "TEST_KEY is not set" in ran.stderr, ran.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [(["run", "--limit", "-1"], "expected 1 or more"), (["preview", "-n", "-1"], "0 or more")],
)
def test_negative_counts_are_argument_errors(tmp_path: Path, args: list[str], said: str) -> None:
    texts(tmp_path, ["a"])
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    ran = run_cli(args[0], str(config), *args[1:])
    assert ran.code == 2 and said in ran.stderr and "Traceback" not in ran.stderr


def test_a_header_only_input_says_so_and_writes_an_empty_output(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id,text\n")
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url)
        ran = run_cli("run", str(config))
        assert ran.code == 0 and ran.summary["rows"] == 0
        assert "has no rows" in ran.stderr
        assert output(tmp_path).height == 0 and server.count == 0


@pytest.mark.parametrize(
    ("key", "expected"),
    [("wrong-key", "rejected the API key"), ("", "TEST_KEY is not set")],
)
def test_a_key_refused_at_the_model_check_stops_before_the_first_request(
    tmp_path: Path, key: str, expected: str
) -> None:
    texts(tmp_path, ["a", "b"])
    with FakeServer() as server:
        server.require_key = "the-right-key"
        config = write_config(tmp_path, server.base_url)
        checked = run_cli("validate", str(config), env={"TEST_KEY": key})
        assert checked.code == 3 and expected in checked.stderr, checked.stderr
        ran = run_cli("run", str(config), env={"TEST_KEY": key})
        assert ran.code == 3 and expected in ran.stderr, ran.stderr
        assert "wrong-key" not in ran.stderr + ran.stdout  # the key itself is never shown
        assert server.count == 0
        assert ran.summary["stopped"] and run_log(tmp_path)[-1]["exit_code"] == 3
        assert "wrong-key" not in (tmp_path / "out/store.runs.jsonl").read_text()


def test_a_run_stopped_at_the_model_check_leaves_a_summary_and_a_run_log_line(
    tmp_path: Path,
) -> None:
    texts(tmp_path, ["a"])
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url, model={"name": "no-such-model"})
        ran = run_cli("run", str(config))
        assert ran.code == 3 and "does not serve model 'no-such-model'" in ran.stderr
        assert ran.summary["exit_code"] == 3 and server.count == 0
        assert (tmp_path / "out/answers.summary.json").exists()
        assert run_log(tmp_path)[-1]["stopped"] == ran.summary["stopped"]


def test_an_internal_error_is_one_line_and_its_traceback_goes_to_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline import cli, runcmds

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    texts(tmp_path, ["a"])
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(runcmds, "run", broken)
    assert cli.main(["run", str(config)]) == 6
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" in err and "KeyError" in err
    [trace] = (tmp_path / "out").glob("pipeline-error-*.log")
    assert "Traceback" in trace.read_text() and str(trace) in err


def test_chat_requests_refused_with_the_key_variable_unset_say_it_is_unset(
    tmp_path: Path,
) -> None:
    texts(tmp_path, [f"row {i}" for i in range(8)])
    with FakeServer() as server:
        server.always = 401
        config = write_config(tmp_path, server.base_url, run={"concurrency": 1})
        ran = run_cli("run", str(config), env={"TEST_KEY": ""})
        assert ran.code == 3 and "TEST_KEY is not set" in ran.stderr, ran.stderr
        assert server.count == 3
