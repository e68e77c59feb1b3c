"""The Ray engine over Ray Client (`ray://`), as the guide runs it on a remote cluster.

A Ray head is started for these tests (`ray start --head --block`, with token
authentication, ports and a temporary folder of its own) and stopped after them by the
processes it started, never `ray stop`, which would stop every Ray on the machine. Each run
pays the connection and the workers' start (seconds), so there are few of them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e import ROOT, Ran, run_cli
from fake_server import FakeServer
from test_cli_ray import ENV, answers, job, make_table, ran_ok  # skips without Ray

pytest.importorskip("grpc", reason="Ray Client needs the `ray` extra's ray[client]")

START_S = 120  # a head on a busy 2-core machine starts in 10-20 s
STOP_S = 30


@dataclass(frozen=True)
class Head:
    address: str  # ray://127.0.0.1:PORT
    env: dict[str, str]  # what a driver needs to reach it: the token, and that it is used


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def family(root: int) -> list[int]:
    """`root` and its descendants, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return sorted(found)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to `ray start --block` (it stops what it started), then SIGKILL to whatever of
    its processes is left."""
    started = family(process.pid)  # before the parent goes: its children are reparented
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_S)
    for pid in [*family(process.pid), *started]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # its own session: none of it is anyone else's
    process.wait(STOP_S)


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    # A short folder of its own: Ray's socket paths must stay under about 100 bytes.
    folder = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    token = secrets.token_hex(32)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {**auth, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    client = free_port()
    ray = Path(sys.executable).with_name("ray")
    ports = {"--port": free_port(), "--dashboard-port": free_port()}
    ports |= {"--dashboard-agent-listen-port": free_port(), "--ray-client-server-port": client}
    command = [str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1"]
    command += [f"{flag}={port}" for flag, port in ports.items()]
    command += ["--num-cpus=2", "--include-dashboard=false", f"--temp-dir={folder}"]
    log = folder / "start.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + START_S
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        yield Head(f"ray://127.0.0.1:{client}", auth)
    finally:
        stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def no_traceback(ran: Ran) -> None:
    ran_ok(ran)
    assert "Traceback" not in ran.stderr and "InvalidStateError" not in ran.stderr, ran.stderr


def test_ray_client_writes_what_local_writes(tmp_path: Path, head: Head) -> None:
    rows, distinct = 200, 180
    with FakeServer() as server:
        make_table(tmp_path / "local", rows, distinct)
        ran_ok(run_cli("run", str(job(tmp_path / "local", server)), env=ENV))
        expected = answers(tmp_path / "local")

        # RAY_ADDRESS, as the guide's command gives it
        folder = tmp_path / "env"
        make_table(folder, rows, distinct)
        config = job(folder, server, engine="ray", ray={"workers": 2})
        before = server.count
        env = {**ENV, **head.env, "RAY_ADDRESS": head.address}
        ran = run_cli("run", str(config), env=env, timeout=180)
        no_traceback(ran)
        assert server.count - before == distinct
        assert answers(folder).equals(expected)
        assert ran.summary["engine"] == "ray" and ran.summary["workers"] == 2
        assert ran.summary["requests_sent"] == distinct
        assert f"Ray ({head.address}) ready with 2 workers" in ran.stderr

        # run.ray.address; more workers than requests in flight start as many as there are
        folder = tmp_path / "key"
        make_table(folder, rows, distinct)
        config = job(folder, server, engine="ray", concurrency=2, ray={"workers": 3})
        env = {**ENV, **head.env}
        ran = run_cli(
            "run", str(config), "--set", f"run.ray.address={head.address}", env=env, timeout=180
        )
    ran_ok(ran)
    assert answers(folder).equals(expected)
    assert ran.summary["workers"] == 2
    assert "run.ray.workers is 3 but run.concurrency is 2" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr


def test_without_the_token_the_error_says_how_to_give_it(tmp_path: Path, head: Head) -> None:
    """Ray sends its token to an address given explicitly only when RAY_AUTH_MODE=token."""
    make_table(tmp_path, 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {**ENV, "PYTHONPATH": str(ROOT)}
    env |= {
        "RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "1",
        "RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S": "1",
    }
    with FakeServer() as server:
        config = job(tmp_path, server, engine="ray", ray={"address": head.address})
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert server.count == 0
    assert done.returncode == 2, done.stderr
    said = next(line for line in done.stderr.splitlines() if line.startswith("error: "))
    assert said.startswith(f"error: run.ray.address: cannot start or reach {head.address}: ")
    assert "set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN" in said, done.stderr
