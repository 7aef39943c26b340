"""A long run against a fast simulator: RSS and store costs as jobs pile up.

Usage: python bench/run_bench.py [--jobs N] [--every S] [--concurrency C] [--store-only]
(default 100,000 jobs; --jobs 1000000 for the full million)

Imports N ~300-byte jobs through the store's own import path, then runs them
in this process against the simulator (a separate process, no latency, a
limit far above the pace) and prints, every S seconds: jobs done, the run's
RSS, jobs/s, and the median cost of a claim, of a record transaction and of
a record per job in that interval. Flat RSS and flat costs from start to end
mean nothing grows with the jobs already done. ``--store-only`` drives the
run's claim and record directly (no HTTP), 100 jobs a commit, so a million
jobs take minutes instead of hours, and prints the same figures per tenth.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import anyio
import orjson

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import batcher.claims as claims_module  # noqa: E402
import batcher.writer as writer_module  # noqa: E402
from batcher.db import open_store  # noqa: E402
from batcher.importer import ImportReport, import_chunks  # noqa: E402
from batcher.runner import RunConfig, Runner, Snapshot  # noqa: E402
from batcher.sim import SimulatorProcess  # noqa: E402
from batcher.store import find_batch  # noqa: E402
from scale_bench import DEFAULTS, chunks  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Timed:
    """Wraps a store function, keeping each call's seconds (and its size) since the last report."""

    def __init__(self, fn: Callable[..., Any], size: Callable[..., int]) -> None:
        self.fn, self.size = fn, size
        self.calls: list[tuple[float, int]] = []

    def __call__(self, *args: Any) -> Any:
        start = time.perf_counter()
        result = self.fn(*args)
        self.calls.append((time.perf_counter() - start, self.size(*args)))
        return result

    def take(self) -> list[tuple[float, int]]:
        calls, self.calls = self.calls, []
        return calls


def store_only(engine: Any, jobs: int, every: int) -> None:
    """The run's store work alone, at full speed: claim 100, record them in one commit, over every job."""
    from batcher.jobqueue import START, AttemptRow, Outcome, claim, finish_run, record, start_run
    from scale_bench import answer

    batch = find_batch(engine, "bench")
    run_id = start_run(engine, batch.id, batch.name, 500, "http://bench")
    after, done, costs = START, 0, {"claim": [], "record": []}
    print(f"{'done':>9} {'RSS MB':>7} {'claim ms':>9} {'record ms':>10}   (100 jobs a claim and a commit)")
    while True:
        start = time.perf_counter()
        claimed = claim(engine, batch.id, run_id, 100, after)
        costs["claim"].append(time.perf_counter() - start)
        if not claimed:
            break
        after = claimed[-1].place
        now = time.time()
        msg = answer(1000, 1)
        values = {"response": orjson.dumps(msg).decode(), "model": msg["model"], **msg["usage"], "latency_ms": 900,
                  "streamed": False, "ttft_ms": None, "error": None, "error_type": None, "status_code": None}
        start = time.perf_counter()
        record(engine, run_id, [AttemptRow(j.id, now, 900, 200, None, False, None, True) for j in claimed],
               [Outcome(j.id, "succeeded", values) for j in claimed], True)
        costs["record"].append(time.perf_counter() - start)
        done += len(claimed)
        if done % every == 0:
            print(f"{done:9,} {rss_mb():7.0f} {statistics.median(costs['claim']) * 1000:9.2f} "
                  f"{statistics.median(costs['record']) * 1000:10.2f}", flush=True)
            costs = {"claim": [], "record": []}
    finish_run(engine, run_id, "finished")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--store-only", action="store_true",
                        help="drive claim and record directly, without HTTP, to reach a million jobs quickly")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "run.db")
        engine = open_store(db)
        start = time.perf_counter()
        import_chunks(engine, ImportReport("bench", "bench"), "bench", chunks(args.jobs), defaults=DEFAULTS)
        print(f"{args.jobs:,} jobs imported in {time.perf_counter() - start:.0f} s")
        if args.store_only:
            store_only(engine, args.jobs, max(100, args.jobs // 10 // 100 * 100))
            return
        claims = Timed(claims_module.claim, lambda *a: a[3])  # what the run's Claims calls
        records = Timed(writer_module.record, lambda *a: len(a[3]))
        claims_module.claim, writer_module.record = claims, records
        sim = SimulatorProcess(latency=0, rpm=100_000_000).start()
        try:
            config = RunConfig(rpm=1_000_000, concurrency=args.concurrency, base_url=sim.base_url,
                               handle_signals=False)
            runner = Runner(engine, find_batch(engine, "bench"), "bench-key", config)
            began = time.monotonic()
            last = {"at": began, "done": 0}
            print(f"{'elapsed':>8} {'done':>9} {'RSS MB':>7} {'jobs/s':>7} {'claim ms':>9} {'record ms':>10} "
                  f"{'record us/job':>14}")

            def report(snap: Snapshot) -> None:
                now = time.monotonic()
                if now - last["at"] < args.every and snap.done < snap.total:
                    return
                claimed, recorded = claims.take(), records.take()
                rate = (snap.done - last["done"]) / max(now - last["at"], 1e-9)
                per_job = [t / n * 1e6 for t, n in recorded if n]
                print(f"{now - began:8.0f} {snap.done:9,} {rss_mb():7.0f} {rate:7,.0f} "
                      f"{_median_ms(claimed):9.2f} {_median_ms(recorded):10.2f} "
                      f"{statistics.median(per_job) if per_job else 0:14.0f}", flush=True)
                last.update(at=now, done=snap.done)

            summary = anyio.run(runner.run, report)
            print(f"{summary.succeeded:,} answered in {summary.elapsed_s:.0f} s; final RSS {rss_mb():.0f} MB")
        finally:
            sim.stop()
            engine.dispose()


def _median_ms(calls: list[tuple[float, int]]) -> float:
    return statistics.median(t for t, _ in calls) * 1000 if calls else 0.0


if __name__ == "__main__":
    main()
