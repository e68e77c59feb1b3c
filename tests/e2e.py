"""Helpers for end-to-end tests: write a config, run the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        """The JSON summary: the last stdout line that is a JSON object."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("{"):
                return dict(json.loads(line))
        raise AssertionError(f"no JSON summary in stdout:\n{self.stdout}\n{self.stderr}")


def write_config(folder: Path, base_url: str, **sections: dict[str, Any]) -> Path:
    """A config over `folder/in.csv` answered by `base_url`; sections override keys."""
    config: dict[str, Any] = {
        "input": {"path": "in.csv"},
        "prompt": {"template": "{{ text }}"},
        "model": {
            "base_url": base_url,
            "name": "fake-model",
            "api_key_env": "TEST_KEY",
            "params": {"temperature": 0, "max_tokens": 8},
        },
        "output": {"path": "out/answers.parquet", "column": "answer", "include_meta": True},
        "run": {"concurrency": 4, "max_retries": 4, "timeout_s": 10, "store": "out/store.db"},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Ran:
    """`python -m pipeline ARGS` with the test's environment; never hangs past `timeout`."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)
