"""Import throughput and memory: lines/s and peak RSS for a large job file.

Usage: python bench/import_bench.py [LINES]   (default 1,000,000 ~300-byte jobs)
Runs the real CLI in a subprocess so peak RSS is the import's alone, then
the same command again, as a resume of ``batcher run FILE`` would, and
again once ten lines are appended to the file; then the same number of
rows given twice to ``Store.add`` from Python, as a call made again does.
Last, the import's ceiling on this machine: the file's rows prepared
beforehand and kept on disk, then stored by the importer alone, in a process
of its own. The workers prepare while the importer stores, so no import of
the file can be faster than that store step.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
import tempfile
import time

import orjson

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def write_jobs(path: str, lines: int) -> int:
    """Write ``lines`` jobs of about 300 bytes each, both input formats."""
    rng = random.Random(7)
    with open(path, "wb") as out:
        for i in range(lines):
            prompt = " ".join(rng.choice(WORDS) for _ in range(38))
            if i % 2:
                job = {"custom_id": f"job-{i}", "prompt": prompt, "temperature": 0.2, "topic": "bench"}
            else:
                job = {"custom_id": f"job-{i}", "params": {"model": "claude-haiku-4.5", "max_tokens": 256,
                       "messages": [{"role": "user", "content": prompt}]}}
            out.write(orjson.dumps(job) + b"\n")
    return os.path.getsize(path)


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.jsonl")
        size = write_jobs(path, lines)
        db = os.path.join(tmp, "bench.db")
        cmd = [sys.executable, "-m", "batcher", "import", path, "--db", db,
               "--model", "claude-haiku-4.5", "--max-tokens", "256"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"import: {lines:,} lines ({size / lines:.0f} B/line) in {elapsed:.1f} s "
              f"= {lines / elapsed:,.0f} lines/s (target >= 150,000); peak RSS {peak_mb:.0f} MB (target <= 100 MB)")
        # What running the same command again (a resume of `batcher run FILE`) spends on the file.
        start = time.perf_counter()
        again = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
        print(f"the same import again: {time.perf_counter() - start:.2f} s ({again.split(': ', 1)[1]})")
        # Prompts appended to the file: only they are read, once the file's first bytes are checked.
        with open(path, "ab") as out:
            out.write(b"".join(orjson.dumps({"custom_id": f"added-{i}", "prompt": f"one more {i}"}) + b"\n"
                               for i in range(10)))
        start = time.perf_counter()
        grown = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
        print(f"after 10 lines appended: {time.perf_counter() - start:.2f} s ({grown.split(': ', 1)[1]})")
        print(subprocess.run([sys.executable, "-c", ROWS_AGAIN, str(lines), os.path.join(tmp, "rows.db")],
                             check=True, capture_output=True, text=True).stdout.strip())
        print(subprocess.run([sys.executable, "-c", STORE_ONLY, path, tmp], check=True, capture_output=True,
                             text=True).stdout.strip())


#: The same rows given twice from Python, as a call made again to resume does.
ROWS_AGAIN = """
import sys, time
import batcher
rows = [f"Question number {i}: what is {i} squared? Answer briefly." for i in range(int(sys.argv[1]))]
with batcher.Store(sys.argv[2]) as store:
    took = []
    for _ in range(2):
        start = time.perf_counter()
        report = store.add(None, rows, model="claude-haiku-4.5", max_tokens=64).report
        took.append(time.perf_counter() - start)
print(f"Store.add of {len(rows):,} rows: {took[0]:.1f} s; the same rows again: {took[1]:.2f} s "
      f"(unread: {report.unread})")
"""


#: The importer's own part: rows prepared first (pickled to a file), then
#: timed from unpickling to commit, as the importer receives them from its workers.
STORE_ONLY = """
import os, pickle, sys, time
from batcher.db import open_store
from batcher.importer import ImportReport, import_chunks
from batcher.prepare import prepared_chunks
from batcher.validate import Defaults
path, tmp = sys.argv[1], sys.argv[2]
defaults = Defaults("claude-haiku-4.5", 256)
kept = os.path.join(tmp, "prepared.pickle")
with open(kept, "wb") as out:
    for chunk in prepared_chunks(path, defaults):
        pickle.dump(chunk, out, pickle.HIGHEST_PROTOCOL)
def chunks():
    with open(kept, "rb") as given:
        while True:
            try:
                yield pickle.load(given)
            except EOFError:
                return
engine = open_store(os.path.join(tmp, "store-only.db"))
start = time.perf_counter()
report = import_chunks(engine, ImportReport("b", path), path, chunks(), defaults=defaults)
took = time.perf_counter() - start
print(f"ceiling: the importer storing {report.added:,} rows prepared beforehand takes {took:.1f} s "
      f"= {report.added / took:,.0f} rows/s, however fast the preparing")
"""


if __name__ == "__main__":
    main()
