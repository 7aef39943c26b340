"""The writer: the one task that records attempts and outcomes.

Workers hand it records through a memory stream; it commits whatever arrived
within ~100 ms in one transaction (run in a thread so the event loop keeps
sending), and only then counts a job as done. Grouping keeps SQLite's commit
cost per second constant however fast answers arrive. A full store, or one
another process keeps locked, makes it hold what it has until it can write,
rather than drop answers paid for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import anyio
from anyio.abc import ObjectReceiveStream
from sqlalchemy import Engine

from .errors import StoreStalled
from .jobqueue import FULL_RETRY_S, HEARTBEAT_S, AttemptRow, Outcome, record

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
                     tally: Tally, on_commit: Callable[[list[Outcome]], None] | None = None,
                     on_beat: Callable[[], dict[str, Any]] | None = None,
                     on_stall: Callable[[StoreStalled | None, int], bool] | None = None) -> None:
    """Commit records from ``inbox`` until it is closed and drained.

    ``on_beat`` gives values for the run's row, written with each heartbeat;
    ``on_commit`` hears of the outcomes each commit has stored.

    A store that takes no write for now (:class:`~batcher.errors.StoreStalled`:
    full, or locked by another process) does not cost the answers taken:
    they are held, later ones gathered with them, and the write tried again
    every ``FULL_RETRY_S``, telling ``on_stall(error, jobs held)`` each time
    and ``on_stall(None, 0)`` once a write goes through. After the inbox is
    closed, holding goes on while ``on_stall`` returns True; without
    ``on_stall`` or once it says False, the error ends the writer, naming
    the outcomes it could not store.
    """
    last_beat = 0.0
    attempt_rows: list[AttemptRow] = []
    outcomes: list[Outcome] = []
    holding = False
    async with inbox:
        closed = False
        while not closed or attempt_rows or outcomes:
            if holding:  # records wait in the inbox meanwhile
                await anyio.sleep(FULL_RETRY_S)
            if not closed:
                closed = await _gather(inbox, attempt_rows, outcomes, FLUSH_EVERY_S if holding else HEARTBEAT_S)
            now = time.monotonic()
            beat = now - last_beat >= HEARTBEAT_S
            if not (attempt_rows or outcomes or beat):
                continue
            if beat:
                last_beat = now
            try:
                # Shielded: once records are taken from the inbox they are written
                # even if the run is being cancelled.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(record, engine, run_id, attempt_rows, outcomes, beat,
                                                   on_beat() if beat and on_beat else None)
            except StoreStalled as exc:
                keep = on_stall is not None and on_stall(exc, len(outcomes))
                if on_stall is None or (closed and not keep):
                    raise _lost(exc, outcomes) from None
                holding = True
                continue
            if holding:
                holding = False
                if on_stall is not None:
                    on_stall(None, 0)
            _count(tally, attempt_rows, outcomes)
            if on_commit is not None and outcomes:
                on_commit(outcomes)
            attempt_rows, outcomes = [], []


async def _gather(inbox: ObjectReceiveStream[AttemptRow | Outcome], attempt_rows: list[AttemptRow],
                  outcomes: list[Outcome], wait_s: float) -> bool:
    """Wait up to ``wait_s`` for a first record, then take what arrives within
    ``FLUSH_EVERY_S``; True once the inbox is closed and drained."""
    def take(item: AttemptRow | Outcome) -> None:
        (outcomes if isinstance(item, Outcome) else attempt_rows).append(item)

    with anyio.move_on_after(wait_s):
        try:
            take(await inbox.receive())
        except anyio.EndOfStream:
            return True
    deadline = anyio.current_time() + FLUSH_EVERY_S
    while len(attempt_rows) + len(outcomes) < MAX_GROUP and (attempt_rows or outcomes):
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as scope:
            try:
                take(await inbox.receive())
            except anyio.EndOfStream:
                return True
        if scope.cancelled_caught:
            break
    return False


def _lost(exc: StoreStalled, outcomes: list[Outcome]) -> StoreStalled:
    """The store's error, saying what it cost when outcomes could not be stored."""
    if not outcomes:
        return exc
    return type(exc)(f"{exc}; the outcome of {len(outcomes)} job(s) could not be stored: "
                     "the next run sends them again")


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
