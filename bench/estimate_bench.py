"""Estimate throughput and memory against import, on the same large job file.

Usage: python bench/estimate_bench.py [LINES]   (default 1,000,000 ~300-byte jobs)
Runs the real CLI in subprocesses so each peak RSS is that command's alone:
first `batcher estimate FILE --json`, then `batcher import FILE` for comparison,
then `batcher estimate BATCH` of the batch just imported (every job unfinished:
from its import's sums), whose figures must be the file's, and again once a job
has finished (every other job costed, by forked workers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from import_bench import write_jobs

DEFAULTS = ["--model", "claude-haiku-4.5", "--max-tokens", "256"]


def timed(cmd: list[str], out: str = os.devnull) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one command run to completion (its worker processes not included)."""
    start = time.perf_counter()
    with open(out, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(cmd[2:4])} failed: {proc.stderr.read().strip() if proc.stderr else ''}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.jsonl")
        size = write_jobs(path, lines)
        file_json, batch_json, db = (os.path.join(tmp, name) for name in ("file.json", "batch.json", "b.db"))
        est_s, est_mb = timed([sys.executable, "-m", "batcher", "estimate", path, "--json", *DEFAULTS], file_json)
        imp_s, imp_mb = timed([sys.executable, "-m", "batcher", "import", path, "--db", db, *DEFAULTS])
        print(f"estimate: {lines:,} lines ({size / lines:.0f} B/line) in {est_s:.1f} s = {lines / est_s:,.0f} lines/s, "
              f"peak RSS {est_mb:.0f} MB; import of the same file: {lines / imp_s:,.0f} lines/s, "
              f"peak RSS {imp_mb:.0f} MB (target: estimate at least as fast)")
        command = [sys.executable, "-m", "batcher", "estimate", "bench", "--db", db, "--json"]
        bat_s, bat_mb = timed(command, batch_json)
        with open(file_json, "rb") as f, open(batch_json, "rb") as g:
            same = {k: v for k, v in json.load(f).items() if k != "source"} == {
                k: v for k, v in json.load(g).items() if k != "source"}
        print(f"estimate of the imported batch (from its import's sums): {bat_s:.2f} s, peak RSS {bat_mb:.0f} MB; "
              f"figures {'the same as' if same else 'DIFFERENT FROM'} the file's")
        cancel_first_job(db)  # a job finished: the others are costed one by one
        job_s, job_mb = timed(command)
        print(f"estimate once a job has finished (job by job): {job_s:.1f} s = {(lines - 1) / job_s:,.0f} jobs/s, "
              f"peak RSS {job_mb:.0f} MB")


def cancel_first_job(db: str) -> None:
    from batcher.db import open_store
    from batcher.manage import cancel_jobs
    from batcher.schema import jobs
    from batcher.store import find_batch

    engine = open_store(db)
    assert cancel_jobs(engine, find_batch(engine, "bench"), "pending", jobs.c.line == 1) == 1
    engine.dispose()


if __name__ == "__main__":
    main()
