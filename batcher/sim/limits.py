"""Strict sliding-window rate limiting and the counters behind ``GET /stats``.

The window is strict on purpose: a client that passes here is safe under
either a fixed or a sliding window on the real service, whose kind is not
documented.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter, deque
from datetime import datetime, timezone
from typing import Any, NamedTuple


def format_seconds(value: float) -> str:
    """Seconds as a decimal, rounded up to the millisecond so waiting that long suffices."""
    if value <= 0:
        return "0"
    return f"{math.ceil(value * 1000) / 1000:.3f}"


def rfc3339_after(seconds: float) -> str:
    """The wall-clock time ``seconds`` from now in RFC 3339 (UTC, milliseconds), as Anthropic sends a reset."""
    when = datetime.fromtimestamp(time.time() + math.ceil(max(0.0, seconds) * 1000) / 1000, timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Verdict(NamedTuple):
    """Outcome of one admission check, with what the rate-limit headers need."""

    allowed: bool
    remaining: int
    reset: float  # seconds until the oldest counted request leaves the window


class SlidingWindow:
    """At most ``limit`` accepted requests per key in any ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._keys: dict[str, deque[float]] = {}

    def _queue(self, key: str, now: float) -> deque[float]:
        q = self._keys.get(key)
        if q is None:
            q = self._keys[key] = deque()
        edge = now - self.window
        while q and q[0] <= edge:
            q.popleft()
        return q

    def _verdict(self, allowed: bool, q: deque[float], now: float) -> Verdict:
        reset = q[0] + self.window - now if q else 0.0
        return Verdict(allowed, max(0, self.limit - len(q)), max(0.0, reset))

    def acquire(self, key: str, now: float | None = None) -> Verdict:
        """Count the request if there is room; refused requests are not counted."""
        now = time.monotonic() if now is None else now
        q = self._queue(key, now)
        if len(q) >= self.limit:
            return self._verdict(False, q, now)
        q.append(now)
        return self._verdict(True, q, now)

    def peek(self, key: str, now: float | None = None) -> Verdict:
        """The window state for ``key`` without counting anything."""
        now = time.monotonic() if now is None else now
        return self._verdict(True, self._queue(key, now), now)

    def clear(self) -> None:
        self._keys.clear()


class Stats:
    """What the simulator saw, for tests and benchmarks to check a client against."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.reset()

    def reset(self) -> None:
        self.since = time.monotonic()
        self.requests = 0
        self.by_status: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        self.rate_limited = 0
        self.succeeded = 0
        self.input_tokens = 0
        self.output_tokens = 0
        # Requests in flight survive a reset; they still depart later.
        self.concurrency = getattr(self, "concurrency", 0)
        self.peak_concurrency = self.concurrency
        self.peak_window = 0
        self._recent: deque[float] = deque()
        self.arrivals = array("d")
        self.accepted = array("d")

    def arrive(self, now: float) -> None:
        """A POST arrived: count it and its concurrency."""
        self.requests += 1
        self.arrivals.append(now)
        self.concurrency += 1
        if self.concurrency > self.peak_concurrency:
            self.peak_concurrency = self.concurrency

    def depart(self) -> None:
        self.concurrency -= 1

    def admit(self, now: float) -> None:
        """The limiter accepted a request: track the busiest window over all keys."""
        self.accepted.append(now)
        q = self._recent
        q.append(now)
        edge = now - self.window
        while q and q[0] <= edge:
            q.popleft()
        if len(q) > self.peak_window:
            self.peak_window = len(q)

    def answered(self, status: int) -> None:
        self.by_status[status] += 1

    def snapshot(self, times: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "succeeded": self.succeeded,
            "rate_limited": self.rate_limited,
            "status_429": self.by_status.get(429, 0),
            "faults": dict(sorted(self.faults.items())),
            "concurrency": self.concurrency,
            "peak_concurrency": self.peak_concurrency,
            "peak_window": self.peak_window,
            "window": self.window,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "since": self.since,
            "now": time.monotonic(),
        }
        if times:
            data["arrivals"] = self.arrivals.tolist()
            data["accepted"] = self.accepted.tolist()
        return data
