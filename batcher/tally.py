"""A batch's running totals, kept in step with its job rows.

Reading a million-job batch's counts, tokens and failures by scanning its
rows takes seconds; the tally answers in a few index lookups whatever the
batch size. Every transaction that changes a job's status (or its tokens,
its attempt budget, its failure) adds the same change to the tally before it
commits, so the two can never drift: a crash loses both or neither.

For code that changes job statuses, one call is enough::

    add_statuses(conn, batch_id, {"pending": -n, "canceled": +n})

Answers, failures and HTTP attempts carry more figures: build a
:class:`TallyDelta` and :func:`apply` it. :func:`recount` rebuilds every
figure from the rows (slow, for checking and repair), and :func:`differences`
compares the two.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from sqlalchemy import Connection, and_, case, func, or_, select

from .schema import (STATUSES, attempts, batch_tallies, failure_tallies, jobs, model_tallies, timing_tallies)

TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
#: Figures per model: answers, then the four token counts.
MODEL_FIGURES = ("succeeded", *TOKEN_KEYS)
#: Timing histograms kept per batch (milliseconds -> successful streamed attempts).
TIMINGS = ("ttft", "duration")
#: Stand-ins for "none" in tally keys (primary keys cannot hold NULL).
NO_MODEL, NO_TYPE, NO_CODE = "", "", 0


@dataclass
class TallyDelta:
    """Changes to a batch's tally, summed and applied in one go."""

    statuses: Counter[str] = field(default_factory=Counter)
    #: Change in the sum of the jobs' used attempt budgets (``jobs.attempts``).
    budget: int = 0
    #: Succeeded jobs whose answer was reused, not requested.
    reused: int = 0
    #: model -> [answers, input, output, cache write, cache read] to add.
    models: dict[str, list[int]] = field(default_factory=dict)
    #: (error_type, status_code) -> failed jobs to add.
    failures: Counter[tuple[str | None, int | None]] = field(default_factory=Counter)
    #: HTTP attempts: how many, and the span they cover.
    requests: int = 0
    first_request_at: float | None = None
    last_request_end: float | None = None
    last_finished_at: float | None = None
    streamed_ok: int = 0
    #: (kind, milliseconds) -> successful streamed attempts, kind in TIMINGS.
    timings: Counter[tuple[str, int]] = field(default_factory=Counter)

    def answer(self, model: str | None, values: Mapping[str, Any]) -> None:
        """One more succeeded job with these token counts."""
        row = self.models.setdefault(model or NO_MODEL, [0] * len(MODEL_FIGURES))
        row[0] += 1
        for i, key in enumerate(TOKEN_KEYS, start=1):
            row[i] += values.get(key) or 0

    def attempt(self, started_at: float, latency_ms: int | None, streamed: bool, ok: bool,
                ttft_ms: int | None) -> None:
        """One more HTTP attempt."""
        self.requests += 1
        end = started_at + (latency_ms or 0) / 1000.0
        self.first_request_at = _min(self.first_request_at, started_at)
        self.last_request_end = _max(self.last_request_end, end)
        if streamed and ok:
            self.streamed_ok += 1
            if ttft_ms is not None:
                self.timings["ttft", ttft_ms] += 1
            if latency_ms is not None:
                self.timings["duration", latency_ms] += 1

    def __bool__(self) -> bool:
        return bool(any(self.statuses.values()) or self.budget or self.reused or self.models
                    or any(self.failures.values())
                    or self.requests or self.last_finished_at is not None)


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _lowest(column: Any, value: float) -> Any:
    return case((or_(column.is_(None), column > value), value), else_=column)


def _highest(column: Any, value: float) -> Any:
    return case((or_(column.is_(None), column < value), value), else_=column)


def _upsert(conn: Connection, table: Any, keys: tuple[str, ...], figures: tuple[str, ...],
            rows: list[dict[str, Any]]) -> None:
    """Add ``figures`` of each row to the row with the same keys, creating it at zero."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(index_elements=list(keys),
                                      set_={f: table.c[f] + stmt.excluded[f] for f in figures})
    conn.execute(stmt, rows)


def create(conn: Connection, batch_id: int) -> None:
    """An all-zero tally for a new batch."""
    conn.execute(batch_tallies.insert().values(batch_id=batch_id))


def add_statuses(conn: Connection, batch_id: int, deltas: Mapping[str, int]) -> None:
    """Add ``deltas`` (status -> change in job count) to the batch's counts.

    Call it in the transaction that changes the rows, with the changes the
    UPDATE reported (its rowcount), never with what was asked for.
    """
    apply(conn, batch_id, TallyDelta(statuses=Counter(deltas)))


def apply(conn: Connection, batch_id: int, delta: TallyDelta) -> None:
    """Add ``delta`` to the batch's tally, in the caller's transaction."""
    if not delta:
        return
    unknown = set(delta.statuses) - set(STATUSES)
    if unknown:
        raise ValueError(f"not job statuses: {sorted(unknown)}")
    values: dict[str, Any] = {s: batch_tallies.c[s] + n for s, n in delta.statuses.items() if n}
    if delta.budget:
        values["attempts"] = batch_tallies.c.attempts + delta.budget
    if delta.reused:
        values["reused"] = batch_tallies.c.reused + delta.reused
    if delta.requests:
        t = batch_tallies.c
        values["requests"] = t.requests + delta.requests
        values["streamed_ok"] = t.streamed_ok + delta.streamed_ok
        values["first_request_at"] = _lowest(t.first_request_at, delta.first_request_at)
        values["last_request_end"] = _highest(t.last_request_end, delta.last_request_end)
    if delta.last_finished_at is not None:
        values["last_finished_at"] = _highest(batch_tallies.c.last_finished_at, delta.last_finished_at)
    if values:
        conn.execute(batch_tallies.update().where(batch_tallies.c.batch_id == batch_id).values(values))
    _upsert(conn, model_tallies, ("batch_id", "model"), MODEL_FIGURES,
            [{"batch_id": batch_id, "model": model, **dict(zip(MODEL_FIGURES, row))}
             for model, row in delta.models.items()])
    _upsert(conn, failure_tallies, ("batch_id", "error_type", "status_code"), ("count",),
            [{"batch_id": batch_id, "error_type": etype or NO_TYPE,
              "status_code": NO_CODE if code is None else code, "count": n}
             for (etype, code), n in delta.failures.items() if n])
    _upsert(conn, timing_tallies, ("batch_id", "kind", "ms"), ("count",),
            [{"batch_id": batch_id, "kind": kind, "ms": ms, "count": n} for (kind, ms), n in delta.timings.items()])


# -- reading --------------------------------------------------------------------


@dataclass
class Tally:
    """A batch's figures, as the tally (or a recount) holds them."""

    counts: dict[str, int]
    budget: int
    #: model ("" for answers naming none) -> {succeeded, *TOKEN_KEYS}.
    models: dict[str, dict[str, int]]
    #: (error_type or None, status_code or None) -> failed jobs.
    failures: dict[tuple[str | None, int | None], int]
    requests: int
    first_request_at: float | None
    last_request_end: float | None
    last_finished_at: float | None
    streamed_ok: int
    #: kind -> sorted [(milliseconds, attempts)].
    timings: dict[str, list[tuple[int, int]]]
    #: Of the succeeded, answers reused from an identical request.
    reused: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def tokens(self) -> dict[str, int]:
        """Token totals over every model."""
        return {k: sum(m[k] for m in self.models.values()) for k in TOKEN_KEYS}

    def median(self, kind: str) -> float | None:
        """Exact median of a timing histogram: the middle value, or the mean of the middle two."""
        histogram = self.timings.get(kind) or []
        n = sum(count for _, count in histogram)
        if not n:
            return None
        wanted = sorted({(n - 1) // 2, n // 2})
        found: list[int] = []
        seen = 0
        for ms, count in histogram:
            while wanted and wanted[0] < seen + count:
                found.append(ms)
                wanted.pop(0)
            seen += count
        return sum(found) / len(found)

    def timed(self, kind: str) -> int:
        return sum(count for _, count in self.timings.get(kind) or [])


def read(conn: Connection, batch_id: int) -> Tally:
    """The batch's tally: a handful of primary-key lookups.

    A batch written without one (by hand, or by an older tool) is recounted
    from its rows instead: slow, but never wrong.
    """
    row = conn.execute(select(batch_tallies).where(batch_tallies.c.batch_id == batch_id)).first()
    if row is None:
        return recount(conn, batch_id)
    models = {r.model: {k: r._mapping[k] for k in MODEL_FIGURES}
              for r in conn.execute(select(model_tallies).where(model_tallies.c.batch_id == batch_id))}
    failures = {(r.error_type or None, None if r.status_code == NO_CODE else r.status_code): r.count
                for r in conn.execute(select(failure_tallies).where(failure_tallies.c.batch_id == batch_id,
                                                                    failure_tallies.c.count != 0))}
    timings: dict[str, list[tuple[int, int]]] = {}
    query = (select(timing_tallies.c.kind, timing_tallies.c.ms, timing_tallies.c.count)
             .where(timing_tallies.c.batch_id == batch_id).order_by(timing_tallies.c.kind, timing_tallies.c.ms))
    for kind, ms, count in conn.execute(query):
        timings.setdefault(kind, []).append((ms, count))
    return Tally({s: row._mapping[s] for s in STATUSES}, row.attempts, {m: f for m, f in models.items() if f["succeeded"]},
                 failures, row.requests, row.first_request_at, row.last_request_end, row.last_finished_at,
                 row.streamed_ok, timings, row.reused)


def counts(conn: Connection, batch_id: int) -> dict[str, int]:
    """Jobs of the batch by status, from the tally (see :func:`read`)."""
    row = conn.execute(select(*(batch_tallies.c[s] for s in STATUSES))
                       .where(batch_tallies.c.batch_id == batch_id)).first()
    return dict(zip(STATUSES, row)) if row is not None else recount(conn, batch_id).counts


# -- recounting -----------------------------------------------------------------


def recount(conn: Connection, batch_id: int) -> Tally:
    """Every tally figure computed again from the rows (scans the batch)."""
    mine = jobs.c.batch_id == batch_id
    statuses = dict.fromkeys(STATUSES, 0)
    for status, n in conn.execute(select(jobs.c.status, func.count()).where(mine).group_by(jobs.c.status)):
        statuses[status] = n
    budget, last_finished, reused = conn.execute(
        select(func.coalesce(func.sum(jobs.c.attempts), 0), func.max(jobs.c.finished_at),
               func.count(jobs.c.reused_from)).where(mine)).one()
    sums = [func.coalesce(func.sum(jobs.c[k]), 0) for k in TOKEN_KEYS]
    models = {model or NO_MODEL: dict(zip(MODEL_FIGURES, figures)) for model, *figures in conn.execute(
        select(jobs.c.model, func.count(), *sums).where(mine, jobs.c.status == "succeeded").group_by(jobs.c.model))}
    failures = {(etype, code): n for etype, code, n in conn.execute(
        select(jobs.c.error_type, jobs.c.status_code, func.count()).where(mine, jobs.c.status == "failed")
        .group_by(jobs.c.error_type, jobs.c.status_code))}
    source = attempts.join(jobs, jobs.c.id == attempts.c.job_id)
    ok = and_(attempts.c.streamed == True, attempts.c.error_type.is_(None))  # noqa: E712
    requests, first, last, streamed_ok = conn.execute(
        select(func.count(), func.min(attempts.c.started_at),
               func.max(attempts.c.started_at + func.coalesce(attempts.c.latency_ms, 0) / 1000.0),
               func.coalesce(func.sum(case((ok, 1), else_=0)), 0)).select_from(source).where(mine)).one()
    timings: dict[str, list[tuple[int, int]]] = {}
    for kind, column in (("ttft", attempts.c.ttft_ms), ("duration", attempts.c.latency_ms)):
        query = (select(column, func.count()).select_from(source).where(mine, ok, column.is_not(None))
                 .group_by(column).order_by(column))
        histogram = [(ms, n) for ms, n in conn.execute(query)]
        if histogram:
            timings[kind] = histogram
    return Tally(statuses, budget, models, failures, requests, first, last, last_finished, streamed_ok, timings,
                 reused)


def differences(kept: Tally, counted: Tally) -> list[str]:
    """Where the tally and a recount disagree, one line each (empty: they agree).

    ``last_finished_at`` is the latest finish ever recorded: a retry takes a
    job's finish away from the rows but not from the tally, so only a tally
    behind the rows is a disagreement.
    """
    out = []
    for name in ("counts", "budget", "reused", "models", "failures", "requests", "streamed_ok", "timings"):
        a, b = getattr(kept, name), getattr(counted, name)
        if a != b:
            out.append(f"{name}: tally {a!r}, rows {b!r}")
    for name in ("first_request_at", "last_request_end"):
        a, b = getattr(kept, name), getattr(counted, name)
        if (a is None) != (b is None) or (a is not None and not math.isclose(a, b, abs_tol=1e-3)):
            out.append(f"{name}: tally {a!r}, rows {b!r}")
    if counted.last_finished_at is not None and (
            kept.last_finished_at is None or kept.last_finished_at < counted.last_finished_at - 1e-3):
        out.append(f"last_finished_at: tally {kept.last_finished_at!r}, rows {counted.last_finished_at!r}")
    return out


def rebuild(conn: Connection, batch_id: int) -> None:
    """Replace the batch's tally with a recount of its rows."""
    fresh = recount(conn, batch_id)
    for table in (model_tallies, failure_tallies, timing_tallies, batch_tallies):
        conn.execute(table.delete().where(table.c.batch_id == batch_id))
    create(conn, batch_id)
    delta = TallyDelta(statuses=Counter(fresh.counts), budget=fresh.budget, reused=fresh.reused,
                       models={m: [f[k] for k in MODEL_FIGURES] for m, f in fresh.models.items()},
                       failures=Counter(fresh.failures), last_finished_at=fresh.last_finished_at)
    apply(conn, batch_id, delta)
    values = {"requests": fresh.requests, "first_request_at": fresh.first_request_at,
              "last_request_end": fresh.last_request_end, "streamed_ok": fresh.streamed_ok}
    conn.execute(batch_tallies.update().where(batch_tallies.c.batch_id == batch_id).values(values))
    _upsert(conn, timing_tallies, ("batch_id", "kind", "ms"), ("count",),
            [{"batch_id": batch_id, "kind": kind, "ms": ms, "count": n}
             for kind, histogram in fresh.timings.items() for ms, n in histogram])


