"""`pipeline status` through the CLI: rows by state, the last run, the exit code."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import polars as pl
from e2e import run_cli, write_config
from fake_server import FakeServer, last_content

LABELS = {"output": {"parse": "label", "labels": ["yes", "no"]}}


def status(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    ran = run_cli("status", str(config), *args)
    assert ran.code in (0, 1), ran.stderr
    return ran.code, json.loads(ran.stdout)


def counts(report: dict[str, Any]) -> dict[str, int]:
    names = ("rows", "done", "invalid", "failed", "pending", "skipped", "row_errors")
    return {name: report[name] for name in names}


def label_answer(body: dict[str, Any]) -> str:
    """A label for most prompts; "maybe", which is none of the labels, for "unsure" ones."""
    text = last_content(body)
    return "maybe" if "unsure" in text else "yes" if "good" in text else "no"


def test_status_counts_every_state_and_the_last_run(tmp_path: Path) -> None:
    pl.DataFrame(
        {
            "text": ["good 1", "bad 2", "unsure 3", "good 4", "refused 5", None, "good 7"],
            "n": [1, 1, 1, 1, 1, 1, 0],  # 10 // 0 fails in the template
        }
    ).write_csv(tmp_path / "in.csv")
    template = {"template": "{{ text }} ({{ 10 // (n | int) }})", "skip_null": ["text"]}
    with FakeServer(answer=label_answer) as server:
        server.script("refused", [400])
        config = write_config(tmp_path, server.base_url, prompt=template, **LABELS)

        code, before = status(config)
        assert code == 1 and before["last_run"] is None
        assert counts(before) == {
            **counts(before),
            **{"rows": 7, "done": 0, "pending": 5, "skipped": 1, "row_errors": 1},
        }
        assert "row 7" in before["first_row_error"]
        assert server.count == 0 and server.gets == []

        assert run_cli("run", str(config)).code == 1
        code, after = status(config)
    expected = {"done": 3, "invalid": 1, "failed": 1, "pending": 0, "skipped": 1, "row_errors": 1}
    assert code == 1 and counts(after) == {"rows": 7, **expected}
    assert after["last_run"]["command"] == "run" and after["last_run"]["exit_code"] == 1
    assert after["last_run"]["date"].startswith("20")
    assert after["store"] == str(tmp_path / "out" / "store.db")

    code, as_text = status(config, "--set", "output.parse=text")  # every answer parses
    assert code == 1 and (as_text["done"], as_text["invalid"]) == (4, 0)


def test_status_exits_0_when_every_row_is_done_or_skipped(tmp_path: Path) -> None:
    texts = [f"good {i}" if i % 10 else None for i in range(60)]
    pl.DataFrame({"text": texts}).write_csv(tmp_path / "in.csv")
    with FakeServer(answer=label_answer) as server:
        config = write_config(
            tmp_path,
            server.base_url,
            prompt={"skip_null": ["text"]},
            run={"chunk_rows": 25},
            **LABELS,
        )
        code, limited = status(config, "--limit", "5")
        assert code == 1 and (limited["rows"], limited["pending"]) == (5, 4)
        assert run_cli("run", str(config)).code == 0
        sent = server.count
        code, report = status(config)  # the memo's counts: no chunk rendered
        assert code == 0 and server.count == sent
    assert counts(report) == {
        "rows": 60,
        "done": 54,
        "invalid": 0,
        "failed": 0,
        "pending": 0,
        "skipped": 6,
        "row_errors": 0,
    }
    assert report["last_run"]["exit_code"] == 0 and report["first_row_error"] is None
    code, rows_changed = status(config, "--set", "output.labels=[maybe]")  # none parses
    assert code == 1 and rows_changed["invalid"] == 54


def test_status_follows_the_stored_re_asks(tmp_path: Path) -> None:
    pl.DataFrame({"text": ["good 1", "flaky 2"]}).write_csv(tmp_path / "in.csv")
    asked: list[str] = []
    lock = threading.Lock()

    def flaky_once(body: dict[str, Any]) -> str:
        with lock:
            asked.append(last_content(body))
            first = asked.count(last_content(body)) == 1
        return "maybe" if first and "flaky" in last_content(body) else "yes"

    with FakeServer(answer=flaky_once) as server:
        output = {**LABELS["output"], "retry_invalid": 1}
        config = write_config(tmp_path, server.base_url, output=output)
        assert run_cli("run", str(config)).code == 0
        code, report = status(config)
    assert code == 0 and (report["done"], report["invalid"]) == (2, 0)
    assert asked.count("flaky 2") == 2
    unmemoised = ("--set", "output.include_meta=false")  # a memo miss: each row looked up
    code, report = status(config, *unmemoised)
    assert code == 0 and (report["done"], report["invalid"]) == (2, 0)
    code, report = status(config, *unmemoised, "--set", "output.retry_invalid=0")
    assert code == 1 and (report["done"], report["invalid"]) == (1, 1)  # the first answer


def test_status_names_the_line_of_undecodable_input_and_the_encoding_key(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_bytes(b"text\ncafe\ncaf\xe9\n")
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")

    ran = run_cli("status", str(config))
    assert ran.code == 2
    assert "line 3 is not valid UTF-8" in ran.stderr and "input.encoding" in ran.stderr
    code, report = status(config, "--set", "input.encoding=cp1252")
    assert code == 1 and report["pending"] == 2
