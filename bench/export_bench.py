"""Export throughput and memory: lines/s and peak RSS for a large finished batch.

Usage: python bench/export_bench.py [JOBS]   (default 200,000 jobs)
The batch is built with direct SQL inserts (realistic ~1 KB answers, some
failures, cancellations and pending jobs); each format is then exported by
the real CLI in a subprocess (figures include start-up and the final fsync;
the peak RSS is the export's alone), then twice in-process: as the export
decides (forked workers for a big batch) and in one process, for what the
workers gain within the same run.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from typing import Any

import orjson

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from batcher import _export_workers as workers  # noqa: E402
from batcher import tally  # noqa: E402
from batcher.db import open_store  # noqa: E402
from batcher.export import export_batch  # noqa: E402
from batcher.store import find_batch  # noqa: E402

WORDS = ("the of and to in is that for it as with on be by this are from at or an was which can "
         "model answer question result detail example careful point factor scale approach trade").split()
MODEL = "claude-haiku-4-5-20251001"
CHUNK = 5000


def _texts(rng: random.Random, n: int = 512) -> list[str]:
    """A pool of answer texts of 120-220 words: building one per job is the slow part."""
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(120, 220))).capitalize() + "." for _ in range(n)]


TEXTS = _texts(random.Random(1))


def _answer(rng: random.Random, i: int) -> tuple[str, int, int]:
    text = TEXTS[i % len(TEXTS)]
    words = text.count(" ") + 1
    usage = {"input_tokens": rng.randint(20, 80), "output_tokens": words + 20,
             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    message = {"id": f"msg_{i:024d}", "type": "message", "role": "assistant", "model": MODEL,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": usage}
    return orjson.dumps(message).decode(), usage["input_tokens"], usage["output_tokens"]


def _job(rng: random.Random, batch_id: int, i: int, jobs: int,
         now: float) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """Job i's row (90% answered, 7% failed, 2% canceled, 1% pending) and its attempts."""
    prompt = f"Question {i}: " + TEXTS[(i * 7) % len(TEXTS)][:150]
    source = orjson.dumps({"custom_id": f"job-{i}", "prompt": prompt, "topic": "bench"}).decode()
    body = orjson.dumps({"model": "claude-haiku-4.5", "max_tokens": 512,
                         "messages": [{"role": "user", "content": prompt}]}).decode()
    row: dict[str, Any] = dict(
        id=i + 1, batch_id=batch_id, import_id=1, line=i + 1, custom_id=f"job-{i}", body=body,
        body_hash=f"{i:032x}", source=source, status="pending", attempts=0, created_at=now, updated_at=now,
        finished_at=None, error=None, error_type=None, status_code=None, response=None, model=None,
        input_tokens=None, output_tokens=None, cache_creation_input_tokens=None, cache_read_input_tokens=None,
        latency_ms=None, streamed=None, ttft_ms=None)
    started = now - 7200 + i * 3600 / jobs
    roll = rng.random()
    if roll < 0.90:
        response, tin, tout = _answer(rng, i)
        latency, streamed = rng.randint(800, 9000), i % 3 == 0
        ttft = rng.randint(200, 900) if streamed else None
        row.update(status="succeeded", attempts=1, finished_at=started + latency / 1000, response=response,
                   model=MODEL, input_tokens=tin, output_tokens=tout, cache_creation_input_tokens=0,
                   cache_read_input_tokens=0, latency_ms=latency, streamed=streamed, ttft_ms=ttft)
        return row, [(i + 1, 1, started, latency, 200, None, streamed, ttft)]
    if roll < 0.97:
        error = orjson.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                              "request_id": f"req_{i:020d}"}).decode()
        row.update(status="failed", attempts=3, finished_at=started + 5, error=error,
                   error_type="overloaded_error", status_code=529)
        return row, [(i + 1, 1, started + k, 300, 529, "overloaded_error", False, None) for k in range(3)]
    if roll < 0.99:
        row.update(status="canceled", finished_at=now)
    return row, []


def build(db: str, jobs: int) -> None:
    """A batch called ``bench`` of ``jobs`` jobs, written with bulk inserts."""
    engine = open_store(db)
    rng, now = random.Random(7), time.time()
    columns = None
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO batches (id, name, source, created_at) VALUES (1, 'bench', 'bench.jsonl', ?)",
                             (now,))
        conn.exec_driver_sql("INSERT INTO imports (id, batch_id, source, at, added, unchanged, rejected) "
                             "VALUES (1, 1, 'bench.jsonl', ?, ?, 0, 0)", (now, jobs))
        for start in range(0, jobs, CHUNK):
            rows, tries = [], []
            for i in range(start, min(start + CHUNK, jobs)):
                row, attempts = _job(rng, 1, i, jobs, now)
                rows.append(row)
                tries.extend(attempts)
            if columns is None:
                columns = list(rows[0])
                insert = (f"INSERT INTO jobs ({', '.join(columns)}) "
                          f"VALUES ({', '.join('?' * len(columns))})")
            conn.exec_driver_sql(insert, [tuple(r[c] for c in columns) for r in rows])
            if tries:
                conn.exec_driver_sql("INSERT INTO attempts (job_id, run_id, started_at, latency_ms, status_code, "
                                     "error_type, streamed, ttft_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", tries)
        tally.rebuild(conn, 1)
    engine.dispose()


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.db")
        start = time.perf_counter()
        build(db, jobs)
        print(f"built {jobs:,} jobs in {time.perf_counter() - start:.1f} s ({os.path.getsize(db) / 1e6:.0f} MB)")
        engine = open_store(db)
        batch = find_batch(engine, "bench")
        for fmt in ("results", "text", "merged"):
            out = os.path.join(tmp, f"bench.{fmt}.jsonl")
            cmd = [sys.executable, "-m", "batcher", "export", "bench", "--db", db, "--format", fmt, "-o", out]
            elapsed, peak_kb = measure(cmd)
            with open(out, "rb") as handle:
                lines = sum(1 for _ in handle)
            inside = in_process(engine, batch, out, fmt)
            workers.FORK_FROM_LINES, forked_from = 1 << 62, workers.FORK_FROM_LINES
            alone = in_process(engine, batch, out, fmt)
            workers.FORK_FROM_LINES = forked_from
            print(f"export --format {fmt}: {lines:,} lines ({os.path.getsize(out) / lines:.0f} B/line); "
                  f"CLI {elapsed:.2f} s = {lines / elapsed:,.0f} lines/s (target >= 100,000); CLI peak RSS "
                  f"{peak_kb / 1024:.0f} MB; in-process {lines / inside:,.0f} lines/s, in one process "
                  f"{lines / alone:,.0f} lines/s (x{alone / inside:.2f} with workers)")
            os.unlink(out)
        engine.dispose()


def in_process(engine: Any, batch: Any, out: str, fmt: str) -> float:
    """Seconds to export ``batch`` from this process (workers as the export decides)."""
    start = time.perf_counter()
    export_batch(engine, batch, out, fmt, force=True)
    return time.perf_counter() - start


#: Runs a command as its only child, so RUSAGE_CHILDREN is that command's alone.
_MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def measure(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in KB) of one run of ``cmd``."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], check=True, capture_output=True, text=True)
    elapsed, peak = done.stdout.split()
    return float(elapsed), int(peak)


if __name__ == "__main__":
    main()
