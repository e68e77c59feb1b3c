"""`make bench`: throughput, CPU, memory, rate-limit and fault benchmarks of the pipeline CLI.

Each scenario starts its own mock (`scripts/bench_server.py`, pinned to CPU 1) on a free port
of 127.0.0.1, runs a client pinned to CPU 0 (the real CLI, or a raw reference loop from
`scripts/bench_raw.py`), stops the mock and reads its stats. CPU time and peak RSS of a
client come from `os.wait4`; for S6 and S7, CPU of the client's whole process tree (a local
Ray's included, see LAUNCHER). One Markdown table and the targets (PASS/MISS) are printed
at the end; a full run (no --quick, --only, --s5-sizes, --s5-resume-rows or --s6-rows) also
writes them, with the run's conditions, into docs/performance.md between its markers.

    python scripts/bench.py [--quick] [--only S1,S3] [--repeat 3] [--json PATH]
                            [--s5-sizes 100000,1000000] [--s5-resume-rows N]
                            [--s6-rows 20000] [--workdir DIR]

S1 zero-latency throughput: CLI vs raw httpx vs raw aiohttp. S2 client told the server's limit
(3,000 RPM, 400,000 TPM, 10 s sliding window, 50 ms latency). S3 injected 5xx, drops and
truncated bodies. S4a/S4b the limit not told, the server sends rate headers (a) or bare 429s
(b). S4c the limit not told, a 60 s sliding window and bare 429s: the limit must be learnt over
several minutes (12,000 rows; the share of the limit is measured after the first two windows,
and for the learning phase from 0 s and 60 s). S5 peak RSS over 100 k / 1 M / 10 M Parquet
rows, and a resume over 1 M stored rows (from the memo, then again row by row with the memo
cleared). S6 the Ray engine (4 workers, `run.engine: ray`, a local Ray started by the run)
beside the local engine, told the server's limit (3,000 RPM, 10 s sliding window, 50 ms
latency): the share of the limit after the first 10 s, and the 429s; 4,000 rows per engine (~80
s) where 20,000 are specified (--s6-rows 20000: ~7 minutes each). S7 the same two engines at
zero latency and no limit: rows/s, CPU per 1k rows of the client and every process it starts,
and Ray's fixed start-up cost (ray_start_s, wall less the server's span, CPU from a
quarter-size run) and what one Ray actor call costs here (scripts/bench_raycall.py: the floor
under each exchange of a Ray worker with the driver), then both again with the client and its
processes free to use both CPUs (the mock keeps CPU 1): the issue asks that on this 2-core
machine Ray not lose throughput, checked on the steady rate (rows / server span). S8 a real
gateway: the LiteLLM proxy (installed once into .bench/litellm-VERSION/, a per-key limit set by
a custom_auth module, its fixed 60 s window) in front of an unlimited mock, three cases (600
RPM told, 600 RPM not told, 9,000 TPM told), each beside the same case on the bench mock as the
gateway (60 s sliding window, headers).
The header names the git commit and a hash of pipeline/*.py; a line is flagged when that code
changed during the run, or when other processes kept the CPUs busy while it ran.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "scripts" / "bench_server.py"
RAW = ROOT / "scripts" / "bench_raw.py"
PY = sys.executable
CLIENT_CPU = 0
MODEL = "bench-model"
MAX_TOKENS = 16
MOCK_COMPLETION_TOKENS = 4  # bench_server.py's usage.completion_tokens of every answer
UNSET_KEY_ENV = "PIPELINE_BENCH_NO_KEY"  # removed from the children's environment
SERVER_START_S = 30.0
SERVER_STOP_S = 30.0
POLL_S = 0.01
RSS_EVERY_S = 1.0
TREE_CPU_EVERY_S = 0.25  # run_child(tree=True): /proc CPU samples of what rusage misses
RPM, TPM, WINDOW_S, LATENCY_S = 3000, 400_000, 10, 0.05
GIB_MB = 1024.0
# S8: the LiteLLM proxy, installed once into its own venv under .bench/ (git-ignored)
LITELLM_VERSION = "1.108.7"
LITELLM_SPEC = f"litellm[proxy]=={LITELLM_VERSION}"
LITELLM_VENV = ROOT / ".bench" / f"litellm-{LITELLM_VERSION}"
LITELLM_MARKER = ".bench-installed"  # in the venv; holds LITELLM_SPEC once pip succeeded
LITELLM_INSTALL_S = 900.0
PROXY_START_S = 90.0  # it takes ~11 s: imports, then the config
PROXY_STOP_S = 30.0
PROXY_KEY_ENV = "PIPELINE_BENCH_PROXY_KEY"  # set in the clients' environment
PROXY_CLIENT_KEY = "sk-bench-client"  # any key passes the custom_auth below
S8_RPM, S8_TPM, S8_CONCURRENCY, S8_WINDOW_S = 600, 9_000, 32, 60
SCENARIOS = ("S1", "S2", "S3", "S4a", "S4b", "S4c", "S5", "S6", "S7", "S8")
S4C_WINDOW_S = 60  # S4c: the server's sliding window; the share is counted after two of them
RAY_WORKERS = 4  # S6, S7: `run.engine: ray` with this many worker actors on a local Ray
S7_CONCURRENCY = 64  # S7: run.concurrency of both engines (16 a worker under Ray)
RAY_CALLS = 2_000  # S7: Ray actor calls timed one after another for the call's floor
ENGINES = ("local", "ray")
S6_SPEC_ROWS = 20_000  # S6 as specified: ~6.7 minutes per engine at RPM; --s6-rows 20000
S6_SKIP_S = 10  # S6: the share of the limit is counted after this long (steady part)

FULL = {
    "S1": 20_000,
    "S2": 2_000,
    "S3": 5_000,
    "S4": 3_000,
    "S4c": 12_000,
    "S6": 4_000,  # 80 s per engine at RPM (S6_SPEC_ROWS behind --s6-rows)
    "S7": 20_000,
    "S8": 1_500,
    "resume": 1_000_000,
}
QUICK = {
    "S1": 10_000,
    "S2": 1_000,
    "S3": 2_000,
    "S4": 2_000,
    # 3.5 windows at the limit: the target counts the windows after the first two, so a run
    # of 9,000 rows (three windows) would leave none to count when the client keeps up
    "S4c": 10_500,
    "S6": 1_500,  # 30 s per engine: two 10 s windows after the first 10 s
    "S7": 10_000,
    "S8": 900,
    "resume": 1_000_000,
}
S5_FULL = (100_000, 1_000_000, 10_000_000)
S5_QUICK = (100_000, 1_000_000)


# --- results -----------------------------------------------------------------------------


@dataclass
class Line:
    """One row of the results table."""

    scenario: str
    client: str
    rows: int
    rows_s: float | None = None
    cpu_1k: float | None = None
    rss_mb: float | None = None
    pct_limit: float | None = None
    r429: int | None = None
    r429_share: float | None = None
    lost: int | None = None
    twice: int | None = None
    wrong: int | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    """One target and whether it was met."""

    scenario: str
    target: str
    measured: str
    passed: bool


@dataclass
class Tree:
    """A client and every process it started (e.g. a local Ray), counted as one.

    `Child.cpu_s` is then `reaped_cpu_s + unreaped_cpu_s`; these split it and say how the
    tree ended.
    """

    own_cpu_s: float  # the client process alone (read from /proc while it was a zombie)
    client_cpu_s: float  # wait4 of the client: itself and the descendants it reaped itself
    reaped_cpu_s: float  # rusage of every process reaped into the launcher (client included)
    unreaped_cpu_s: float  # last sampled CPU of those whose parent ignored SIGCHLD
    unreaped: int  # how many processes that was
    gone_s: float  # from the client's exit until its last descendant was reaped
    killed: list[str]  # descendants still there GRACE_S after the client exited: SIGKILLed
    peak_pss_mb: float | None  # the highest sampled sum of PSS over the client's tree
    peak_procs: int  # the most processes sampled in the tree at once


@dataclass
class Child:
    """A finished client process: exit code, wall time and its rusage."""

    rc: int
    wall_s: float
    cpu_s: float
    rss_mb: float
    stdout: str
    stderr: str
    timed_out: bool
    # (s, VmRSS MB, RssAnon MB, RssFile MB), sampled every RSS_EVERY_S
    rss_series: list[tuple[float, float, float, float]] = field(default_factory=list)
    machine_busy_s: float | None = None  # CPU-s used on all CPUs by anything while it ran
    started_at: float = 0.0  # time.time() at spawn
    tree: Tree | None = None  # run with tree=True: the client's whole process tree

    def rss_at(self, fraction: float) -> float | None:
        """RSS sampled at `fraction` of the run's wall time (None without samples)."""
        if not self.rss_series:
            return None
        moment = fraction * self.wall_s
        return min(self.rss_series, key=lambda sample: abs(sample[0] - moment))[1]

    def sampled_peaks(self) -> tuple[float, float] | None:
        """The highest sampled anonymous and file-backed (e.g. mmap) RSS, in MB."""
        if not self.rss_series:
            return None
        return max(s[2] for s in self.rss_series), max(s[3] for s in self.rss_series)

    def summary(self) -> dict[str, Any]:
        """The CLI's JSON summary (its last stdout line that is an object), or {}."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("{"):
                try:
                    return dict(json.loads(line))
                except ValueError:
                    return {}
        return {}


# --- processes ---------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment for clients: no API key variable, no proxies, no RAY_ADDRESS (a
    Ray run starts its own); the S8 client key."""
    drop = {UNSET_KEY_ENV, "http_proxy", "https_proxy", "all_proxy", "ray_address"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in drop and k not in drop}
    env["PYTHONPATH"] = str(ROOT)
    env[PROXY_KEY_ENV] = PROXY_CLIENT_KEY
    return env


def pin_client() -> None:
    """preexec_fn: the client (and every thread it starts) runs on CPU 0."""
    os.sched_setaffinity(0, {CLIENT_CPU})


def unpin_client() -> None:
    """preexec_fn: the client may run on every CPU (the mock still has CPU 1 to itself)."""
    os.sched_setaffinity(0, range(os.cpu_count() or 1))


# The client is started by this small launcher, not by the harness itself: a child's
# ru_maxrss includes the RSS of the process it was forked from (Linux folds the pre-exec
# image into it), so forking from a harness holding a 10 M-row table would report the
# harness's memory. The launcher (a bare interpreter, ~10 MB) forks and execs the client,
# waits for it and writes its own wait4 figures: wall, user+sys CPU, peak RSS.
#
# With "tree" (a client that starts processes of its own, such as a local Ray: GCS, raylet,
# agents, worker actors), the launcher is first made a child subreaper: a descendant whose
# parent exits is re-parented to the launcher, not to init. A process's CPU reaches its
# parent's RUSAGE_CHILDREN when it is reaped, so once the launcher has reaped the client and
# every orphan left, its own RUSAGE_CHILDREN holds the CPU of every process that was reaped,
# whoever reaped whom. Not of a process whose parent ignores SIGCHLD: the kernel reaps it at
# once and drops its times. Ray's raylet does, so its worker actors, the budget actor and its
# agents never reach any rusage; `TreeWatch` samples their CPU from /proc instead. The
# launcher also reads the client's own CPU while the client is a zombie (/proc/PID/stat
# utime + stime), lists the pids it reaped itself (orphans), and SIGKILLs, by pid,
# descendants still there GRACE_S after the client exited.
LAUNCHER = """
import json, os, sys, time
usage_path, pid_path, tree, cmd = sys.argv[1], sys.argv[2], sys.argv[3] == "tree", sys.argv[4:]
GRACE_S, TICK = 30.0, os.sysconf("SC_CLK_TCK")
if tree:
    import ctypes
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
started_at, started = time.time(), time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
with open(pid_path, "w") as f:
    f.write(str(pid))
def stat(p):
    with open(f"/proc/{p}/stat") as f:
        return f.read().rpartition(")")[2].split()
usage = {}
if tree:
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # a zombie now: its /proc stays
    try:
        fields = stat(pid)
        usage["own_cpu_s"] = (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, ValueError, IndexError):
        pass
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - started
usage.update({"status": status, "wall_s": wall, "started_at": started_at,
              "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss})
if tree:
    import resource
    exited, killed, seen, reaped = time.perf_counter(), [], set(), [pid]
    while True:
        try:
            done = os.waitpid(-1, os.WNOHANG)[0]
            if done:
                reaped.append(done)
                continue
        except ChildProcessError:
            break  # none left
        if time.perf_counter() - exited > GRACE_S:
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) in seen:
                    continue
                try:
                    fields = stat(entry)
                    if int(fields[1]) == os.getpid():
                        seen.add(int(entry))
                        with open(f"/proc/{entry}/comm") as f:
                            killed.append(f.read().strip())
                        os.kill(int(entry), 9)
                except (OSError, ValueError, IndexError):
                    pass
        time.sleep(0.02)
    ru_tree = resource.getrusage(resource.RUSAGE_CHILDREN)
    usage.update({"client_cpu_s": usage["cpu_s"], "cpu_s": ru_tree.ru_utime + ru_tree.ru_stime,
                  "gone_s": time.perf_counter() - exited, "killed": killed, "reaped": reaped})
with open(usage_path, "w") as f:
    json.dump(usage, f)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_child(
    cmd: Sequence[str], logs: Path, timeout_s: float, tree: bool = False, pinned: bool = True
) -> Child:
    """Run `cmd` pinned to CPU 0; wall time, user+sys CPU and peak RSS from `os.wait4`.

    `tree`: the CPU is that of every process `cmd` starts (see LAUNCHER), which inherit the
    pinning, and the sum of their PSS is sampled beside the client's own RSS. `pinned`
    False: `cmd` may run on every CPU.
    """
    out_path, err_path = logs.with_suffix(".out"), logs.with_suffix(".err")
    usage_path, pid_path = logs.with_suffix(".usage.json"), logs.with_suffix(".pid")
    for stale in (usage_path, pid_path):
        stale.unlink(missing_ok=True)
    mode = "tree" if tree else "one"
    launcher = [PY, "-S", "-c", LAUNCHER, str(usage_path), str(pid_path), mode]
    busy_before = machine_busy_s()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*launcher, *cmd],
            stdout=out,
            stderr=err,
            env=child_env(),
            cwd=ROOT,
            preexec_fn=pin_client if pinned else unpin_client,
            start_new_session=True,  # its own process group: a timeout kills both
        )
        deadline = started + timeout_s
        timed_out = False
        series: list[tuple[float, float, float, float]] = []
        watch = TreeWatch(proc.pid) if tree else None
        next_sample = started
        client_pid: int | None = None
        while proc.poll() is None:  # bounded by `timeout_s`
            now = time.perf_counter()
            if client_pid is None and pid_path.exists():
                client_pid = int(pid_path.read_text() or 0) or None
            if client_pid is not None and now >= next_sample:
                rss = current_rss_mb(client_pid)
                if rss is not None:
                    series.append((round(now - started, 2), *rss))
                if watch is not None:
                    watch.sample_pss()
                next_sample = now + RSS_EVERY_S
            if watch is not None:
                watch.sample_cpu(now)
            if now > deadline:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(POLL_S)
        wall = time.perf_counter() - started
    busy_after = machine_busy_s()
    usage: dict[str, Any] = {}
    if usage_path.exists():
        usage = json.loads(usage_path.read_text())
    found = None
    if watch is not None and "client_cpu_s" in usage:
        found = watch.tree(usage)
        usage["cpu_s"] = found.reaped_cpu_s + found.unreaped_cpu_s
    return Child(
        rc=proc.returncode,
        wall_s=float(usage.get("wall_s", wall)),
        cpu_s=float(usage.get("cpu_s", 0.0)),
        rss_mb=float(usage.get("maxrss_kb", 0)) / 1024.0,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        timed_out=timed_out,
        rss_series=series,
        started_at=float(usage.get("started_at", 0.0)),
        machine_busy_s=None
        if busy_before is None or busy_after is None
        else busy_after - busy_before,
        tree=found,
    )


class TreeWatch:
    """Samples the processes under a launcher from /proc: the CPU of those rusage misses
    (every TREE_CPU_EVERY_S; a process's last fraction of that is missed), the sum of PSS."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.unreaped: dict[int, float] = {}  # pid: CPU-s with its children, parent ignores
        self.pss: list[tuple[float, int]] = []  # (MB, processes)
        self._next_cpu = 0.0

    def sample_cpu(self, now: float) -> None:
        if now < self._next_cpu:
            return
        self._next_cpu = now + TREE_CPU_EVERY_S
        table = proc_table()
        for pid in descendants(self.root, table):
            parent, cpu = table[pid]
            if parent != self.root and ignores_sigchld(parent):
                self.unreaped[pid] = cpu

    def sample_pss(self) -> None:
        total_kb, count = 0, 0
        for pid in descendants(self.root, proc_table()):
            with suppress(OSError, ValueError, IndexError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total_kb += int(line.split()[1])
                        count += 1
                        break
        self.pss.append((total_kb / 1024.0, count))

    def tree(self, usage: dict[str, Any]) -> Tree:
        """The figures of the tree, from the launcher's usage file and the samples."""
        reaped = set(usage.get("reaped", []))  # re-parented to the launcher and reaped there
        lost = {pid: cpu for pid, cpu in self.unreaped.items() if pid not in reaped}
        return Tree(
            own_cpu_s=float(usage.get("own_cpu_s", usage["client_cpu_s"])),
            client_cpu_s=float(usage["client_cpu_s"]),
            reaped_cpu_s=float(usage["cpu_s"]),
            unreaped_cpu_s=sum(lost.values()),
            unreaped=len(lost),
            gone_s=float(usage.get("gone_s", 0.0)),
            killed=list(usage.get("killed", [])),
            peak_pss_mb=max((mb for mb, _ in self.pss), default=None),
            peak_procs=max((count for _, count in self.pss), default=0),
        )


def proc_table() -> dict[int, tuple[int, float]]:
    """pid: (parent pid, CPU-s of the process and its reaped children), from /proc."""
    table: dict[int, tuple[int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            cpu = sum(int(value) for value in fields[11:15]) / tick  # u, s, cu, cs time
            table[int(entry.name)] = (int(fields[1]), cpu)
    return table


def descendants(root: int, table: dict[int, tuple[int, float]]) -> list[int]:
    """Every live descendant of process `root` (not `root`) in `table`."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def ignores_sigchld(pid: int) -> bool:
    """Whether `pid` ignores SIGCHLD: then its children's CPU times reach no rusage."""
    with suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGCHLD - 1)))
    return False


def machine_busy_s() -> float | None:
    """CPU-seconds all CPUs have spent busy since boot, from /proc/stat (None elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def other_load_note(child: Child, stats: dict[str, Any]) -> str | None:
    """A warning when other processes used the CPUs while the client ran (noisy numbers)."""
    if child.machine_busy_s is None or child.wall_s <= 0:
        return None
    other = child.machine_busy_s - child.cpu_s - float(stats.get("cpu_s") or 0.0)
    share = other / child.wall_s
    if share < 0.10:
        return None
    return f"WARNING: other processes used ~{100 * share:.0f}% of a CPU meanwhile"


def current_rss_mb(pid: int) -> tuple[float, float, float] | None:
    """(VmRSS, RssAnon, RssFile) of a running process in MB, from /proc (None if gone)."""
    found: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                found[name] = int(value.split()[0]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    if "VmRSS" not in found:
        return None
    return found["VmRSS"], found.get("RssAnon", 0.0), found.get("RssFile", 0.0)


@dataclass
class Mock:
    """A running bench server; `stats` is filled once it stopped."""

    port: int
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@contextmanager
def mock_server(workdir: Path, name: str, *options: str) -> Iterator[Mock]:
    """Start `bench_server.py` on a free port; on exit SIGTERM it and read its stats."""
    ready, stats = workdir / f"{name}.server.ready", workdir / f"{name}.server.stats.json"
    for stale in (ready, stats):
        stale.unlink(missing_ok=True)
    cmd = [PY, str(SERVER), "--port", "0", "--ready", str(ready), "--stats", str(stats)]
    with (workdir / f"{name}.server.log").open("wb") as log:
        proc = subprocess.Popen([*cmd, *options], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not ready.exists():  # bounded by SERVER_START_S
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench server did not start; see {name}.server.log")
            time.sleep(POLL_S)
        mock = Mock(port=int(json.loads(ready.read_text())["port"]))
        yield mock
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if stats.exists():
        mock.stats = json.loads(stats.read_text())


def server_note(stats: dict[str, Any]) -> str:
    """The mock's own CPU per request, so a saturated server is visible."""
    requests, cpu, span = stats.get("requests", 0), stats.get("cpu_s", 0.0), stats.get("span_s")
    if not requests or not cpu:
        return "server: no requests"
    busy = f", {100 * cpu / span:.0f}% busy" if span else ""
    return f"server {1e6 * cpu / requests:.0f} µs/req{busy}"


# --- the LiteLLM proxy (S8) --------------------------------------------------------------

# The proxy's custom_auth hook, written beside its config (the proxy imports `auth` from its
# working directory): every key passes, with the per-key limits the bench sets in its
# environment. The proxy then enforces them in a fixed 60 s window per key and sends
# `x-ratelimit-api_key-{limit,remaining}-{requests,tokens}` on every 200.
PROXY_AUTH = '''"""custom_auth of the bench's LiteLLM proxy: any key, limits from the env."""
import os

from fastapi import Request
from litellm.proxy._types import UserAPIKeyAuth


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    rpm, tpm = os.environ.get("BENCH_KEY_RPM"), os.environ.get("BENCH_KEY_TPM")
    return UserAPIKeyAuth(
        api_key=api_key,
        rpm_limit=int(rpm) if rpm else None,
        tpm_limit=int(tpm) if tpm else None,
    )
'''


def last_line(path: Path, prefer: str = "ERROR") -> str:
    """The last line of a log starting with `prefer`, else its last non-blank line."""
    with suppress(OSError):
        lines = [t.strip() for t in path.read_text(errors="replace").splitlines() if t.strip()]
        chosen = [t for t in lines if t.startswith(prefer)] or lines
        if chosen:
            return chosen[-1][:200]
    return f"(nothing in {path.name})"


def ensure_litellm(log: Callable[[str], None]) -> tuple[Path | None, str]:
    """LITELLM_VENV's `litellm` program, installed by pip on first use; (None, why) if not.

    An install counts once the marker file in the venv names LITELLM_SPEC; anything else
    there (an interrupted install, another version) is cleared and installed again.
    """
    program = LITELLM_VENV / "bin" / "litellm"
    marker = LITELLM_VENV / LITELLM_MARKER
    with suppress(OSError):
        if program.exists() and marker.read_text(encoding="utf-8").strip() == LITELLM_SPEC:
            return program, f"LiteLLM {LITELLM_VERSION} already in {LITELLM_VENV.relative_to(ROOT)}"
    install_log = LITELLM_VENV.with_name(LITELLM_VENV.name + ".install.log")
    log(
        f"S8: installing {LITELLM_SPEC} into {LITELLM_VENV.relative_to(ROOT)} (about a "
        f"minute; log in {install_log.relative_to(ROOT)})"
    )
    steps = [
        [PY, "-m", "venv", "--clear", str(LITELLM_VENV)],
        [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q", LITELLM_SPEC],
    ]
    deadline = time.monotonic() + LITELLM_INSTALL_S
    try:
        LITELLM_VENV.parent.mkdir(parents=True, exist_ok=True)
        with install_log.open("wb") as out:
            for step in steps:  # pip keeps the environment: it may need the proxy variables
                left = max(1.0, deadline - time.monotonic())
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=left)
                if done.returncode:
                    what = " ".join(Path(step[0]).name if i == 0 else a for i, a in enumerate(step))
                    return None, f"`{what}` exited {done.returncode}: {last_line(install_log)}"
    except subprocess.TimeoutExpired:
        return None, f"the install took over {LITELLM_INSTALL_S:.0f} s"
    except OSError as exc:
        return None, f"the install failed: {exc}"
    if not program.exists():
        return None, f"pip installed {LITELLM_SPEC} but left no bin/litellm"
    marker.write_text(LITELLM_SPEC + "\n", encoding="utf-8")
    return program, f"installed LiteLLM {LITELLM_VERSION} into {LITELLM_VENV.relative_to(ROOT)}"


@dataclass
class Proxy:
    """A running LiteLLM proxy."""

    port: int
    pid: int
    live_after_s: float  # from spawn to the first 200 of /health/liveliness

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def cpu_s(self) -> float | None:
        return process_cpu_s(self.pid)


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a running process, all its threads, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    """A port of 127.0.0.1 free right now (the proxy wants a number; it cannot report one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proxy_env(rpm: int | None, tpm: int | None) -> dict[str, str]:
    """The proxy's environment: no HTTP proxies or database, a short log, nothing fetched."""
    drop = {"http_proxy", "https_proxy", "all_proxy", "database_url"}
    drop |= {"bench_key_rpm", "bench_key_tpm"}  # set below, from this case only
    env = {k: v for k, v in os.environ.items() if k.lower() not in drop}
    env["LITELLM_LOG"] = "ERROR"
    env["LITELLM_TELEMETRY"] = "False"
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no fetch of the price list at import
    if rpm:
        env["BENCH_KEY_RPM"] = str(rpm)
    if tpm:
        env["BENCH_KEY_TPM"] = str(tpm)
    return env


def pin_off_client() -> None:
    """preexec_fn: the proxy runs on every CPU but the client's (CPU 1 with the mock on two)."""
    others = set(range(os.cpu_count() or 1)) - {CLIENT_CPU}
    if others:
        with suppress(OSError):
            os.sched_setaffinity(0, others)


def stop_group(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM the process group `proc` leads; SIGKILL it after `timeout_s` s, or leftovers."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with suppress(ProcessLookupError):  # a member that outlived the leader (none expected)
        os.killpg(proc.pid, signal.SIGKILL)


def wait_live(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Until `GET /health/liveliness` answers 200 (bounded by PROXY_START_S)."""
    url = f"http://127.0.0.1:{port}/health/liveliness"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback direct
    deadline = time.monotonic() + PROXY_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"LiteLLM proxy exited {proc.returncode}: {last_line(log)}")
        with suppress(OSError, http.client.HTTPException), opener.open(url, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"LiteLLM proxy not live after {PROXY_START_S:.0f} s; see {log}")


@contextmanager
def litellm_proxy(
    program: Path, workdir: Path, name: str, upstream: str, rpm: int | None, tpm: int | None
) -> Iterator[Proxy]:
    """The LiteLLM proxy on a free port in front of `upstream`, per-key limits `rpm`/`tpm`.

    Its folder `NAME.proxy/` in `workdir` (its working directory) holds the config, the
    custom_auth module and its log. On exit: SIGTERM, then SIGKILL after PROXY_STOP_S.
    """
    folder = workdir / f"{name}.proxy"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "auth.py").write_text(PROXY_AUTH, encoding="utf-8")
    params = {"model": f"openai/{MODEL}", "api_base": upstream, "api_key": "unused"}
    config = {
        "model_list": [{"model_name": MODEL, "litellm_params": params}],
        "general_settings": {  # the proxy refuses to start without a master key
            "master_key": "sk-" + secrets.token_hex(20),
            "custom_auth": "auth.user_api_key_auth",
        },
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    cmd = [str(program), "--config", str(folder / "config.yaml")]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    log_path = folder / "proxy.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env=proxy_env(rpm, tpm),
            preexec_fn=pin_off_client,
            start_new_session=True,  # its own process group: stopped as a whole
        )
    try:
        wait_live(proc, port, log_path)
        yield Proxy(port, proc.pid, time.monotonic() - started)
    finally:
        stop_group(proc, PROXY_STOP_S)


def pipeline_fingerprint() -> str:
    """A hash of pipeline/*.py, to notice the code changing while the bench runs."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "pipeline").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def git_version() -> str:
    """`HEAD` (short) and `+dirty` when pipeline/ differs from it; read-only git calls."""
    git = ["git", "--no-optional-locks", "-C", str(ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "pipeline"], timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty.returncode else "")


# --- data and config ---------------------------------------------------------------------


def text_expr() -> pl.Expr:
    """A short, unique text per row (the id spelled into a sentence)."""
    return pl.format("row {}: please label this short message", pl.col("id"))


def make_table(path: Path, rows: int) -> Path:
    """Columns id, text; CSV or Parquet by extension."""
    if path.exists():
        return path
    frame = pl.select(pl.int_range(rows, dtype=pl.Int64).alias("id")).with_columns(text=text_expr())
    if path.suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path)
    return path


def expected(text: str) -> str:
    """The mock's deterministic answer."""
    return "ans:" + hashlib.sha1(text.encode()).hexdigest()[:12]


def output_of(folder: Path, name: str) -> Path:
    """Where the run `name` writes its output."""
    return folder / f"{name}.out.parquet"


def write_config(
    folder: Path,
    name: str,
    source: Path,
    base_url: str,
    *,
    fresh: bool = True,
    concurrency: int = 64,
    key_env: str = UNSET_KEY_ENV,
) -> Path:
    """A config: template `{{ text }}`, parquet output, `concurrency`, store in `folder`.

    `fresh` deletes the store and output of an earlier run of the same name first. The API
    key is read from `key_env` (by default a variable removed from the client's environment).
    """
    store = folder / f"{name}.db"
    if fresh:
        for old in (store, output_of(folder, name)):
            for path in (old, old.with_name(old.name + "-wal"), old.with_name(old.name + "-shm")):
                path.unlink(missing_ok=True)
    config = {
        "input": {"path": str(source)},
        "prompt": {"template": "{{ text }}"},
        "model": {
            "base_url": base_url,
            "name": MODEL,
            "api_key_env": key_env,
            "params": {"max_tokens": MAX_TOKENS},
        },
        "output": {"path": str(output_of(folder, name)), "include_meta": False},
        "run": {"concurrency": concurrency, "max_retries": 5, "store": str(store)},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def check_output(path: Path, rows: int, sample: int | None = None) -> tuple[int, int]:
    """(lost, wrong): rows with no answer or missing from the output; answers != expected.

    With `sample`, answers are checked on that many evenly spread rows only (big tables).
    """
    if not path.exists():
        return rows, 0
    frame = pl.read_parquet(path, columns=["text", "answer"])
    lost = rows - frame.height + int(frame["answer"].is_null().sum())
    if sample is not None and frame.height > sample:
        frame = frame.gather_every(frame.height // sample)
    answered = frame.filter(pl.col("answer").is_not_null())
    wrong = sum(
        answer != expected(text)
        for text, answer in zip(answered["text"], answered["answer"], strict=True)
    )
    return lost, wrong


def cli_timeout(rows: int, per_row_s: float = 0.01) -> float:
    return 120.0 + rows * per_row_s


def paced_timeout(rows: int, rows_per_minute: float) -> float:
    """For a run a limit paces: three times its length at `rows_per_minute`, plus 2 minutes."""
    return 120.0 + 3.0 * 60.0 * rows / rows_per_minute


def run_cli(
    config: Path,
    logs: Path,
    rows: int,
    *overrides: str,
    timeout_s: float | None = None,
    tree: bool = False,
    pinned: bool = True,
) -> Child:
    """`python -m pipeline run CONFIG --no-progress [--set ...]`, pinned to CPU 0.

    Killed after `timeout_s` (default `cli_timeout(rows)`). `tree`, `pinned`: see `run_child`.
    """
    cmd = [PY, "-m", "pipeline", "run", str(config), "--no-progress"]
    for item in overrides:
        cmd += ["--set", item]
    timeout = cli_timeout(rows) if timeout_s is None else timeout_s
    return run_child(cmd, logs, timeout, tree=tree, pinned=pinned)


def client_line(
    scenario: str,
    client: str,
    rows: int,
    child: Child,
    stats: dict[str, Any],
    *,
    notes: list[str] | None = None,
    **values: Any,
) -> Line:
    """A table line with rows/s, CPU-s per 1,000 rows and peak RSS of `child`."""
    extra = {"wall_s": round(child.wall_s, 3), "cpu_s": round(child.cpu_s, 3), "rc": child.rc}
    notes = list(notes or [])
    timing = timing_note(child, stats)
    if timing and client == "pipeline CLI":
        notes.append(timing)
    warning = other_load_note(child, stats)
    if warning:
        notes.append(warning)
    return Line(
        scenario,
        client,
        rows,
        rows_s=rows / child.wall_s,
        cpu_1k=1000.0 * child.cpu_s / rows,
        rss_mb=child.rss_mb,
        notes=notes,
        extra=extra,
        **values,
    )


def rate_line(
    scenario: str,
    rows: int,
    child: Child,
    stats: dict[str, Any],
    pct: float | None,
    share: float,
    lost: int,
    wrong: int,
    notes: list[str],
) -> Line:
    """The CLI's line of a rate-limit scenario: % of the limit, 429s, lost, twice, wrong."""
    values = rate_values(stats, pct, share, lost, wrong)
    return client_line(scenario, "pipeline CLI", rows, child, stats, notes=notes, **values)


def split_note(child: Child, small: Child, rows: int, small_rows: int) -> str:
    """CPU split into a per-row (marginal) part and a fixed part, from a smaller run."""
    marginal = (child.cpu_s - small.cpu_s) / (rows - small_rows)
    fixed = child.cpu_s - marginal * rows
    return (
        f"marginal {1000 * marginal:.3f} CPU-s/1k + fixed {fixed:.2f} CPU-s "
        f"(from a {small_rows:,}-row run)"
    )


def rate_values(
    stats: dict[str, Any], pct: float | None, share: float, lost: int, wrong: int
) -> dict[str, Any]:
    """A rate-limit line's figures: % of the limit, 429s (and their share), lost, twice, wrong."""
    return {
        "pct_limit": pct,
        "r429": stats.get("rate_limited"),
        "r429_share": share,
        "lost": lost,
        "twice": stats.get("answered_twice"),
        "wrong": wrong,
    }


def timing_note(child: Child, stats: dict[str, Any]) -> str | None:
    """Seconds from spawn to the first request, and from the last request to exit."""
    first, last = stats.get("first_request"), stats.get("last_request")
    if not first or not last or not child.started_at:
        return None
    ended = child.started_at + child.wall_s
    start, tail = first - child.started_at, ended - last
    return f"first request {start:.2f} s after spawn, exit {tail:.2f} s after the last"


def cli_note(child: Child) -> list[str]:
    """Exit code and the summary's counters worth seeing."""
    notes = []
    if child.timed_out:
        notes.append("TIMED OUT")
    if child.rc not in (0,):
        notes.append(f"exit {child.rc}")
    summary = child.summary()
    if summary:
        notes.append(f"sent {summary.get('requests_sent')}, retries {summary.get('retries')}")
        if summary.get("failed"):
            notes.append(f"failed {summary['failed']}")
    elif child.stderr.strip():
        notes.append("stderr: " + child.stderr.strip().splitlines()[-1][:120])
    return notes


def engine_overrides(engine: str) -> list[str]:
    """The `--set` items of `engine`: Ray with RAY_WORKERS workers on a local Ray it starts."""
    if engine == "local":
        return []
    return ["run.engine=ray", f"run.ray.workers={RAY_WORKERS}"]


def engine_client(engine: str) -> str:
    """The table's client name of an S6/S7 run."""
    if engine == "local":
        return "pipeline CLI, local engine"
    return f"pipeline CLI, Ray engine ({RAY_WORKERS} workers)"


def engine_line(
    scenario: str,
    engine: str,
    rows: int,
    child: Child,
    stats: dict[str, Any],
    *,
    notes: list[str],
    **values: Any,
) -> Line:
    """An S6/S7 line: `client_line` with the tree's CPU (already in `child.cpu_s`), where
    the time went, and for a tree of several processes the sum of their PSS as peak RSS."""
    summary, tree = child.summary(), child.tree
    shown = list(notes)
    timing = timing_note(child, stats)
    if timing:
        shown.append(timing)
    span = float(stats.get("span_s") or 0.0)
    if span and child.rc == 0:
        shown.append(f"fixed {child.wall_s - span:.2f} s (wall - server span)")
    if summary.get("ray_start_s") is not None:
        shown.append(f"ray_start_s {summary['ray_start_s']:.2f}")
    if tree is not None and tree.peak_procs > 1:
        shown.append(
            f"CPU-s {child.cpu_s:.2f}: client process {tree.own_cpu_s:.2f}, its "
            f"{tree.peak_procs - 1} others {child.cpu_s - tree.own_cpu_s:.2f} "
            f"({tree.unreaped_cpu_s:.2f} of that read from /proc: {tree.unreaped} processes "
            "whose parent ignores SIGCHLD)"
        )
    if tree is not None and tree.gone_s >= 0.5:
        shown.append(f"its last process gone {tree.gone_s:.1f} s after it exited")
    if tree is not None and tree.killed:
        shown.append(f"WARNING: SIGKILLed leftovers {', '.join(tree.killed)}")
    line = client_line(scenario, engine_client(engine), rows, child, stats, notes=shown, **values)
    if tree is not None and tree.peak_procs > 1 and tree.peak_pss_mb is not None:
        line.notes.append(
            f"peak RSS: sampled sum of PSS over {tree.peak_procs} processes (wait4's "
            f"largest single process {child.rss_mb:.0f} MB)"
        )
        line.rss_mb = tree.peak_pss_mb
    line.extra["engine"] = engine
    line.extra["summary"] = {k: summary.get(k) for k in ("engine", "workers", "ray_start_s")}
    if tree is not None:
        line.extra["tree"] = asdict(tree)
    return line


# --- rate-limit metrics ------------------------------------------------------------------


def window_mean_pct(
    series: Sequence[int], capacity: float, width: int, last_full: int, skip_s: int = 0
) -> float | None:
    """Mean of the sums of `series` over `width`-second windows, as % of `capacity`.

    The windows end at each whole second from skip_s + width to `last_full` (buckets
    0..last_full-1 are the complete seconds); None when there is no such window.
    """
    ends = range(skip_s + width, last_full + 1)
    if not ends or capacity <= 0:
        return None
    sums = [sum(series[end - width : end]) for end in ends]
    return 100.0 * sum(sums) / len(sums) / capacity


def windowed_pct(stats: dict[str, Any], skip_s: int = 10) -> float | None:
    """Mean over every full window of the run after `skip_s` s of admitted / window limit.

    Windows of `window_s` seconds end at each whole second from skip_s + window_s to the last
    complete second. Averaging all of them is the time-averaged admitted rate, and does not
    reward a burst that lands right at the end of a short run.
    """
    limit = stats.get("limit") or {}
    series: list[int] = stats.get("admitted_per_s") or []
    if not limit.get("rpm") or not series:
        return None
    width = round(limit["window_s"])
    capacity = float(limit["rpm"]) * float(limit["window_s"]) / 60.0
    return window_mean_pct(series, capacity, width, int(stats["span_s"]), skip_s)


def sliding_pct(series: Sequence[int], per_minute: float, span_s: float) -> float | None:
    """Mean over every 60 s sliding window of the span of `series`, as % of `per_minute`.

    `windowed_pct` with skip_s=0, but the limit given, not read from the server: for a mock
    behind a gateway (no limit of its own) and for tokens. The windows end at each whole
    second from 60 s (the span starts at the first request) to the end of the span. Under a
    fixed window one 60 s stretch may hold up to twice the limit (the end of one window and the
    start of the next), so no single window says much; their mean is the run's mean rate,
    which a fixed window holds to the limit. None when the span is under 60 s.
    """
    return window_mean_pct(series, per_minute, S8_WINDOW_S, int(span_s))


def simple_pct(stats: dict[str, Any], skip_s: int = 10) -> float | None:
    """Admitted after `skip_s` s over the rest of the server's span, as % of the limit."""
    limit = stats.get("limit") or {}
    series: list[int] = stats.get("admitted_per_s") or []
    span = float(stats.get("span_s", 0.0)) - skip_s
    if not limit.get("rpm") or span <= 1.0:
        return None
    return 100.0 * sum(series[skip_s:]) / span / (float(limit["rpm"]) / 60.0)


def share_429(stats: dict[str, Any]) -> float | None:
    requests = stats.get("requests", 0)
    return stats.get("rate_limited", 0) / requests if requests else None


@dataclass(frozen=True)
class GatewayCase:
    """One S8 case: the gateway's per-key limit and whether the CLI is told it."""

    name: str
    rpm: int | None
    tpm: int | None
    told: bool

    def describe(self) -> str:
        limit = f"{self.rpm:,} RPM" if self.rpm else f"{self.tpm:,} TPM"
        return f"key limit {limit}, {'told' if self.told else 'not told'} to the CLI"

    def file_name(self, gateway: str) -> str:
        return f"s8_{self.name.replace(' ', '_')}_{gateway}"

    def overrides(self) -> list[str]:
        """The CLI's `--set` items: the limit when it is told."""
        if not self.told:
            return []
        if self.rpm:
            return [f"run.requests_per_minute={self.rpm}"]
        return [f"run.tokens_per_minute={self.tpm}"]

    def mock_options(self) -> list[str]:
        """The same limit on the bench mock: a 60 s sliding window with rate headers."""
        limit = ["--rpm", str(self.rpm)] if self.rpm else ["--tpm", str(self.tpm)]
        return [*limit, "--window", str(S8_WINDOW_S), "--headers"]

    def timeout_s(self, rows: int) -> float:
        # a token limit: as many rows a minute as the mock charges (prompt ~10 + max_tokens)
        per_minute = self.rpm or (self.tpm or 0) / (10 + MAX_TOKENS)
        return paced_timeout(rows, per_minute)


S8_CASES = (
    GatewayCase("rpm told", S8_RPM, None, True),
    GatewayCase("rpm untold", S8_RPM, None, False),
    GatewayCase("tpm told", None, S8_TPM, True),
)


# --- scenarios ---------------------------------------------------------------------------


class Bench:
    """Runs the scenarios; collects table lines and verdicts."""

    def __init__(
        self,
        workdir: Path,
        quick: bool,
        s5_sizes: list[int],
        resume_rows: int,
        repeat: int = 1,
        s6_rows: int | None = None,
    ):
        self.dir = workdir
        self.repeat = max(1, repeat)
        self.sizes = QUICK if quick else FULL
        self.s6_rows = s6_rows or self.sizes["S6"]
        self.s5_sizes = s5_sizes
        self.resume_rows = resume_rows
        self.lines: list[Line] = []
        self.verdicts: list[Verdict] = []
        self.server_stats: dict[str, dict[str, Any]] = {}
        self.version = git_version()
        self.fingerprint = pipeline_fingerprint()
        self.litellm: str | None = None  # which proxy S8 ran, for the run's conditions

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def add(self, line: Line) -> Line:
        if pipeline_fingerprint() != self.fingerprint:
            line.notes.append("WARNING: pipeline/ changed while the bench ran")
        self.lines.append(line)
        self.log(f"{line.scenario} {line.client}: {render_line(line)}")
        return line

    def target(self, scenario: str, target: str, measured: str, passed: bool) -> None:
        self.verdicts.append(Verdict(scenario, target, measured, passed))

    def stats_of(self, name: str, mock: Mock) -> dict[str, Any]:
        self.server_stats[name] = mock.stats
        return mock.stats

    # S1 ---------------------------------------------------------------------------------

    def s1(self) -> None:
        rows = self.sizes["S1"]
        source = make_table(self.dir / f"input_{rows}.csv", rows)
        self.log(f"S1: {rows} rows, zero latency, no limit, {self.repeat} run(s) per client")
        imports = run_child(
            [PY, "-c", "import pipeline.cli, pipeline.runner"], self.dir / "s1_imports", 120
        )
        child, stats, runs = self._median(lambda: self._s1_cli("s1", source, rows))
        lost, wrong = check_output(output_of(self.dir, "s1"), rows)
        summary = child.summary()
        notes = [*cli_note(child), server_note(stats), *runs]
        notes.append(f"imports alone {imports.cpu_s:.2f} CPU-s, {imports.rss_mb:.0f} MB")
        if summary.get("seconds"):
            notes.append(f"run() {rows / summary['seconds']:.0f} rows/s")
        # A quarter-size run splits CPU into a fixed part and a per-row (marginal) part.
        small_rows = rows // 4
        small_source = make_table(self.dir / f"input_{small_rows}.csv", small_rows)
        small, _, _ = self._median(lambda: self._s1_cli("s1_small", small_source, small_rows))
        if small.rc == 0 and child.rc == 0:
            notes.append(split_note(child, small, rows, small_rows))
        twice = stats.get("answered_twice")
        cli = self.add(
            client_line(
                "S1",
                "pipeline CLI",
                rows,
                child,
                stats,
                lost=lost,
                twice=twice,
                wrong=wrong,
                notes=notes,
            )
        )
        raw: dict[str, Line] = {}
        for client in ("httpx", "aiohttp"):
            child, stats, runs = self._median(partial(self._s1_raw, client, source, rows))
            try:
                out = json.loads(child.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                out = {"lost": rows, "wrong": 0}
            notes = [server_note(stats), *runs] + ([f"exit {child.rc}"] if child.rc else [])
            raw[client] = self.add(
                client_line(
                    "S1",
                    f"raw {client} loop",
                    rows,
                    child,
                    stats,
                    lost=out["lost"],
                    twice=stats.get("answered_twice"),
                    wrong=out["wrong"],
                    notes=notes,
                )
            )
        assert cli.rows_s is not None and cli.cpu_1k is not None
        self.target("S1", "pipeline ≥ 5,000 rows/s", f"{cli.rows_s:,.0f}", cli.rows_s >= 5000)
        self.target("S1", "pipeline ≤ 0.20 CPU-s/1k rows", f"{cli.cpu_1k:.3f}", cli.cpu_1k <= 0.20)
        ref = raw["aiohttp"].cpu_1k or float("nan")
        self.target(
            "S1",
            "pipeline CPU/1k ≤ 1.5x raw aiohttp",
            f"{cli.cpu_1k / ref:.2f}x ({cli.cpu_1k:.3f} vs {ref:.3f})",
            cli.cpu_1k <= 1.5 * ref,
        )
        self.target(
            "S1", "pipeline 0 lost, 0 wrong", f"{lost} lost, {wrong} wrong", not lost + wrong
        )

    def _s1_cli(self, name: str, source: Path, rows: int) -> tuple[Child, dict[str, Any]]:
        with mock_server(self.dir, name) as mock:
            config = write_config(self.dir, name, source, mock.base_url)
            child = run_cli(config, self.dir / f"{name}_cli", rows)
        return child, self.stats_of(name, mock)

    def _s1_raw(self, client: str, source: Path, rows: int) -> tuple[Child, dict[str, Any]]:
        name = f"s1_{client}"
        with mock_server(self.dir, name) as mock:
            url = mock.base_url + "/chat/completions"
            cmd = [PY, str(RAW), client, "--url", url, "--input", str(source)]
            child = run_child(cmd, self.dir / name, cli_timeout(rows, 0.02))
        return child, self.stats_of(name, mock)

    def _median(
        self, once: Callable[[], tuple[Child, dict[str, Any]]]
    ) -> tuple[Child, dict[str, Any], list[str]]:
        """Run `once` `--repeat` times; the run with the median CPU time, and a note."""
        runs = [once() for _ in range(self.repeat)]
        runs.sort(key=lambda run: run[0].cpu_s)
        child, stats = runs[len(runs) // 2]
        if len(runs) == 1:
            return child, stats, []
        cpus = ", ".join(f"{run[0].cpu_s:.2f}" for run in runs)
        return child, stats, [f"median of {len(runs)} runs by CPU-s ({cpus})"]

    # S2 ---------------------------------------------------------------------------------

    def s2(self) -> None:
        rows = self.sizes["S2"]
        source = make_table(self.dir / f"input_{rows}.csv", rows)
        self.log(f"S2: {rows} rows, {LATENCY_S * 1000:.0f} ms, limit {RPM} RPM told to the CLI")
        limits = ["--rpm", str(RPM), "--tpm", str(TPM), "--window", str(WINDOW_S)]
        with mock_server(self.dir, "s2", "--latency", str(LATENCY_S), *limits) as mock:
            config = write_config(self.dir, "s2", source, mock.base_url)
            child = run_cli(
                config,
                self.dir / "s2_cli",
                rows,
                f"run.requests_per_minute={RPM}",
                f"run.tokens_per_minute={TPM}",
            )
        stats = self.stats_of("s2", mock)
        lost, wrong = check_output(output_of(self.dir, "s2"), rows)
        answered = rows - lost
        pct = 100.0 * answered / (child.wall_s / 60.0) / RPM
        span = stats.get("span_s") or 0.0
        notes = cli_note(child)
        if span:
            notes.append(f"{100.0 * stats['requests'] / span * 60 / RPM:.1f}% by server span")
        windowed = windowed_pct(stats)
        if windowed is not None:
            notes.append(f"{windowed:.1f}% windowed after 10 s")
        share = share_429(stats) or 0.0
        self.add(rate_line("S2", rows, child, stats, pct, share, lost, wrong, notes))
        self.target("S2", "≥ 97% of RPM limit (rows / wall)", f"{pct:.1f}%", pct >= 97.0)
        self.target("S2", "< 1% 429", f"{100 * share:.2f}%", share < 0.01)
        self.target("S2", "0 lost", str(lost), lost == 0)

    # S3 ---------------------------------------------------------------------------------

    def s3(self) -> None:
        rows = self.sizes["S3"]
        source = make_table(self.dir / f"input_{rows}.csv", rows)
        self.log(f"S3: {rows} rows, 2% 5xx, 1% drops, 1% truncated")
        faults = ["--error-rate-5xx", "0.02", "--drop-rate", "0.01", "--truncate-rate", "0.01"]
        with mock_server(self.dir, "s3", *faults, "--seed", "3") as mock:
            config = write_config(self.dir, "s3", source, mock.base_url)
            child = run_cli(config, self.dir / "s3_cli", rows)
        stats = self.stats_of("s3", mock)
        lost, wrong = check_output(output_of(self.dir, "s3"), rows)
        twice = stats.get("answered_twice") or 0
        notes = cli_note(child)
        notes.append(
            f"injected {stats.get('errors_5xx')} 5xx, {stats.get('drops')} drops, "
            f"{stats.get('truncated')} truncated"
        )
        self.add(
            client_line(
                "S3",
                "pipeline CLI",
                rows,
                child,
                stats,
                lost=lost,
                twice=twice,
                wrong=wrong,
                notes=notes,
            )
        )
        self.target(
            "S3",
            "0 lost, 0 wrong, 0 twice",
            f"{lost} lost, {wrong} wrong, {twice} twice",
            lost == 0 and wrong == 0 and twice == 0,
        )

    # S4 ---------------------------------------------------------------------------------

    def s4(self, variant: str) -> None:
        rows = self.sizes["S4"]
        headers = variant == "a"
        source = make_table(self.dir / f"input_{rows}.csv", rows)
        what = "rate headers + retry-after" if headers else "bare 429s"
        self.log(f"S4{variant}: {rows} rows, limit {RPM} RPM not told to the CLI, {what}")
        options = ["--latency", str(LATENCY_S), "--rpm", str(RPM), "--tpm", str(TPM)]
        options += ["--window", str(WINDOW_S), "--headers" if headers else "--no-headers"]
        name = f"s4{variant}"
        with mock_server(self.dir, name, *options) as mock:
            config = write_config(self.dir, name, source, mock.base_url)
            child = run_cli(config, self.dir / f"{name}_cli", rows)
        stats = self.stats_of(name, mock)
        lost, wrong = check_output(output_of(self.dir, name), rows)
        pct = windowed_pct(stats)
        share = share_429(stats) or 0.0
        notes = cli_note(child)
        simple = simple_pct(stats)
        if simple is not None:
            notes.append(f"{simple:.1f}% admitted/span after 10 s (edge-sensitive)")
        notes.append(f"server span {stats.get('span_s', 0):.1f} s")
        self.add(rate_line(f"S4{variant}", rows, child, stats, pct, share, lost, wrong, notes))
        floor = 90.0 if headers else 80.0
        shown = "n/a (run too short)" if pct is None else f"{pct:.1f}%"
        self.target(
            f"S4{variant}",
            f"≥ {floor:.0f}% of limit after 10 s",
            shown,
            pct is not None and pct >= floor,
        )
        self.target(f"S4{variant}", "< 5% 429", f"{100 * share:.1f}%", share < 0.05)
        self.target(f"S4{variant}", "0 lost", str(lost), lost == 0)

    def s4c(self) -> None:
        """A 60 s sliding window, the limit not told, bare 429s: how fast the CLI learns it."""
        rows, window = self.sizes["S4c"], S4C_WINDOW_S
        source = make_table(self.dir / f"input_{rows}.csv", rows)
        self.log(
            f"S4c: {rows:,} rows, limit {RPM} RPM in a {window} s sliding window, not told to "
            "the CLI, bare 429s"
        )
        options = ["--latency", str(LATENCY_S), "--rpm", str(RPM), "--window", str(window)]
        with mock_server(self.dir, "s4c", *options, "--no-headers") as mock:
            config = write_config(self.dir, "s4c", source, mock.base_url)
            timeout = paced_timeout(rows, RPM)
            child = run_cli(config, self.dir / "s4c_cli", rows, timeout_s=timeout)
        stats = self.stats_of("s4c", mock)
        lost, wrong = check_output(output_of(self.dir, "s4c"), rows)
        skip = 2 * window
        pct = windowed_pct(stats, skip_s=skip)
        share = share_429(stats) or 0.0
        notes = cli_note(child)
        learning = [windowed_pct(stats, skip_s=0), windowed_pct(stats, skip_s=window)]
        shown = ["n/a" if value is None else f"{value:.1f}%" for value in learning]
        notes.append(f"learning: {shown[0]} windowed after 0 s, {shown[1]} after {window} s")
        notes.append(f"server span {stats.get('span_s', 0):.1f} s")
        if pct is None:
            notes.append(f"no full {window} s window after {skip} s: run too short")
        self.add(rate_line("S4c", rows, child, stats, pct, share, lost, wrong, notes))
        span = float(stats.get("span_s") or 0.0)
        if pct is None:
            measured = f"n/a (span {span:.0f} s: no full window after {skip} s)"
        else:
            measured = f"{pct:.1f}%"
        passed = pct is not None and pct >= 90.0
        self.target("S4c", "≥ 90% of limit after two windows", measured, passed)
        self.target("S4c", "< 5% 429", f"{100 * share:.1f}%", share < 0.05)
        self.target("S4c", "0 lost", str(lost), lost == 0)

    # S5 ---------------------------------------------------------------------------------

    def s5(self) -> None:
        sizes = sorted(set(self.s5_sizes))
        peaks: dict[int, float] = {}
        resume_source: Path | None = None
        for rows in sizes:
            self.log(f"S5: {rows:,} Parquet rows, zero latency")
            source = make_table(self.dir / f"input_{rows}.parquet", rows)
            name = f"s5_{rows}"
            with mock_server(self.dir, name) as mock:
                config = write_config(self.dir, name, source, mock.base_url)
                child = run_cli(config, self.dir / f"{name}_cli", rows)
            stats = self.stats_of(name, mock)
            lost, wrong = check_output(output_of(self.dir, name), rows, sample=20_000)
            peaks[rows] = child.rss_mb
            notes = [*cli_note(child), server_note(stats), "wrong: 20k-row sample"]
            early, late = child.rss_at(0.1), child.rss_at(0.9)
            if early is not None and late is not None and child.wall_s >= 30.0:
                notes.append(f"RSS at 10% of the run {early:.0f} MB, at 90% {late:.0f} MB")
            peaks_seen = child.sampled_peaks()
            if peaks_seen is not None:
                anon, backed = peaks_seen
                notes.append(f"sampled peak anon {anon:.0f} MB, file-backed {backed:.0f} MB")
            store = self.dir / f"{name}.db"
            if store.exists():
                notes.append(f"store {store.stat().st_size / 2**20:.0f} MB")
            twice = stats.get("answered_twice")
            line = client_line(
                "S5", "pipeline CLI", rows, child, stats, notes=notes, lost=lost, twice=twice
            )
            line.wrong = wrong
            line.extra["rss_series"] = child.rss_series
            self.add(line)
            if rows == self.resume_rows and child.rc == 0:
                resume_source = source
        for rows, peak in peaks.items():
            self.target("S5", f"peak RSS < 1 GiB at {rows:,} rows", f"{peak:.0f} MB", peak < GIB_MB)
        if len(peaks) >= 2:
            small, big = sizes[-2], sizes[-1]
            ratio = peaks[big] / peaks[small]
            self.target(
                "S5",
                f"RSS roughly flat {small:,}→{big:,} (≤ 1.25x; stated for 1M→10M)",
                f"{ratio:.2f}x ({peaks[small]:.0f}→{peaks[big]:.0f} MB)",
                ratio <= 1.25,
            )
        self.s5_resume(resume_source)

    def s5_resume(self, source: Path | None) -> None:
        """Rerun over a store that holds every row (`source` given: filled by the S5 run)."""
        rows = self.resume_rows
        name = f"s5_{rows}"
        if source is None:
            self.log(f"S5 resume: first filling the store with {rows:,} rows")
            source = make_table(self.dir / f"input_{rows}.parquet", rows)
            with mock_server(self.dir, f"{name}_fill") as mock:
                filled = write_config(self.dir, name, source, mock.base_url)
                run_cli(filled, self.dir / f"{name}_fill_cli", rows)
        self.log(f"S5 resume: rerun over {rows:,} stored rows")
        child, stats = self._rerun(source, rows, "resume", "pipeline CLI", [])
        summary = child.summary()
        lost = self.lines[-1].lost
        self.target(
            "S5",
            f"resume over {rows:,} stored rows < 5 s",
            f"{child.wall_s:.1f} s",
            child.rc == 0
            and summary.get("from_store") == rows
            and stats.get("requests", 0) == 0
            and lost == 0
            and child.wall_s < 5.0,
        )
        self.s5_resume_per_row(source, rows)

    def s5_resume_per_row(self, source: Path, rows: int) -> None:
        """The same resume with the memo cleared: every row rendered and looked up alone.

        This is what a rerun costs when chunks changed, or the store predates the memo.
        """
        name = f"s5_{rows}"
        with sqlite3.connect(self.dir / f"{name}.db") as db:
            db.execute("DELETE FROM memo")
        self.log(f"S5 resume, memo cleared: rerun over {rows:,} stored rows, row by row")
        note = "memo cleared: the per-row path, for reference (no target)"
        self._rerun(source, rows, "per_row", "pipeline CLI, row by row", [note])

    def _rerun(
        self, source: Path, rows: int, step: str, client: str, notes: list[str]
    ) -> tuple[Child, dict[str, Any]]:
        """Rerun the S5 job of `rows` over its store; add its line."""
        name = f"s5_{rows}"
        with mock_server(self.dir, f"{name}_{step}") as mock:
            config = write_config(self.dir, name, source, mock.base_url, fresh=False)
            child = run_cli(config, self.dir / f"{name}_{step}_cli", rows)
        stats = self.stats_of(f"{name}_{step}", mock)
        lost, wrong = check_output(output_of(self.dir, name), rows, sample=20_000)
        notes = [*cli_note(child), *notes, f"from_store {child.summary().get('from_store')}"]
        notes.append(f"server got {stats.get('requests', 0)} requests")
        line = client_line("S5 resume", client, rows, child, stats, lost=lost, notes=notes)
        line.wrong = wrong
        self.add(line)
        return child, stats

    # S6 ---------------------------------------------------------------------------------

    def s6(self) -> None:
        """The limit told, on the local engine and on Ray: share of it reached, 429s."""
        rows = self.s6_rows
        source = make_table(self.dir / f"input_{rows}.csv", rows)
        scaled = None
        if rows != S6_SPEC_ROWS:
            scaled = f"S6 scaled from {S6_SPEC_ROWS:,} rows (--s6-rows {S6_SPEC_ROWS} for those)"
        self.log(
            f"S6: {rows:,} rows{f' ({scaled})' if scaled else ''}, {LATENCY_S * 1000:.0f} ms, "
            f"limit {RPM} RPM in a {WINDOW_S} s sliding window told to the CLI; the local "
            f"engine, then Ray with {RAY_WORKERS} workers"
        )
        found = {engine: self._s6_run(engine, source, rows, scaled) for engine in ENGINES}
        pct, share, lost = found["ray"]
        local_pct = found["local"][0]
        shown = "n/a (run too short)" if pct is None else f"{pct:.1f}%"
        if local_pct is not None:
            shown += f" (local {local_pct:.1f}%)"
        passed = pct is not None and pct >= 95.0
        self.target("S6", f"Ray ≥ 95% of limit after {S6_SKIP_S} s", shown, passed)
        self.target("S6", "Ray < 1% 429", f"{100 * share:.2f}%", share < 0.01)
        self.target("S6", "Ray 0 lost", str(lost), lost == 0)

    def _s6_run(
        self, engine: str, source: Path, rows: int, scaled: str | None
    ) -> tuple[float | None, float, int]:
        """One engine's S6 run; its (% of limit after S6_SKIP_S, 429 share, lost)."""
        name = f"s6_{engine}"
        options = ["--latency", str(LATENCY_S), "--rpm", str(RPM), "--window", str(WINDOW_S)]
        with mock_server(self.dir, name, *options) as mock:
            config = write_config(self.dir, name, source, mock.base_url)
            child = run_cli(
                config,
                self.dir / f"{name}_cli",
                rows,
                f"run.requests_per_minute={RPM}",
                *engine_overrides(engine),
                timeout_s=paced_timeout(rows, RPM),
                tree=True,
            )
        stats = self.stats_of(name, mock)
        lost, wrong = check_output(output_of(self.dir, name), rows)
        pct = windowed_pct(stats, skip_s=S6_SKIP_S)
        share = share_429(stats) or 0.0
        notes = cli_note(child)
        simple = simple_pct(stats, S6_SKIP_S)
        if simple is not None:
            notes.append(f"{simple:.1f}% admitted/span after {S6_SKIP_S} s")
        notes.append(f"server span {stats.get('span_s', 0):.1f} s")
        if pct is None:
            notes.append(f"no full {WINDOW_S} s window after {S6_SKIP_S} s: run too short")
        if scaled:
            notes.append(scaled)
        values = rate_values(stats, pct, share, lost, wrong)
        self.add(engine_line("S6", engine, rows, child, stats, notes=notes, **values))
        return pct, share, lost

    # S7 ---------------------------------------------------------------------------------

    def s7(self) -> None:
        """Zero latency, no limit: rows/s and CPU of the local engine and of Ray, with Ray's
        fixed start-up cost in seconds (wall) and in CPU (from a quarter-size run); then the
        same two runs with the client free to use both CPUs."""
        rows = self.sizes["S7"]
        source = make_table(self.dir / f"input_{rows}.csv", rows)
        small_rows = rows // 4
        small_source = make_table(self.dir / f"input_{small_rows}.csv", small_rows)
        self.log(
            f"S7: {rows:,} rows (and {small_rows:,} for the fixed CPU), zero latency, no limit; "
            f"the local engine, then Ray with {RAY_WORKERS} workers; {self.repeat} run(s) "
            f"each; the client and every process it starts pinned to CPU {CLIENT_CPU}"
        )
        lines = {
            engine: self._s7_engine("S7", engine, source, rows, small_source, small_rows)
            for engine in ENGINES
        }
        ray = lines["ray"]
        bad = (ray.lost or 0) + (ray.wrong or 0) + (ray.twice or 0)
        self.target(
            "S7",
            "Ray 0 lost, 0 wrong, 0 twice",
            f"{ray.lost} lost, {ray.wrong} wrong, {ray.twice} twice",
            bad == 0,
        )
        self._s7_target("S7", lines, f"the client on CPU {CLIENT_CPU}")
        self._s7_call_floor(lines["local"])
        self.log(
            "S7 both CPUs: the same two engines, the client and every process it starts free "
            "to run on either CPU (the mock still pinned to CPU 1)"
        )
        free = {
            engine: self._s7_engine("S7 both CPUs", engine, source, rows, pinned=False)
            for engine in ENGINES
        }
        self._s7_target("S7 both CPUs", free, "the client on both CPUs")

    def _s7_call_floor(self, local: Line) -> None:
        """What one Ray actor call costs here (scripts/bench_raycall.py, pinned as the
        client is), beside the local engine's whole CPU per row: a Ray worker hands the
        driver at most its share of `run.concurrency` answers per call (16 at S7's 64 over
        4 workers), since a slot is freed only once the driver has stored its answer."""
        share = S7_CONCURRENCY // RAY_WORKERS
        cmd = [PY, str(ROOT / "scripts" / "bench_raycall.py"), str(RAY_CALLS), str(share)]
        child = run_child(cmd, self.dir / "s7_ray_call", cli_timeout(RAY_CALLS, 0.05), tree=True)
        found = json.loads(child.stdout.strip().splitlines()[-1]) if child.rc == 0 else None
        if found is None:
            self.target(
                "S7", "Ray call floor measured", last_line(self.dir / "s7_ray_call.err"), False
            )
            return
        per_call = found["cpu_ms_per_call"]
        line = Line(
            "S7 Ray call",
            f"one Ray actor call carrying {share} answers",
            found["calls"],
            rows_s=found["calls"] / found["wall_s"],
            cpu_1k=per_call,  # CPU-s per 1,000 calls: CPU-ms per call
            notes=[
                f"{per_call:.2f} CPU-ms per call, {per_call / share:.3f} per answer at {share} "
                f"a call; Ray idle {found['idle_cpu_per_s']:.3f} CPU-s/s",
                "rows here are calls, CPU-s/1k rows is CPU-ms per call",
            ],
        )
        marginal = local.extra.get("marginal_cpu_1k")
        if marginal:
            line.notes.append(
                f"per answer {per_call / share / marginal:.2f}x the local engine's whole "
                f"marginal CPU per row ({marginal:.3f} CPU-ms), before any HTTP"
            )
        self.add(line)

    def _s7_engine(
        self,
        scenario: str,
        engine: str,
        source: Path,
        rows: int,
        small_source: Path | None = None,
        small_rows: int = 0,
        pinned: bool = True,
    ) -> Line:
        """One engine's S7 line; with `small_source`, its fixed cost split from a smaller run."""
        name = f"s7_{engine}" if pinned else f"s7_free_{engine}"
        once = partial(self._s7_cli, engine, name, source, rows, pinned)
        child, stats, runs = self._median(once)
        lost, wrong = check_output(output_of(self.dir, name), rows)
        notes = [*cli_note(child), server_note(stats), *runs]
        span = float(stats.get("span_s") or 0.0)
        if span:
            notes.append(f"steady {rows / span:,.0f} rows/s (rows / server span)")
        extra: dict[str, float] = {}
        if small_source is not None:
            small_name = f"{name}_small"
            small, _, _ = self._median(
                partial(self._s7_cli, engine, small_name, small_source, small_rows, pinned)
            )
            if small.rc == 0 and child.rc == 0:
                notes.append(split_note(child, small, rows, small_rows))
                marginal = 1000 * (child.cpu_s - small.cpu_s) / (rows - small_rows)
                extra["marginal_cpu_1k"] = marginal
        line = engine_line(
            scenario,
            engine,
            rows,
            child,
            stats,
            lost=lost,
            twice=stats.get("answered_twice"),
            wrong=wrong,
            notes=notes,
        )
        line.extra["steady_rows_s"] = rows / span if span and child.rc == 0 else None
        line.extra.update(extra)
        return self.add(line)

    def _s7_target(self, scenario: str, lines: Mapping[str, Line], where: str) -> None:
        """The issue's target: on this machine, Ray's sending rate at least the local one's
        (the steady part, rows / server span: the fixed start-up cost is reported apart)."""
        local, ray = (lines[e].extra.get("steady_rows_s") for e in ("local", "ray"))
        if not local or not ray:
            self.target(scenario, "Ray steady rows/s >= local's", "a run failed", False)
            return
        self.target(
            scenario,
            f"Ray steady rows/s >= local's ({where})",
            f"{ray:,.0f} vs {local:,.0f} ({ray / local:.2f}x)",
            ray >= local,
        )

    def _s7_cli(
        self, engine: str, name: str, source: Path, rows: int, pinned: bool = True
    ) -> tuple[Child, dict[str, Any]]:
        with mock_server(self.dir, name) as mock:
            config = write_config(self.dir, name, source, mock.base_url, concurrency=S7_CONCURRENCY)
            child = run_cli(
                config,
                self.dir / f"{name}_cli",
                rows,
                *engine_overrides(engine),
                tree=True,
                pinned=pinned,
            )
        return child, self.stats_of(name, mock)

    # S8 ---------------------------------------------------------------------------------

    def s8(self) -> None:
        """The LiteLLM proxy in front of an unlimited mock, each case beside the bench mock."""
        rows = self.sizes["S8"]
        source = make_table(self.dir / f"input_{rows}.csv", rows)
        program, why = ensure_litellm(self.log)
        if program is None:
            self.log(f"S8: no LiteLLM proxy, S8 not run: {why}")
            self.target("S8", f"LiteLLM proxy {LITELLM_VERSION} installed", why, False)
            return
        self.log(f"S8: {why}")
        self.litellm = f"LiteLLM proxy {LITELLM_VERSION} ({program.relative_to(ROOT)})"
        for case in S8_CASES:
            self._s8_proxy(program, case, source, rows)
            self._s8_mock(case, source, rows)

    def _s8_proxy(self, program: Path, case: GatewayCase, source: Path, rows: int) -> None:
        """`case` through the LiteLLM proxy; the mock behind it counts what got through."""
        name, scenario = case.file_name("proxy"), f"S8 {case.name}"
        self.log(f"{scenario}: {rows:,} rows through the LiteLLM proxy, {case.describe()}")
        try:
            with (
                mock_server(self.dir, name, "--latency", str(LATENCY_S)) as mock,
                litellm_proxy(program, self.dir, name, mock.base_url, case.rpm, case.tpm) as proxy,
            ):
                config = self._s8_config(name, source, proxy.base_url)
                cpu_before = proxy.cpu_s()
                child = run_cli(
                    config,
                    self.dir / f"{name}_cli",
                    rows,
                    *case.overrides(),
                    timeout_s=case.timeout_s(rows),
                )
                cpu_after = proxy.cpu_s()
        except RuntimeError as exc:
            self.log(f"{scenario}: {exc}")
            self.target(scenario, "LiteLLM proxy started", str(exc), False)
            return
        stats = self.stats_of(name, mock)
        sent = child.summary().get("requests_sent")
        seen = int(stats.get("requests", 0))
        r429 = None if sent is None else int(sent) - seen
        notes = [
            f"LiteLLM {LITELLM_VERSION}, per-key fixed 60 s window",
            f"proxy live {proxy.live_after_s:.0f} s after spawn",
            "429s: requests sent less those the mock behind it saw",
        ]
        if r429 is not None and r429 < 0:
            notes.append(f"the mock saw {-r429} requests more than were sent")
            r429 = 0
        load = dict(stats)  # the proxy's CPU is no other process's: add it to the server's
        if cpu_before is not None and cpu_after is not None:
            load["cpu_s"] = float(stats.get("cpu_s") or 0.0) + cpu_after - cpu_before
            if sent:
                per_request = 1000 * (cpu_after - cpu_before) / int(sent)
                notes.append(f"proxy {per_request:.1f} ms CPU per request")
        pct, share, lost = self._s8_add(case, "LiteLLM proxy", name, rows, child, load, r429, notes)
        if pct is None:
            measured = f"n/a (span {stats.get('span_s', 0):.0f} s < {S8_WINDOW_S} s)"
        else:
            measured = f"{pct:.1f}%"
        self.target(scenario, "≥ 95% of limit", measured, pct is not None and pct >= 95.0)
        if case.told:
            shown = "n/a (no summary)" if share is None else f"{100 * share:.2f}%"
            self.target(scenario, "< 1% 429", shown, share is not None and share < 0.01)
        self.target(scenario, "0 lost", str(lost), lost == 0)

    def _s8_mock(self, case: GatewayCase, source: Path, rows: int) -> None:
        """`case` on the bench mock as the gateway (60 s sliding window, headers): no targets."""
        name = case.file_name("mock")
        self.log(f"S8 {case.name}: {rows:,} rows on the bench mock, {case.describe()}")
        options = ["--latency", str(LATENCY_S), *case.mock_options()]
        with mock_server(self.dir, name, *options) as mock:
            config = self._s8_config(name, source, mock.base_url)
            child = run_cli(
                config,
                self.dir / f"{name}_cli",
                rows,
                *case.overrides(),
                timeout_s=case.timeout_s(rows),
            )
        stats = self.stats_of(name, mock)
        notes = ["mock: 60 s sliding window, x-ratelimit-* headers and retry-after"]
        if case.tpm:
            # The mock charges prompt + max_tokens at arrival; the series counts usage.
            extra = MAX_TOKENS - MOCK_COMPLETION_TOKENS
            charged = [
                used + extra * admitted
                for used, admitted in zip(
                    stats.get("tokens_per_s") or [], stats.get("admitted_per_s") or [], strict=False
                )
            ]
            by_charge = sliding_pct(charged, case.tpm, float(stats.get("span_s") or 0.0))
            if by_charge is not None:
                notes.append(f"{by_charge:.1f}% of limit as the mock counts (prompt + max_tokens)")
        self._s8_add(case, "bench mock", name, rows, child, stats, stats.get("rate_limited"), notes)

    def _s8_config(self, name: str, source: Path, base_url: str) -> Path:
        return write_config(
            self.dir,
            name,
            source,
            base_url,
            concurrency=S8_CONCURRENCY,
            key_env=PROXY_KEY_ENV,
        )

    def _s8_add(
        self,
        case: GatewayCase,
        client: str,
        name: str,
        rows: int,
        child: Child,
        stats: dict[str, Any],
        r429: int | None,
        notes: list[str],
    ) -> tuple[float | None, float | None, int]:
        """Add the line of one S8 run; its (% of limit, 429 share, lost)."""
        lost, wrong = check_output(output_of(self.dir, name), rows)
        span = float(stats.get("span_s") or 0.0)
        if case.tpm:
            pct = sliding_pct(stats.get("tokens_per_s") or [], case.tpm, span)
        else:
            pct = sliding_pct(stats.get("admitted_per_s") or [], float(case.rpm or 0), span)
        sent = child.summary().get("requests_sent")
        sent = int(sent) if sent is not None else None
        share = None if r429 is None or not sent else r429 / sent
        shown = [*cli_note(child), *notes]
        if pct is None:
            shown.append(f"span {span:.0f} s < {S8_WINDOW_S} s: no full window")
        else:
            shown.append(f"span {span:.0f} s")
        if case.tpm:
            shown.append(f"{stats.get('tokens', 0):,} usage tokens answered")
        self.add(
            client_line(
                f"S8 {case.name}",
                client,
                rows,
                child,
                stats,
                pct_limit=pct,
                r429=r429,
                r429_share=share,
                lost=lost,
                twice=stats.get("answered_twice"),
                wrong=wrong,
                notes=shown,
            )
        )
        return pct, share, lost


# --- report ------------------------------------------------------------------------------

HEADER = (
    "| scenario | client | rows | rows/s | CPU-s/1k rows | peak RSS MB | % of limit | 429s "
    "| lost | twice | wrong | notes |"
)


def fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_line(line: Line) -> str:
    r429 = "-"
    if line.r429 is not None:
        r429 = f"{line.r429} ({100 * (line.r429_share or 0):.1f}%)"
    cells = [
        line.scenario,
        line.client,
        f"{line.rows:,}",
        fmt(line.rows_s, ",.0f"),
        fmt(line.cpu_1k, ".3f"),
        fmt(line.rss_mb, ".0f"),
        "-" if line.pct_limit is None else f"{line.pct_limit:.1f}%",
        r429,
        fmt(line.lost, "d"),
        fmt(line.twice, "d"),
        fmt(line.wrong, "d"),
        "; ".join(line.notes),
    ]
    return "| " + " | ".join(cells) + " |"


def report(bench: Bench) -> str:
    changed = pipeline_fingerprint() != bench.fingerprint
    out = [
        f"pipeline {bench.version} (pipeline/*.py {bench.fingerprint}"
        + (", CHANGED during the run)" if changed else ")"),
        "",
        HEADER,
        "|" + "---|" * 12,
    ]
    out += [render_line(line) for line in bench.lines]
    out += ["", "| scenario | target | measured | result |", "|---|---|---|---|"]
    out += [
        f"| {v.scenario} | {v.target} | {v.measured} | {'PASS' if v.passed else 'MISS'} |"
        for v in bench.verdicts
    ]
    return "\n".join(out)


# --- docs/performance.md -----------------------------------------------------------------
# A full run (every scenario at full size) writes its results between these markers; the
# rest of the page is prose kept by hand. Partial runs leave the page alone.

DOCS = ROOT / "docs" / "performance.md"
DOCS_START = "<!-- bench:start (written by `make bench`: scripts/bench.py; do not edit) -->"
DOCS_END = "<!-- bench:end -->"
DOCS_HEADER = (
    "| scenario | client | rows | rows/s | CPU-s / 1k rows | peak RSS MB | % of limit | 429s "
    "| lost | twice | wrong |"
)
DOCS_ALIGN = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"


def docs_cell(value: float | int | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def docs_line(line: Line) -> str:
    """One results line as docs/performance.md shows it: blank where nothing was measured."""
    cells = [
        line.scenario,
        line.client,
        f"{line.rows:,}",
        docs_cell(line.rows_s, ",.0f"),
        docs_cell(line.cpu_1k, ".3f"),
        docs_cell(line.rss_mb, ".0f"),
        "" if line.pct_limit is None else f"{line.pct_limit:.1f} %",
        docs_cell(line.r429, "d"),
        docs_cell(line.lost, "d"),
        docs_cell(line.twice, "d"),
        docs_cell(line.wrong, "d"),
    ]
    return "| " + " | ".join(cells) + " |"


def docs_block(lines: list[Line], verdicts: list[Verdict], conditions: list[str]) -> str:
    """The generated part of docs/performance.md: conditions, results, targets, notes."""
    out = [DOCS_START, "", "Conditions of this run:", ""]
    out += [f"- {item}" for item in conditions]
    out += ["", DOCS_HEADER, DOCS_ALIGN]
    out += [docs_line(line) for line in lines]
    out += ["", "| scenario | target | measured | result |", "|---|---|---|---|"]
    out += [
        f"| {v.scenario} | {v.target} | {v.measured} | {'PASS' if v.passed else 'MISS'} |"
        for v in verdicts
    ]
    noted = [line for line in lines if line.notes]
    if noted:
        out += ["", "Notes per line:", ""]
        out += [
            f"- {line.scenario}, {line.client}, {line.rows:,} rows: {'; '.join(line.notes)}"
            for line in noted
        ]
    out += ["", DOCS_END]
    return "\n".join(out)


def replace_block(page: str, block: str) -> str:
    """`page` with the text between the markers (markers included) replaced by `block`."""
    start, end = page.find(DOCS_START), page.find(DOCS_END)
    if start < 0 or end < start:
        return page.rstrip("\n") + "\n\n" + block + "\n"
    return page[:start] + block + page[end + len(DOCS_END) :]


def write_docs(block: str, path: Path = DOCS) -> None:
    """Put `block` into the page at `path` between the markers, whole or not at all."""
    page = path.read_text(encoding="utf-8") if path.exists() else "# Performance\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(replace_block(page, block), encoding="utf-8")
    tmp.replace(path)


def full_run(args: argparse.Namespace) -> bool:
    """Every scenario at its full size: the run docs/performance.md reports."""
    return not (args.only or args.quick or args.s5_sizes or args.s5_resume_rows or args.s6_rows)


def run_conditions(bench: Bench, argv: list[str], seconds: float) -> list[str]:
    """What the figures depend on: the command, the code, the machine, the date."""
    changed = pipeline_fingerprint() != bench.fingerprint
    cpu = "unknown CPU"
    with suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.partition(":")[2].strip()
                break
    return [
        f"command: `{' '.join(['python scripts/bench.py', *argv])}`",
        f"code: pipeline {bench.version} (pipeline/*.py {bench.fingerprint}"
        + (", CHANGED during the run)" if changed else ")"),
        f"machine: {os.cpu_count()} CPUs ({cpu}), {platform.platform()}; client pinned to "
        f"CPU {CLIENT_CPU}, mock server to CPU 1; Python {platform.python_version()}, "
        f"polars {pl.__version__}",
        f"when: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, every line from this one "
        f"run ({seconds / 60:.0f} minutes)",
        *([f"S8 gateway: {bench.litellm}"] if bench.litellm else []),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only", help=f"comma-separated scenarios: {','.join(SCENARIOS)} (S4: every S4x)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, S5 at 100k and 1M")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--s5-sizes", help="comma-separated S5 row counts")
    parser.add_argument("--s5-resume-rows", type=int, default=None, help="default 1,000,000")
    parser.add_argument(
        "--s6-rows",
        type=int,
        default=None,
        help=f"S6 rows per engine: default {FULL['S6']:,} (--quick {QUICK['S6']:,}); "
        f"{S6_SPEC_ROWS} is the specified size, ~7 minutes per engine",
    )
    parser.add_argument("--workdir", type=Path, help="keep inputs, outputs, logs here")
    parser.add_argument(
        "--repeat", type=int, default=1, help="S1, S7: run each client N times, keep the median"
    )
    return parser.parse_args(argv)


@contextmanager
def workdir_at(keep: Path | None) -> Iterator[Path]:
    """`keep` (created, kept afterwards) or a temporary folder removed at the end."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {CLIENT_CPU})  # keep CPU 1 for the server
    chosen = [s.strip() for s in (args.only or ",".join(SCENARIOS)).split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS and s != "S4"]
    if unknown:
        print(f"error: unknown scenario {unknown[0]}; choose from {SCENARIOS}", file=sys.stderr)
        return 2
    if "S4" in chosen:  # every S4 variant
        chosen = [s for s in chosen if s != "S4"] + [s for s in SCENARIOS if s.startswith("S4")]
    if args.s5_sizes:
        s5_sizes = [int(s.replace("_", "")) for s in args.s5_sizes.split(",") if s.strip()]
    else:
        s5_sizes = list(S5_QUICK if args.quick else S5_FULL)
    sizes = QUICK if args.quick else FULL
    resume_rows = args.s5_resume_rows or sizes["resume"]
    with workdir_at(args.workdir) as workdir:
        bench = Bench(workdir, args.quick, s5_sizes, resume_rows, args.repeat, args.s6_rows)
        bench.log(f"workdir {workdir}; scenarios {','.join(chosen)}")
        started = time.monotonic()
        for scenario in SCENARIOS:
            if scenario not in chosen:
                continue
            if scenario in ("S4a", "S4b"):
                bench.s4(scenario[-1])
            else:
                getattr(bench, scenario.lower())()
        table = report(bench)
        print(table)
        seconds = time.monotonic() - started
        bench.log(f"done in {seconds:.0f} s")
        if full_run(args):
            conditions = run_conditions(bench, sys.argv[1:] if argv is None else argv, seconds)
            write_docs(docs_block(bench.lines, bench.verdicts, conditions))
            bench.log(f"wrote the results into {DOCS.relative_to(ROOT)}")
        else:
            bench.log(f"{DOCS.relative_to(ROOT)} left as it was: not a full run")
        if args.json:
            data = {
                "version": bench.version,
                "pipeline_fingerprint": bench.fingerprint,
                "quick": args.quick,
                "lines": [asdict(line) for line in bench.lines],
                "verdicts": [asdict(v) for v in bench.verdicts],
                "server_stats": bench.server_stats,
            }
            args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
