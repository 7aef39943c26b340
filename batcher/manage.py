"""Changing which jobs a run will send (retrying failures, cancelling the rest), and deleting a batch.

Both are single UPDATEs in one write transaction (with the tally's change),
so they are safe while a run is going: a run claims only ``pending`` jobs, so cancelled ones are no
longer claimed, and retried ones are sent by the next run (or by the current
one, if it is still claiming). The ``attempts`` table is never touched: the
history of what was tried stays for status and analysis.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Iterable

from sqlalchemy import Engine, and_, delete, func, select

from . import tally
from .db import store_errors, write
from .errors import StoreFull, UsageError, option
from .interrupts import CommitPoint
from .jobqueue import end_dead_runs
from .schema import api_batches, attempts, batches, imports, in_status, jobs, runs
from .store import Batch, status_counts


@store_errors
def retry(engine: Engine, batch: Batch, error_types: Iterable[str] = (), status_codes: Iterable[int] = (),
          canceled: bool = False) -> int:
    """Put failed jobs (or, with ``canceled``, cancelled ones) back to pending.

    ``error_types`` and ``status_codes`` narrow the failed jobs chosen (any of
    the types, and any of the codes). Chosen jobs get a fresh attempt budget
    and lose their last error. Returns how many jobs were put back.
    """
    error_types, status_codes = tuple(error_types), tuple(status_codes)
    if canceled and (error_types or status_codes):
        raise UsageError(f"{option('error_type')} and {option('status_code')} choose failed jobs; "
                         f"they do not combine with {option('canceled', switch=True)}")
    status = "canceled" if canceled else "failed"
    chosen = and_(jobs.c.batch_id == batch.id, in_status(status))
    if error_types:
        chosen = and_(chosen, jobs.c.error_type.in_(error_types))
    if status_codes:
        chosen = and_(chosen, jobs.c.status_code.in_(status_codes))
    delta = tally.TallyDelta()
    with write(engine) as conn:
        # What the chosen jobs take out of the tally, read in the same
        # transaction as the update that moves them.
        groups = select(jobs.c.error_type, jobs.c.status_code, func.count(), func.coalesce(func.sum(jobs.c.attempts), 0))
        for error_type, status_code, n, spent in conn.execute(
                groups.where(chosen).group_by(jobs.c.error_type, jobs.c.status_code)):
            delta.statuses[status] -= n
            delta.statuses["pending"] += n
            delta.budget -= spent
            if not canceled:
                delta.failures[error_type, status_code] -= n
        # The chosen jobs are found as the failed jobs' partial index orders them: else
        # SQLite's planner walks the batch's whole order index (3.6 s for 20,000 of 1M jobs).
        found = select(jobs.c.id).where(chosen).order_by(jobs.c.error_type, jobs.c.status_code)
        moved = conn.execute(jobs.update().where(jobs.c.id.in_(found)).values(
            status="pending", attempts=0, error=None, error_type=None, status_code=None, finished_at=None,
            updated_at=time.time())).rowcount
        tally.apply(conn, batch.id, delta)
    return moved


@store_errors
def failure_kinds(engine: Engine, batch: Batch) -> dict[str, int]:
    """The batch's failed jobs by error type, most frequent first (what ``retry --error-type`` can take)."""
    kinds: Counter[str] = Counter()
    with engine.connect() as conn:
        for (error_type, _), n in tally.read(conn, batch.id).failures.items():
            kinds[error_type or "unknown"] += n
    return {kind: n for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])) if n > 0}


@store_errors
def cancel(engine: Engine, batch: Batch, why: str | None = None) -> int:
    """Mark the batch's pending jobs canceled; jobs already in flight finish.

    Returns how many jobs were cancelled; ``retry(..., canceled=True)``
    brings them back. ``why``, if given, is kept as their ``error_type``
    (``expired``: a Message Batches API batch whose deadline passed).
    A cancel asked for (no ``why``) of a batch made through the Message
    Batches API is noted there too, once, as the API's own cancel does:
    its ``cancel_initiated_at``, and the server ends the batch. One that has
    ended already is left as it is, as the API's cancel leaves it.
    """
    return cancel_jobs(engine, batch, "pending", why=why, asked=why is None)


def cancel_jobs(engine: Engine, batch: Batch, status: str, *where: Any, why: str | None = None,
                asked: bool = False, **values: Any) -> int:
    """Mark the batch's jobs in ``status`` (and matching ``where``) canceled, the tally with them.

    What :func:`cancel` does to pending jobs; ``values`` are further
    columns to set (a claimed job's ``run_id``, say).
    """
    now = time.time()
    query = (jobs.update().where(jobs.c.batch_id == batch.id, in_status(status), *where)
             .values(status="canceled", finished_at=now, updated_at=now, **values,
                     **({"error_type": why} if why is not None else {})))
    with write(engine) as conn:
        if asked:
            conn.execute(api_batches.update()
                         .where(api_batches.c.batch_id == batch.id, api_batches.c.cancel_requested_at.is_(None),
                                api_batches.c.ended_at.is_(None))
                         .values(cancel_requested_at=now))
        n = conn.execute(query).rowcount
        tally.apply(conn, batch.id, tally.TallyDelta(statuses=Counter({status: -n, "canceled": n}),
                                                     last_finished_at=now if n else None))
        return n


def delete_batch(engine: Engine, batch: Batch) -> int:
    """Delete the batch and everything of it (jobs, attempts, answers, imports, runs, totals); return its jobs.

    One transaction: a batch is deleted whole or not at all. Refused
    (:class:`~batcher.jobqueue.BatchBusy`) while a live run sends its jobs:
    the run would go on paying for answers it could no longer store. Until
    it commits, SQLite keeps every page it changes in its log: about the
    batch's size in free disk space (1.6 GB for a million answered jobs).
    """
    try:
        return _delete_batch(engine, batch)
    except StoreFull as exc:
        raise StoreFull(f"{exc}: deleting a batch needs free disk space about its size until it is done (the "
                        "store's log holds every page it changes); nothing was deleted. A store holding nothing "
                        "else you need can be removed as a file instead") from None


@store_errors
def _delete_batch(engine: Engine, batch: Batch) -> int:
    with CommitPoint() as commit, write(engine) as conn:
        end_dead_runs(conn, batch.id, batch.name, time.time(), "stop it, then delete the batch")
        n = sum(status_counts(conn, batch.id).values())
        job_ids = select(jobs.c.id).where(jobs.c.batch_id == batch.id).scalar_subquery()
        conn.execute(delete(attempts).where(attempts.c.job_id.in_(job_ids)))
        conn.execute(delete(jobs).where(jobs.c.batch_id == batch.id))  # answers go with their jobs
        for table in (imports, runs, api_batches):
            conn.execute(delete(table).where(table.c.batch_id == batch.id))
        conn.execute(delete(batches).where(batches.c.id == batch.id))  # the tallies go with it
        commit.reached()  # from here a Ctrl-C waits: the batch is gone, and the command says so
    return n
