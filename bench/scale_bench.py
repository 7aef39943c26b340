"""Big batches: status/batches latency, first request on resume, bytes per job.

Usage: python bench/scale_bench.py [--jobs N] [--answered N] [--answer-bytes B] [--resume] [--keep DB]

Builds a store of N jobs (default 1,000,000) through the store's own
functions: the importer's prepare and insert path for the jobs, then a run's
claim and record for the answers (``--answered``, default all; ~1 KB answers
by default). Then prints:

- ``status``, ``status --json`` and ``batches`` wall time through the CLI
  (median of 5; a tiny store's figure shows what is Python start-up), and the
  status read itself in-process, with the batch pending and answered;
- with ``--resume``: seconds from starting ``batcher run`` to its first request
  at the simulator, for a fresh batch (also under token caps, which must
  know that no job exceeds one), one left ``running`` by a run killed with
  SIGKILL, and one half done;
- bytes per job and what takes the room (SQLite's dbstat);
- last, ``batcher retry`` of the failed jobs, and again with none left;
  then ``batcher delete`` of the batch, and compacting the store (``Store.compact``).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import orjson

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from batcher.db import open_store  # noqa: E402
from batcher.importer import ImportReport, import_chunks  # noqa: E402
from batcher.jobqueue import START, AttemptRow, Outcome, claim, finish_run, record, start_run  # noqa: E402
from batcher.prepare import prepare_chunk  # noqa: E402
from batcher.status import batch_status  # noqa: E402
from batcher.store import find_batch  # noqa: E402
from batcher.validate import Defaults  # noqa: E402

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()
DEFAULTS = Defaults("claude-haiku-4.5", 256)
MODEL = "claude-haiku-4-5-20251001"
CHUNK = 20_000


def job_lines(start: int, stop: int, rng: random.Random) -> list[tuple[int, bytes]]:
    """~300-byte job lines, as bench/import_bench.py writes them."""
    out = []
    for i in range(start, stop):
        prompt = " ".join(rng.choice(WORDS) for _ in range(38))
        out.append((i + 1, orjson.dumps({"custom_id": f"job-{i}", "prompt": prompt, "temperature": 0.2,
                                         "topic": "bench"})))
    return out


def chunks(jobs: int) -> object:
    rng = random.Random(7)
    for start in range(0, jobs, CHUNK):
        yield prepare_chunk(job_lines(start, min(jobs, start + CHUNK), rng), DEFAULTS)


def answer(size: int, i: int) -> dict:
    text = ("lorem ipsum dolor sit amet " * (size // 27 + 1))[: max(1, size - 260)]
    return {"id": f"msg_{i:024d}", "type": "message", "role": "assistant", "model": MODEL,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 60, "output_tokens": 220, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}


def answer_jobs(engine, batch, n: int, size: int) -> None:
    """Answer ``n`` pending jobs the way a run does: claim, then record (1 in 50 fails)."""
    run_id = start_run(engine, batch.id, batch.name, 500, "http://bench")
    done, after = 0, START
    while done < n:
        claimed = claim(engine, batch.id, run_id, min(5000, n - done), after)
        if not claimed:
            break
        after = claimed[-1].place
        now = time.time()
        tries, outcomes = [], []
        for job in claimed:
            failed = job.id % 50 == 0
            tries.append(AttemptRow(job.id, now - 2, 1500 + job.id % 700, 529 if failed else 200,
                                    "overloaded_error" if failed else None, job.id % 3 == 0, 400 + job.id % 300, True))
            if failed:
                outcomes.append(Outcome(job.id, "failed", {"error": '{"type":"error","error":{"type":'
                                                           '"overloaded_error","message":"Overloaded"}}',
                                                           "error_type": "overloaded_error", "status_code": 529}))
            else:
                msg = answer(size, job.id)
                outcomes.append(Outcome(job.id, "succeeded", {
                    "response": orjson.dumps(msg).decode(), "model": MODEL, **msg["usage"], "latency_ms": 1500,
                    "streamed": job.id % 3 == 0, "ttft_ms": 400, "error": None, "error_type": None,
                    "status_code": None}))
        record(engine, run_id, tries, outcomes, True)
        done += len(claimed)
    finish_run(engine, run_id, "finished")


def cli_seconds(*args: str, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "batcher", *args], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def python_seconds(code: str, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def latencies(engine, db: str, label: str) -> None:
    batch = find_batch(engine, "bench")
    inside = []
    for _ in range(5):
        start = time.perf_counter()
        batch_status(engine, batch)
        inside.append(time.perf_counter() - start)
    print(f"  {label}: status {cli_seconds('status', '--db', db):.2f} s, status --json "
          f"{cli_seconds('status', '--json', '--db', db):.2f} s, batches {cli_seconds('batches', '--db', db):.2f} s "
          f"(CLI, median of 5); status read in-process {statistics.median(inside) * 1000:.1f} ms")


def first_request(db: str, sim, label: str, kill_after_running: bool = False, *options: str) -> None:
    """Seconds from starting `batcher run` (with ``options``) to the simulator's first request."""
    sim.reset()
    env = {**os.environ, "POE_API_KEY": "bench"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "batcher", "run", "bench", "--db", db, "--base-url", sim.base_url,
                             "--rpm", "6000", "--concurrency", "16", "-q", *options], env=env, cwd=os.path.dirname(os.path.abspath(db)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while sim.stats()["requests"] == 0:
        if proc.poll() is not None:
            raise SystemExit(f"run ended before sending ({label}): {proc.stderr.read()}")
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    if kill_after_running:
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGINT)
    proc.wait(60)
    print(f"  first request, {label}: {elapsed:.2f} s after start")


def store_part(engine, label: str) -> None:
    """What the store adds before a run's first request: take over (requeue), count, claim."""
    from batcher.jobqueue import batch_counts
    from batcher.schema import runs

    batch = find_batch(engine, "bench")
    # Leave 1,000 jobs claimed by a run that then dies, as a kill -9 would.
    dead = start_run(engine, batch.id, batch.name, 500, "http://bench")
    claim(engine, batch.id, dead, 1000)
    with engine.begin() as conn:
        conn.execute(runs.update().where(runs.c.id == dead).values(heartbeat_at=0.0))
    start = time.perf_counter()
    run_id = start_run(engine, batch.id, batch.name, 500, "http://bench")
    batch_counts(engine, batch.id)
    first = claim(engine, batch.id, run_id, 100)
    elapsed = time.perf_counter() - start
    finish_run(engine, run_id, "interrupted")
    print(f"  store's part before the first request, {label} (1,000 jobs left running by a dead run): "
          f"{elapsed * 1000:.1f} ms (first job claimed: line {first[0].line:,})")


def room(db: str, jobs: int) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = os.path.getsize(db)
    rows = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    cols = conn.execute("SELECT AVG(LENGTH(source)), AVG(LENGTH(body)), AVG(LENGTH(response)), "
                        "AVG(LENGTH(body_hash)), AVG(LENGTH(custom_id)) FROM jobs").fetchone()
    conn.close()
    print(f"  store: {size / 1e6:,.0f} MB = {size / jobs:,.0f} bytes per job; by table/index:")
    for name, used in rows[:8]:
        print(f"    {name:<28} {used / jobs:8,.0f} B/job")
    print("  average per job: source {:.0f} B, stored body {:.0f} B, answer {:.0f} B, body hash {:.0f} B, "
          "custom_id {:.0f} B".format(*(c or 0 for c in cols)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--answered", type=int, default=None, help="jobs to answer (default: all)")
    parser.add_argument("--answer-bytes", type=int, default=1000)
    parser.add_argument("--resume", action="store_true", help="also time the first request of resumed runs")
    parser.add_argument("--keep", help="build (or reuse) the store at this path instead of a temporary one")
    args = parser.parse_args()
    answered = args.jobs if args.answered is None else args.answered
    with tempfile.TemporaryDirectory() as tmp:
        tiny = os.path.join(tmp, "tiny.db")
        engine = open_store(tiny)
        import_chunks(engine, ImportReport("bench", "tiny"), "tiny", chunks(10), defaults=DEFAULTS)
        print(f"start-up alone: status on a 10-job store {cli_seconds('status', '--db', tiny):.2f} s, "
              f"loading the run's modules {python_seconds('import batcher.cli, batcher.runner, batcher.importer'):.2f} s"
              " (median of 5)")
        db = args.keep or os.path.join(tmp, "scale.db")
        engine = open_store(db)
        fresh = not find_batch_or_none(engine)
        print(f"{args.jobs:,} jobs ({'building' if fresh else 'reusing'} {db})")
        if fresh:
            start = time.perf_counter()
            report = import_chunks(engine, ImportReport("bench", "bench"), "bench", chunks(args.jobs), defaults=DEFAULTS)
            assert report.added == args.jobs, report
            print(f"  built in {time.perf_counter() - start:.0f} s")
        latencies(engine, db, "pending")
        if args.resume:
            from batcher.sim import SimulatorThread

            store_part(engine, "fresh")
            with SimulatorThread(latency=0.0) as sim:
                first_request(db, sim, "fresh batch")
                first_request(db, sim, "fresh batch, under both token caps", False,
                              "--max-input-tokens", "1000000000", "--max-output-tokens", "1000000000")
                first_request(db, sim, "after a run killed with SIGKILL", kill_after_running=True)
                first_request(db, sim, "left running by that killed run")
        if fresh and answered:
            start = time.perf_counter()
            answer_jobs(engine, find_batch(engine, "bench"), answered if not args.resume else answered // 2,
                        args.answer_bytes)
            print(f"  answered in {time.perf_counter() - start:.0f} s")
        latencies(engine, db, "answered")
        if args.resume:
            from batcher.sim import SimulatorThread

            store_part(engine, "half done")
            with SimulatorThread(latency=0.0) as sim:
                first_request(db, sim, "half done")
            answer_jobs(engine, find_batch(engine, "bench"), answered - answered // 2, args.answer_bytes)
        counts = batch_status(engine, find_batch(engine, "bench"), detail=False)
        print(f"  {counts['succeeded']:,} succeeded, {counts['failed']:,} failed, {counts['pending']:,} pending")
        room(db, args.jobs)
        if counts["failed"] and not args.keep:  # last: it changes the batch
            took = cli_seconds("retry", "bench", "--db", db, repeat=1)
            print(f"  retry of the {counts['failed']:,} failed jobs: {took:.2f} s; again, with none left: "
                  f"{cli_seconds('retry', 'bench', '--db', db):.2f} s (CLI)")
        engine.dispose()
        if not args.keep:  # last of all: it deletes the batch
            size = os.path.getsize(db)
            took = cli_seconds("delete", "bench", "--db", db, "--yes", repeat=1)
            compacting = python_seconds(f"import batcher; batcher.Store({db!r}).compact()", repeat=1)
            print(f"  delete of the batch: {took:.2f} s; then compacting the store: {compacting:.2f} s, "
                  f"{size / 1e6:,.0f} MB to {os.path.getsize(db) / 1e6:,.1f} MB")


def find_batch_or_none(engine):
    from batcher.errors import UsageError

    try:
        return find_batch(engine, "bench")
    except UsageError:
        return None


if __name__ == "__main__":
    main()
