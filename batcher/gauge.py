"""What a run is doing and how fast: the figures its progress line and its row show.

The runner's workers and writer keep the counts (:class:`RunState`, the
writer's :class:`~batcher.writer.Tally`) and the pacer its sends; a
:class:`Gauge` only reads them, so reporting never slows the pipeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import anyio

from .errors import StoreStalled
from .pacer import Pacer
from .runconfig import Snapshot
from .writer import Tally

#: Seconds between two progress reports.
REPORT_EVERY_S = 0.5


@dataclass
class RunState:
    """What the workers are doing now, as they set it."""

    stopping: bool = False
    fatal: tuple[str, str] | None = None  # (outcome, message) of a run that cannot go on
    retrying: int = 0
    in_flight: int = 0
    stalled: StoreStalled | None = None  # why the store takes no write, while it does not
    held: int = 0  # jobs whose outcome waits in memory until the store takes writes


@dataclass
class Gauge:
    """Reads a run's counts into the figures shown: ``Gauge(pacer, tally, state, total, left).snapshot()``."""

    pacer: Pacer
    tally: Tally
    state: RunState
    total: int = 0  # jobs in the batch when the run started
    left_at_start: int = 0  # of which pending or running

    def snapshot(self) -> Snapshot:
        """The progress line's figures, now."""
        now = time.monotonic()
        tally, state = self.tally, self.state
        todo = self.left_at_start - tally.done
        done_rate = len(tally.done_times) / 60.0 if tally.done_times else 0.0
        recent = [t for t in tally.done_times if t >= now - 10]
        if recent:
            done_rate = len(recent) / min(10.0, max(1.0, now - recent[0]))
        eta = todo / done_rate if done_rate > 0 else None
        return Snapshot(
            total=self.total, done=self.total - self.left_at_start + tally.done,
            succeeded=tally.succeeded, failed=tally.failed, retrying=state.retrying,
            in_flight=state.in_flight, rate_rpm=self.request_rate(now), target_rpm=self.pacer.shown_rpm, eta_s=eta,
            input_tokens=tally.input_tokens, output_tokens=tally.output_tokens,
            paused_s=self.pacer.paused_for, stopping=state.stopping, max_rpm=self.pacer.max_rpm,
            pace_reason=self.pacer.reason, held=state.held if state.stalled else None,
            stall=state.stalled.pause_note(state.held) if state.stalled else None)

    def request_rate(self, now: float) -> float:
        """Requests per minute sent over the last minute (or since the first, if sooner)."""
        starts = [t for t in self.pacer.starts if t >= now - 60]
        span = min(60.0, max(1.0, now - (starts[0] if starts else now)))
        return len(starts) / span * 60 if len(starts) > 1 else 0.0

    def pace(self) -> dict[str, Any]:
        """The pace and the rate for the run's row, so that ``status`` shows them without counting."""
        return {"pace_rpm": round(self.pacer.shown_rpm, 1), "pace_reason": self.pacer.reason,
                "recent_rpm": round(self.request_rate(time.monotonic()), 1)}

    async def report(self, on_progress: Callable[[Snapshot], None]) -> None:
        """Call ``on_progress`` every half second until cancelled."""
        while True:
            on_progress(self.snapshot())
            await anyio.sleep(REPORT_EVERY_S)
