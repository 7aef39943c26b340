"""The pacer: when the next request may start, at the rate the server takes.

Requests are spaced evenly by one aiolimiter bucket of capacity one, so there
is no burst at start-up nor after a pause: in any window of W seconds at most
``pace*W/60 + 1`` requests start. The pace is the least of three figures:

* ``--rpm``, never exceeded;
* **what the window's headers allow**: ``remaining`` requests may start before
  ``reset`` seconds have passed. Once ``remaining`` runs low (under
  :data:`SPREAD_SHARE` of the limit) they are spread evenly over the time to
  the reset: exact for a fixed window, safe for a sliding window or a token
  bucket, where slots come back sooner. With ``remaining`` at 0 the window is
  spent: every caller waits for the reset, then one request per reset until
  fresh headers arrive;
* **a congestion ceiling**, additive increase / multiplicative decrease as
  TCP does: cut by :data:`DECREASE` on evidence that the key's window is
  spent, raised by :data:`INCREASE_PER_S` of ``--rpm`` every second
  otherwise, so a cut is won back in seconds. Several runs on one key read
  the same headers, cut together and rise together: AIMD converges to a fair
  share for each.

Only evidence that the key's window is spent cuts the ceiling: a 429 whose
headers show ``remaining`` at or under a reserve (:data:`RESERVE_SHARE` of
the limit, at least :data:`RESERVE_MIN`) on a key that others use too (the
server counts more than this run sent in the window) or while more than
:data:`CONGESTED_SHARE` of the last :data:`SHARE_WINDOW_S` seconds' answers
are refused (alone, the window's figure and the pause suffice); or, from a
server that sends no rate-limit headers, that same share refused. A 429
whose headers show room is an upstream refusal: only its own request waits
and retries; the pace is not touched unless refusals pass
:data:`UPSTREAM_SHARE`, far above stray ones, and nobody else waits. Each
cut answers requests sent before it: evidence about requests started before
the last cut is not cut for twice.

It knows nothing of jobs or HTTP: callers report what the server said.
"""

from __future__ import annotations

import time
from collections import deque

import anyio
from aiolimiter import AsyncLimiter

#: Pace slightly under the limit: arrival times jitter on the way to the
#: server, and a strict sliding window refuses the one request that lands early.
HEADROOM = 0.995
#: How early the caller at the head of the queue stops sleeping and starts polling the bucket.
SPIN_S = 0.002
#: The ceiling after a cut, as a share of the pace that met the evidence.
DECREASE = 0.85
#: Share of ``--rpm`` the ceiling regains per second without evidence.
INCREASE_PER_S = 0.1
#: Window "at or near 0": this share of the announced limit, at least RESERVE_MIN.
RESERVE_SHARE = 0.02
RESERVE_MIN = 2
#: Under this share of the limit (at least two reserves) the remaining requests
#: are spread over the time to the reset.
SPREAD_SHARE = 0.05
#: Answers considered for the share refused.
SHARE_WINDOW_S = 2.0
#: Without rate-limit headers, a share refused above this is a spent window.
CONGESTED_SHARE = 0.05
#: With headers showing room, refusals above this share slow the run anyway.
UPSTREAM_SHARE = 0.25
#: Headers older than this no longer steer the pace.
HEADERS_FRESH_S = 10.0
#: Displays name what held the pace under --rpm this recently.
SHOWN_S = 2.0
#: The pace cuts and a spent window never go under, unless --rpm itself is lower.
MIN_RPM = 1.0


class Stopped(Exception):
    """The pacer was stopped: no more requests may start."""


class Pacer:
    """Spaces request starts at up to ``rpm`` per minute, at what the server allows.

    ``rpm`` is the pace now, what the server allows as far as the pacer can
    tell (``max_rpm`` when nothing says less), and ``reason`` why it is lower.
    """

    def __init__(self, rpm: float, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        if rpm <= 0:
            raise ValueError("rpm must be positive")
        self.max_rpm = rpm
        self._floor = min(MIN_RPM, rpm)  # a floor above --rpm would send faster than asked
        self._clock = clock
        self.rpm = rpm  # the pace the bucket spaces starts at
        self._limiter = AsyncLimiter(1, 60.0 / (rpm * HEADROOM))
        self._paused_until = 0.0
        self._next_at = 0.0
        self._gate = anyio.Lock()
        self._woken = anyio.Event()
        self._stopped = False
        self.rate_limited = 0
        self.ceiling = rpm
        self._window_rpm = rpm
        self._last_cut = -1e9
        self._grown_at = clock()
        self._headers_at = -1e9
        self._shared = False
        self._cause = self._binding = "window"
        self._window_s = 1.0
        self._bound_at = -1e9
        self.starts: deque[float] = deque()  # grants of the last minute
        self._answers: deque[tuple[float, bool]] = deque()  # (when, refused)
        self._refused_n = 0

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
                now = self._clock()
                self._next_at = now + self._limiter.time_period
                self.starts.append(now)
                while self.starts[0] < now - 60.0:
                    self.starts.popleft()
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

    def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` (extends, never shortens, a pause)."""
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    # --- what the server said --------------------------------------------
    def answered(self, sent_at: float, remaining: int | None, reset_s: float | None, limit: int | None) -> None:
        """An answer that is not a 429, with its window headers (None: absent)."""
        self._count(refused=False)
        self._observe(sent_at, remaining, reset_s, limit)
        self._update()

    def refused(self, sent_at: float, remaining: int | None, reset_s: float | None, limit: int | None,
                wait_s: float | None) -> None:
        """A 429 for a request started at ``sent_at``; ``wait_s`` is what the server asked."""
        self.rate_limited += 1
        share = self._count(refused=True)
        spent = self._observe(sent_at, remaining, reset_s, limit)
        if spent:
            if self._shared or share > CONGESTED_SHARE:
                self._cut(sent_at, "window")  # alone, the window's figure and the pause suffice
        elif remaining is None and share > CONGESTED_SHARE:
            spent = True
            self._cut(sent_at, "429s, no rate headers")
        elif share > UPSTREAM_SHARE:
            self._cut(sent_at, "upstream 429s")
        if spent and wait_s is not None:
            self.pause(wait_s)
        self._update()

    def _observe(self, sent_at: float, remaining: int | None, reset_s: float | None, limit: int | None) -> bool:
        """Window headers: set the window's rate; True when the window is (nearly) spent."""
        if remaining is None:
            return False
        now = self._clock()
        self._headers_at = now
        reserve = max(RESERVE_MIN, RESERVE_SHARE * limit) if limit else RESERVE_MIN
        if reset_s:
            self._window_s = min(60.0, max(self._window_s, reset_s))  # the longest reset: about the window
        if limit is not None:
            # The server counts more than this run sent in the window: the window up to
            # when this request was sent, as the server counted it, not up to when its
            # answer is read (late, on a loaded machine, it would miss the latest starts).
            ours = self._starts_between(sent_at - self._window_s, sent_at)
            self._shared = limit - remaining > ours + reserve
        if not reset_s or reset_s <= 0:
            self._window_rpm = self.max_rpm  # the window has just been renewed
            return False
        if remaining <= 0:
            self.pause(reset_s)
        # Spread what is left over the time to the reset once it runs low. Not
        # sooner: in a sliding window or a bucket slots come back before the
        # reset, and a reset that means "all of them back" would hold a run
        # far under a limit it is not even reaching.
        low = max(SPREAD_SHARE * limit, 2 * RESERVE_MIN) if limit else 2 * RESERVE_MIN
        self._window_rpm = 60.0 * max(remaining, 1) / reset_s if remaining <= low else self.max_rpm
        return remaining <= reserve

    def _count(self, refused: bool) -> float:
        """Record an answer; the share refused over the last SHARE_WINDOW_S."""
        now = self._clock()
        answers = self._answers
        answers.append((now, refused))
        self._refused_n += refused
        while answers[0][0] < now - SHARE_WINDOW_S:
            self._refused_n -= answers.popleft()[1]
        return self._refused_n / len(answers)

    def _starts_between(self, low: float, high: float) -> int:
        """How many requests this pacer let start from ``low`` to ``high``."""
        n = 0
        for t in reversed(self.starts):  # newest last
            if t < low:
                break
            n += t <= high
        return n

    def _cut(self, sent_at: float, cause: str) -> None:
        if sent_at < self._last_cut:
            return  # sent before the last cut: that cut already answered it
        self._last_cut = self._clock()
        self._cause = cause
        self.ceiling = max(self._floor, min(self.ceiling, self._sending_rpm()) * DECREASE)

    def _sending_rpm(self) -> float:
        """Starts per minute over the last SHARE_WINDOW_S: the pace that met the evidence."""
        now = self._clock()
        span = min(SHARE_WINDOW_S, now - self.starts[0]) if self.starts else 0.0
        return 60.0 * self._starts_between(now - SHARE_WINDOW_S, now) / span if span > 0.5 else self.rpm

    def _update(self) -> None:
        now = self._clock()
        if now - self._headers_at > HEADERS_FRESH_S:
            self._window_rpm = self.max_rpm
        self.ceiling = min(self.max_rpm, self.ceiling + INCREASE_PER_S * self.max_rpm * (now - self._grown_at))
        self._grown_at = now
        if min(self.ceiling, self._window_rpm) < self.max_rpm * 0.99:
            self._bound_at = now
            self._binding = "window" if self._window_rpm <= self.ceiling else self._cause
        self._set_rate(max(self._floor, min(self.max_rpm, self.ceiling, self._window_rpm)))

    @property
    def shown_rpm(self) -> float:
        """The pace the server allows now, for displays: while something holds
        the pace under ``--rpm``, the starts of the last seconds, since the
        window's figure moves with every answer."""
        return self.max_rpm if self.reason is None else min(self.max_rpm, self._sending_rpm())

    @property
    def reason(self) -> str | None:
        """Why the pace is under ``--rpm`` (None: it is not), for displays."""
        if self.paused_for > 0.5:
            return "window spent"
        if self._clock() - self._bound_at > SHOWN_S:
            return None
        if self._binding == "window":
            return "key shared" if self._shared else "server limit"
        return self._binding

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
