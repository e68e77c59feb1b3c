"""The end-of-run summary: counts, spend and time, as one JSON object.

Printed and written beside the output; also appended as one line to the run log beside the
store, so a monitor can read the history of a nightly job.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import LockError, PipelineError, RunStopped
from .records import FAILED, INVALID, OK, SKIPPED

EXIT_OK = 0  # every row answered or skipped, or failures within run.fail_threshold
EXIT_FAILED_ROWS = 1  # rows failed or gave invalid answers: a rerun retries them
EXIT_USAGE = 2  # config, input, output or store problem, found before anything was sent
EXIT_STOPPED = 3  # stopped sending early: key or model rejected, budget, endpoint down
EXIT_LOCKED = 4  # another run holds the store
EXIT_PART_WAY = 5  # an input, output or store error after sending began; answers are kept
EXIT_INTERNAL = 6  # a bug: one line on stderr, the traceback in a file
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (systemd's stop, `timeout`): 128 + 15


@dataclass
class Summary:
    """What one run did. `from_store` rows cost nothing this time."""

    rows: int = 0
    answered: int = 0
    from_store: int = 0
    failed: int = 0
    row_errors: int = 0  # of the failed rows: those the template or an image fails on
    invalid: int = 0
    skipped: int = 0
    pending: int = 0
    requests_sent: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    seconds: float = 0.0
    stopped: str | None = None
    error: str | None = None
    output: str = ""
    fail_threshold: float = 0.0
    exit: int | None = None  # set when something other than the rows decides the exit code
    mode: str = "online"
    engine: str = "local"
    workers: int | None = None  # run.engine ray: the worker actors that sent
    ray_start_s: float | None = None  # ... and the seconds Ray took to have them ready
    batch_submitted: int = 0  # requests this run submitted in batches
    batch_collected: int = 0  # rows answered by batch answers this run collected
    batch_pending: int = 0  # rows pending because their request is in an open batch
    batches: list[dict[str, Any]] = field(default_factory=list)  # id, state, counts
    input_commit: str | None = None  # an oxen:// input, or a committed file: its commit
    commit: str | None = None  # oxen:// or output.commit: the commit made (None: none/unchanged)
    output_url: str | None = None  # an s3:// output: the URL written (None: not uploaded)
    evaluation: dict[str, Any] | None = None  # the scores against output.gold
    evaluation_table: str | None = None  # the same for the terminal (not in the JSON)
    received: int = 0  # rows answered by this run's requests (not in the JSON)
    written: list[str] = field(default_factory=list)  # the files this run wrote (not in it)

    def count(self, status: str) -> None:
        self.count_many(status, 1)

    def count_many(self, status: str, rows: int) -> None:
        self.rows += rows
        if status == OK:
            self.answered += rows
        elif status == FAILED:
            self.failed += rows
        elif status == INVALID:
            self.invalid += rows
        elif status == SKIPPED:
            self.skipped += rows
        else:
            self.pending += rows

    def fail(self, exc: PipelineError) -> None:
        """Record the error that ended the run and the exit code it means."""
        if isinstance(exc, RunStopped):
            self.stopped, self.exit = str(exc), EXIT_STOPPED
        elif isinstance(exc, LockError):
            self.error, self.exit = str(exc), EXIT_LOCKED
        elif self.sent:
            self.error, self.exit = str(exc), EXIT_PART_WAY
        else:
            self.error, self.exit = str(exc), EXIT_USAGE

    @property
    def sent(self) -> bool:
        """Whether this run has spent: requests sent online or submitted in batches, or batch
        answers collected (a batch it touched holds some). An error after that exits 5."""
        return bool(
            self.requests_sent
            or self.batch_submitted
            or self.batch_collected
            or any(batch.get("completed") for batch in self.batches)
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("fail_threshold")
        data.pop("exit")
        data.pop("evaluation_table")
        data.pop("received")
        data.pop("written")
        data["exit_code"] = self.exit_code
        data["seconds"] = round(self.seconds, 3)
        if self.cost_usd is not None:
            data["cost_usd"] = round(self.cost_usd, 10)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @property
    def exit_code(self) -> int:
        """0 all settled, 1 more rows failed than `run.fail_threshold` allows, 3 stopped."""
        if self.exit is not None:
            return self.exit
        if self.stopped:
            return EXIT_STOPPED
        bad = self.failed + self.invalid
        if bad and bad > self.fail_threshold * self.rows:
            return EXIT_FAILED_ROWS
        return EXIT_OK


def usd(cost: float) -> str:
    """A cost as the terminal shows it: 4 decimals, more for a small cost, down to its
    first two digits ($0.0653, $1.2346, $0.000039), so a spend is never shown as $0.0000."""
    places = 4
    if cost and math.isfinite(cost):
        places = min(max(places, 1 - math.floor(math.log10(abs(cost)))), 12)
    return f"${cost:.{places}f}"


def counted(n: int, noun: str) -> str:
    """'1 row', '3 rows': a count and its noun, plural unless one."""
    return f"{n:,} {noun}{'s' * (n != 1)}"


def summary_path(output: Path) -> Path:
    """Where the summary of a run lands: beside the output, named after it."""
    return output.with_name(output.stem + ".summary.json")


def run_log_path(store: Path) -> Path:
    """The run history beside the store: one JSON line per run."""
    return store.with_name(store.stem + ".runs.jsonl")


def write_summary(summary: Summary, output: Path) -> Path:
    """Write the summary atomically beside the output."""
    path = summary_path(output)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def append_run_log(summary: Summary, store: Path, config_hash: str, command: str) -> Path:
    """Append one line (date, config hash, counts, tokens, cost, duration) to the run log."""
    path = run_log_path(store)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    line: dict[str, Any] = {"date": started, "command": command, "config_hash": config_hash}
    line.update(summary.to_dict())
    with path.open("a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")
        log.flush()
        os.fsync(log.fileno())
    return path
