"""Breaker: each attempt's outcome in; a pause with probes, a resume or a stop reason out.

The sender reports every attempt. `TRIP_AFTER` failures in a row across all rows and workers
(connection failures, timeouts, 5xx) pause sending: the other workers wait, without spending
their retries, while one request at a time probes the endpoint with backoff. An answer
resumes everyone; `run.max_outage_s` without one sets `reason`, and the sender stops with
it. The same 4xx message on `SAME_4XX_AFTER` rows in a row sets `reason` at once: that error
is the config's or the gateway's, not the rows'. A 429 is neither a failure nor an answer
here (the limiter handles it), except that it ends a pause: the endpoint answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .errors import AuthError, FatalRequestError, RateLimited, RequestError, RetryableError
from .redact import redact_url

log = logging.getLogger(__name__)

TRIP_AFTER = 10
"""Failed attempts in a row (retries included, any row, any worker) that pause sending.

A live endpoint that fails 5 % of requests fails 10 in a row about once in 10^13 attempts,
and a needless pause costs one probe after `FIRST_PROBE_S`; a dead endpoint costs 10
requests, plus those already in flight, before the pause.
"""

SAME_4XX_AFTER = 5
"""Rows in a row, with no answer between, that got the same 4xx message: stop at once."""

FIRST_PROBE_S = 0.5  # the wait before the first probe; doubled after each failed probe
MAX_PROBE_WAIT_S = 10.0  # the longest wait between two probes


def is_outage(error: RequestError) -> bool:
    """A failure that says the endpoint is down: no HTTP answer (connection, timeout) or 5xx."""
    if isinstance(error, RateLimited) or not isinstance(error, RetryableError):
        return False
    return error.status is None or error.status >= 500


class Breaker:
    """Failures in a row across the run's workers: pause and probe, resume, or give up."""

    def __init__(
        self,
        base_url: str,
        max_outage_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = redact_url(base_url)  # named in messages only: no password
        self.max_outage_s = max_outage_s
        self.reason: str | None = None  # why the run must stop sending; set once
        self.down = False  # `reason` is the endpoint's: it stayed down for max_outage_s
        self.answers = 0  # attempts the endpoint answered (an answer, a 4xx or a 429)
        self.probes = 0  # probes sent in this run, over all pauses
        self._clock = clock
        self._sleep = sleep
        self._failures = 0  # outage failures in a row
        self._same = 0  # how many of the last of those carried the same message
        self._last: RequestError | None = None
        self._rejected = ""  # the last 4xx message, and on how many rows in a row
        self._rejections = 0
        self._paused_at: float | None = None
        self._pause_probes = 0
        self._last_probe = False  # the probe under way is the one at the window's end
        self._probing = False
        self._halted = asyncio.Event()
        self._change = asyncio.Event()  # set (and replaced) on resume, give-up and halt

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def waiting(self) -> str | None:
        """The endpoint-down pause, for the progress display; None while sending flows."""
        if self._paused_at is None or self.reason is not None or self._halted.is_set():
            return None
        down = self._clock() - self._paused_at
        return (
            f"endpoint down {down:.0f}s, probing {self.base_url} ({self._pause_probes} probes; "
            f"gives up after {self.max_outage_s:g}s)"
        )

    def halt(self) -> None:
        """The run stops sending, for whatever reason: wake every waiting or napping worker."""
        self._halted.set()
        self._wake()

    async def admit(self) -> bool:
        """Wait while sending is paused; True when the caller's attempt is the probe."""
        while self._paused_at is not None and self.reason is None and not self._halted.is_set():
            if not self._probing:
                self._probing = True
                try:
                    await self.nap(self._probe_wait(self._paused_at))
                except BaseException:
                    self.abandon_probe()
                    raise
                if self._halted.is_set():
                    self.abandon_probe()
                    return False
                self.probes += 1
                self._pause_probes += 1
                return True
            change = self._change
            await change.wait()
        return False

    def abandon_probe(self) -> None:
        """The probe was not sent or its outcome will not come: let another worker probe."""
        if self._probing:
            self._probing = False
            self._wake()

    def record(
        self, error: RequestError | None, *, probe: bool = False, before: str | None = None
    ) -> bool:
        """Count one attempt's outcome (None: answered); True: sending is paused, so the
        caller waits for the endpoint (`admit`) instead of spending one of the row's retries.

        `before`: the error this row got in an earlier run. A row that fails again the same
        way says nothing new about the endpoint, so it does not count towards a stop: else
        a few rows that always fail, sent first on every rerun, would stop every rerun
        before the new rows."""
        if probe:
            self.abandon_probe()
        if error is not None and is_outage(error):
            self._count_failure(error, probe=probe)
            return self._paused_at is not None
        self.answers += 1
        if error is None or not isinstance(error, RateLimited):
            self._failures = self._same = 0
        if self._paused_at is not None:
            log.warning("the endpoint answers again: sending resumes")
            self._paused_at = None
            self._failures = self._same = 0
            self._wake()
        if error is None:
            self._rejections = 0
        elif (
            isinstance(error, FatalRequestError)
            and not isinstance(error, AuthError)
            and str(error) != before
        ):
            self._count_rejection(error)
        return False

    async def nap(self, seconds: float) -> None:
        """Sleep `seconds`, or less when the run stops meanwhile (the retry policy's sleep)."""
        if seconds <= 0 or self._halted.is_set():
            return
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waker = asyncio.ensure_future(self._halted.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    def _count_failure(self, error: RequestError, *, probe: bool) -> None:
        message = str(error)
        same = self._last is not None and str(self._last) == message
        self._same = self._same + 1 if same else 1
        self._failures += 1
        self._last = error
        now = self._clock()
        if self._paused_at is None and self._failures >= TRIP_AFTER:
            self._paused_at, self._pause_probes, self._last_probe = now, 0, False
            log.warning(
                "%d requests in a row failed, the last with '%s': sending paused, probing "
                "%s for up to %g s (run.max_outage_s)",
                self._failures,
                message,
                self.base_url,
                self.max_outage_s,
            )
        elif probe and self._paused_at is not None and self._window_over(now):
            self._give_up(now - self._paused_at)

    def _count_rejection(self, error: FatalRequestError) -> None:
        if error.status is None or error.status < 400:
            return  # an answer that was refused for this row (a content filter), not the config
        message = str(error)
        self._rejections = self._rejections + 1 if message == self._rejected else 1
        self._rejected = message
        if self._rejections >= SAME_4XX_AFTER and self.reason is None:
            self.reason = (
                f"every request gets the same error: {message} ({self._rejections} rows in a "
                "row); answered rows are kept, fix the config and rerun"
            )
            self._wake()

    def _give_up(self, waited: float) -> None:
        last = self._last
        assert last is not None, "a pause follows failures"
        spent = f"{self._failures} requests in a row failed over {waited:.0f} s"
        if last.status is not None and last.status >= 500 and self._same == self._failures:
            what = f"every request gets the same error: {last} ({spent})"
        else:
            what = f"the endpoint {self.base_url} is down: {spent}, the last with '{last}'"
        self.reason = f"{what}; answered rows are kept, rerun to resume"
        self.down = True
        self._wake()

    def _window_over(self, now: float) -> bool:
        assert self._paused_at is not None
        return self._last_probe or now >= self._paused_at + self.max_outage_s

    def _probe_wait(self, paused_at: float) -> float:
        """Backoff before the next probe; the probe at the window's end is the last."""
        wait = min(MAX_PROBE_WAIT_S, FIRST_PROBE_S * 2.0 ** min(self._pause_probes, 16))
        left = paused_at + self.max_outage_s - self._clock()
        if left <= wait:
            self._last_probe = True
            return max(0.0, left)
        return wait

    def _wake(self) -> None:
        change, self._change = self._change, asyncio.Event()
        change.set()
