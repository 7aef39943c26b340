"""The runner's side of the store: owning a batch, claiming, recording.

Knows SQL and nothing of HTTP. A run first takes ownership of its batch (a
``runs`` row: a second live run is refused, a dead one's claimed jobs go back
to pending), then claims pending jobs as workers become free to send them (see
:class:`batcher.claims.Claims`) and records outcomes in
grouped transactions. A job is recorded only while it is still claimed by
this run, so nothing is ever recorded twice.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import orjson
from sqlalchemy import Connection, Engine, and_, bindparam, func, select, tuple_, update

from . import tally
from .cost import Cost, CostSums, merge_costs, model_and_cost
from .db import store_errors, write
from .errors import StoreError, StoreStalled, UsageError
from .liveness import run_is_alive
from .prepare import body_hash, request_body
from .schema import ORDER, answers, attempts, imports, in_status, jobs, runs
from .store import status_counts

#: Most jobs one claim transaction takes (one per worker waiting for a job).
CLAIM_CHUNK = 100
HEARTBEAT_S = 5.0
#: While the store takes no write, how often a write (a claim, the writer's records) is tried again.
FULL_RETRY_S = 1.0
#: How long a run's claim or record waits for another process's write (an
#: import into the same store, say) before the run says so and holds its
#: answers until the store is free (see :class:`~batcher.errors.StoreBusy`):
#: a frozen progress line would not tell why.
RUN_WAIT_S = 2.0


#: Before every job of a batch in its order: ``(part, line, id)``.
START = (0, 0, 0)


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: int
    line: int
    custom_id: str
    body: str
    attempts: int
    part: int = 0

    @property
    def place(self) -> tuple[int, int, int]:
        """Where the job stands in its batch's order (see :data:`batcher.schema.jobs`)."""
        return (self.part, self.line, self.id)


class BatchBusy(UsageError):
    """Another live run owns the batch."""


@store_errors
def start_run(engine: Engine, batch_id: int, batch_name: str, rpm: float, base_url: str) -> int:
    """Take ownership of the batch; return the run id.

    Jobs left ``running`` by a dead run go back to ``pending``.
    """
    now = time.time()
    with write(engine) as conn:
        end_dead_runs(conn, batch_id, batch_name, now, "wait for it, or stop it and run again")
        _release(conn, batch_id, None, now)
        return conn.execute(runs.insert().values(
            batch_id=batch_id, pid=os.getpid(), host=socket.gethostname(), started_at=now, heartbeat_at=now,
            rpm=rpm, base_url=base_url)).inserted_primary_key[0]


def end_dead_runs(conn: Connection, batch_id: int, batch_name: str, now: float, advice: str) -> None:
    """Mark the batch's open runs whose process is gone as ``died``; refuse (:class:`BatchBusy`) if one lives.

    ``advice`` ends the refusal: what to do about the live run.
    """
    for row in conn.execute(select(runs).where(runs.c.batch_id == batch_id, runs.c.ended_at.is_(None))).all():
        if run_is_alive(row, now):
            started = time.strftime("%H:%M:%S", time.localtime(row.started_at))
            ours = row.pid == os.getpid() and row.host == socket.gethostname()
            who = "another thread of this process" if ours else f"process {row.pid} on {row.host}"
            raise BatchBusy(f"batch {batch_name!r} is already being run by {who} (since {started}); {advice}")
        conn.execute(update(runs).where(runs.c.id == row.id).values(ended_at=now, outcome="died"))


@store_errors
def claim(engine: Engine, batch_id: int, run_id: int, limit: int,
          after: tuple[int, int, int] = START) -> list[ClaimedJob]:
    """Mark up to ``limit`` pending jobs as running for this run.

    Jobs come in input order, after the ``(part, line, id)`` cursor of the
    last claim: the pending jobs' index walks straight to them, however many
    jobs before them are done.
    """
    now = time.time()
    with write(engine, RUN_WAIT_S) as conn:
        rows = conn.execute(
            select(jobs.c.id, jobs.c.part, jobs.c.line, jobs.c.custom_id, jobs.c.body, jobs.c.body_hash,
                   jobs.c.source, jobs.c.attempts, imports.c.defaults)
            .join_from(jobs, imports, imports.c.id == jobs.c.import_id)
            .where(jobs.c.batch_id == batch_id, in_status("pending"), tuple_(*ORDER) > tuple_(*after))
            .order_by(*ORDER).limit(limit)
        ).all()
        if rows:
            claimed = conn.execute(update(jobs).where(jobs.c.id.in_([r.id for r in rows]), in_status("pending"))
                                   .values(status="running", run_id=run_id, updated_at=now)).rowcount
            tally.add_statuses(conn, batch_id, {"pending": -claimed, "running": claimed})
    return [ClaimedJob(r.id, r.line, r.custom_id, r.body or _rebuilt_body(r), r.attempts, r.part) for r in rows]


def _rebuilt_body(row: Any) -> str:
    """A job's request body from its input line and its import's defaults, checked against its hash."""
    try:
        body = request_body(row.source, row.line, row.defaults)
    except (ValueError, TypeError):
        body = None
    if body is None or body_hash(body.encode()) != row.body_hash:
        raise StoreError(f"job {row.custom_id!r}: its request cannot be rebuilt from its input line "
                         "as it was imported (was the store changed by hand?)")
    return body


def _release(conn: Connection, batch_id: int, run_id: int | None, now: float) -> int:
    """Put jobs left running (by ``run_id``, or by any run) back to pending.

    The partial index on running jobs finds them without reading the batch.
    """
    query = update(jobs).where(jobs.c.batch_id == batch_id, in_status("running"))
    if run_id is not None:
        query = query.where(jobs.c.run_id == run_id)
    released = conn.execute(query.values(status="pending", run_id=None, updated_at=now)).rowcount
    tally.add_statuses(conn, batch_id, {"running": -released, "pending": released})
    return released


@store_errors
def batch_counts(engine: Engine, batch_id: int) -> dict[str, int]:
    """Jobs of the batch by status (every status present)."""
    with engine.connect() as conn:
        return status_counts(conn, batch_id)


@dataclass(slots=True)
class AttemptRow:
    job_id: int
    started_at: float
    latency_ms: int
    status_code: int | None
    error_type: str | None
    streamed: bool
    ttft_ms: int | None
    counts: bool


@dataclass(slots=True)
class Outcome:
    """A job's final state for this run: succeeded or failed.

    A success carrying ``request_key`` (:mod:`batcher.reuse`) is filed under
    it in the same transaction, for later runs with ``--reuse``.
    """

    job_id: int
    status: str
    values: dict[str, Any]
    request_key: str | None = None


_record_outcome = (
    update(jobs)
    .where(and_(jobs.c.id == bindparam("job_id"), jobs.c.status == "running", jobs.c.run_id == bindparam("run")))
)
_count_attempt = update(jobs).where(jobs.c.id == bindparam("job_id")).values(attempts=jobs.c.attempts + 1)


@store_errors
def record(engine: Engine, run_id: int, attempt_rows: list[AttemptRow], outcomes: list[Outcome],
           heartbeat: bool, run_values: dict[str, Any] | None = None) -> int:
    """Write attempts and outcomes in one transaction, with their tally; return outcomes stored.

    With the heartbeat, ``run_values`` (columns of the run's row) are written too.
    """
    now = time.time()
    stored = 0
    delta = tally.TallyDelta()
    with write(engine, RUN_WAIT_S) as conn:
        batch_id = conn.execute(select(runs.c.batch_id).where(runs.c.id == run_id)).scalar_one()
        if attempt_rows:
            conn.execute(attempts.insert(), [
                {"job_id": a.job_id, "run_id": run_id, "started_at": a.started_at, "latency_ms": a.latency_ms,
                 "status_code": a.status_code, "error_type": a.error_type, "streamed": a.streamed,
                 "ttft_ms": a.ttft_ms} for a in attempt_rows])
            for a in attempt_rows:
                delta.attempt(a.started_at, a.latency_ms, a.streamed, a.error_type is None, a.ttft_ms)
            counted = [{"job_id": a.job_id} for a in attempt_rows if a.counts]
            if counted:
                delta.budget += conn.execute(_count_attempt, counted).rowcount
        if outcomes:
            # Only jobs still claimed by this run take an outcome (and count).
            mine = set(conn.execute(select(jobs.c.id).where(
                jobs.c.id.in_([o.job_id for o in outcomes]), in_status("running"), jobs.c.run_id == run_id)).scalars())
            outcomes = [o for o in outcomes if o.job_id in mine]
        by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for outcome in outcomes:
            params = {"job_id": outcome.job_id, "run": run_id, "status": outcome.status, "updated_at": now,
                      "finished_at": now, **outcome.values}
            by_shape.setdefault(tuple(sorted(params)), []).append(params)
            _tally_outcome(delta, outcome)
        for keys, group in by_shape.items():
            values = {k: bindparam(k) for k in keys if k not in ("job_id", "run")}
            # Columns named like bind parameters must be bound under other names.
            stmt = _record_outcome.values({jobs.c[k]: bindparam("v_" + k) for k in values})
            result = conn.execute(stmt, [{**{"v_" + k: p[k] for k in values}, "job_id": p["job_id"], "run": run_id}
                                         for p in group])
            stored += result.rowcount
        if outcomes:
            delta.statuses["running"] -= len(outcomes)
            delta.last_finished_at = now
        tally.apply(conn, batch_id, delta)
        # Answers are filed for --reuse in the transaction that records them.
        keyed = [{"job_id": o.job_id, "request_key": o.request_key} for o in outcomes
                 if o.status == "succeeded" and o.request_key is not None]
        if keyed:
            conn.execute(answers.insert(), keyed)
        if heartbeat:
            conn.execute(update(runs).where(runs.c.id == run_id).values(heartbeat_at=now, **(run_values or {})))
    return stored


def _tally_outcome(delta: tally.TallyDelta, outcome: Outcome) -> None:
    """What one recorded outcome adds to the batch's tally."""
    delta.statuses[outcome.status] += 1
    values = outcome.values
    if outcome.status == "succeeded":
        delta.answer(values.get("model"), values)
        delta.reused += values.get("reused_from") is not None
    elif outcome.status == "failed":
        delta.failures[values.get("error_type"), values.get("status_code")] += 1


@store_errors
def finish_run(engine: Engine, run_id: int, outcome: str, wait_s: float | None = None) -> int:
    """Put this run's unfinished jobs back to pending and close the run (waiting up to ``wait_s`` for the store)."""
    now = time.time()
    with write(engine, wait_s) as conn:
        batch_id = conn.execute(select(runs.c.batch_id).where(runs.c.id == run_id)).scalar_one()
        released = _release(conn, batch_id, run_id, now)
        conn.execute(update(runs).where(runs.c.id == run_id).values(ended_at=now, heartbeat_at=now, outcome=outcome))
    return released


def close_later(engine: Engine, run_id: int, outcome: str) -> None:
    """Close the run's row once the store takes writes again, from a thread of its own.

    A run stopped while its store is full or locked leaves its row open, and
    its process is taken for the run's while it lives (see
    :mod:`batcher.liveness`): in a process that goes on, a notebook, runs of
    the batch from other processes would be refused meanwhile. A process
    that exits leaves the row to the next run, which finds it gone.
    """
    def close() -> None:
        while True:
            time.sleep(FULL_RETRY_S)
            try:
                finish_run(engine, run_id, outcome)
                return
            except StoreStalled:
                continue
            except StoreError:
                return

    threading.Thread(target=close, name=f"batcher-close-run-{run_id}", daemon=True).start()


#: The columns of a stored answer that a reusing job copies.
ANSWER_COLUMNS = ("response", "model", "input_tokens", "output_tokens", "cache_creation_input_tokens",
                  "cache_read_input_tokens")


@store_errors
def find_answers(engine: Engine, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Stored answers to any of ``keys`` (any batch): key -> the values a job copies.

    ``reused_from`` names the answering job (the earliest, when several).
    """
    if not keys:
        return {}
    first = (select(answers.c.request_key, func.min(answers.c.job_id).label("job_id"))
             .join(jobs, jobs.c.id == answers.c.job_id)
             .where(answers.c.request_key.in_(set(keys)), jobs.c.status == "succeeded")
             .group_by(answers.c.request_key).subquery())
    query = select(first.c.request_key, jobs.c.id, *(jobs.c[k] for k in ANSWER_COLUMNS)).join(
        jobs, jobs.c.id == first.c.job_id)
    with engine.connect() as conn:
        return {row.request_key: {**{k: row._mapping[k] for k in ANSWER_COLUMNS}, "reused_from": row.id}
                for row in conn.execute(query)}


@store_errors
def worst_job_cost(engine: Engine, batch_id: int) -> Cost | None:
    """The largest input estimate and ``max_tokens`` of one of the batch's jobs, from its imports' records.

    None when an import of the batch did not record them (one made before
    they were kept): then only reading the jobs tells.
    """
    with engine.connect() as conn:
        row = conn.execute(select(func.max(imports.c.worst_input_tokens), func.max(imports.c.worst_output_tokens),
                                  func.count() - func.count(imports.c.worst_input_tokens))
                           .where(imports.c.batch_id == batch_id)).one()
    worst_input, worst_output, unknown = row
    return None if unknown else Cost(worst_input or 0, worst_output or 0)


@store_errors
def import_costs(engine: Engine, batch_id: int) -> CostSums | None:
    """What every job of the batch costs, by model, from its imports' records; None if one has none.

    A job is counted by the import that added it (see :mod:`batcher.importer`).
    """
    with engine.connect() as conn:
        recorded = conn.scalars(select(imports.c.costs).where(imports.c.batch_id == batch_id)).all()
    sums: CostSums = {}
    for text in recorded:
        if text is None:
            return None
        merge_costs(sums, orjson.loads(text))
    return sums


def unfinished_bodies(engine: Engine, batch_id: int, limit: int | None = None,
                      chunk: int = 2000) -> Iterator[tuple[str, int, str]]:
    """``(custom_id, line, body)`` of the batch's pending and running jobs, in input order.

    Read in chunks through the (batch, part, line) index, each in its own
    short read, so a million jobs never sit in memory and a run is never
    blocked.
    """
    after = START
    left = limit
    while left is None or left > 0:
        rows = _unfinished_chunk(engine, batch_id, after, chunk if left is None else min(chunk, left))
        if not rows:
            return
        for row in rows:
            yield row.custom_id, row.line, row_body(row)
        after = (rows[-1].part, rows[-1].line, rows[-1].id)
        if left is not None:
            left -= len(rows)


def unfinished_costs(engine: Engine, batch_id: int, limit: int | None = None) -> Iterator[tuple[str, int, str, Cost]]:
    """``(custom_id, line, model, cost)`` of the batch's unfinished jobs, in input order.

    Read as :func:`unfinished_bodies` reads them; ``model`` is "" for a
    request that names none (an API batch's requests are stored as given).
    """
    for custom_id, line, body in unfinished_bodies(engine, batch_id, limit):
        yield custom_id, line, *body_cost(body)


def body_cost(body: str) -> tuple[str, Cost]:
    """A request body's model ("" if it names none) and worst case."""
    return model_and_cost(orjson.loads(body))


def row_body(row: Any) -> str:
    """The request body of a row of :func:`unfinished_jobs`: stored, or rebuilt from its source."""
    return row.body or _rebuilt_body(row)


def unfinished_jobs(batch_id: int) -> Any:
    """The select of the batch's pending and running jobs, in input order, with what rebuilds their bodies."""
    return (select(jobs.c.id, jobs.c.part, jobs.c.line, jobs.c.custom_id, jobs.c.body, jobs.c.body_hash,
                   jobs.c.source, imports.c.defaults)
            .join_from(jobs, imports, imports.c.id == jobs.c.import_id)
            .where(jobs.c.batch_id == batch_id, in_status("pending") | in_status("running"))
            .order_by(*ORDER))


@store_errors
def _unfinished_chunk(engine: Engine, batch_id: int, after: tuple[int, int, int], n: int) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(unfinished_jobs(batch_id).where(tuple_(*ORDER) > tuple_(*after)).limit(n)).all()
