"""Pacing under the rate limit, measured on the simulator over real HTTP.

Usage: python bench/rate_bench.py [--rpm 3000] [--jobs 600] [--only NAME ...]

Each scenario is a real ``batcher run`` subprocess (two for ``two-runs``)
against a ``batcher simulate`` subprocess, answers taking 0.05-0.2 s; where
named, the script a user would write without batcher (``naive_sdk.py``: the
official SDK and a semaphore of 64) runs against the same server settings
right after, for comparison:

  fast        the server allows exactly --rpm: share of --rpm achieved,
              429s, the most starts in any window of W s against rpm*W/60+1;
              then a key the server refuses: requests spent before the stop
  upstream    the server allows twice --rpm but refuses 5% at random with
              429s whose headers show room: share of --rpm, jobs failed
  limit       the server allows 60 per 2 s (say the key is shared with
              another program) and sends its rate-limit headers
  no-headers  the same without rate-limit headers nor retry-after
  two-runs    two runs at once on one key, each with its own store, each
              told --rpm; the server allows 100 per 2 s

"of allowed" is requests the server accepted per second over the sending
span (first to last arrival) divided by what it allows; "refused" is the
share of requests answered 429; "wall" is the whole command, start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import orjson

from batcher.sim import SimulatorProcess

KEY = "bench-key"
LATENCY = (0.05, 0.2)
HERE = os.path.dirname(os.path.abspath(__file__))


def max_in_window(times: list[float], width: float) -> int:
    """The most arrivals in any half-open window [t, t + width)."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def write_jobs(path: str, n: int, tag: str = "") -> str:
    with open(path, "wb") as out:
        for i in range(n):
            out.write(orjson.dumps({"custom_id": f"r{i}", "prompt": f"Question {tag}{i}?"}) + b"\n")
    return path


def start_run(sim: SimulatorProcess, jobs: str, rpm: float, db: str, key: str = KEY) -> subprocess.Popen[str]:
    env = {**os.environ, "POE_API_KEY": key}
    cmd = [sys.executable, "-m", "batcher", "run", jobs, "--db", db, "--rpm", str(rpm), "--base-url",
           sim.base_url, "--model", "claude-haiku-4.5", "--max-tokens", "64", "--quiet"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], started: float) -> tuple[float, int, str]:
    out, err = proc.communicate()
    return time.perf_counter() - started, proc.returncode, (out + err).strip()


def run_batcher(sim: SimulatorProcess, jobs: str, rpm: float, db: str, key: str = KEY) -> tuple[float, int, str]:
    started = time.perf_counter()
    return finish(start_run(sim, jobs, rpm, db, key), started)


def run_naive(sim: SimulatorProcess, jobs: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.join(HERE, "naive_sdk.py"), jobs, "--base-url", sim.base_url],
                          env={**os.environ, "POE_API_KEY": KEY}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    return wall, json.loads(lines[-1]) if lines else {"succeeded": 0, "failed": -1, "error": done.stderr[-500:]}


def served(stats: dict[str, Any], allowed_per_s: float) -> str:
    """Accepted per second over the sending span, refused share, as one phrase."""
    arrivals, accepted = sorted(stats["arrivals"]), sorted(stats["accepted"])
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 1.0
    rate = (len(accepted) - 1) / span if len(accepted) > 1 else 0.0
    refused = stats.get("status_429", 0)
    return (f"{60 * rate:,.0f}/min accepted = {rate / allowed_per_s:.2f} of allowed over {span:.1f} s; "
            f"refused {refused}/{stats['requests']} = {100 * refused / max(stats['requests'], 1):.1f}%")


def scenario_fast(rpm: float, n: int, tmp: str) -> None:
    window = 6.0
    jobs = write_jobs(os.path.join(tmp, "fast.jsonl"), n)
    with SimulatorProcess(rpm=int(rpm * window / 60), window=window, latency=LATENCY, key=KEY) as sim:
        wall, code, _ = run_batcher(sim, jobs, rpm, os.path.join(tmp, "fast.db"))
        stats = sim.stats(times=True)
        times = sorted(stats["arrivals"])
        print(f"[fast] server allows --rpm {rpm:g}: exit {code}, wall {wall:.1f} s; {served(stats, rpm / 60)}")
        worst = max(max_in_window(times, w) - (rpm * w / 60 + 1) for w in (0.5, 1, 2, 5, window))
        print(f"  most starts in any W s minus rpm*W/60+1, worst over W in 0.5..6: {worst:+.1f} (must be <= 0)")
        sim.reset()
        wall, code, _ = run_batcher(sim, jobs, rpm, os.path.join(tmp, "badkey.db"), key="not-the-key")
        print(f"  bad key: exit {code} after {sim.stats()['requests']} requests, {wall:.1f} s")


def scenario_upstream(rpm: float, n: int, tmp: str) -> None:
    window = 6.0
    jobs = write_jobs(os.path.join(tmp, "upstream.jsonl"), n)
    with SimulatorProcess(rpm=int(2 * rpm * window / 60), window=window, latency=LATENCY, key=KEY,
                          fail_429=0.05, seed=7) as sim:
        wall, code, _ = run_batcher(sim, jobs, rpm, os.path.join(tmp, "upstream.db"))
        stats = sim.stats(times=True)
    arrivals = sorted(stats["arrivals"])
    span = arrivals[-1] - arrivals[0]
    print(f"[upstream] 5% random 429s with room, --rpm {rpm:g}: exit {code} (0: no job failed), wall {wall:.1f} s; "
          f"{60 * (len(arrivals) - 1) / span:,.0f} requests/min = {(len(arrivals) - 1) / span * 60 / rpm:.2f} of "
          f"--rpm, {60 * n / span:,.0f} jobs/min = {n / span * 60 / rpm:.2f}; refused {stats.get('status_429', 0)}")


def scenario_limit(rpm: float, n: int, tmp: str, label: str, **sim_options: Any) -> None:
    per, window = 60, 2.0
    jobs = write_jobs(os.path.join(tmp, f"{label}.jsonl"), n)
    with SimulatorProcess(rpm=per, window=window, latency=LATENCY, key=KEY, **sim_options) as sim:
        wall, code, _ = run_batcher(sim, jobs, rpm, os.path.join(tmp, f"{label}.db"))
        mine = served(sim.stats(times=True), per / window)
        sim.reset()
        naive_wall, naive = run_naive(sim, jobs)
        theirs = served(sim.stats(times=True), per / window)
    print(f"[{label}] server allows {per} per {window:g} s, --rpm {rpm:g}")
    print(f"  batcher: exit {code}, wall {wall:.1f} s; {mine}")
    print(f"  naive:   {naive['succeeded']} ok, {naive['failed']} failed, wall {naive_wall:.1f} s; {theirs}")


def scenario_two_runs(rpm: float, n: int, tmp: str) -> None:
    per, window = 100, 2.0
    jobs = [write_jobs(os.path.join(tmp, f"two{i}.jsonl"), n, tag=f"run{i} ") for i in (1, 2)]
    with SimulatorProcess(rpm=per, window=window, latency=LATENCY, key=KEY) as sim:
        started = time.perf_counter()
        procs = [start_run(sim, j, rpm, os.path.join(tmp, f"two{i}.db")) for i, j in enumerate(jobs)]
        results = [finish(p, started) for p in procs]
        stats = sim.stats(times=True)
    codes = ", ".join(f"exit {code} after {wall:.1f} s" for wall, code, _ in results)
    print(f"[two-runs] two runs of {n} jobs, each --rpm {rpm:g}, server allows {per} per {window:g} s: {codes}")
    print(f"  together: {served(stats, per / window)}")


SCENARIOS = ("fast", "upstream", "limit", "no-headers", "two-runs")


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpm", type=float, default=3000)
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, default=list(SCENARIOS))
    args = parser.parse_args()
    # Pacing needs the CPU on time: on a busy machine every figure drops.
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            if name == "fast":
                scenario_fast(args.rpm, args.jobs, tmp)
            elif name == "upstream":
                scenario_upstream(args.rpm, args.jobs, tmp)
            elif name == "limit":
                scenario_limit(args.rpm, args.jobs, tmp, "limit")
            elif name == "no-headers":
                scenario_limit(args.rpm, args.jobs, tmp, "no-headers", rate_headers="none", retry_after=False)
            else:
                scenario_two_runs(args.rpm, args.jobs, tmp)


if __name__ == "__main__":
    main()
