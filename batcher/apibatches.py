"""Batches as the Message Batches API sees them: made whole, with a deadline.

Knows SQL and nothing of HTTP. A batch created through the API is an
ordinary batcher batch (named by its ``msgbatch_…`` id, so ``batcher
status`` and ``export`` see it) plus an ``api_batches`` row holding what the
API reports and the job rows do not: when it expires, when a cancel was
asked for, when it ended. Requests are stored as given, unchecked: a request
the API would refuse is sent and ends ``errored`` with the API's own error,
as Anthropic does. Expired requests are ``canceled`` jobs whose
``error_type`` is ``expired``. An ended API batch stays ended, as at
Anthropic: :func:`refuse_reopen` refuses putting its jobs back to pending.
"""

from __future__ import annotations

import secrets
import string
import time
from dataclasses import dataclass
from typing import Any, Sequence

import orjson
from sqlalchemy import Connection, Engine, func, select, tuple_, update

from . import tally
from .cost import CostSums, add_cost, model_and_cost
from .db import store_errors, write
from .errors import UsageError
from .jobqueue import finish_run, start_run
from .manage import cancel, cancel_jobs
from .prepare import body_hash, request_body
from .schema import ORDER, api_batches, batches, imports, jobs
from .store import Batch, get_or_create_batch, status_counts

ID_PREFIX = "msgbatch_"
EXPIRED = "expired"
_ALPHABET = string.ascii_letters + string.digits
#: Rows per INSERT of a create.
_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class Counts:
    """Requests of a batch by the API's five states; they add up to the total."""

    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


@dataclass(frozen=True, slots=True)
class ApiBatch:
    """A Message Batches API batch: the store's batch, its moments and counts."""

    batch: Batch
    expires_at: float
    cancel_requested_at: float | None
    ended_at: float | None
    counts: Counts
    #: The ``anthropic-beta`` header it was created with, sent with each of its requests.
    betas: str | None = None

    @property
    def id(self) -> str:
        return self.batch.name


def new_id() -> str:
    """``msgbatch_`` and 24 random letters and digits."""
    return ID_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(24))


@store_errors
def create(engine: Engine, requests: Sequence[tuple[str, dict[str, Any]]], expires_in_s: float,
           betas: str | None = None) -> Batch:
    """Store a new batch of ``(custom_id, params)`` requests in one transaction.

    The caller has checked the structure (ids unique and well formed, params
    objects); the params themselves are stored as given, once, and sent
    without ``stream``, since the runner decides how each request is sent.
    ``betas`` (the ``anthropic-beta`` header of the create) is kept and sent
    with each request, as Anthropic applies it to the whole batch.
    """
    now = time.time()
    with write(engine) as conn:
        batch, _ = get_or_create_batch(conn, new_id(), "api")
        batch_id = batch.id
        sums: CostSums = {}
        costs = []
        for _, params in requests:
            model, cost = model_and_cost(params)
            add_cost(sums, model, cost.input_tokens, cost.output_tokens)
            costs.append(cost)
        import_id = conn.execute(imports.insert().values(
            batch_id=batch_id, source="api", at=now, added=len(requests), unchanged=0, rejected=0,
            worst_input_tokens=max((c.input_tokens for c in costs), default=0),
            worst_output_tokens=max((c.output_tokens for c in costs), default=0),
            costs=orjson.dumps(sums).decode())).inserted_primary_key[0]
        for start in range(0, len(requests), _CHUNK):
            conn.execute(jobs.insert(), [_job_row(line, custom_id, params, batch_id, import_id, now)
                                         for line, (custom_id, params) in
                                         enumerate(requests[start:start + _CHUNK], start + 1)])
        tally.add_statuses(conn, batch_id, {"pending": len(requests)})
        conn.execute(api_batches.insert().values(batch_id=batch_id, expires_at=batch.created_at + expires_in_s,
                                                 betas=betas))
    return batch


def _job_row(line: int, custom_id: str, params: dict[str, Any], batch_id: int, import_id: int,
             now: float) -> dict[str, Any]:
    body = orjson.dumps({k: v for k, v in params.items() if k != "stream"}).decode()
    source = orjson.dumps({"custom_id": custom_id, "params": params}).decode()
    return {"batch_id": batch_id, "import_id": import_id, "line": line, "custom_id": custom_id,
            "body": "" if _rebuilds(source, line, body) else body, "body_hash": body_hash(body.encode()),
            "source": source, "extra": None,
            "status": "pending", "attempts": 0, "created_at": now, "updated_at": now}


def _rebuilds(source: str, line: int, body: str) -> bool:
    """Whether a claim rebuilds exactly ``body`` from ``source``: then it is stored once.

    That holds for every request the API would accept. One it would refuse
    keeps its body as given, to be sent and refused upstream.
    """
    try:
        return request_body(source, line, None) == body
    except (ValueError, TypeError):
        return False


def _counts(conn: Connection, batch_id: int) -> Counts:
    by_status = status_counts(conn, batch_id)
    expired = 0
    if by_status["canceled"]:
        expired = conn.execute(select(func.count()).where(
            jobs.c.batch_id == batch_id, jobs.c.status == "canceled", jobs.c.error_type == EXPIRED)).scalar_one()
    return Counts(processing=by_status["pending"] + by_status["running"], succeeded=by_status["succeeded"],
                  errored=by_status["failed"], canceled=by_status["canceled"] - expired, expired=expired)


_SELECT = (select(batches, api_batches.c.expires_at, api_batches.c.cancel_requested_at, api_batches.c.ended_at,
                  api_batches.c.betas)
           .join(api_batches, api_batches.c.batch_id == batches.c.id))


def _api_batch(conn: Connection, row: Any) -> ApiBatch:
    return ApiBatch(Batch(row.id, row.name, row.source, row.created_at), row.expires_at, row.cancel_requested_at,
                    row.ended_at, _counts(conn, row.id), row.betas)


@store_errors
def get(engine: Engine, batch_id: str) -> ApiBatch | None:
    """The API batch with this ``msgbatch_…`` id, or None."""
    with engine.connect() as conn:
        row = conn.execute(_SELECT.where(batches.c.name == batch_id)).first()
        return _api_batch(conn, row) if row is not None else None


@store_errors
def page(engine: Engine, limit: int, after_id: str | None = None,
         before_id: str | None = None) -> tuple[list[ApiBatch], bool] | None:
    """Up to ``limit`` API batches, newest first, and whether more lie beyond.

    ``after_id`` gives the page just after (older than) that batch,
    ``before_id`` the page just before (newer than) it, still newest first.
    None when the cursor names no batch.
    """
    with engine.connect() as conn:
        query = _SELECT
        cursor = after_id or before_id
        if cursor is not None:
            pivot = conn.execute(select(batches.c.id).join(api_batches, api_batches.c.batch_id == batches.c.id)
                                 .where(batches.c.name == cursor)).scalar()
            if pivot is None:
                return None
            if after_id is not None:
                query = query.where(batches.c.id < pivot)
            else:
                query = query.where(batches.c.id > pivot)
        backwards = before_id is not None and after_id is None
        order = batches.c.id.asc() if backwards else batches.c.id.desc()
        rows = conn.execute(query.order_by(order).limit(limit + 1)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        if backwards:
            rows.reverse()
        return [_api_batch(conn, r) for r in rows], more


@store_errors
def unfinished(engine: Engine) -> list[Batch]:
    """API batches that have not ended, oldest first: what a server resumes."""
    with engine.connect() as conn:
        rows = conn.execute(_SELECT.where(api_batches.c.ended_at.is_(None)).order_by(batches.c.id)).all()
    return [Batch(r.id, r.name, r.source, r.created_at) for r in rows]


def expire(engine: Engine, batch: Batch) -> int:
    """Mark the pending jobs expired (canceled, error type ``expired``); returns how many."""
    return cancel(engine, batch, why=EXPIRED)


@store_errors
def cancel_unsent(engine: Engine, batch: Batch, run_id: int, after: tuple[int, int, int], why: str | None = None) -> int:
    """Cancel (or expire) the jobs ``run_id`` claimed after ``(part, line, id)`` and has not sent; returns how many.

    A run claims a few jobs ahead of its workers, in input order, and its
    workers take them up in that order: once it stops taking any up, every
    job it holds past the last one taken up was never sent. Cancelling them
    now, not when the requests in flight end, is what the API promises, and
    they can no longer go out after a crash either.
    """
    return cancel_jobs(engine, batch, "running", jobs.c.run_id == run_id,
                       tuple_(*ORDER) > tuple_(*after), why=why, run_id=None)


def close(engine: Engine, batch: Batch, expired: bool, rpm: float, base_url: str) -> int:
    """Cancel (or expire) every job left unanswered, those a dead run held included; returns how many.

    For a batch whose cancel was asked for, or whose deadline passed: nothing
    more of it may be sent, not even what a killed server had claimed. The
    batch is taken over as a run would (``rpm`` and ``base_url`` go into
    that run's row), which puts a dead run's jobs back to pending, and the
    pending jobs end canceled (``expired``: as expired). Raises
    :class:`batcher.jobqueue.BatchBusy` if a live run owns the batch.
    """
    run_id = start_run(engine, batch.id, batch.name, rpm, base_url)
    outcome = "failed"
    try:
        n = cancel(engine, batch, why=EXPIRED if expired else None)
        outcome = EXPIRED if expired else "canceled"
    finally:
        finish_run(engine, run_id, outcome)
    return n


@store_errors
def refuse_reopen(engine: Engine, batch: Batch) -> None:
    """Raise UsageError if ``batch`` is an ended Message Batches API batch.

    An ended batch has its results and may be deleted; putting its jobs
    back to pending would leave it ``ended`` with requests processing that
    no server sends. At Anthropic, too, an ended batch stays ended.
    """
    with engine.connect() as conn:
        ended = conn.execute(select(api_batches.c.ended_at).where(api_batches.c.batch_id == batch.id)).scalar()
    if ended is not None:
        raise UsageError("an ended Message Batches API batch cannot be re-opened; create a new batch")


def refuse_import(conn: Connection, batch: Batch) -> None:
    """Raise UsageError if ``batch`` is a Message Batches API batch: no job file may add to it.

    Its requests are those it was created with, as at Anthropic: jobs added
    later would count as ``processing`` in a batch reported ``ended``, or be
    sent as part of a batch whose client never asked for them.
    """
    if conn.execute(select(api_batches.c.batch_id).where(api_batches.c.batch_id == batch.id)).first() is not None:
        raise UsageError(f"batch {batch.name} is a Message Batches API batch: its requests are those it was "
                         "created with; import into a batch of another name")


@store_errors
def end(engine: Engine, batch: Batch) -> bool:
    """Record that the batch ended, if no job is left to send; True if it has ended."""
    with write(engine) as conn:
        left = status_counts(conn, batch.id)
        if left["pending"] or left["running"]:
            return False
        conn.execute(update(api_batches).where(api_batches.c.batch_id == batch.id, api_batches.c.ended_at.is_(None))
                     .values(ended_at=time.time()))
    return True
