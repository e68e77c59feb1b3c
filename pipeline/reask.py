"""Re-ask policy: an answer that does not parse is asked again, up to `output.retry_invalid`.

The n-th re-ask of a request is stored under its own key (`reask_key`), so a rerun finds
the re-asks already paid for and goes on from the first one missing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .parse import Parser
from .records import FAILED, OK, Request, Result
from .render import reask_key
from .store import Store

Send = Callable[[Request], Awaitable[Result]]
Keep = Callable[[Result], Awaitable[None]]


def is_valid(parser: Parser, result: Result) -> bool:
    """Whether an answered result parses under the current settings."""
    return result.status == OK and parser.parse(result.answer or "").values is not None


class Reasker:
    """Asks a request (and its re-asks) until its answer parses or the re-asks run out."""

    def __init__(self, parser: Parser, reasks: int, store: Store | None) -> None:
        self.parser = parser
        self.reasks = reasks
        self._store = store

    def from_store(self, key: str, result: Result) -> tuple[Result, int | None]:
        """Follow the stored re-asks of an answer; the next re-ask to send, if any."""
        assert self._store is not None, "from_store needs the store"
        attempt = 0
        while self.reasks and not is_valid(self.parser, result):
            if attempt == self.reasks:
                return result, None
            attempt += 1
            found = self._store.lookup([reask_key(key, attempt)], with_raw=False).get(
                reask_key(key, attempt)
            )
            if found is None or found.status != OK:
                return result, attempt
            result = found
        return result, None

    async def ask(
        self, request: Request, first: int, prior: Result | None, send: Send, keep: Keep
    ) -> Result:
        """Send `request` from its `first` re-ask on, keeping each answer; the row's result."""
        result = prior
        for attempt in range(first, self.reasks + 1):
            if result is not None and (result.status != OK or is_valid(self.parser, result)):
                break
            key = reask_key(request.key, attempt)
            sent = await send(Request(key, request.payload, request.est_tokens))
            if sent.status in (OK, FAILED):
                await keep(sent)
            if sent.status != OK and result is not None:
                break  # keep the last answer; the failed re-ask is retried next run
            result = sent
        assert result is not None
        return Result(
            request.key,
            result.status,
            result.answer,
            result.raw,
            result.error,
            result.prompt_tokens,
            result.completion_tokens,
            result.attempts,
        )
