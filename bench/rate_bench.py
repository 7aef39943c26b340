"""Pacing under the rate limit, measured on the simulator over real HTTP.

Usage: python bench/rate_bench.py [--rpm 3000] [--jobs 1500]

Three scenarios, each a real ``batcher run`` subprocess against
``batcher simulate``:
  fast     the server allows exactly --rpm: achieved rate vs the limit, 429s,
           and the most request starts seen in any window of W seconds
           against the bound rpm*W/60 + 1;
  half     the server allows half of --rpm: share of requests refused;
  shared   another client uses half of the key's window: share refused.
The sliding window is 6 s (scaled rpm) so a run shows steady state quickly.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import orjson

from batcher.sim import SimulatorProcess

WINDOW_S = 6.0


def max_in_window(times: list[float], width: float) -> int:
    """The most arrivals in any half-open window [t, t + width)."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def write_jobs(path: str, n: int) -> None:
    with open(path, "wb") as out:
        for i in range(n):
            out.write(orjson.dumps({"custom_id": f"r{i}", "prompt": f"Question number {i}?"}) + b"\n")


def run(sim: SimulatorProcess, jobs: str, rpm: float, tmp: str, name: str) -> tuple[float, str]:
    env = {**os.environ, "POE_API_KEY": "bench-key"}
    cmd = [sys.executable, "-m", "batcher", "run", jobs, "--db", os.path.join(tmp, f"{name}.db"),
           "--rpm", str(rpm), "--base-url", sim.base_url, "--model", "claude-haiku-4.5",
           "--max-tokens", "64", "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout, done.stderr, file=sys.stderr)
    return elapsed, done.stdout.strip()


def scenario(label: str, rpm: float, jobs_n: int, server_rpm: float, tmp: str, background_rpm: float = 0) -> None:
    per_window = max(1, int(server_rpm * WINDOW_S / 60))
    jobs = os.path.join(tmp, f"{label}.jsonl")
    write_jobs(jobs, jobs_n)
    with SimulatorProcess(rpm=per_window, window=WINDOW_S, latency=(0.02, 0.2), key="bench-key") as sim:
        stop = threading.Event()
        if background_rpm:
            threading.Thread(target=_background, args=(sim.base_url, background_rpm, stop), daemon=True).start()
            time.sleep(WINDOW_S)  # let the other client fill its share of the window
        sim.reset()
        elapsed, _ = run(sim, jobs, rpm, tmp, label)
        stop.set()
        stats = sim.stats(times=True)
    times = sorted(stats["arrivals"])
    refused = stats.get("status_429", 0)
    total = stats["requests"]
    print(f"[{label}] {jobs_n} jobs, --rpm {rpm:g}, server allows {server_rpm:g}/min"
          + (f" with {background_rpm:g}/min used by another client" if background_rpm else ""))
    print(f"  elapsed {elapsed:.1f} s; requests {total}; refused (429) {refused} = {100 * refused / max(total, 1):.1f}%")
    if not background_rpm:
        steady = times[len(times) // 10:]  # skip start-up
        span = steady[-1] - steady[0] if len(steady) > 1 else 1
        print(f"  achieved {60 * (len(steady) - 1) / span:.0f}/min = {100 * (len(steady) - 1) / span * 60 / min(rpm, server_rpm):.1f}% of the limit")
        worst = max((max_in_window(times, w) - (rpm * w / 60 + 1)) for w in (0.5, 1, 2, 5, WINDOW_S, 10))
        for w in (0.5, 1, 2, 5, WINDOW_S, 10):
            print(f"  most starts in any {w:g} s: {max_in_window(times, w)} (bound {rpm * w / 60 + 1:.0f})")
        print(f"  worst excess over rpm*W/60+1: {worst:+.1f}")


def _background(base_url: str, rpm: float, stop: threading.Event) -> None:
    """Another program on the same key, sending evenly at ``rpm``."""
    headers = {"x-api-key": "bench-key", "anthropic-version": "2023-06-01"}
    body = {"model": "claude-haiku-4.5", "max_tokens": 8, "messages": [{"role": "user", "content": "other"}]}
    with httpx.Client(base_url=base_url, headers=headers, trust_env=False) as client:
        while not stop.is_set():
            client.post("/v1/messages", json=body)
            time.sleep(60 / rpm)


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpm", type=float, default=3000)
    parser.add_argument("--jobs", type=int, default=1500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scenario("fast", args.rpm, args.jobs, args.rpm, tmp)
        scenario("half", args.rpm, args.jobs // 2, args.rpm / 2, tmp)
        scenario("shared", args.rpm, args.jobs // 2, args.rpm, tmp, background_rpm=args.rpm / 2)


if __name__ == "__main__":
    main()
