"""Ray cluster: Ray started for a run (or joined), the budget actor and the worker actors placed.

The ledger (`budget.Ledger`) goes beside the driver, the workers (`rayworker.Worker`) are
spread over the cluster's nodes, and the run waits until each is up. Ray is imported here
and in the worker processes only: a missing install is a one-line error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .budget import Ledger
from .catalog import Price
from .config import Config
from .errors import ConfigError
from .rayworker import Worker
from .signals import keeping_sigterm

log = logging.getLogger(__name__)

RESTARTS = 3  # times Ray restarts a worker process that died
LOCAL_OBJECT_STORE = 256 * 2**20  # a local Ray's object store: the run's messages are small


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


@dataclass
class Cluster:
    """The Ray the run uses, its budget actor and its workers."""

    ray: Any
    started: bool  # a local Ray started for this run, stopped after it
    address: str
    ledger: Any
    workers: list[Any]
    shares: list[int]
    seconds: float = 0.0  # from the start to every worker ready
    temp_dir: str | None = None  # a local Ray's sessions and logs, removed when it stops

    def stop(self) -> None:
        """Kill the actors; stop the local Ray if this run started it, and remove its files."""
        for actor in [*self.workers, self.ledger]:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        if self.started:
            self.ray.shutdown()
        _remove(self.temp_dir)


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


def start(config: Config, api_key: str | None, price: Price | None) -> Cluster:
    """Start (or join) Ray, the budget actor and the workers; wait until each is up."""
    ray = import_ray()
    began = time.monotonic()
    settings = config.run.ray
    address = settings.address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a run
    quiet: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,  # not its notes on token auth and restarts
    }
    temp_dir = _local_temp_dir() if address is None else None
    try:
        with keeping_sigterm():  # ray.init makes SIGTERM exit the driver at once, summary-less
            if address is None:
                ray.init(
                    address="local",
                    object_store_memory=LOCAL_OBJECT_STORE,
                    _temp_dir=temp_dir,
                    **quiet,
                )
            else:
                ray.init(address=address, **quiet)
    except Exception as exc:
        _remove(temp_dir)
        where = address or "a local Ray"
        raise ConfigError(f"run.ray.address: cannot start or reach {where}: {exc}") from exc
    cluster = Cluster(ray, address is None, address or "local", None, [], [], temp_dir=temp_dir)
    try:
        _place(cluster, config, api_key, price)
        ray.get([w.drain.remote(0, 0) for w in cluster.workers], timeout=120)
    except BaseException:
        cluster.stop()
        raise
    cluster.seconds = time.monotonic() - began
    log.info(
        "Ray (%s) ready with %d workers in %.1fs",
        cluster.address,
        len(cluster.workers),
        cluster.seconds,
    )
    return cluster


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
    cluster.shares = shares(run.concurrency, run.ray.workers)
    cluster.workers = [
        worker.remote(config, api_key, price, share, name) for share in cluster.shares
    ]
