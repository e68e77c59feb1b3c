"""End to end through the CLI against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import run_cli, write_config
from fake_server import FakeServer, last_content

SECRET = "sk-test-0123456789abcdefghijklmnop"


def label(body: dict[str, Any]) -> str:
    return f"  label-{last_content(body)}.\n"


@pytest.fixture
def server() -> Any:
    with FakeServer(answer=label) as fake:
        yield fake


def make_table(folder: Path, n: int, *, dup_every: int = 0) -> pl.DataFrame:
    texts = [f"row-{i}" if not dup_every or i % dup_every else "dup" for i in range(n)]
    frame = pl.DataFrame({"id": list(range(n)), "text": texts, "score": [i / 2 for i in range(n)]})
    frame.write_csv(folder / "in.csv")
    return frame


def test_every_row_answered_in_order_and_rerun_sends_nothing(tmp_path: Path, server: FakeServer):
    frame = make_table(tmp_path, 40, dup_every=10)
    config = write_config(tmp_path, server.base_url)
    ran = run_cli("run", str(config), env={"TEST_KEY": SECRET})
    assert ran.code == 0, ran.stderr
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert out.columns == [
        "id",
        "text",
        "score",
        "answer",
        "_status",
        "_error",
        "_prompt_tokens",
        "_completion_tokens",
        "_attempts",
    ]
    # CSV columns are text, each value as the file holds it ("0.5", not 0.5)
    assert out.select("id", "text", "score").equals(frame.select(pl.all().cast(pl.String)))
    assert out["id"].dtype == pl.String and out["score"].to_list()[:3] == ["0.0", "0.5", "1.0"]
    assert out["answer"].to_list() == [f"label-{t}." for t in frame["text"]]
    assert set(out["_status"]) == {"ok"}
    unique = frame["text"].n_unique()
    assert server.count == unique  # identical requests are sent once
    assert all(h["authorization"] == f"Bearer {SECRET}" for h in server.headers)
    summary = ran.summary
    assert summary["rows"] == 40 and summary["answered"] == 40
    assert summary["requests_sent"] == unique and summary["failed"] == 0
    on_disk = json.loads((tmp_path / "out/answers.summary.json").read_text())
    assert on_disk["rows"] == 40

    again = run_cli("run", str(config), env={"TEST_KEY": SECRET})
    assert again.code == 0, again.stderr
    assert server.count == unique
    assert again.summary["requests_sent"] == 0 and again.summary["from_store"] == 40
    assert pl.read_parquet(tmp_path / "out/answers.parquet").equals(out)

    # The key never lands anywhere the tool writes.
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    for text in [ran.stdout, ran.stderr, again.stdout, again.stderr]:
        assert SECRET not in text
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path


def test_transient_failures_are_retried_until_answered(tmp_path: Path, server: FakeServer):
    make_table(tmp_path, 12)
    server.script("row-1", ["429:retry-after=0.2", 200])
    server.script("row-2", [500, 503])
    server.script("row-3", ["drop"])
    server.script("row-4", ["truncate"])
    server.script("row-5", ["nochoices", "429"])
    config = write_config(tmp_path, server.base_url)
    ran = run_cli("run", str(config), "--set", "run.concurrency=3")
    assert ran.code == 0, ran.stderr
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert out["answer"].to_list() == [f"label-row-{i}." for i in range(12)]
    assert out.filter(pl.col("id") == "2")["_attempts"].item() == 3
    assert out.filter(pl.col("id") == "5")["_attempts"].item() == 3
    assert server.count == 12 + 7
    assert ran.summary["retries"] == 7 and ran.summary["requests_sent"] == 19


def test_client_error_is_recorded_on_the_row_and_retried_next_run(
    tmp_path: Path, server: FakeServer
):
    make_table(tmp_path, 6)
    server.script("row-3", [400])
    config = write_config(tmp_path, server.base_url)
    ran = run_cli("run", str(config))
    assert ran.code == 1
    assert "1 row failed" in ran.stderr
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    row = out.filter(pl.col("id") == "3")
    assert row["answer"].item() is None and row["_status"].item() == "failed"
    assert "temperature must be <= 2" in row["_error"].item()
    assert server.count_matching("row-3") == 1  # a 400 is not retried
    status = json.loads(run_cli("status", str(config)).stdout)
    assert status == {**status, "rows": 6, "done": 5, "failed": 1, "pending": 0}

    again = run_cli("run", str(config))
    assert again.code == 0, again.stderr
    assert again.summary["requests_sent"] == 1
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert out["answer"].to_list() == [f"label-row-{i}." for i in range(6)]


def test_rejected_key_stops_the_run_and_keeps_what_was_answered(tmp_path: Path, server: FakeServer):
    make_table(tmp_path, 60)
    config = write_config(tmp_path, server.base_url, run={"concurrency": 2})
    first = run_cli("run", str(config), "--limit", "10", env={"TEST_KEY": "old-key"})
    assert first.code == 0, first.stderr
    server.always = 401
    ran = run_cli("run", str(config), env={"TEST_KEY": "wrong-key"})
    assert ran.code == 3
    assert "Invalid API key" in ran.stderr and "TEST_KEY" in ran.stderr
    assert "wrong-key" not in ran.stderr + ran.stdout
    assert server.count <= 10 + 3 + 2  # stops within the requests in flight
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert out.height == 60
    assert out["answer"].head(10).to_list() == [f"label-row-{i}." for i in range(10)]
    assert set(out["_status"].tail(45)) == {"pending"}
    assert ran.summary["stopped"] and ran.summary["from_store"] == 10


def test_missing_template_column_is_a_clear_error_and_sends_nothing(
    tmp_path: Path, server: FakeServer
):
    make_table(tmp_path, 3)
    config = write_config(tmp_path, server.base_url, prompt={"template": "{{ body }}"})
    ran = run_cli("run", str(config))
    assert ran.code == 2
    assert "'body'" in ran.stderr and "id, text, score" in ran.stderr
    assert "Traceback" not in ran.stderr
    assert server.count == 0
    assert not (tmp_path / "out/answers.parquet").exists()


BASE = "input: {path: in.csv}\nprompt: {template: x}\noutput: {path: o.csv}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("input: {path: in.csv\n", "invalid YAML"),
        (
            BASE + "run: {concurency: 2}\n",
            "unknown key 'run.concurency' (line 4)",
        ),
        (
            BASE + "run:\n  timeout_s: soon\n",
            "'run.timeout_s' (line 5)",
        ),
        ("input: {path: in.csv}\noutput: {path: o.csv}\n", "missing required key 'prompt'"),
        (
            "input: {path: missing.csv}\nprompt: {template: x}\noutput: {path: o.csv}\n",
            "does not exist",
        ),
    ],
)
def test_config_and_input_errors_exit_2_with_one_message(tmp_path: Path, text: str, expected: str):
    make_table(tmp_path, 2)
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    for command in ("run", "validate", "preview", "status"):
        ran = run_cli(command, str(config))
        assert ran.code == 2, (command, ran.stderr)
        assert expected in ran.stderr and "Traceback" not in ran.stderr


def test_preview_and_validate_send_nothing(tmp_path: Path, server: FakeServer):
    make_table(tmp_path, 7)
    config = write_config(
        tmp_path, server.base_url, prompt={"system": "Be brief.", "template": "Say {{ text }}"}
    )
    ran = run_cli("preview", str(config), "-n", "2")
    assert ran.code == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report["rows"] == 7 and len(report["requests"]) == 2
    assert report["requests"][1]["body"] == {
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say row-1"},
        ],
        "temperature": 0,
        "max_tokens": 8,
    }
    assert report["estimated_tokens"] > 7 * 8
    assert run_cli("validate", str(config)).code == 0
    assert server.count == 0


def test_formats_nulls_skip_and_limit(tmp_path: Path, server: FakeServer):
    pl.DataFrame({"n": [1, 2, 3, 4], "text": ["a", None, "c", "d"]}).write_ndjson(
        tmp_path / "in.ndjson"
    )
    config = write_config(
        tmp_path,
        server.base_url,
        input={"path": "in.ndjson"},
        prompt={"template": "[{{ text }}]"},
        output={"path": "out/answers.csv", "include_meta": False},
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out/answers.csv").write_text("a complete output\n")
    ran = run_cli("run", str(config), "--limit", "3")
    assert ran.code == 0, ran.stderr
    assert "out/answers.first-3.csv" in ran.stderr and "left as it was" in ran.stderr
    assert (tmp_path / "out/answers.csv").read_text() == "a complete output\n"
    assert ran.summary["output"].endswith("answers.first-3.csv")
    out = pl.read_csv(tmp_path / "out/answers.first-3.csv")
    assert out.to_dicts() == [
        {"n": 1, "text": "a", "answer": "label-[a]."},
        {"n": 2, "text": None, "answer": "label-[]."},
        {"n": 3, "text": "c", "answer": "label-[c]."},
    ]
    skip = write_config(
        tmp_path,
        server.base_url,
        input={"path": "in.ndjson"},
        prompt={"template": "[{{ text }}]", "skip_null": ["text"]},
        output={"path": "out/skip.parquet"},
    )
    ran = run_cli("run", str(skip))
    assert ran.code == 0, ran.stderr
    out = pl.read_parquet(tmp_path / "out/skip.parquet")
    assert out["_status"].to_list() == ["ok", "skipped", "ok", "ok"]
    assert out["answer"].to_list() == ["label-[a].", None, "label-[c].", "label-[d]."]
    assert ran.summary["skipped"] == 1


def test_a_second_run_on_the_same_store_exits_4(tmp_path: Path, server: FakeServer):
    from pipeline.lock import Lock

    make_table(tmp_path, 2)
    config = write_config(tmp_path, server.base_url)
    with Lock(tmp_path / "out/store.db"):
        ran = run_cli("run", str(config))
    assert ran.code == 4 and "another run" in ran.stderr
    assert run_cli("run", str(config)).code == 0


def test_store_is_plain_sqlite_with_raw_responses(tmp_path: Path, server: FakeServer):
    make_table(tmp_path, 3)
    config = write_config(tmp_path, server.base_url)
    assert run_cli("run", str(config)).code == 0
    with sqlite3.connect(tmp_path / "out/store.db") as db:
        rows = db.execute("SELECT key, status, answer, raw, attempts FROM responses").fetchall()
    assert len(rows) == 3
    for key, status, answer, raw, attempts in rows:
        assert key.startswith("r1:") and status == "ok" and attempts == 1
        assert json.loads(raw)["choices"][0]["message"]["content"] == answer
