"""The library call runs the same engine, store included, on an in-memory frame."""

from __future__ import annotations

import asyncio
from pathlib import Path

import polars as pl
import pytest
from fake_server import FakeServer

from pipeline import map_rows
from pipeline.errors import ConfigError


def test_map_rows_answers_each_row_and_reuses_the_store(tmp_path: Path) -> None:
    frame = pl.DataFrame({"id": [3, 1, 2], "city": ["Oslo", "Lima", "Oslo"]})
    with FakeServer() as server:
        options = dict(
            template="Country of {{ city }}?",
            model="fake-model",
            output_column="country",
            base_url=server.base_url,
            store=tmp_path / "nb.db",
            concurrency=4,
        )
        out = map_rows(frame, **options)
        assert out.to_dicts() == [
            {"id": 3, "city": "Oslo", "country": "echo: Country of Oslo?"},
            {"id": 1, "city": "Lima", "country": "echo: Country of Lima?"},
            {"id": 2, "city": "Oslo", "country": "echo: Country of Oslo?"},
        ]
        assert server.count == 2
        assert map_rows(frame, **options).equals(out) and server.count == 2

        async def inside_a_loop() -> pl.DataFrame:
            return map_rows(frame, **options)  # as in a notebook cell

        assert asyncio.run(inside_a_loop()).equals(out)


def test_map_rows_parses_labels(tmp_path: Path) -> None:
    frame = pl.DataFrame({"text": ["x"]})
    with FakeServer(answer=lambda body: "Label: Spam.") as server:
        out = map_rows(
            frame,
            template="{{ text }}",
            model="fake-model",
            base_url=server.base_url,
            store=tmp_path / "s.db",
            parse="label",
            labels=["spam", "ham"],
            include_meta=True,
        )
    assert out["answer"].to_list() == ["spam"] and out["_status"].to_list() == ["ok"]


def test_map_rows_rejects_an_unknown_option() -> None:
    with pytest.raises(ConfigError, match="unknown option 'temprature'"):
        map_rows(pl.DataFrame({"a": [1]}), template="{{ a }}", temprature=0)
