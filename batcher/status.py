"""What a batch looks like now: counts, failures, tokens, pace and the live run.

A pure reader of the store, safe while a run is going (WAL readers do not
block the writer). Every figure comes from the batch's tally (see
:mod:`batcher.tally`) or an index lookup, so a batch of ten million jobs
answers as fast as one of ten.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, Engine, select

from . import tally
from ._render import error_parts
from .liveness import run_is_alive, silent_for
from .schema import in_status, jobs, runs
from .store import Batch


def batch_status(engine: Engine, batch: Batch, now: float | None = None, detail: bool = True) -> dict[str, Any]:
    """One JSON-ready object describing ``batch``, read from one snapshot.

    Keys: batch, file, created_at, total, a count per status, reused (of the
    succeeded, answers reused from an identical request), attempts (the
    jobs' used attempt budgets), token totals (reused answers included); then attempts_made (HTTP
    requests), models, failures (by error type and HTTP status, with an
    example), started_at/ended_at, achieved_rpm, run (the live run, with
    rpm_limit, pace_rpm and pace_reason (the pace the server allows now and
    why it is under rpm_limit, None when it is not), current_rpm, in_flight,
    eta_s, and silent_s (seconds since its last word, when it has written
    none for a while: it waits for its store to take writes, or is
    stopped); else None) and streaming (medians; None
    when nothing was streamed). ``detail=False`` stops after the token
    totals, for listings of many batches. Times are Unix seconds.
    """
    now = time.time() if now is None else now
    with engine.connect() as conn, conn.begin():
        kept = tally.read(conn, batch.id)
        counts = kept.counts
        summary = {
            "batch": batch.name, "file": batch.source, "created_at": batch.created_at,
            "total": kept.total, **counts, "reused": kept.reused, "attempts": kept.budget, **kept.tokens(),
        }
        if not detail:
            return summary
        failures = _failures(conn, batch.id, kept)
        run = _live_run(conn, batch.id, now)
    unfinished = counts["pending"] + counts["running"]
    ended_at = kept.last_finished_at if not unfinished and kept.last_finished_at else None
    started_at = kept.first_request_at
    # Pace over the time requests were being sent: up to now while a run
    # is live, else up to the end of the last attempt.
    achieved = _per_minute(kept.requests, started_at, now if run else kept.last_request_end)
    if run:
        run["in_flight"] = counts["running"]
        recent = run["current_rpm"]
        run["eta_s"] = round(unfinished / recent * 60.0, 1) if recent else None
    return {
        **summary,
        "attempts_made": kept.requests,
        "models": _models(kept),
        "failures": failures,
        "started_at": started_at,
        "ended_at": ended_at,
        "achieved_rpm": achieved,
        "run": run,
        "streaming": _streaming(kept) if kept.streamed_ok else None,
    }


def verify(engine: Engine, batch: Batch) -> list[str]:
    """Recount the batch from its rows and say where the tally disagrees (empty: it agrees).

    Reads every row of the batch: seconds for a million jobs. Status itself
    never needs it.
    """
    with engine.connect() as conn, conn.begin():
        return tally.differences(tally.read(conn, batch.id), tally.recount(conn, batch.id))


def _models(kept: tally.Tally) -> list[dict[str, Any]]:
    """Answers and tokens per named model, most answers first."""
    models = [{"model": model, **figures} for model, figures in kept.models.items() if model != tally.NO_MODEL]
    models.sort(key=lambda m: (-m["succeeded"], m["model"]))
    return models


def _streaming(kept: tally.Tally) -> dict[str, Any]:
    return {
        "streamed": kept.streamed_ok,
        "median_ttft_ms": kept.median("ttft"),
        "median_duration_ms": kept.median("duration"),
    }


def _failures(conn: Connection, batch_id: int, kept: tally.Tally) -> list[dict[str, Any]]:
    """Failed jobs by error type and HTTP status, most frequent first, each with one message.

    The counts are the tally's; each example is one failed job found through
    the partial index on failed jobs.
    """
    groups = sorted(kept.failures.items(), key=lambda g: (-g[1], g[0][0] or "", g[0][1] or 0))
    out = []
    for (error_type, status_code), n in groups:
        query = select(jobs.c.error).where(
            jobs.c.batch_id == batch_id, in_status("failed"),
            jobs.c.error_type.is_(None) if error_type is None else jobs.c.error_type == error_type,
            jobs.c.status_code.is_(None) if status_code is None else jobs.c.status_code == status_code,
        ).order_by(jobs.c.id).limit(1)
        stored = conn.execute(query).scalar()
        out.append({"error_type": error_type, "status_code": status_code, "count": n,
                    "example": error_parts(stored, error_type)[1] or None})
    return out


def _live_run(conn: Connection, batch_id: int, now: float) -> dict[str, Any] | None:
    """The run sending this batch now: not ended, and alive (see :func:`batcher.liveness.run_is_alive`)."""
    row = conn.execute(
        select(runs.c.id, runs.c.pid, runs.c.host, runs.c.started_at, runs.c.heartbeat_at, runs.c.rpm,
               runs.c.pace_rpm, runs.c.pace_reason, runs.c.recent_rpm)
        .where(runs.c.batch_id == batch_id, runs.c.ended_at.is_(None))
        .order_by(runs.c.heartbeat_at.desc()).limit(1)
    ).first()
    if row is None or not run_is_alive(row, now):
        return None
    silent = silent_for(row, now)
    return {"id": row.id, "pid": row.pid, "host": row.host, "started_at": row.started_at,
            "heartbeat_at": row.heartbeat_at, "rpm_limit": row.rpm, "pace_rpm": row.pace_rpm,
            "pace_reason": row.pace_reason, "current_rpm": 0 if silent else round(row.recent_rpm or 0),
            "silent_s": None if silent is None else round(silent)}


def pace_against(pace_rpm: float, max_rpm: float) -> str:
    """The pace the server allows now against --rpm: ``1,740/3,000 rpm``."""
    return f"{pace_rpm:,.0f}/{max_rpm:,.0f} rpm"


def _per_minute(n: int, start: float | None, end: float | None) -> float | None:
    """Requests per minute from the first start to the last end: n requests span
    n - 1 intervals of the pace (and the last one's answer), so n - 1 of them are
    counted, and a short run does not read above its --rpm."""
    if start is None or end is None or n < 2 or end <= start:
        return None
    return round((n - 1) * 60.0 / (end - start), 1)


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
    if s["reused"]:
        lines.append(label("reused") + f"{s['reused']:,} of the succeeded answered by an identical request's "
                     "answer (run --reuse; no request sent)")
    lines.append(label("attempts") + f"{s['attempts_made']:,} requests sent")
    lines.append(label("tokens") + f"in {s['input_tokens']:,}, out {s['output_tokens']:,}; cache write "
                 f"{s['cache_creation_input_tokens']:,}, read {s['cache_read_input_tokens']:,}")
    if len(s["models"]) > 1:
        for m in s["models"]:
            lines.append(label("") + f"{m['model']}: {m['succeeded']:,} answer(s), in {m['input_tokens']:,}, "
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
        if run["silent_s"] is not None:
            lines.append(label("running") + f"pid {run['pid']} on {run['host']}: silent for "
                         f"{_duration(run['silent_s'])}, waiting for its store to take writes (full, or locked by "
                         f"another process) or stopped; {run['in_flight']:,} in flight")
        else:
            lines.append(label("running") + f"pid {run['pid']} on {run['host']}: {run['current_rpm']:,} "
                         f"requests/min now, {run['in_flight']:,} in flight, ETA {eta}")
        if run["pace_reason"] and run["pace_rpm"] is not None and run["rpm_limit"]:
            lines.append(label("pace") + f"{run['pace_reason']}: {pace_against(run['pace_rpm'], run['rpm_limit'])}")
    elif s["running"]:
        # Jobs a killed run held: nobody is sending them, whatever the count says.
        lines.append(label("running") + f"no live run: the {s['running']:,} running job(s) a stopped run left "
                     "go back to pending when the next run starts")
    st = s["streaming"]
    if st:
        ttft = _ms(st["median_ttft_ms"]) if st["median_ttft_ms"] is not None else "-"
        took = _ms(st["median_duration_ms"]) if st["median_duration_ms"] is not None else "-"
        lines.append(label("streaming") + f"{st['streamed']:,} answer(s): median first token {ttft}, "
                     f"median duration {took}")
    return lines
