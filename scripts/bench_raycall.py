"""The floor under the Ray engine's exchanges: what one Ray actor call costs on this machine.

Starts a local Ray, one async actor that answers `drain(acked, wait_s, works)` with PER
`Result`s (what a worker hands the driver per exchange), and awaits CALLS such calls one
after another from an asyncio loop, as the driver's pump does. CPU is that of this process
and every process it started, read from /proc over the calls only (not Ray's start), and
over two idle seconds before them (Ray's own background). Prints one JSON object.

    python scripts/bench_raycall.py CALLS PER
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import ray
from bench import descendants, proc_table  # this folder's bench.py: the same /proc reading

from pipeline.records import OK, Result


def cpu_s() -> float:
    """CPU seconds of this process and every process it started (the local Ray's GCS,
    raylet, agents and the actor): other work on the machine is not counted."""
    table = proc_table()
    return sum(table[pid][1] for pid in [os.getpid(), *descendants(os.getpid(), table)])


@ray.remote
class Drainer:
    def __init__(self, per: int) -> None:
        self._answers = [
            Result(f"{n:064x}", OK, f"answer {n}", '{"choices": []}', None, 20, 3, 1)
            for n in range(per)
        ]

    async def drain(self, acked: int, wait_s: float, works: Any) -> list[Result]:
        return self._answers


async def calls(actor: Any, count: int) -> None:
    for n in range(count):
        await actor.drain.remote(n, 0.0, None)


def main() -> None:
    count, per = int(sys.argv[1]), int(sys.argv[2])
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        actor = Drainer.remote(per)  # type: ignore[attr-defined]
        asyncio.run(calls(actor, 50))  # warm: the actor started, its connections made
        time.sleep(1.0)
        idle_cpu = cpu_s()
        time.sleep(2.0)
        idle = (cpu_s() - idle_cpu) / 2.0  # Ray's own background, CPU-s per second
        began_cpu, began = cpu_s(), time.perf_counter()
        asyncio.run(calls(actor, count))
        wall, cpu = time.perf_counter() - began, cpu_s() - began_cpu
    finally:
        ray.shutdown()
    print(
        json.dumps(
            {
                "calls": count,
                "per_call": per,
                "wall_s": wall,
                "cpu_s": cpu,
                "cpu_ms_per_call": cpu / count * 1000,
                "idle_cpu_per_s": idle,
            }
        )
    )


if __name__ == "__main__":
    main()
