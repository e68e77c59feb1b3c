"""End-to-end: the `pipeline` CLI against a real local model (SmolLM2-135M, llama-cpp-python).

Skipped when the local model is not installed (`make model` installs it).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import local_model  # noqa: E402

UNAVAILABLE = local_model.available()
pytestmark = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"local model unavailable: {UNAVAILABLE}"
)

MESSAGES = [
    "I was charged twice for my subscription this month.",
    "The app crashes every time I open the settings page.",
    "How do I change the email address on my account?",
    "Please refund the order I cancelled last week.",
    "Your product is great, keep up the good work!",
]
SYSTEM = (
    "You classify customer messages. Answer with exactly one label from: "
    "billing, technical, account, feedback. Answer with the label only."
)


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The local model server's base URL, for the whole module."""
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with local_model.serve(_free_port(), log_path=log) as url:
        yield url


def _write_config(tmp_path: Path, base_url: str) -> Path:
    """A 5-row CSV and a config that classifies it with the local model."""
    rows = "\n".join(f'{i},"{m}"' for i, m in enumerate(MESSAGES, start=1))
    (tmp_path / "messages.csv").write_text(f"id,message\n{rows}\n", encoding="utf-8")
    config: dict[str, Any] = {
        "input": {"path": "messages.csv"},
        "prompt": {"system": SYSTEM, "template": "Message: {{ message }}\nCategory:"},
        "model": {
            "base_url": base_url,
            "name": local_model.MODEL_ALIAS,
            "api_key_env": "LOCAL_MODEL_KEY",
            "params": {"temperature": 0, "max_tokens": 8},
        },
        "output": {"path": "out.parquet", "column": "category", "include_meta": True},
        "run": {"concurrency": 2, "max_retries": 2, "timeout_s": 60, "store": "run.db"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline run CONFIG [ARGS]`, capturing its output."""
    env = {**os.environ, "LOCAL_MODEL_KEY": "unused"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(config), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _summary(stdout: str) -> dict[str, Any]:
    """The last stdout line that parses as a JSON object."""
    for line in reversed(stdout.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise AssertionError(f"no JSON summary on stdout:\n{stdout}")


def test_cli_against_local_model(base_url: str, tmp_path: Path) -> None:
    """Every row gets an answer from the real model; a rerun sends nothing."""
    config = _write_config(tmp_path, base_url)

    first = _run_cli(config)
    assert first.returncode == 0, f"stdout:\n{first.stdout}\nstderr:\n{first.stderr}"
    frame = pl.read_parquet(tmp_path / "out.parquet")
    assert frame.height == len(MESSAGES)
    assert [str(v) for v in frame["id"].to_list()] == ["1", "2", "3", "4", "5"]
    categories = frame["category"].to_list()
    assert all(isinstance(c, str) and c.strip() for c in categories), categories
    assert frame["_status"].to_list() == ["ok"] * len(MESSAGES)

    second = _run_cli(config)
    assert second.returncode == 0, f"stdout:\n{second.stdout}\nstderr:\n{second.stderr}"
    assert _summary(second.stdout)["requests_sent"] == 0


def test_the_ray_engine_gets_the_local_engines_answers_from_the_real_model(
    base_url: str, tmp_path: Path
) -> None:
    """Workers on a local Ray send to the real server: at temperature 0, the same answers."""
    pytest.importorskip("ray", reason="the `ray` extra is not installed (make test installs it)")
    answers = {}
    for engine in ("local", "ray"):
        folder = tmp_path / engine
        folder.mkdir()
        ran = _run_cli(_write_config(folder, base_url), "--set", f"run.engine={engine}")
        assert ran.returncode == 0, f"stdout:\n{ran.stdout}\nstderr:\n{ran.stderr}"
        assert _summary(ran.stdout)["engine"] == engine
        answers[engine] = pl.read_parquet(folder / "out.parquet")["category"].to_list()
    assert answers["ray"] == answers["local"]
