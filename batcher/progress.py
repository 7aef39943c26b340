"""Showing a run's progress: a live line on a terminal, plain lines otherwise.

On a terminal the line is redrawn twice a second (rich does the drawing);
in a log file a status line every 10 s is what a reader can use.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from .status import pace_against

if TYPE_CHECKING:  # named only: an import does not load the runner's modules to show how far it is
    from .runconfig import RunSummary, Snapshot

PLAIN_EVERY_S = 10.0
#: An import or export shorter than this shows no line of how far it is.
COUNT_SHOWN_AFTER_S = 1.0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else str(n)


def describe(s: Snapshot) -> str:
    """One line: done/total, outcomes, rate against --rpm (and the pace the
    server allows, with why, when lower), ETA, tokens."""
    pct = 100.0 * s.done / s.total if s.total else 100.0
    parts = [
        f"{s.done:,}/{s.total:,} ({pct:.0f}%)",
        f"ok {s.succeeded:,}",
        f"failed {s.failed:,}",
        f"retrying {s.retrying:,}",
        f"in flight {s.in_flight:,}",
        f"{s.rate_rpm:.0f}/{s.max_rpm or s.target_rpm:.0f} rpm",
        f"ETA {_duration(s.eta_s)}",
        f"tokens {_count(s.input_tokens)} in / {_count(s.output_tokens)} out",
    ]
    if s.pace_reason and s.max_rpm and s.paused_s <= 0.5:
        parts.insert(6, f"{s.pace_reason}: {pace_against(s.target_rpm, s.max_rpm)}")
    if s.stall is not None:
        parts.append(s.stall)
    elif s.paused_s > 0.5:
        parts.append(f"paused {s.paused_s:.0f}s by the rate limit")
    if s.stopping:
        parts.append("stopping")
    return " | ".join(parts)


class ProgressDisplay:
    """Callable the runner feeds snapshots to; close() before the summary."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = None
        self._last_plain = time.monotonic()  # the first plain line after 10 s, not an empty one at 0
        if not quiet and self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live("", console=Console(file=self.stream), refresh_per_second=4, transient=False)
            self.live.start()

    def __call__(self, snapshot: Snapshot) -> None:
        if self.quiet:
            return
        line = describe(snapshot)
        if self.live is not None:
            self.live.update(line)
            return
        now = time.monotonic()
        if now - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = now
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class CountDisplay:
    """How far a long reading or writing is: a transient line on a terminal, a line every 10 s otherwise.

    Called with the lines (or jobs) done so far and their part of all (None
    when the whole is not known). Nothing shows for the first
    :data:`COUNT_SHOWN_AFTER_S`: a short import or export stays silent.
    """

    def __init__(self, doing: str, unit: str = "line", stream: TextIO | None = None) -> None:
        self.doing, self.unit = doing, unit
        self.stream = stream or sys.stderr
        self.live: Any = None
        self._last_plain = self._started = time.monotonic()

    def __call__(self, lines: int, part: float | None) -> None:
        now = time.monotonic()
        if now - self._started < COUNT_SHOWN_AFTER_S:
            return
        line = f"{self.doing}: {lines:,} {self.unit}(s)" + (f" ({100 * part:.0f}%)" if part is not None else "")
        if not self.stream.isatty():
            if now - self._last_plain >= PLAIN_EVERY_S:
                self._last_plain = now
                print(line, file=self.stream, flush=True)
            return
        if self.live is None:
            from rich.console import Console
            from rich.live import Live

            self.live = Live("", console=Console(file=self.stream), refresh_per_second=4, transient=True)
            self.live.start()
        self.live.update(line)

    def close(self) -> None:
        """Take the line away: the report follows."""
        if self.live is not None:
            self.live.stop()
            self.live = None


class WaitDisplay:
    """A step that cannot count how far it is (one UPDATE or DELETE of a million rows): a spinner
    with what it does, on a terminal, from :data:`COUNT_SHOWN_AFTER_S` on, until :meth:`close`.

    rich redraws it from a thread of its own, while the step blocks this one.
    """

    def __init__(self, doing: str, stream: TextIO | None = None) -> None:
        import threading

        from rich.console import Console

        self._status = Console(file=stream or sys.stderr).status(doing)
        self._lock = threading.Lock()
        self._closed = False
        self._timer = threading.Timer(COUNT_SHOWN_AFTER_S, self._show)
        self._timer.daemon = True
        self._timer.start()

    def _show(self) -> None:
        with self._lock:
            if not self._closed:
                self._status.start()

    def close(self) -> None:
        """Take the line away (if it showed): the report follows."""
        self._timer.cancel()
        with self._lock:
            self._closed = True
            self._status.stop()


def summary_lines(summary: RunSummary) -> list[str]:
    """The final lines, whatever the display."""
    minutes = summary.elapsed_s / 60
    # n requests span n - 1 intervals of the pace: n over the time would read above --rpm in a short run,
    # and a single request has no rate at all.
    rate = f"{(summary.attempts - 1) / minutes:.0f}/min, " if minutes > 0 and summary.attempts > 1 else ""
    reused = f" ({summary.reused:,} reused)" if summary.reused else ""
    requests = "1 request" if summary.attempts == 1 else f"{summary.attempts:,} requests"
    lines = [
        f"batch {summary.batch}: {summary.succeeded:,} succeeded{reused}, {summary.failed:,} failed this run, "
        f"{summary.left:,} left; {requests} in {_duration(summary.elapsed_s)} "
        f"({rate}{summary.rate_limited:,} rate-limited); "
        f"tokens {summary.input_tokens:,} in / {summary.output_tokens:,} out"
    ]
    if summary.outcome == "interrupted":
        lines.append(f"{summary.succeeded + summary.failed:,} done, {summary.left:,} left: "
                     "run the same command again to resume")
    elif summary.outcome in ("limit", "budget"):
        spent = (f"this run spent {summary.input_tokens:,} input and {summary.output_tokens:,} output tokens "
                 f"in {requests}; " if summary.attempts else "")
        larger = "limit" if summary.outcome == "limit" else "cap"
        # The stop marks nothing failed; jobs may still have failed on their own before it (the line above).
        lines.append(f"batcher: {summary.message}; {spent}{summary.left:,} job(s) left, not sent and not failed: "
                     f"run the same command again (with a larger {larger}, or none) to go on")
    elif summary.outcome in ("stopped", "misconfigured"):
        lines.append(f"batcher: run stopped: {summary.message}")
        lines.append(f"the {summary.left:,} job(s) not answered are not marked failed: they wait for the next run")
    else:
        if summary.failed_in_batch:
            earlier = summary.failed_in_batch - summary.failed
            if earlier > 0:
                lines.append(f"{summary.failed_in_batch:,} job(s) of the batch have failed ({earlier:,} in earlier runs)")
            lines.append(f"see why with: batcher status {summary.batch}; retry with: batcher retry {summary.batch}")
        if summary.left and summary.outcome == "finished":  # put back (a retry) as the run ended
            lines.append(f"{summary.left:,} job(s) of the batch are pending again; send them with: "
                         f"batcher run {summary.batch}")
        if summary.canceled_in_batch:
            lines.append(f"{summary.canceled_in_batch:,} job(s) of the batch are canceled, not answered; "
                         f"send them with: batcher retry {summary.batch} --canceled")
    return lines
