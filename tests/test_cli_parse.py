"""Parsed answers through the CLI: labels, JSON columns, re-asks, reparse, images."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import run_cli, write_config
from fake_server import FakeServer, last_content

LABELS = ["billing", "shipping", "other"]
REPLIES = {
    "charged twice": "Label: Billing.",
    "parcel late": ' "shipping" ',
    "hello there": "other",
    "what is this": "banana",
}


def reply(body: dict[str, Any]) -> str:
    content = last_content(body)
    return next(answer for needle, answer in REPLIES.items() if needle in content)


def write_table(folder: Path) -> None:
    pl.DataFrame({"id": [1, 2, 3, 4], "text": list(REPLIES)}).write_csv(folder / "in.csv")


def test_labels_are_normalised_and_invalid_answers_marked(tmp_path: Path) -> None:
    write_table(tmp_path)
    with FakeServer(answer=reply) as server:
        config = write_config(
            tmp_path,
            server.base_url,
            prompt={"template": "Pick one of: {{ labels }}\n{{ text }}"},
            output={"parse": "label", "labels": LABELS},
        )
        ran = run_cli("run", str(config))
        assert ran.code == 1
        out = pl.read_parquet(tmp_path / "out/answers.parquet")
        assert out["answer"].to_list() == ["billing", "shipping", "other", None]
        assert out["_status"].to_list() == ["ok", "ok", "ok", "invalid"]
        assert "'banana'" in out["_error"][3]
        assert ran.summary["invalid"] == 1 and ran.summary["answered"] == 4 - 1
        assert "Pick one of: billing, shipping, other" in last_content(server.requests[0])


def test_reparse_applies_new_parse_settings_without_sending(tmp_path: Path) -> None:
    write_table(tmp_path)
    with FakeServer(answer=reply) as server:
        config = write_config(
            tmp_path, server.base_url, output={"parse": "label", "labels": LABELS}
        )
        assert run_cli("run", str(config)).code == 1
        sent = server.count
        relabel = ["--set", "output.labels=[billing, shipping, other, banana]"]
        again = run_cli("reparse", str(config), *relabel)
        assert again.code == 0, again.stderr
        assert server.count == sent and again.summary["requests_sent"] == 0
        out = pl.read_parquet(tmp_path / "out/answers.parquet")
        assert out["answer"].to_list() == ["billing", "shipping", "other", "banana"]


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "qty": {"type": "integer"},
        "price": {"type": "number"},
        "urgent": {"type": "boolean"},
        "kind": {"enum": ["a", "b"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "qty"],
}


def json_reply(body: dict[str, Any]) -> str:
    content = last_content(body)
    if "broken" in content:
        return '{"name": "x"}'  # misses the required qty
    n = int(content.split()[-1])
    value = {
        "name": f"item {n}",
        "qty": n,
        "price": n / 4,
        "urgent": n % 2 == 0,
        "kind": "a",
        "tags": ["t", str(n)],
    }
    return f"Here you go:\n```json\n{json.dumps(value)}\n```"


@pytest.mark.parametrize("dialect", ["json_schema", "json_object", "none"])
def test_json_answers_become_typed_columns(tmp_path: Path, dialect: str) -> None:
    pl.DataFrame({"text": ["row 1", "row 2", "broken 3"]}).write_csv(tmp_path / "in.csv")
    with FakeServer(answer=json_reply) as server:
        config = write_config(
            tmp_path,
            server.base_url,
            model={"structured_output": dialect},
            output={"parse": "json", "schema": SCHEMA},
        )
        ran = run_cli("run", str(config))
        assert ran.code == 1, ran.stderr
        fmt = server.requests[0].get("response_format")
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert out.select("text", "name", "qty", "price", "urgent", "kind", "tags").to_dicts()[:2] == [
        {
            "text": "row 1",
            "name": "item 1",
            "qty": 1,
            "price": 0.25,
            "urgent": False,
            "kind": "a",
            "tags": '["t", "1"]',
        },
        {
            "text": "row 2",
            "name": "item 2",
            "qty": 2,
            "price": 0.5,
            "urgent": True,
            "kind": "a",
            "tags": '["t", "2"]',
        },
    ]
    assert out.schema["qty"] == pl.Int64 and out.schema["urgent"] == pl.Boolean
    assert out["_status"].to_list() == ["ok", "ok", "invalid"]
    assert "'qty' is a required property" in out["_error"][2]
    if dialect == "json_schema":
        assert fmt == {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
        }
    elif dialect == "json_object":
        assert fmt == {"type": "json_object", "schema": SCHEMA}
    else:
        assert fmt is None


def test_invalid_answers_are_asked_again_and_each_attempt_is_stored(tmp_path: Path) -> None:
    seen: Counter[str] = Counter()

    def flaky(body: dict[str, Any]) -> str:
        content = last_content(body)
        seen[content] += 1
        if content == "stubborn":
            return "no idea"
        return "billing" if seen[content] >= 3 or content == "easy" else "hmm"

    pl.DataFrame({"text": ["easy", "hard", "stubborn"]}).write_csv(tmp_path / "in.csv")
    with FakeServer(answer=flaky) as server:
        config = write_config(
            tmp_path,
            server.base_url,
            output={"parse": "label", "labels": LABELS, "retry_invalid": 2},
        )
        ran = run_cli("run", str(config))
        assert ran.code == 1
        out = pl.read_parquet(tmp_path / "out/answers.parquet")
        assert out["answer"].to_list() == ["billing", "billing", None]
        assert server.count_matching("hard") == 3 and server.count_matching("stubborn") == 3
        with sqlite3.connect(tmp_path / "out/store.db") as db:
            stored = db.execute("SELECT count(*) FROM responses").fetchone()[0]
        assert stored == 1 + 3 + 3

        sent = server.count
        again = run_cli("run", str(config))
        assert server.count == sent and again.summary["requests_sent"] == 0
        assert pl.read_parquet(tmp_path / "out/answers.parquet").equals(out)

        more = run_cli("run", str(config), "--set", "output.retry_invalid=3")
        assert server.count == sent + 1 and more.summary["requests_sent"] == 1


def test_images_are_sent_as_parts_and_a_missing_file_fails_only_its_row(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n fake image bytes"
    (tmp_path / "cat.png").write_bytes(png)
    pl.DataFrame(
        {"text": ["a", "b", "c"], "img": ["cat.png", "https://example.test/dog.jpg", "gone.png"]}
    ).write_csv(tmp_path / "in.csv")
    with FakeServer() as server:
        config = write_config(
            tmp_path, server.base_url, prompt={"template": "Describe {{ text }}", "images": ["img"]}
        )
        ran = run_cli("run", str(config))
        bodies = sorted(server.requests, key=lambda b: last_content(b))
    assert ran.code == 1
    parts = [b["messages"][-1]["content"] for b in bodies]
    assert parts[0] == [
        {"type": "text", "text": "Describe a"},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()},
        },
    ]
    assert parts[1][1] == {
        "type": "image_url",
        "image_url": {"url": "https://example.test/dog.jpg"},
    }
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert out["_status"].to_list() == ["ok", "ok", "failed"]
    assert "gone.png" in out["_error"][2] and len(server.requests) == 2
