"""Ray cluster: Ray started for a run (or joined), the budget actor and the worker actors placed.

The ledger (`budget.Ledger`) goes beside the driver, the workers (`rayworker.Worker`) are
spread over the cluster's nodes, and the run waits until each is up. Ray is imported here
and in the worker processes only: a missing install is a one-line error.

`ray.init` runs in a thread of its own, so that the event loop hears a signal while Ray
starts: the start is stopped (a local Ray once it is up, then shut down; a join is left to
its thread) and nothing is sent. Joining a cluster is bounded: its address must accept a
TCP connection within `PROBE_S` and Ray must join within `CONNECT_S`. While Ray runs,
`sys.stdout` points at stderr: what Ray prints (a dead worker's note) never mixes with the
summary, which is alone on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .budget import Ledger
from .catalog import Price
from .config import Config
from .errors import ConfigError
from .rayworker import Worker

log = logging.getLogger(__name__)

RESTARTS = 3  # times Ray restarts a worker process that died
LOCAL_OBJECT_STORE = 256 * 2**20  # a local Ray's object store: the run's messages are small
PROBE_S = 5.0  # a cluster's address must accept a TCP connection within this
CONNECT_S = 30.0  # ... and Ray must have joined it within this
READY_S = 120.0  # every worker up within this
STOP_S = 60.0  # a signal while a local Ray starts: the longest wait for it, to stop it


def import_ray() -> Any:
    """Ray, or a one-line error that says what to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "run.engine: ray needs Ray, which is not installed: pip install 'pipeline[ray]' "
            "(or pip install ray)"
        ) from None
    return ray


def shares(concurrency: int, workers: int) -> list[int]:
    """`concurrency` split among at most `workers` workers, each with one request or more."""
    count = min(concurrency, workers)
    return [concurrency // count + (1 if i < concurrency % count else 0) for i in range(count)]


def address_of(config: Config) -> tuple[str | None, str]:
    """The cluster to join (None: a local Ray for the run) and the setting that names it."""
    if config.run.ray.address:
        return config.run.ray.address, "run.ray.address"
    return os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"


def probe(address: str, key: str) -> None:
    """The host and port of `address` accept a TCP connection within `PROBE_S`, else a
    config error naming the address as given (`auto` and what cannot be parsed pass:
    Ray says what is wrong with those at once)."""
    where = _host_port(address)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=PROBE_S).close()
    except OSError as exc:
        why = f"no answer within {PROBE_S:.0f}s" if isinstance(exc, TimeoutError) else exc
        raise ConfigError(
            f"{key}: cannot reach the Ray cluster at {address} ({why}); check the address "
            "(a head's host:port, 6379 by default, or ray://head:10001) and that the "
            "cluster is up"
        ) from None


def _host_port(address: str) -> tuple[str, int] | None:
    """host:port, ray://host[:port] or a bare host -> (host, port) to probe."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    rest = rest.split("/", 1)[0]
    if scheme not in ("", "ray") or rest in ("", "auto", "local"):
        return None
    host, colon, port = rest.rpartition(":")
    if not colon or "]" in port:
        host, port = rest, "10001" if scheme == "ray" else "6379"
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def check(config: Config) -> str:
    """What `pipeline validate` checks of a Ray run, starting nothing: Ray installed, and
    the cluster's address (when one is set) accepting connections. Says what was found."""
    import_ray()
    address, key = address_of(config)
    workers = min(config.run.concurrency, config.run.ray.workers)
    if address is None:
        return f"a run starts a local Ray with {workers} workers"
    probe(address, key)
    if _host_port(address) is None:
        return f"a run joins the cluster at {address} ({key}) with {workers} workers"
    return f"{address} accepts connections ({key}); a run joins it with {workers} workers"


@dataclass
class Cluster:
    """The Ray the run uses, its budget actor and its workers."""

    ray: Any
    started: bool  # a local Ray started for this run (else a cluster joined)
    address: str
    ledger: Any
    workers: list[Any]
    shares: list[int]
    seconds: float = 0.0  # from the start to every worker ready
    temp_dir: str | None = None  # a local Ray's sessions and logs, removed when it stops
    stdout: TextIO | None = None  # sys.stdout before Ray started, put back when it stops
    owner: _RayThread | None = None  # the thread that started Ray, and stops it

    def stop(self) -> None:
        """Kill the actors; stop the local Ray if this run started it (else disconnect from
        the cluster), and remove its files. A `ray.init` still under way is left alone."""
        for actor in [*self.workers, self.ledger]:
            if actor is not None:
                with contextlib.suppress(Exception):
                    self.ray.kill(actor)
        if self.owner is None or self.owner.stop():
            _remove(self.temp_dir)
        if self.stdout is not None:
            sys.stdout, self.stdout = self.stdout, None


def _remove(temp_dir: str | None) -> None:
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _local_temp_dir() -> str:
    """A folder of this run's own for a local Ray, in `RAY_TMPDIR` or /tmp like Ray's own.

    Not in TMPDIR: Ray puts Unix sockets in it, and a socket's path must stay under about
    100 bytes (a TMPDIR such as macOS's /var/folders/... is too long).
    """
    base = os.environ.get("RAY_TMPDIR") or ("/tmp" if Path("/tmp").is_dir() else None)
    return tempfile.mkdtemp(prefix="pipeline-ray-", dir=base)


async def answer(ref: Any) -> Any:
    """A Ray call's answer, awaited so that a cancelled wait leaves Ray's own future
    alone: under Ray Client, an answer (or the disconnect) arriving for a cancelled future
    raises in Ray's threads and prints their tracebacks."""
    return await asyncio.shield(asyncio.wrap_future(ref.future()))


async def start(config: Config, api_key: str | None, price: Price | None) -> Cluster:
    """Start (or join) Ray, the budget actor and the workers; wait until each is up.

    A signal meanwhile (the task cancelled) stops the start and what it started.
    """
    ray = import_ray()
    began = time.monotonic()
    address, key = address_of(config)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a run
    if address is not None:
        await asyncio.to_thread(probe, address, key)
    workers = min(config.run.concurrency, config.run.ray.workers)
    if address is None:
        log.info("starting a local Ray with %d workers (a few seconds)", workers)
    else:
        log.info("joining the Ray cluster at %s with %d workers", address, workers)
    temp_dir = _local_temp_dir() if address is None else None
    cluster = Cluster(ray, address is None, address or "local", None, [], [], temp_dir=temp_dir)
    cluster.stdout, sys.stdout = sys.stdout, sys.stderr  # Ray's notes off the summary's stdout
    try:
        await _init(cluster, key)
        _place(cluster, config, api_key, price)
        ready = asyncio.gather(*(answer(w.drain.remote(0, 0)) for w in cluster.workers))
        try:
            await asyncio.wait_for(ready, READY_S)
        except TimeoutError:
            raise ConfigError(
                f"run.ray.workers: the Ray workers were not all up within {READY_S:.0f}s; "
                "the cluster may lack the CPUs or memory for them"
            ) from None
    except BaseException:
        await asyncio.shield(asyncio.to_thread(cluster.stop))
        raise
    cluster.seconds = time.monotonic() - began
    log.info(
        "Ray (%s) ready with %d workers in %.1fs",
        cluster.address,
        len(cluster.workers),
        cluster.seconds,
    )
    return cluster


async def _init(cluster: Cluster, key: str) -> None:
    """`ray.init` in a thread of its own; a join bounded by `CONNECT_S`. A signal meanwhile
    waits for a local Ray to be up (within `STOP_S`), to stop it; a join that hangs is left
    to its thread (`Cluster.stop` leaves it alone)."""
    ray, local = cluster.ray, cluster.started
    logging.getLogger("ray").setLevel(logging.ERROR)  # not its note on SIGTERM in a thread
    quiet: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,  # not its notes on token auth and restarts
    }
    if local:
        call = functools.partial(
            ray.init,
            address="local",
            object_store_memory=LOCAL_OBJECT_STORE,
            _temp_dir=cluster.temp_dir,
            **quiet,
        )
    else:
        call = functools.partial(ray.init, address=cluster.address, **quiet)
    cluster.owner = _RayThread(call, ray.shutdown)
    done = cluster.owner.start()
    try:
        await asyncio.wait_for(asyncio.shield(done), None if local else CONNECT_S)
    except TimeoutError:
        raise ConfigError(
            f"{key}: no Ray cluster answered at {cluster.address} within {CONNECT_S:.0f}s "
            "(something accepts connections there); check that it is a Ray head's address "
            "(host:port of its GCS, 6379 by default, or ray://head:10001) and that its Ray "
            f"version is this one's{_token_hint(cluster.address)}"
        ) from None
    except asyncio.CancelledError:
        if local:  # stopped once up: waited for, a second signal ends the process at once
            log.info("stopping the local Ray, which is still starting")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(done), STOP_S)
        raise
    except Exception as exc:
        where = cluster.address if not local else "a local Ray"
        hint = _token_hint(cluster.address) if isinstance(exc, ConnectionError) else ""
        raise ConfigError(f"{key}: cannot start or reach {where}: {exc}{hint}") from exc


def _token_hint(address: str) -> str:
    """Why a Ray Client connection may get no answer: Ray sends its token to an address
    given explicitly only when RAY_AUTH_MODE=token, and a head with token authentication
    answers nothing else."""
    if not address.startswith("ray://") or os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return ""
    return (
        "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and its token "
        "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) for this command"
    )


class _RayThread:
    """The thread that calls `ray.init` and, once told to stop, `ray.shutdown`.

    It lives as long as the Ray it started: Linux ends a local Ray's processes when the
    thread that started them ends (their parent-death signal is the thread's, not the
    process's). A daemon, so that a `ray.init` that hangs does not hold the process at exit.
    """

    def __init__(self, init: Callable[[], object], shutdown: Callable[[], object]) -> None:
        self._init, self._shutdown = init, shutdown
        self._stopping = threading.Event()
        self._settled = threading.Event()  # ray.init returned or raised
        self._thread = threading.Thread(target=self._run, name="pipeline-ray", daemon=True)
        self._up: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> asyncio.Future[None]:
        """Start the thread; the future is done once `ray.init` returned (or raised)."""
        self._loop = asyncio.get_running_loop()
        self._up = self._loop.create_future()
        self._up.add_done_callback(_seen)  # an outcome nobody awaits any more is no noise
        self._thread.start()
        return self._up

    def stop(self, wait_s: float = STOP_S) -> bool:
        """Tell the thread to shut Ray down; wait for that (within `wait_s`) unless
        `ray.init` is still under way. Whether the thread has ended."""
        self._stopping.set()
        if self._settled.is_set():
            self._thread.join(wait_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            self._init()
        except BaseException as exc:  # handed to the loop, which raises it
            error = exc
        self._settled.set()
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._settle, error)
        self._stopping.wait()
        with contextlib.suppress(Exception):  # also after a failed init: what it started
            self._shutdown()

    def _settle(self, error: BaseException | None) -> None:
        assert self._up is not None
        if self._up.done():
            return
        if error is not None:
            self._up.set_exception(error)
        else:
            self._up.set_result(None)


def _seen(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _place(cluster: Cluster, config: Config, api_key: str | None, price: Price | None) -> None:
    """The ledger beside the driver, the workers spread over the cluster."""
    ray = cluster.ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    run = config.run
    name = f"pipeline-ledger-{uuid.uuid4().hex[:12]}"  # the workers find it by name
    cluster.ledger = (
        ray.remote(Ledger)
        .options(num_cpus=0, scheduling_strategy=here, max_concurrency=1, name=name)
        .remote(run.requests_per_minute, run.tokens_per_minute)
    )
    worker = ray.remote(Worker).options(
        num_cpus=0, max_restarts=RESTARTS, scheduling_strategy="SPREAD"
    )
    if run.ray.workers > run.concurrency:
        log.warning(
            "run.ray.workers is %d but run.concurrency is %d: each worker sends at least one "
            "request at a time, so %d workers start (raise run.concurrency for more)",
            run.ray.workers,
            run.concurrency,
            run.concurrency,
        )
    cluster.shares = shares(run.concurrency, run.ray.workers)
    cluster.workers = [
        worker.remote(config, api_key, price, share, name) for share in cluster.shares
    ]
