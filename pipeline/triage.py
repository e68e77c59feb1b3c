"""Triage: a chunk's distinct requests -> what is settled now, what to send, what to await.

A pure function of what the store, this run's failures and the requests in flight say, so
the rule that a stored answer is never paid for again is tested without a server.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field

from .records import FAILED, PENDING, Request, Result
from .render import reask_key

Work = tuple[Request, int, Result | None]  # request, first re-ask to send, answer so far
Stored = tuple[Result, int | None]  # a stored answer and the next re-ask it needs, if any


@dataclass
class Triage:
    """Per distinct key of a chunk, one of: settled, to send, or already in flight."""

    settled: dict[str, Result] = field(default_factory=dict)
    send: list[Work] = field(default_factory=list)
    join: list[str] = field(default_factory=list)
    from_store: list[str] = field(default_factory=list)  # settled keys the store answered
    held: list[str] = field(default_factory=list)  # settled pending: in an open batch


def triage(
    requests: Mapping[str, Request],
    stored: Mapping[str, Stored],
    failed: Mapping[str, Result],
    in_flight: Container[str],
    *,
    sending: bool,
    held: Container[str] = frozenset(),
) -> Triage:
    """Sort `requests` by where their answer comes from.

    `stored`: answers in the store with the next re-ask each needs; `failed`: failed earlier
    in this run (not sent twice in one run); `sending`: False once the run stopped sending
    (or never sends: `reparse`), when what is not settled stays pending; `held`: the keys in
    open batches, pending until a batch answers them (never sent online: paid once).
    """
    plan = Triage()
    for key, request in requests.items():
        if key in stored:
            result, next_reask = stored[key]
            if next_reask is not None and reask_key(key, next_reask) in held:
                plan.settled[key] = Result(key, PENDING)  # its re-ask is in an open batch
                plan.held.append(key)
            elif next_reask is None or not sending:
                plan.settled[key] = result
                plan.from_store.append(key)
            else:
                plan.send.append((request, next_reask, result))
        elif key in failed:
            plan.settled[key] = failed[key]
        elif key in in_flight:
            plan.join.append(key)
        elif key in held:
            plan.settled[key] = Result(key, PENDING)
            plan.held.append(key)
        elif not sending and request.failed_before is not None:  # failed in an earlier run
            plan.settled[key] = Result(key, FAILED, error=request.failed_before)
        elif not sending:
            plan.settled[key] = Result(key, PENDING)
        else:
            plan.send.append((request, 0, None))
    return plan
