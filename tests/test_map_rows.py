"""The library call runs the same engine, store included, on an in-memory frame."""

from __future__ import annotations

import asyncio
from pathlib import Path

import polars as pl
import pytest
from fake_server import FakeServer

from pipeline import map_rows
from pipeline.errors import ConfigError, RunStopped


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


def test_map_rows_raises_run_stopped_with_the_partial_frame_when_the_endpoint_goes_down(
    tmp_path: Path,
) -> None:
    """The endpoint answers the first row and goes down: the call raises, as the CLI exits 3,
    with the rows answered so far on the exception; a later call sends only the rest."""
    frame = pl.DataFrame({"text": [f"row {i}" for i in range(12)]})
    options = dict(
        template="{{ text }}",
        model="fake-model",
        store=tmp_path / "nb.db",
        include_meta=True,
        concurrency=1,
        max_retries=0,
        max_outage_s=1,
    )
    with FakeServer() as server:
        server.down_after(1)
        with pytest.raises(RunStopped, match="is down") as stopped:
            map_rows(frame, base_url=server.base_url, **options)
    partial = stopped.value.partial
    assert partial is not None
    assert partial["_status"].to_list() == ["ok"] + ["pending"] * 11
    assert partial["answer"].to_list() == ["echo: row 0"] + [None] * 11
    with FakeServer() as server:
        out = map_rows(frame, base_url=server.base_url, **options)
        assert server.count == 11
    assert out["answer"].to_list() == [f"echo: row {i}" for i in range(12)]


def test_map_rows_raises_run_stopped_when_the_key_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAP_ROWS_KEY", "wrong")
    with FakeServer() as server:
        server.require_key = "right"
        with pytest.raises(RunStopped, match="MAP_ROWS_KEY") as stopped:
            map_rows(
                pl.DataFrame({"text": ["a"]}),
                template="{{ text }}",
                model="fake-model",
                base_url=server.base_url,
                api_key_env="MAP_ROWS_KEY",
                store=tmp_path / "nb.db",
            )
        assert server.count == 0
    assert stopped.value.partial is None
