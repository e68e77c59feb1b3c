"""The model catalog through the CLI: list, show, the preflight check, parameter checks."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from e2e import run_cli, write_config
from fake_server import DEFAULT_MODELS, FakeServer

MODELS = [
    *DEFAULT_MODELS,
    {"id": "gemini-2-5-flash", "object": "model"},
    {"id": "gpt-4o-mini", "object": "model"},
]


def table(folder: Path) -> None:
    pl.DataFrame({"text": ["a", "b"]}).write_csv(folder / "in.csv")


def test_models_list_search_and_show() -> None:
    with FakeServer(models=MODELS) as server:
        listed = run_cli("models", "list", "--base-url", server.base_url)
        assert listed.code == 0, listed.stderr
        assert listed.stdout.split() == ["fake-model", "gemini-2-5-flash", "gpt-4o-mini"]
        found = run_cli("models", "list", "--search", "GEMINI", "--base-url", server.base_url)
        assert found.stdout.split() == ["gemini-2-5-flash"]
        shown = run_cli("models", "show", "fake-model", "--base-url", server.base_url)
        assert json.loads(shown.stdout)["pricing"]["input_cost_per_token"] == 1e-07
        missing = run_cli("models", "show", "nope", "--base-url", server.base_url)
        assert missing.code == 3 and "does not serve model 'nope'" in missing.stderr


def test_models_show_falls_back_to_the_list_without_the_model_route() -> None:
    with FakeServer(models=MODELS) as server:
        server.model_route = False  # as llama.cpp's server: GET /models/{id} answers 404
        shown = run_cli("models", "show", "fake-model", "--base-url", server.base_url)
        assert shown.code == 0, shown.stderr
        assert json.loads(shown.stdout)["pricing"]["input_cost_per_token"] == 1e-07
        assert server.gets == ["/v1/models/fake-model", "/v1/models"]
        missing = run_cli("models", "show", "nope", "--base-url", server.base_url)
        assert missing.code == 3
        assert "does not serve model 'nope'" in missing.stderr


def test_models_list_takes_the_endpoint_from_a_config(tmp_path: Path) -> None:
    table(tmp_path)
    with FakeServer(models=MODELS) as server:
        config = write_config(tmp_path, server.base_url)
        listed = run_cli("models", "list", "--config", str(config))
        assert listed.code == 0 and "gpt-4o-mini" in listed.stdout.split()


def test_an_unknown_model_stops_the_run_before_any_chat_request(tmp_path: Path) -> None:
    table(tmp_path)
    with FakeServer(models=MODELS) as server:
        config = write_config(tmp_path, server.base_url, model={"name": "gemini-2-5-flash-lite"})
        ran = run_cli("run", str(config))
        assert ran.code == 3
        assert "does not serve model 'gemini-2-5-flash-lite'" in ran.stderr
        assert "gemini-2-5-flash" in ran.stderr and "model.name" in ran.stderr
        assert server.count == 0
        assert run_cli("validate", str(config)).code == 3


def test_an_endpoint_without_the_model_route_checks_the_list(tmp_path: Path) -> None:
    table(tmp_path)
    with FakeServer(models=MODELS) as server:
        server.model_route = False
        config = write_config(tmp_path, server.base_url)
        ran = run_cli("run", str(config))
        assert ran.code == 0, ran.stderr
        assert "is listed" in ran.stderr and server.count == 2
        config = write_config(tmp_path, server.base_url, model={"name": "other"})
        assert run_cli("run", str(config)).code == 3


def test_preflight_false_reads_no_catalog(tmp_path: Path) -> None:
    table(tmp_path)
    with FakeServer(models=MODELS) as server:
        config = write_config(tmp_path, server.base_url + "/")
        ran = run_cli("run", str(config), "--set", "model.preflight=false")
        assert ran.code == 0 and server.gets == []


def test_validate_names_a_parameter_the_model_does_not_accept(tmp_path: Path) -> None:
    table(tmp_path)
    with FakeServer() as server:
        good = write_config(tmp_path, server.base_url)
        ok = run_cli("validate", str(good))
        assert ok.code == 0 and "accepts model.params" in ok.stdout
        bad = write_config(
            tmp_path, server.base_url, model={"params": {"temperature": 5, "frequency_penalty": 1}}
        )
        ran = run_cli("validate", str(bad))
        assert ran.code == 2
        assert "model.params.temperature: 5 is greater than the maximum of 2" in ran.stderr
        assert "does not accept 'frequency_penalty'" in ran.stderr
        assert server.count == 0
