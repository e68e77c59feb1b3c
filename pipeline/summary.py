"""The end-of-run summary: counts, spend and time, as one JSON object."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Summary:
    """What one run did. `from_store` rows cost nothing this time."""

    rows: int = 0
    answered: int = 0
    from_store: int = 0
    failed: int = 0
    skipped: int = 0
    pending: int = 0
    requests_sent: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    stopped: str | None = None
    output: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @property
    def exit_code(self) -> int:
        """0 every row settled, 1 some rows failed, 3 the run stopped early."""
        if self.stopped:
            return 3
        return 1 if self.failed else 0


def summary_path(output: Path) -> Path:
    """Where the summary of a run lands: beside the output, named after it."""
    return output.with_name(output.stem + ".summary.json")


def write_summary(summary: Summary, output: Path) -> Path:
    """Write the summary atomically beside the output."""
    path = summary_path(output)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
