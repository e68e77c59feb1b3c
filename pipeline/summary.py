"""The end-of-run summary: counts, spend and time, as one JSON object.

Printed and written beside the output; also appended as one line to the run log beside the
store, so a monitor can read the history of a nightly job.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .records import FAILED, INVALID, OK, SKIPPED

EXIT_OK, EXIT_FAILED_ROWS, EXIT_USAGE, EXIT_STOPPED, EXIT_LOCKED = 0, 1, 2, 3, 4


@dataclass
class Summary:
    """What one run did. `from_store` rows cost nothing this time."""

    rows: int = 0
    answered: int = 0
    from_store: int = 0
    failed: int = 0
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
    output: str = ""
    fail_threshold: float = 0.0

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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("fail_threshold")
        data["seconds"] = round(self.seconds, 3)
        if self.cost_usd is not None:
            data["cost_usd"] = round(self.cost_usd, 10)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @property
    def exit_code(self) -> int:
        """0 all settled, 1 more rows failed than `run.fail_threshold` allows, 3 stopped."""
        if self.stopped:
            return EXIT_STOPPED
        bad = self.failed + self.invalid
        if bad and bad > self.fail_threshold * self.rows:
            return EXIT_FAILED_ROWS
        return EXIT_OK


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
    line["exit_code"] = summary.exit_code
    with path.open("a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")
        log.flush()
        os.fsync(log.fileno())
    return path
