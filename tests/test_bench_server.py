"""The bench's mock server (`scripts/bench_server.py`) as `make bench` runs it on a fresh clone."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_server.py"


def test_counts_answers_twice_without_numpy(tmp_path: Path) -> None:
    # `make bench` installs the project only; numpy comes with the local model, if at all.
    stub = tmp_path / "stub" / "numpy"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('numpy is not installed here')\n")
    ready, stats = tmp_path / "ready.json", tmp_path / "stats.json"
    command = [sys.executable, str(SCRIPT), "--port", "0", "--cpu", "-1", "--max-seconds", "60"]
    command += ["--ready", str(ready), "--stats", str(stats)]
    server = subprocess.Popen(
        command, env={"PYTHONPATH": str(stub.parent)}, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() or not ready.read_text():
            assert server.poll() is None, "the bench server exited"
            assert time.monotonic() < deadline, "the bench server did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{json.loads(ready.read_text())['port']}"
        with httpx.Client(base_url=url, timeout=10) as client:
            for text in ("alpha", "beta", "alpha"):
                body = {"model": "m", "messages": [{"role": "user", "content": text}]}
                answer = client.post("/v1/chat/completions", json=body).json()
                expected = "ans:" + hashlib.sha1(text.encode()).hexdigest()[:12]
                assert answer["choices"][0]["message"]["content"] == expected
            live = client.get("/stats").json()
        assert (live["requests"], live["distinct_answered"], live["answered_twice"]) == (3, 2, 1)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
    final = json.loads(stats.read_text())
    assert (final["requests"], final["distinct_answered"], final["answered_twice"]) == (3, 2, 1)
