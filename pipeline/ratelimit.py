"""Rate-limit headers: what the server says of its budgets, in each dialect, as one `RateHeaders`.

Dialects (header names case-insensitive):

- OpenAI, and the LiteLLM proxy's global form: `x-ratelimit-{limit,remaining,reset}-{requests,
  tokens}`, the limit per minute, the reset a duration such as `1s`, `6m0s`, `250ms`.
- LiteLLM per scope: `x-ratelimit-{scope}-{limit,remaining}-{requests,tokens}` for the scopes
  in `LITELLM_SCOPES` (`api_key`, `model_per_key`, ...): a 60 s window by default, no reset.
- Anthropic: `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`, the reset an
  RFC 3339 time; `input-tokens` stands in for `tokens` when only the split forms are sent.
- IETF draft: `RateLimit-Policy: "default";q=100;w=60` with `RateLimit: "default";r=50;t=30`
  (a policy's `qu="tokens"` makes it a token budget), and the older `RateLimit-Limit`,
  `RateLimit-Remaining`, `RateLimit-Reset` triple, its window from `w=` (`RateLimit-Policy:
  100;w=60`), and draft 07's `RateLimit: limit=100, remaining=50, reset=30`. A quota of q
  per w seconds is paced as q*60/w per minute; `window_s` keeps w.
- The LiteLLM proxy passes the provider's own headers on prefixed `llm_provider-`: read in
  every dialect above, as one more scope.

When several scopes name one budget the tightest wins: the smallest limit sets the pace, and
the scope with the least left says what remains and when it resets. Unreadable values are None.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_MARK = "ratelimit"  # in every dialect's names: a response without it has nothing to read
_PROVIDER = "llm_provider-"  # LiteLLM's prefix for the headers of the provider behind it
_KINDS = ("requests", "tokens")
LITELLM_SCOPES = (
    "api_key",
    "user",
    "team",
    "team_member",
    "end_user",
    "model_per_key",
    "model_per_team",
)
LITELLM_WINDOW_S = 60.0  # the proxy's fixed window unless LITELLM_RATE_LIMIT_WINDOW_SIZE says
_OPENAI_NAMES = tuple(
    tuple(f"x-ratelimit-{field}-{kind}" for field in ("limit", "remaining", "reset"))
    for kind in _KINDS
)
_OPENAI = frozenset(name for names in _OPENAI_NAMES for name in names)
_LITELLM_NAMES = tuple(
    ((f"x-ratelimit-{scope}-limit-{kind}", f"x-ratelimit-{scope}-remaining-{kind}"), kind)
    for scope in LITELLM_SCOPES
    for kind in _KINDS
)
# Structured-field list members and parameters: split on `,` / `;` outside quoted strings.
_MEMBER = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")+')
_PARAM = re.compile(r'(?:[^;"]|"(?:[^"\\]|\\.)*")+')


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget (requests or tokens) as the server reports it; `limit` is per minute."""

    limit: float | None
    remaining: float | None
    reset_s: float | None
    window_s: float | None = None  # the server's window, where it names one (a fixed-window hint)


_NOTHING = Budget(None, None, None)


@dataclass(frozen=True, slots=True)
class RateHeaders:
    requests: Budget
    tokens: Budget


def duration(value: str | None) -> float | None:
    """Seconds in `1s`, `6m0s`, `250ms`, `1h2m3.5s` or a plain number; None if unreadable."""
    if value is None:
        return None
    text = value.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        parts = _PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
            return None
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def seconds_until(value: str | None, now: float | None = None) -> float | None:
    """Seconds from `now` (Unix time; default the wall clock) to an RFC 3339 time; None if
    unreadable, 0 if past."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    except (ValueError, OverflowError, OSError):
        return None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def rate_headers(headers: Mapping[str, str], now: float | None = None) -> RateHeaders | None:
    """The server's budgets, or None when it sends no rate-limit header of a known dialect.

    `now` (Unix time, default the wall clock) dates Anthropic's reset times.
    """
    if _MARK not in ",".join(headers).lower():  # the hot path: one join, one search
        return None
    found: dict[str, str] = {}  # the rate-limit headers, names lowered, repeated ones joined
    for name, value in headers.items():
        low = name.lower()
        if _MARK in low:
            found[low] = f"{found[low]}, {value}" if low in found else value
    requests: list[Budget] = []
    tokens: list[Budget] = []
    _dialects(found, now, requests, tokens)
    provider = {
        name[len(_PROVIDER) :]: value for name, value in found.items() if name.startswith(_PROVIDER)
    }
    if provider:  # the LiteLLM proxy passes the provider's own on under a prefix
        _dialects(provider, now, requests, tokens)
    if not requests and not tokens:
        return None
    return RateHeaders(tightest(requests), tightest(tokens))


def _dialects(
    found: dict[str, str], now: float | None, requests: list[Budget], tokens: list[Budget]
) -> None:
    _openai(found, requests, tokens)
    other = found.keys() - _OPENAI  # most responses stop here: only the OpenAI six
    if other:
        if any(name.startswith("x-ratelimit-") for name in other):
            _litellm(found, requests, tokens)
        if any(name.startswith("anthropic-") for name in other):
            _anthropic(found, now, requests, tokens)
        if any(name.startswith("ratelimit") for name in other):
            _ietf(found, requests, tokens)


def tightest(budgets: list[Budget]) -> Budget:
    """One budget from several scopes: the smallest limit, and the scarcest scope's remaining
    and reset (pacing at a looser scope's limit would run into the tighter one's 429s)."""
    if len(budgets) <= 1:
        return budgets[0] if budgets else _NOTHING
    limited = [b for b in budgets if b.limit is not None]
    counted = [b for b in budgets if b.remaining is not None]
    pace = min(limited, key=lambda b: b.limit or 0.0) if limited else None
    scarce = min(counted, key=lambda b: b.remaining or 0.0) if counted else None
    return Budget(
        pace.limit if pace else None,
        scarce.remaining if scarce else None,
        (scarce or pace or budgets[0]).reset_s,
        pace.window_s if pace else None,
    )


def _add(budgets: list[Budget], budget: Budget) -> None:
    if budget != _NOTHING:
        budgets.append(budget)


def _openai(found: dict[str, str], requests: list[Budget], tokens: list[Budget]) -> None:
    for (limit, remaining, reset), budgets in zip(_OPENAI_NAMES, (requests, tokens), strict=True):
        budget = Budget(
            _number(found.get(limit)), _number(found.get(remaining)), duration(found.get(reset))
        )
        _add(budgets, budget)


def _litellm(found: dict[str, str], requests: list[Budget], tokens: list[Budget]) -> None:
    for (limit, remaining), kind in _LITELLM_NAMES:
        budget = Budget(_number(found.get(limit)), _number(found.get(remaining)), None)
        if budget != _NOTHING:
            budget = Budget(budget.limit, budget.remaining, None, LITELLM_WINDOW_S)
        _add(requests if kind == "requests" else tokens, budget)


def _anthropic(
    found: dict[str, str], now: float | None, requests: list[Budget], tokens: list[Budget]
) -> None:
    def budget(kind: str) -> Budget:
        prefix = f"anthropic-ratelimit-{kind}-"
        return Budget(
            _number(found.get(prefix + "limit")),
            _number(found.get(prefix + "remaining")),
            seconds_until(found.get(prefix + "reset"), now),
        )

    _add(requests, budget("requests"))
    # `tokens-*` is Anthropic's own tightest; the one token budget here counts mostly input.
    total = budget("tokens")
    _add(tokens, total if total != _NOTHING else budget("input-tokens"))


def _ietf(found: dict[str, str], requests: list[Budget], tokens: list[Budget]) -> None:
    policies: dict[str, dict[str, str]] = {}
    windows: dict[float, float] = {}  # older drafts: a quota's window, `100;w=60`
    for item, params in _members(found.get("ratelimit-policy")):
        quota = _number(item)
        if quota is None:
            policies[item] = params
        elif (window := _number(params.get("w"))) is not None:
            windows.setdefault(quota, window)
    states = dict(_members(found.get("ratelimit")))
    for name in policies | states:
        policy, state = policies.get(name, {}), states.get(name, {})
        budget = _per_minute(
            _number(policy.get("q")),
            _number(policy.get("w")),
            _number(state.get("r")),
            _number(state.get("t")),
        )
        unit = policy.get("qu", "requests")
        if unit in _KINDS:
            _add(requests if unit == "requests" else tokens, budget)
    fields = {  # draft 07: `RateLimit: limit=100, remaining=50, reset=30`
        key.strip().lower(): value.strip()
        for item, _ in _members(found.get("ratelimit"))
        for key, sep, value in [item.partition("=")]
        if sep
    }
    if "limit" in fields or "remaining" in fields:
        quota = _number(fields.get("limit"))
        window = windows.get(quota) if quota is not None else None
        remaining, reset = _number(fields.get("remaining")), _number(fields.get("reset"))
        _add(requests, _per_minute(quota, window, remaining, reset))
    if "ratelimit-limit" in found or "ratelimit-remaining" in found:
        members = _members(found.get("ratelimit-limit"))
        quota = _number(members[0][0]) if members else None
        for item, params in members:  # `100, 100;w=60`: the window of the quota in force
            window = _number(params.get("w"))
            if quota is not None and _number(item) == quota and window is not None:
                windows.setdefault(quota, window)
        window = windows.get(quota) if quota is not None else None
        remaining = _number(found.get("ratelimit-remaining"))
        reset = _number(found.get("ratelimit-reset"))
        _add(requests, _per_minute(quota, window, remaining, reset))


def _per_minute(
    quota: float | None, window: float | None, remaining: float | None, reset: float | None
) -> Budget:
    """A quota per window as a per-minute limit; without a window, taken as per minute."""
    limit = quota * 60.0 / window if quota is not None and window else quota
    return Budget(limit, remaining, reset, window or None)


def _members(value: str | None) -> list[tuple[str, dict[str, str]]]:
    """A structured-field list as (item, parameters), quotes taken off; [] if unreadable."""
    if not value:
        return []
    members = []
    for member in _MEMBER.findall(value):
        parts = [part.strip() for part in _PARAM.findall(member)]
        if not parts or not parts[0]:
            continue
        item, params = parts[0], parts[1:]
        pairs = {}
        for param in params:
            key, _, val = param.partition("=")
            pairs[key.strip().lower()] = _unquote(val.strip()) if val else "?1"
        members.append((_unquote(item), pairs))
    return members


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return text
