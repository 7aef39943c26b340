"""The writer: the one task that records attempts and outcomes.

Workers hand it records through a memory stream; it commits whatever arrived
within ~100 ms in one transaction (run in a thread so the event loop keeps
sending), and only then counts a job as done. Grouping keeps SQLite's commit
cost per second constant however fast answers arrive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import anyio
from anyio.abc import ObjectReceiveStream
from sqlalchemy import Engine

from .jobqueue import HEARTBEAT_S, AttemptRow, Outcome, record

FLUSH_EVERY_S = 0.1
MAX_GROUP = 2000


@dataclass
class Tally:
    """What has been committed so far in this run."""

    succeeded: int = 0
    failed: int = 0
    reused: int = 0  # of the succeeded: answers reused, no request sent (their tokens are not counted)
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    done_times: list[float] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.succeeded + self.failed


async def run_writer(engine: Engine, run_id: int, inbox: ObjectReceiveStream[AttemptRow | Outcome],
                     tally: Tally, on_commit: Callable[[], None] | None = None,
                     on_beat: Callable[[], dict[str, Any]] | None = None) -> None:
    """Commit records from ``inbox`` until it is closed and drained.

    ``on_beat`` gives values for the run's row, written with each heartbeat.
    """
    last_beat = 0.0
    async with inbox:
        closed = False
        while not closed:
            attempt_rows: list[AttemptRow] = []
            outcomes: list[Outcome] = []
            # Wait for the first record (or a heartbeat due), then gather
            # everything arriving in the next FLUSH_EVERY_S.
            with anyio.move_on_after(HEARTBEAT_S):
                try:
                    first = await inbox.receive()
                except anyio.EndOfStream:
                    closed = True
                else:
                    (outcomes if isinstance(first, Outcome) else attempt_rows).append(first)
            deadline = anyio.current_time() + FLUSH_EVERY_S
            while not closed and len(attempt_rows) + len(outcomes) < MAX_GROUP and (attempt_rows or outcomes):
                with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as scope:
                    try:
                        item = await inbox.receive()
                    except anyio.EndOfStream:
                        closed = True
                        break
                    (outcomes if isinstance(item, Outcome) else attempt_rows).append(item)
                if scope.cancelled_caught:
                    break
            now = time.monotonic()
            beat = now - last_beat >= HEARTBEAT_S
            if not (attempt_rows or outcomes or beat):
                continue
            if beat:
                last_beat = now
            # Shielded: once records are taken from the inbox they are written
            # even if the run is being cancelled.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(record, engine, run_id, attempt_rows, outcomes, beat,
                                               on_beat() if beat and on_beat else None)
            _count(tally, attempt_rows, outcomes)
            if on_commit is not None:
                on_commit()


def _count(tally: Tally, attempt_rows: list[AttemptRow], outcomes: list[Outcome]) -> None:
    tally.attempts += len(attempt_rows)
    now = time.monotonic()
    for outcome in outcomes:
        if outcome.status == "succeeded" and "reused_from" in outcome.values:
            tally.succeeded += 1
            tally.reused += 1
        elif outcome.status == "succeeded":
            tally.succeeded += 1
            tally.input_tokens += outcome.values.get("input_tokens") or 0
            tally.output_tokens += outcome.values.get("output_tokens") or 0
        else:
            tally.failed += 1
        tally.done_times.append(now)
    # Keep only the last minute: enough for the current rate.
    cutoff = now - 60.0
    if tally.done_times and tally.done_times[0] < cutoff:
        tally.done_times[:] = [t for t in tally.done_times if t >= cutoff]
