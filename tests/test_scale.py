"""Big batches stay cheap: reading the status and finding the next job do not grow with the batch.

Slow (a 300,000-job store is built): deselected from ``make test``, run by ``make bench``.
Bounds are loose, for a loaded machine; bench/scale_bench.py prints the real figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from batcher.db import open_store, write
from batcher.importer import ImportReport, import_chunks
from batcher.jobqueue import START, Outcome, claim, record, start_run
from batcher.schema import runs
from batcher.status import batch_status, verify
from batcher.store import find_batch

pytestmark = pytest.mark.slow
JOBS = 300_000


def _best_of(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(n):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_status_and_the_next_job_cost_the_same_at_any_size(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from scale_bench import DEFAULTS, chunks

    engine = open_store(str(tmp_path / "big.db"))
    import_chunks(engine, ImportReport("bench", "bench"), "bench", chunks(JOBS), defaults=DEFAULTS)
    batch = find_batch(engine, "bench")
    assert _best_of(3, lambda: batch_status(engine, batch)) < 0.05

    # Half the batch answered: the claim goes straight to the first pending job.
    run_id = start_run(engine, batch.id, batch.name, 500, "http://x")
    after = START
    done = 0
    while done < JOBS // 2:
        got = claim(engine, batch.id, run_id, 5000, after)
        after = got[-1].place
        record(engine, run_id, [], [Outcome(j.id, "failed", {"error_type": "api_error", "status_code": 500})
                                    for j in got], False)
        done += len(got)
    with write(engine) as conn:  # the run dies
        conn.execute(runs.update().where(runs.c.id == run_id).values(heartbeat_at=0.0))
    assert _best_of(3, lambda: batch_status(engine, batch)) < 0.05
    started = time.perf_counter()
    next_run = start_run(engine, batch.id, batch.name, 500, "http://x")
    first = claim(engine, batch.id, next_run, 100)
    assert time.perf_counter() - started < 0.2
    assert first[0].line == JOBS // 2 + 1
    assert verify(engine, batch) == []
