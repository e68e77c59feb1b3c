"""The Ray engine's start-up through the CLI: signals while Ray starts, a cluster that cannot
be reached, what Ray prints, and the summary of a Ray run that stops before Ray starts.

A local Ray costs seconds to start, so the runs are few; each keeps its Ray's files in a
short folder of its own (`RAY_TMPDIR`), which also finds the Ray processes it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from e2e import ROOT, Ran, run_cli, write_config
from fake_server import FakeServer
from test_cli_ray import ENV, make_table, ray_workers  # without Ray installed, these skip
from test_cli_validate import closed_port

RAY = {"engine": "ray", "ray": {"workers": 2}}


@contextlib.contextmanager
def ray_folder() -> Iterator[Path]:
    """A short folder for the local Rays of a test (Ray's socket paths must stay short); the
    Ray processes still running from it at the end (a killed run's) are ended."""
    folder = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    try:
        yield folder
    finally:
        for pid in started_from(folder):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def started_from(folder: Path) -> list[int]:
    """The processes whose command line names `folder`: the Ray a run started there."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(folder) in text and int(cmdline.parent.name) != os.getpid():
            found.append(int(cmdline.parent.name))
    return found


@contextlib.contextmanager
def running(config: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Running]:
    """`pipeline run CONFIG ARGS` in the background; its stderr read line by line as it
    comes, its stdout once it ended."""
    command = [sys.executable, "-m", "pipeline", "run", str(config), "--no-progress", *args]
    full = {**os.environ, "PYTHONPATH": str(ROOT), **ENV, **(env or {})}
    process = subprocess.Popen(
        command, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run = Running(process)
    reader = threading.Thread(target=lambda: run.lines.extend(process.stderr or []))
    reader.start()
    try:
        yield run
    finally:
        if process.poll() is None:
            process.kill()
        run.out = process.stdout.read() if process.stdout else ""
        process.wait(timeout=60)
        reader.join(timeout=60)
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        process.stderr.close()


class Running:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self.out = ""

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def ended(self, seconds: float) -> int:
        return self.process.wait(timeout=seconds)

    @property
    def err(self) -> str:
        return "".join(self.lines)

    @property
    def ran(self) -> Ran:
        return Ran(self.process.returncode, self.out, self.err)


def wait_for(check: Any, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def ray_starting(folder: Path) -> bool:
    """A local Ray is starting in `folder`: its session's logs exist."""
    return any(folder.glob("pipeline-ray-*/session_*/logs"))


def assert_stopped_before_sending(ran: Ran, folder: Path, code: int, rows: int) -> None:
    """The summary printed, written and logged says the signal stopped the run, which sent
    nothing and left every row pending."""
    summary = ran.summary
    name = "SIGTERM" if code == 143 else "SIGINT"
    assert summary["exit_code"] == code and name in summary["stopped"], ran.stderr
    assert (summary["engine"], summary["workers"]) == ("ray", None)
    assert (summary["requests_sent"], summary["rows"], summary["pending"]) == (0, rows, rows)
    assert json.loads((folder / "out/answers.summary.json").read_text())["exit_code"] == code
    logged = json.loads((folder / "out/store.runs.jsonl").read_text().splitlines()[-1])
    assert (logged["exit_code"], logged["stopped"], logged["engine"]) == (
        code,
        summary["stopped"],
        "ray",
    )


def test_sigterm_while_ray_starts_stops_it_and_the_summary_says_so(tmp_path: Path) -> None:
    rows = 200
    make_table(tmp_path, rows)
    with ray_folder() as ray_files, FakeServer(latency=0.02) as server:
        config = write_config(tmp_path, server.base_url, run={"concurrency": 4, **RAY})
        with running(config, env={"RAY_TMPDIR": str(ray_files)}) as run:
            wait_for(lambda: ray_starting(ray_files))
            run.process.send_signal(signal.SIGTERM)
            run.ended(90)
        time.sleep(0.5)
        assert server.count == 0  # no chat request, before the signal or after it
        ran = run.ran
        assert ran.code == 143, ran.stderr
        assert "starting a local Ray with 2 workers" in ran.stderr  # not 10 s of silence
        assert "stopped by SIGTERM: answers so far are in the store" in ran.stderr
        assert "Traceback" not in ran.stderr
        assert ran.stdout.count("\n") == 1  # the summary, alone
        assert_stopped_before_sending(ran, tmp_path, 143, rows)
        assert list(ray_files.iterdir()) == []  # the run's Ray folder is removed
        wait_for(lambda: not started_from(ray_files), 30)  # and its Ray stopped


def test_a_second_ctrl_c_while_ray_starts_ends_the_process_at_once(tmp_path: Path) -> None:
    make_table(tmp_path, 100)
    with ray_folder() as ray_files, FakeServer(latency=0.02) as server:
        config = write_config(tmp_path, server.base_url, run={"concurrency": 4, **RAY})
        with running(config, env={"RAY_TMPDIR": str(ray_files)}) as run:
            wait_for(lambda: ray_starting(ray_files))
            run.process.send_signal(signal.SIGINT)
            time.sleep(0.05)
            run.process.send_signal(signal.SIGINT)
            assert run.ended(10) == -signal.SIGINT, run.err
        time.sleep(1.0)
        assert server.count == 0, run.err  # nothing is sent after the signals
        assert run.err.count("a second signal ends the process at once") <= 1, run.err


def test_stdout_holds_only_the_summary_when_a_worker_dies(tmp_path: Path) -> None:
    """Ray says a worker died (`(raylet) A worker died or was killed ...`) on the driver:
    on stderr, so that `pipeline run ... | jq` reads the summary alone."""
    rows = 600
    make_table(tmp_path, rows)
    with ray_folder() as ray_files, FakeServer(latency=0.03) as server:
        config = write_config(tmp_path, server.base_url, run={"concurrency": 8, **RAY})
        with running(config, env={"RAY_TMPDIR": str(ray_files)}) as run:
            wait_for(lambda: server.count >= 100)
            victims = ray_workers(run.process.pid)
            assert victims, "no Ray worker process found"
            os.kill(victims[0], signal.SIGKILL)
            run.ended(180)
    ran = run.ran
    assert ran.code == 0, ran.stderr
    assert "Ray worker" in ran.stderr and "lost" in ran.stderr
    assert ran.stdout.count("\n") == 1, ran.stdout  # one line: the summary
    assert json.loads(ran.stdout)["answered"] == rows


def test_a_cluster_address_nothing_listens_at_fails_at_once_naming_it(tmp_path: Path) -> None:
    make_table(tmp_path, 10)
    address = f"127.0.0.1:{closed_port()}"
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url, run=RAY)
        began = time.monotonic()
        ran = run_cli("run", str(config), "--set", f"run.ray.address={address}", env=ENV)
        took = time.monotonic() - began
        assert server.count == 0
    assert ran.code == 2, ran.stderr
    assert took < 30
    assert f"error: run.ray.address: cannot reach the Ray cluster at {address}" in ran.stderr
    assert "refused" in ran.stderr
    summary = ran.summary
    assert (summary["exit_code"], summary["engine"], summary["requests_sent"]) == (2, "ray", 0)
    assert summary["error"].startswith("run.ray.address: cannot reach")


@contextlib.contextmanager
def silent_head() -> Iterator[str]:
    """An address that accepts connections and never answers: no Ray cluster joins there."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_joining_a_cluster_that_never_answers_is_bounded_and_signals_stop_it(
    tmp_path: Path,
) -> None:
    rows = 10
    make_table(tmp_path, rows)
    with silent_head() as address, FakeServer() as server:
        config = write_config(tmp_path, server.base_url, run={**RAY, "ray": {"address": address}})
        with running(config) as run:  # a signal during the wait ends it truthfully
            wait_for(lambda: run.said("joining the Ray cluster at"), 60)
            time.sleep(1.0)
            run.process.send_signal(signal.SIGTERM)
            assert run.ended(20) == 143, run.err
        assert_stopped_before_sending(run.ran, tmp_path, 143, rows)
        assert "Traceback" not in run.err

        # The wait is bounded (run.ray's CONNECT_S, 30 s; 3 s here): exit 2, naming the address.
        bounded = (
            "import sys; from pipeline import raycluster; raycluster.CONNECT_S = 3.0; "
            "from pipeline.cli import main; sys.exit(main())"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT), **ENV}
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", bounded, "run", str(config), "--no-progress"],
            capture_output=True,
            text=True,
            env=env,
            timeout=90,
            check=False,
        )
        took = time.monotonic() - began
        assert server.count == 0
    ran = Ran(done.returncode, done.stdout, done.stderr)
    assert ran.code == 2, ran.stderr
    assert took < 30
    assert f"no Ray cluster answered at {address} within 3s" in ran.stderr
    assert ran.summary["exit_code"] == 2 and ran.summary["engine"] == "ray"


def test_a_ray_run_that_stops_before_ray_starts_says_engine_ray(tmp_path: Path) -> None:
    make_table(tmp_path, 10)
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url, model={"name": "no-such-model"}, run=RAY)
        ran = run_cli("run", str(config), env=ENV)
        assert server.count == 0
    assert ran.code == 3, ran.stderr
    summary = ran.summary
    assert (summary["engine"], summary["workers"], summary["ray_start_s"]) == ("ray", None, None)
    logged = json.loads((tmp_path / "out/store.runs.jsonl").read_text().splitlines()[-1])
    assert logged["engine"] == "ray"
