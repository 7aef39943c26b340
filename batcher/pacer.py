"""The pacer: when the next request may start.

Requests are spaced evenly at the current rate by one aiolimiter bucket of
capacity one, so there is no burst at start-up nor after a pause: in any
window of W seconds at most ``rate*W/60 + 1`` requests start. On top of the
bucket, the pacer

* pauses every caller at once when the server says the window is spent
  (a 429, or ``remaining`` reaching 0), until its reset time;
* adapts: each congestion event (429s) cuts the rate multiplicatively, and
  every success wins a little of it back, up to the configured rate, as
  TCP does with its window.

It knows nothing of jobs or HTTP: callers report what the server said.
"""

from __future__ import annotations

import time

import anyio
from aiolimiter import AsyncLimiter

#: Pace slightly under the limit: arrival times jitter on the way to the
#: server, and a strict sliding window refuses the one request that lands
#: early.
HEADROOM = 0.995
#: How early the caller at the head of the queue stops sleeping and starts
#: polling the bucket.
SPIN_S = 0.002
DECREASE = 0.7
#: Share of the configured rate regained per successful request.
RECOVERY = 0.002
MIN_RPM = 1.0
DEFAULT_PAUSE_S = 1.0


class Stopped(Exception):
    """The pacer was stopped: no more requests may start."""


class Pacer:
    """Spaces request starts at up to ``rpm`` per minute and adapts to 429s."""

    def __init__(self, rpm: float, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        if rpm <= 0:
            raise ValueError("rpm must be positive")
        self.max_rpm = rpm
        self._clock = clock
        self.rpm = rpm
        self._limiter = AsyncLimiter(1, 60.0 / (rpm * HEADROOM))
        self._paused_until = 0.0
        self._next_at = 0.0
        self._gate = anyio.Lock()
        self._woken = anyio.Event()
        self._last_cut = -1e9
        self._stopped = False
        self.rate_limited = 0

    # --- waiting --------------------------------------------------------
    async def wait(self) -> None:
        """Return when a request may start; raise :class:`Stopped` after stop().

        One caller at a time approaches the bucket (the others queue on a
        FIFO lock) and it sleeps until just before the bucket has room, then
        yields to the event loop until it does: a timer alone wakes a
        millisecond late each time, which at 50 requests a second would cost
        5% of the rate and could never be made up.
        """
        async with self._gate:
            while True:
                if self._stopped:
                    raise Stopped
                now = self._clock()
                if self._paused_until > now:
                    await self._sleep(self._paused_until - now)
                    continue
                early = self._next_at - now
                if early > SPIN_S:
                    await self._sleep(early - SPIN_S)
                    continue
                if not self._limiter.has_capacity():
                    await anyio.sleep(0)
                    continue
                await self._limiter.acquire()  # has room: returns at once
                self._next_at = self._clock() + self._limiter.time_period
                return

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on stop()."""
        with anyio.move_on_after(seconds):
            await self._woken.wait()

    def stop(self) -> None:
        """No request starts after this; waiters raise Stopped."""
        self._stopped = True
        self._woken.set()

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    # --- what the server said --------------------------------------------
    def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` (extends, never shortens, a pause)."""
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    def observe(self, remaining: int | None, reset_s: float | None) -> None:
        """Headers of any answer: when the window is spent, pause until reset.

        The announced limit is not used as a pace: it counts per window, and
        the window's length is not announced.
        """
        if remaining is not None and remaining <= 0:
            self.pause(reset_s if reset_s is not None else DEFAULT_PAUSE_S)

    def rate_limited_by_server(self, wait_s: float | None) -> None:
        """A 429: everyone waits, and the pace drops once per congestion event."""
        self.rate_limited += 1
        wait = wait_s if wait_s is not None else DEFAULT_PAUSE_S
        self.pause(wait)
        now = self._clock()
        # 429s for requests already in flight belong to the same event.
        if now - self._last_cut >= max(wait, 60.0 / self.rpm * 4, 1.0):
            self._last_cut = now
            self._set_rate(max(MIN_RPM, self.rpm * DECREASE))

    def succeeded(self) -> None:
        """An answer arrived: win back a little of the pace."""
        if self.rpm < self.max_rpm:
            self._set_rate(min(self.max_rpm, self.rpm + self.max_rpm * RECOVERY))

    def _set_rate(self, rpm: float) -> None:
        if rpm == self.rpm:
            return
        self.rpm = rpm
        period = 60.0 / (rpm * HEADROOM)
        # aiolimiter has no public setter; changing the period in place keeps
        # the bucket's level, so a change of pace cannot open a burst.
        self._limiter.time_period = period
        self._limiter._rate_per_sec = 1 / period  # noqa: SLF001
        self._next_at = min(self._next_at, self._clock() + period)
