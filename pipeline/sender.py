"""Sender stage: a `Request` -> a `Result`, through the limiter, the client and retries.

Here a row's failure is recorded, never raised: this is the per-row boundary. Three
consecutive 401/403/404 answers stop the whole run, since no later row can succeed; the
`Breaker` pauses sending while the endpoint is down and stops the run when it stays down or
when every request gets the same error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .breaker import Breaker, is_outage
from .catalog import Price
from .client import ChatClient, Completion
from .config import Config
from .errors import AuthError, FatalRequestError, RateLimited, RequestError, RetryableError
from .limiter import REFUSED_STOP_S, Pacer
from .ratelimit import rate_headers
from .records import FAILED, OK, PENDING, Request, Result
from .redact import redact_url
from .summary import usd

log = logging.getLogger(__name__)

AUTH_STOP_AFTER = 3


@dataclass
class Counters:
    """What this run spent; read by the progress display and the summary."""

    requests_sent: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class CostCap:
    """`run.max_cost_usd` against what the run spent: why sending stops, and what it cost.

    Sending stops once the spend reaches the cap, but the requests then in flight still
    answer and are paid for: the reason says what was spent when sending stopped and, once
    they added to it, the total (the summary's `cost_usd`).
    """

    def __init__(self, cap: float | None) -> None:
        self.cap = cap
        self.reached_usd: float | None = None  # the spend when the cap stopped sending
        self.reason: str | None = None  # the last reason given

    def check(self, spent: float, stopped: str | None) -> str | None:
        """The run's stop reason now that it spent `spent` USD, given its reason so far:
        the cap's once reached (unless the run stopped for another reason first)."""
        if self.cap is None or spent < self.cap or stopped not in (None, self.reason):
            return stopped
        if self.reached_usd is None:
            self.reached_usd = spent
        said = (
            f"spent {usd(self.reached_usd)} when the budget run.max_cost_usd "
            f"(${self.cap:g}) was reached"
        )
        if usd(spent) != usd(self.reached_usd):
            said += f"; requests in flight then brought the total to {usd(spent)}"
        self.reason = f"{said}; rerun with a higher budget to continue"
        return self.reason


class _Stopped(Exception):
    """Raised inside a retry loop when the run stopped sending."""


class Sender:
    """Sends requests for one run; `stop_reason` is set once the run must stop sending."""

    def __init__(
        self,
        config: Config,
        client: ChatClient | None,
        limiter: Pacer,
        price: Price | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._config = config
        self._client = client
        self._limiter = limiter
        self.price = price
        self.counters = Counters()
        self.stop_reason: str | None = None
        self.breaker = Breaker(
            config.model.base_url, config.run.max_outage_s, clock=clock, sleep=sleep
        )
        self._cap = CostCap(config.run.max_cost_usd)
        self._auth_failures = 0
        self._backing_off = 0  # requests sleeping before their next retry
        self._gave_up: dict[str, int] = {}  # gave up on an outage: the breaker's answers then
        self.latencies: list[float] | None = None  # seconds per answer, when a caller wants them

    def waiting(self) -> str | None:
        """What sending waits for now (endpoint down, rate limit, retry backoff); None: nothing.

        Read by the progress display when it redraws.
        """
        reasons = [self.breaker.waiting(), self._limiter.waiting()]
        if self._backing_off:
            plural = "s" if self._backing_off > 1 else ""
            reasons.append(f"{self._backing_off} request{plural} waiting to retry")
        return "; ".join(r for r in reasons if r) or None

    def stop(self, reason: str) -> None:
        """Stop sending: rows not answered yet end pending, and waiting workers wake now."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.error("stopping: %s", reason)
        self.breaker.halt()

    def unanswered(self, key: str) -> bool:
        """Whether request `key` may have failed only because the endpoint is down: it gave up
        on a connection failure, timeout or 5xx after the endpoint's last answer, and since
        then the endpoint answered nothing and the run stopped for no other reason.

        Once the outage stops the run, such a request is as unanswered as those never sent:
        with concurrency 1, say, a row can spend its retries before the tenth failure in a
        row pauses sending, and its failure says nothing about the row.
        """
        if self.stop_reason is not None and not self.breaker.down:
            return False
        return self.gave_up_in_outage(key)

    def gave_up_in_outage(self, key: str) -> bool:
        """Whether request `key` gave up on an outage failure after the endpoint's last
        answer, and the endpoint answered nothing since, whatever stopped the run: a Ray
        worker's run may stop on another worker's breaker (`rayworker`)."""
        return self._gave_up.get(key) == self.breaker.answers

    async def send(self, request: Request) -> Result:
        """The row's result: answered, failed (with the error) or pending (run stopped)."""
        tries = [1]
        try:
            if self.stop_reason is not None:
                raise _Stopped
            try:
                completion = await self._attempt(request)
            except RetryableError as exc:
                completion = await self._retry(request, exc, tries)
        except _Stopped:
            return Result(request.key, PENDING, attempts=tries[0] - 1)
        except AuthError as exc:
            self._auth_failures += 1
            if self._auth_failures >= AUTH_STOP_AFTER:
                self.stop(self._auth_advice(exc))
            return Result(request.key, FAILED, error=str(exc), attempts=tries[0])
        except FatalRequestError as exc:
            self._auth_failures = 0
            return Result(request.key, FAILED, error=str(exc), attempts=tries[0])
        except RetryableError as exc:
            if is_outage(exc):
                self._gave_up[request.key] = self.breaker.answers
            error = f"{exc} (gave up after {tries[0]} attempts)"
            return Result(request.key, FAILED, error=error, attempts=tries[0])
        except Exception as exc:  # the per-row boundary: record, never swallow
            log.exception("unexpected error on request %s", request.key)
            error = f"{type(exc).__name__}: {exc}"
            return Result(request.key, FAILED, error=error, attempts=tries[0])
        self._auth_failures = 0
        return Result(
            request.key,
            OK,
            answer=completion.content,
            raw=completion.raw,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            attempts=tries[0],
        )

    async def _retry(self, request: Request, first: RetryableError, tries: list[int]) -> Completion:
        """The retry policy, which takes over only after the first try failed retryably."""
        from .retry import policy  # tenacity is imported only when a request fails

        failure: RetryableError | None = first
        retries = self._config.run.max_retries
        async for attempt in policy(retries, sleep=self._backoff, limiter_waits=True):
            with attempt:
                if failure is not None:
                    replay, failure = failure, None
                    raise replay  # the first try, replayed so that the policy counts it
                tries[0] += 1
                if self.stop_reason is not None:
                    raise _Stopped
                self.counters.retries += 1
                return await self._attempt(request)
        raise AssertionError("the retry policy re-raises the last error")

    async def _backoff(self, seconds: float) -> None:
        """The retry policy's sleep: the breaker's nap, counted for `waiting`."""
        self._backing_off += 1
        try:
            await self.breaker.nap(seconds)
        finally:
            self._backing_off -= 1

    async def _attempt(self, request: Request) -> Completion:
        """One attempt; while the breaker holds sending, a failure waits, not a retry."""
        while True:
            # Only a paused breaker makes the attempt wait: no coroutine per request otherwise.
            probe = await self.breaker.admit() if self.breaker.paused else False
            try:
                if self.breaker.reason is not None:
                    self.stop(self.breaker.reason)
                if self.stop_reason is not None:
                    raise _Stopped
                completion = await self._send(request)
            except RequestError as exc:
                held = self.breaker.record(exc, probe=probe, before=request.failed_before)
                if self.breaker.reason is not None:
                    self.stop(self.breaker.reason)
                if not held:
                    log.debug("request %s, attempt failed: %s", request.key, exc)
                    raise
                if self.stop_reason is not None:
                    raise _Stopped from None
                continue  # paused: wait for the probe's answer, or send the next probe
            except BaseException:
                if probe:
                    self.breaker.abandon_probe()
                raise
            self.breaker.record(None, probe=probe)
            return completion

    async def _send(self, request: Request) -> Completion:
        sent_at = await self._limiter.acquire(request.est_tokens)
        if self.stop_reason is not None or self._client is None:
            raise _Stopped
        self.counters.requests_sent += 1
        began = time.monotonic()
        try:
            completion = await self._client.complete(request.payload)
        except RateLimited as exc:
            self._limiter.rate_limited_by_server(exc.retry_after, sent_at=sent_at, rate=exc.rate)
            refused = self._limiter.refused_for()
            if refused >= REFUSED_STOP_S:
                self.stop(
                    f"the server has answered only 429 (rate limited) for {refused / 60:.0f} "
                    "minutes: a quota may be spent; the answers so far are kept, rerun later"
                )
            raise
        if self.latencies is not None:
            self.latencies.append(time.monotonic() - began)
        used = completion.prompt_tokens + completion.completion_tokens
        self._limiter.settle(request.est_tokens, used)
        self._limiter.observe(rate_headers(completion.headers), sent_at=sent_at)
        self.counters.prompt_tokens += completion.prompt_tokens
        self.counters.completion_tokens += completion.completion_tokens
        if self.price is not None:
            self.counters.cost_usd += self.price.cost(
                completion.prompt_tokens, completion.completion_tokens
            )
            reason = self._cap.check(self.counters.cost_usd, self.stop_reason)
            if self.stop_reason is None and reason is not None:
                self.stop(reason)
            self.stop_reason = reason  # past the cap: the total the answers in flight make
        return completion

    def _auth_advice(self, exc: AuthError) -> str:
        model = self._config.model
        if exc.status == 401 and not os.environ.get(model.api_key_env):
            hint = f"the variable {model.api_key_env} is not set: put your API key there"
        elif exc.status == 401:
            hint = f"the API key was rejected: check the variable {model.api_key_env}"
        elif exc.status == 403:
            hint = f"the API key may not use model '{model.name}': check {model.api_key_env}"
        else:
            url = redact_url(model.base_url)
            hint = f"check model.name '{model.name}' and model.base_url '{url}'"
        return f"{AUTH_STOP_AFTER} requests in a row answered {exc}; {hint}"
