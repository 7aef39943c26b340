"""CPU per job: ``batcher.run`` from Python against ``batcher run`` on the same rows.

Usage: python bench/api_bench.py [JOBS]   (default 5,000 jobs)
Both run in their own subprocess against one fast local simulator (no
latency, a limit far above what is sent), each on a fresh store, best of
three; the figure is the process's user + system CPU divided by the jobs,
start-up included. The Python call also builds its list of results (every
answer parsed), which the CLI does not: what a script gets back is counted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any

import orjson

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from batcher.sim import SimulatorProcess  # noqa: E402

KEY = "bench-key"
RPM = 60_000
CONCURRENCY = 64
MODEL, MAX_TOKENS = "claude-haiku-4.5", 64
ROUNDS = 3

PYTHON_CALL = """
import sys, batcher
rows = [line.rstrip("\\n") for line in open(sys.argv[1], encoding="utf-8")]
results = batcher.run(rows, model=sys.argv[3], max_tokens=int(sys.argv[4]), db=sys.argv[2], rpm={rpm},
                      concurrency={concurrency}, progress=False)
assert len(results) == len(rows) and all(r.ok for r in results), "not every row succeeded"
"""


def _cpu_of(args: list[str], env: dict[str, str]) -> float:
    """User + system CPU seconds of one subprocess, which must succeed."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    error = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{args[:4]} failed ({proc.returncode}): {error.decode()[-500:]}")
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp, \
            SimulatorProcess(rpm=RPM, window=60, latency=0, key=KEY) as sim:
        prompts = os.path.join(tmp, "prompts.txt")
        jobfile = os.path.join(tmp, "jobs.jsonl")
        with open(prompts, "w", encoding="utf-8") as p, open(jobfile, "wb") as j:
            for i in range(jobs):
                prompt = f"Question {i}: name one thing that is {['red', 'round', 'fast', 'old'][i % 4]}."
                p.write(prompt + "\n")
                j.write(orjson.dumps({"prompt": prompt}) + b"\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("POE_", "BATCHER_"))}
        env.update(POE_API_KEY=KEY, POE_BASE_URL=sim.base_url)
        figures: dict[str, list[float]] = {"cli": [], "python": []}
        for round_ in range(ROUNDS):
            cli_db, py_db = os.path.join(tmp, f"cli{round_}.db"), os.path.join(tmp, f"py{round_}.db")
            figures["cli"].append(_cpu_of(
                [sys.executable, "-m", "batcher", "run", jobfile, "--db", cli_db, "--model", MODEL, "--max-tokens",
                 str(MAX_TOKENS), "--rpm", str(RPM), "--concurrency", str(CONCURRENCY), "-q"], env))
            code = PYTHON_CALL.format(rpm=RPM, concurrency=CONCURRENCY)
            figures["python"].append(_cpu_of([sys.executable, "-c", code, prompts, py_db, MODEL, str(MAX_TOKENS)],
                                             env))
    best: dict[str, Any] = {name: min(values) for name, values in figures.items()}
    print(f"{jobs:,} jobs, best of {ROUNDS}, CPU (user+system) per job, start-up included:")
    for name, label in (("cli", "batcher run FILE"), ("python", "batcher.run(rows)")):
        print(f"  {label:<18} {best[name] / jobs * 1e6:8.1f} us/job  ({best[name]:.2f} s)")
    print(f"  python / cli       {best['python'] / best['cli']:8.2f}")


if __name__ == "__main__":
    main()
