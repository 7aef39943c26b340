"""``make demo``: the example job file end to end against the local simulator.

Starts ``batcher simulate`` (with a few faults, so retries show), runs
``jobs/example.jsonl`` through it with the real CLI, shows the status and
the first exported lines, and stops the simulator. No key, no points.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from batcher.sim import SimulatorProcess

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "jobs" / "example.jsonl"
DB = Path.cwd() / "demo.db"


def batcher(*args: str, env: dict[str, str]) -> int:
    print(f"\n$ batcher {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "batcher", *args], env=env).returncode


def main() -> int:
    if not JOBS.exists():
        print(f"demo: {JOBS} not found (run it from a checkout)", file=sys.stderr)
        return 2
    for suffix in ("", "-wal", "-shm"):
        Path(f"{DB}{suffix}").unlink(missing_ok=True)
    with SimulatorProcess(latency=(0.2, 0.8), fail_500=0.1, fail_529=0.05, seed=7) as sim:
        print(f"simulator listening on {sim.base_url} (10% 500s, 5% 529s, answers in 0.2-0.8 s)")
        env = {**os.environ, "POE_API_KEY": "demo-key", "POE_BASE_URL": sim.base_url, "BATCHER_DB": str(DB)}
        run_code = batcher("run", str(JOBS), "--model", "claude-haiku-4.5", "--max-tokens", "300", env=env)
        batcher("status", "example", env=env)
        print("\n$ batcher export example --format text | head -3", flush=True)
        out = subprocess.run([sys.executable, "-m", "batcher", "export", "example", "--format", "text", "-o", "-"],
                             env=env, capture_output=True, text=True)
        print("\n".join(out.stdout.splitlines()[:3]) or out.stderr.strip())
        stats = sim.stats()
    print(f"\nsimulator saw {stats['requests']} requests: {stats['by_status']}")
    print(f"the job store is {DB}; try: BATCHER_DB={DB.name} .venv/bin/batcher status")
    return run_code


if __name__ == "__main__":
    sys.exit(main())
