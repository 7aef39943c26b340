"""Batches in every state, written straight into the store, for the result-side tests.

A job file is imported with the real importer; jobs are then set succeeded,
failed, canceled or running with the columns a run records (answer, tokens,
error, attempts rows), so status, export, retry and cancel are tested without
the runner.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import orjson
from sqlalchemy import Engine, select

from batcher import tally
from batcher.db import open_store, write
from batcher.importer import import_file
from batcher.schema import attempts, jobs
from batcher.store import Batch, find_batch
from batcher.validate import Defaults

MODEL = "claude-haiku-4-5-20251001"
#: What the shorthand lines leave out.
DEFAULTS = Defaults(model="claude-haiku-4.5", max_tokens=64)


def job_line(i: int) -> dict[str, Any]:
    """Line i of a test job file: alternating Anthropic batch lines and the shorthand."""
    if i % 2:
        return {"custom_id": f"job-{i}", "prompt": f"Question {i}?", "topic": f"t{i % 3}"}
    return {"custom_id": f"job-{i}", "params": {"model": "claude-haiku-4.5", "max_tokens": 64,
                                                "messages": [{"role": "user", "content": f"Question {i}?"}]}}


def write_job_file(path: Path, numbers: Iterable[int]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(job_line(i)) + b"\n" for i in numbers))
    return path


def make_batch(tmp_path: Path, n: int = 10, name: str = "b") -> tuple[Engine, Batch, str]:
    """A store at tmp_path/store.db holding batch ``name`` of n pending jobs job-1..job-n."""
    db = str(tmp_path / "store.db")
    engine = open_store(db)
    path = write_job_file(tmp_path / f"{name}.jsonl", range(1, n + 1))
    import_file(engine, str(path), name, DEFAULTS)
    return engine, find_batch(engine, name), db


def message(custom_id: str, text: str | None = None, model: str = MODEL, tokens: tuple[int, int] = (12, 30),
            cache: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """An Anthropic Message as the API returns it."""
    return {
        "id": f"msg_{custom_id.replace('-', '')}", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text if text is not None else f"Answer to {custom_id}."}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1],
                  "cache_creation_input_tokens": cache[0], "cache_read_input_tokens": cache[1]},
    }


def _job_id(conn: Any, batch: Batch, custom_id: str) -> int:
    query = select(jobs.c.id).where(jobs.c.batch_id == batch.id, jobs.c.custom_id == custom_id)
    return conn.execute(query).scalar_one()


def succeed(engine: Engine, batch: Batch, custom_id: str, *, msg: dict[str, Any] | None = None,
            streamed: bool = False, ttft_ms: int | None = None, latency_ms: int = 1200,
            started_at: float | None = None, failed_before: int = 0) -> dict[str, Any]:
    """Record a successful answer (after ``failed_before`` overloaded attempts)."""
    msg = msg or message(custom_id)
    started_at = time.time() - 5 if started_at is None else started_at
    usage = msg["usage"]
    with write(engine) as conn:
        job_id = _job_id(conn, batch, custom_id)
        for k in range(failed_before):
            conn.execute(attempts.insert().values(job_id=job_id, run_id=1, started_at=started_at - 10 + k,
                                                  latency_ms=300, status_code=529, error_type="overloaded_error",
                                                  streamed=False))
        conn.execute(attempts.insert().values(job_id=job_id, run_id=1, started_at=started_at, latency_ms=latency_ms,
                                              status_code=200, error_type=None, streamed=streamed, ttft_ms=ttft_ms))
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(
            status="succeeded", attempts=failed_before + 1, run_id=1, response=orjson.dumps(msg).decode(),
            model=msg["model"], input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"],
            cache_creation_input_tokens=usage["cache_creation_input_tokens"],
            cache_read_input_tokens=usage["cache_read_input_tokens"], latency_ms=latency_ms, streamed=streamed,
            ttft_ms=ttft_ms, finished_at=started_at + latency_ms / 1000, updated_at=time.time()))
        tally.rebuild(conn, batch.id)
    return msg


def fail(engine: Engine, batch: Batch, custom_id: str, error_type: str = "invalid_request_error",
         status_code: int | None = 400, text: str = "max_tokens: must be positive", request_id: str | None = "req_1",
         tries: int = 1, started_at: float | None = None, stored: str | None = None) -> None:
    """Record a failed job after ``tries`` attempts, its error in Anthropic's format."""
    started_at = time.time() - 5 if started_at is None else started_at
    error = stored if stored is not None else orjson.dumps(
        {"type": "error", "error": {"type": error_type, "message": text}, "request_id": request_id}).decode()
    with write(engine) as conn:
        job_id = _job_id(conn, batch, custom_id)
        for k in range(tries):
            conn.execute(attempts.insert().values(job_id=job_id, run_id=1, started_at=started_at + k, latency_ms=200,
                                                  status_code=status_code, error_type=error_type, streamed=False))
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(
            status="failed", attempts=tries, run_id=1, error=error, error_type=error_type, status_code=status_code,
            finished_at=started_at + tries, updated_at=time.time()))
        tally.rebuild(conn, batch.id)


def set_status(engine: Engine, batch: Batch, custom_id: str, status: str) -> None:
    """Mark a job canceled (finished now) or running (claimed by run 1)."""
    now = time.time()
    with write(engine) as conn:
        conn.execute(jobs.update().where(jobs.c.batch_id == batch.id, jobs.c.custom_id == custom_id).values(
            status=status, run_id=1, updated_at=now, finished_at=now if status == "canceled" else None))
        tally.rebuild(conn, batch.id)


def mixed_batch(tmp_path: Path) -> tuple[Engine, Batch, str]:
    """Ten jobs: 1, 2, 5, 8 succeeded; 3, 6, 9 failed; 4 canceled; 7 pending; 10 running."""
    engine, batch, db = make_batch(tmp_path, 10)
    for i in (1, 2, 5, 8):
        succeed(engine, batch, f"job-{i}")
    fail(engine, batch, "job-3")
    fail(engine, batch, "job-6", "overloaded_error", 529, "Overloaded", "req_6", tries=6)
    fail(engine, batch, "job-9", "connection_error", None, "Connection reset by peer", None, tries=6)
    set_status(engine, batch, "job-4", "canceled")
    set_status(engine, batch, "job-10", "running")
    return engine, batch, db


def statuses(engine: Engine, batch: Batch) -> dict[str, str]:
    """custom_id -> status of every job in the batch."""
    with engine.connect() as conn:
        rows = conn.execute(select(jobs.c.custom_id, jobs.c.status).where(jobs.c.batch_id == batch.id))
        return dict(rows.all())
