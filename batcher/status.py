"""What a batch looks like now: counts by status and totals.

A pure reader of the store, safe while a run is going (WAL readers do not
block the writer).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from .schema import jobs
from .store import Batch, status_counts


def batch_status(engine: Engine, batch: Batch) -> dict[str, Any]:
    """One object: batch name, total and a count per status, token totals."""
    with engine.connect() as conn:
        counts = status_counts(conn, batch.id)
        tokens = conn.execute(
            select(func.coalesce(func.sum(jobs.c.input_tokens), 0), func.coalesce(func.sum(jobs.c.output_tokens), 0),
                   func.coalesce(func.sum(jobs.c.attempts), 0))
            .where(jobs.c.batch_id == batch.id)
        ).one()
    return {
        "batch": batch.name,
        "file": batch.source,
        "created_at": batch.created_at,
        "total": sum(counts.values()),
        **counts,
        "attempts": tokens[2],
        "input_tokens": tokens[0],
        "output_tokens": tokens[1],
    }
