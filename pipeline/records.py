"""Small records that the stages hand to each other (plain slotted dataclasses: cheap to build)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Row statuses, as they appear in the output's `_status` column and the store.
OK = "ok"
FAILED = "failed"
SKIPPED = "skipped"
PENDING = "pending"
INVALID = "invalid"  # answered, but the answer did not parse (output only)


@dataclass(slots=True)
class Request:
    """One rendered chat-completions request and its store key."""

    key: str
    payload: bytes  # the body as canonical JSON: sent as is, and hashed into the key
    est_tokens: int
    failed_before: str | None = None  # the error the store holds from an earlier run

    @property
    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.payload))


@dataclass(slots=True)
class Result:
    """What came back for one request, as the store keeps it."""

    key: str
    status: str
    answer: str | None = None
    raw: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    retries: int = field(default=0, compare=False)
