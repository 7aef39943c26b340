"""What a batch looks like now: counts, failures, tokens, pace and the live run.

A pure reader of the store, safe while a run is going (WAL readers do not
block the writer). Every figure is aggregated in SQL so that a million-job
batch costs a handful of index-driven queries, never a row-by-row loop in
Python.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, Engine, case, func, select, true

from .export import error_parts
from .jobqueue import run_is_alive
from .schema import attempts, batches, jobs, runs
from .store import Batch, status_counts

#: A run whose heartbeat is older than this is dead, whatever its row says.
LIVE_HEARTBEAT_S = 30.0
#: The window the current rate is measured over.
RECENT_S = 60.0
TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def batch_status(engine: Engine, batch: Batch, now: float | None = None, detail: bool = True) -> dict[str, Any]:
    """One JSON-ready object describing ``batch``, read from one snapshot.

    Keys: batch, file, created_at, total, a count per status, attempts (the
    jobs' used attempt budgets), token totals; then attempts_made (HTTP
    requests), models, failures (by error type and HTTP status, with an
    example), started_at/ended_at, achieved_rpm, run (the live run, with
    current_rpm, in_flight, eta_s; else None) and streaming (medians; None
    when nothing was streamed). ``detail=False`` stops after the token
    totals, for listings of many batches. Times are Unix seconds.
    """
    now = time.time() if now is None else now
    with engine.connect() as conn, conn.begin():
        counts = status_counts(conn, batch.id)
        models, totals = _by_model(conn, batch.id)
        summary = {
            "batch": batch.name, "file": batch.source, "created_at": batch.created_at,
            "total": sum(counts.values()), **counts, "attempts": totals["attempts"],
            **{k: totals[k] for k in TOKEN_KEYS},
        }
        if not detail:
            return summary
        source = _attempts_source(conn, batch.id)
        tries = _attempt_figures(conn, source, now)
        failures = _failures(conn, batch.id)
        run = _live_run(conn, batch.id, now)
        streaming = _streaming(conn, source, tries) if tries["streamed_ok"] else None
    unfinished = counts["pending"] + counts["running"]
    ended_at = totals["last_finish"] if not unfinished and totals["last_finish"] else None
    started_at = tries["first"]
    # Pace over the time requests were being sent: up to now while a run
    # is live, else up to the end of the last attempt.
    achieved = _per_minute(tries["count"], started_at, now if run else tries["last"])
    if run:
        run["current_rpm"] = tries["recent"]
        run["in_flight"] = counts["running"]
        run["eta_s"] = round(unfinished / tries["recent"] * 60.0, 1) if tries["recent"] else None
    return {
        **summary,
        "attempts_made": tries["count"],
        "models": models,
        "failures": failures,
        "started_at": started_at,
        "ended_at": ended_at,
        "achieved_rpm": achieved,
        "run": run,
        "streaming": streaming,
    }


def _by_model(conn: Connection, batch_id: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Answers and tokens per model, and the batch totals.

    One pass without grouping gives the totals and tells whether more than one
    model answered; only then is the (sorting) GROUP BY worth its cost.
    """
    sums = [func.coalesce(func.sum(jobs.c[k]), 0) for k in TOKEN_KEYS]
    mine = jobs.c.batch_id == batch_id
    row = conn.execute(select(
        func.count(jobs.c.response), *sums, func.coalesce(func.sum(jobs.c.attempts), 0),
        func.max(jobs.c.finished_at), func.min(jobs.c.model), func.max(jobs.c.model)).where(mine)).one()
    answers, tokens, (spent, last, first_model, last_model) = row[0], row[1:5], row[5:]
    totals = dict(zip(TOKEN_KEYS, tokens)) | {"attempts": spent, "last_finish": last}
    if first_model is None:
        return [], totals
    if first_model == last_model:
        return [{"model": first_model, "succeeded": answers, **dict(zip(TOKEN_KEYS, tokens))}], totals
    query = (select(jobs.c.model, func.count(jobs.c.response), *sums)
             .where(mine, jobs.c.model.is_not(None)).group_by(jobs.c.model))
    models = [{"model": model, "succeeded": n, **dict(zip(TOKEN_KEYS, figures))}
              for model, n, *figures in conn.execute(query)]
    models.sort(key=lambda m: (-m["succeeded"], m["model"]))
    return models, totals


def _attempts_source(conn: Connection, batch_id: int) -> tuple[Any, Any]:
    """(FROM, WHERE) selecting the batch's attempts.

    Attempts are reached through their jobs (indexed both ways); when the
    store holds this batch alone, every attempt is its own and the join,
    half the cost on a large batch, is skipped.
    """
    if conn.execute(select(func.count()).select_from(batches)).scalar() == 1:
        return attempts, true()
    return attempts.join(jobs, jobs.c.id == attempts.c.job_id), jobs.c.batch_id == batch_id


def _ok_streamed() -> Any:
    return (attempts.c.streamed == True) & attempts.c.error_type.is_(None)  # noqa: E712


def _attempt_figures(conn: Connection, source: tuple[Any, Any], now: float) -> dict[str, Any]:
    """HTTP attempts: how many, first start, last end, how many lately, streamed."""
    table, where = source
    ok = _ok_streamed()

    def count_if(cond: Any) -> Any:
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    last_end = attempts.c.started_at + func.coalesce(attempts.c.latency_ms, 0) / 1000.0
    row = conn.execute(
        select(func.count(), func.min(attempts.c.started_at), func.max(last_end),
               count_if(attempts.c.started_at >= now - RECENT_S), count_if(ok),
               count_if(ok & attempts.c.ttft_ms.is_not(None)), count_if(ok & attempts.c.latency_ms.is_not(None)))
        .select_from(table).where(where)
    ).one()
    keys = ("count", "first", "last", "recent", "streamed_ok", "with_ttft", "with_latency")
    return dict(zip(keys, row))


def _median(conn: Connection, source: tuple[Any, Any], column: Any, n: int) -> float | None:
    """Exact median of ``column`` over successful streamed attempts: the middle one or two rows."""
    if not n:
        return None
    table, where = source
    query = (select(column).select_from(table).where(where, _ok_streamed(), column.is_not(None))
             .order_by(column).offset((n - 1) // 2).limit(2 - n % 2))
    middle = conn.execute(query).scalars().all()
    return sum(middle) / len(middle) if middle else None


def _streaming(conn: Connection, source: tuple[Any, Any], tries: dict[str, Any]) -> dict[str, Any]:
    return {
        "streamed": tries["streamed_ok"],
        "median_ttft_ms": _median(conn, source, attempts.c.ttft_ms, tries["with_ttft"]),
        "median_duration_ms": _median(conn, source, attempts.c.latency_ms, tries["with_latency"]),
    }


def _failures(conn: Connection, batch_id: int) -> list[dict[str, Any]]:
    """Failed jobs by error type and HTTP status, most frequent first, each with one message."""
    query = (
        select(jobs.c.error_type, jobs.c.status_code, func.count(), func.min(jobs.c.id))
        .where(jobs.c.batch_id == batch_id, jobs.c.status == "failed")
        .group_by(jobs.c.error_type, jobs.c.status_code)
    )
    groups = sorted(conn.execute(query).all(), key=lambda r: (-r[2], r[0] or "", r[1] or 0))
    out = []
    for error_type, status_code, n, example_id in groups:
        stored = conn.execute(select(jobs.c.error).where(jobs.c.id == example_id)).scalar()
        out.append({"error_type": error_type, "status_code": status_code, "count": n,
                    "example": error_parts(stored, error_type)[1] or None})
    return out


def _live_run(conn: Connection, batch_id: int, now: float) -> dict[str, Any] | None:
    """The run sending this batch now: not ended, heartbeat fresh."""
    row = conn.execute(
        select(runs.c.id, runs.c.pid, runs.c.host, runs.c.started_at, runs.c.heartbeat_at, runs.c.rpm)
        .where(runs.c.batch_id == batch_id, runs.c.ended_at.is_(None),
               runs.c.heartbeat_at >= now - LIVE_HEARTBEAT_S)
        .order_by(runs.c.heartbeat_at.desc()).limit(1)
    ).first()
    if row is None or not run_is_alive(row, now):
        return None
    return {"id": row.id, "pid": row.pid, "host": row.host, "started_at": row.started_at,
            "heartbeat_at": row.heartbeat_at, "rpm_limit": row.rpm}


def _per_minute(n: int, start: float | None, end: float | None) -> float | None:
    if start is None or end is None or n == 0:
        return None
    return round(n * 60.0 / max(end - start, 1.0), 1)


# -- text ---------------------------------------------------------------------


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _ms(value: float) -> str:
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds // 60 % 60:02d}m"


def status_lines(s: dict[str, Any], shown_failures: int = 10) -> list[str]:
    """The status as a few aligned lines for a terminal."""
    label = "  {:<10}".format
    lines = [f"batch {s['batch']} ({s['file']}), created {_when(s['created_at'])}"]
    lines.append(label("jobs") + f"{s['total']:,}: " + ", ".join(
        f"{s[k]:,} {k}" for k in ("pending", "running", "succeeded", "failed", "canceled")))
    lines.append(label("attempts") + f"{s['attempts_made']:,} requests sent")
    lines.append(label("tokens") + f"in {s['input_tokens']:,}, out {s['output_tokens']:,}; cache write "
                 f"{s['cache_creation_input_tokens']:,}, read {s['cache_read_input_tokens']:,}")
    if len(s["models"]) > 1:
        for m in s["models"]:
            lines.append(label("") + f"{m['model']}: {m['succeeded']:,} answers, in {m['input_tokens']:,}, "
                         f"out {m['output_tokens']:,}, cache {m['cache_creation_input_tokens']:,}/"
                         f"{m['cache_read_input_tokens']:,}")
    for i, f in enumerate(s["failures"][:shown_failures]):
        http = f"HTTP {f['status_code']}" if f["status_code"] is not None else "no HTTP status"
        example = (f["example"] or "")[:100]
        lines.append(label("failures" if i == 0 else "")
                     + f"{f['count']:,} {f['error_type'] or 'unknown'} ({http}), e.g. {example!r}")
    if len(s["failures"]) > shown_failures:
        lines.append(label("") + f"... and {len(s['failures']) - shown_failures} more kinds (status --json)")
    if s["started_at"]:
        pace = f"; {s['achieved_rpm']:,.1f} requests/min achieved" if s["achieved_rpm"] else ""
        lines.append(label("timing") + f"started {_when(s['started_at'])}, ended {_when(s['ended_at'])}{pace}")
    run = s["run"]
    if run:
        eta = _duration(run["eta_s"]) if run["eta_s"] is not None else "unknown"
        lines.append(label("running") + f"pid {run['pid']} on {run['host']}: {run['current_rpm']:,} requests/min "
                     f"now, {run['in_flight']:,} in flight, ETA {eta}")
    st = s["streaming"]
    if st:
        ttft = _ms(st["median_ttft_ms"]) if st["median_ttft_ms"] is not None else "-"
        took = _ms(st["median_duration_ms"]) if st["median_duration_ms"] is not None else "-"
        lines.append(label("streaming") + f"{st['streamed']:,} answers: median first token {ttft}, "
                     f"median duration {took}")
    return lines
