"""``batcher serve`` under load: what an interactive request pays while a big batch runs.

Usage: python bench/serve_bench.py [--rpm 3000] [--requests 10000] [--measure 60] [--every 1.0]
                                   [--many 10] [--per 100] [--only-many]

A real ``batcher serve`` subprocess in front of ``batcher simulate`` (which
allows exactly --rpm per 60 s window, fixed latency). A batch of --requests
runs at the limit; meanwhile, every --every seconds, the official SDK sends
one ``messages.create`` straight to the simulator (another key, its own
window) and one through the server. Printed:

  startup     seconds from launching ``batcher serve`` to its ready line (goal < 2 s)
  added       median latency through the server minus median latency direct (goal < 50 ms)
  batch rate  the batch's answers per minute over the measured span, against
              --rpm minus the interactive requests sent through the server (goal >= 0.97)
  pacer alone the bare pacer's grants in 10 s against --rpm, in this process: on a
              loaded machine a late wake-up loses its slot, for every run alike
  fair share  how long a 100-request batch created beside the big one takes
  429s        requests the simulator refused
  many        --many batches of --per requests created one after another on a fresh
              server: all their answers per minute, from the first create to the
              last end, against --rpm; and the server's "store locked" pauses
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import anthropic
import anyio

from batcher.pacer import Pacer
from batcher.sim import SimulatorProcess

MODEL = "claude-haiku-4.5"
TOKEN = "bench-token"
LATENCY_S = 0.1


def start_server(db: str, upstream: str, rpm: float, stderr: Any = subprocess.DEVNULL,
                 ) -> tuple[subprocess.Popen[str], str, float]:
    env = {**os.environ, "POE_API_KEY": "bench-key", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "batcher", "serve", "--port", "0", "--db", db, "--rpm", str(rpm),
                             "--base-url", upstream, "--token", TOKEN], stdout=subprocess.PIPE,
                            stderr=stderr, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, match.group(1), time.perf_counter() - started
    raise SystemExit("batcher serve did not start")


async def _pacer_alone(rpm: float, span: float) -> float:
    """Starts the bare pacer grants in ``span`` seconds, as a share of ``rpm``:
    what this machine, as loaded now, lets any run reach."""
    pacer, granted = Pacer(rpm), 0

    async def worker() -> None:
        nonlocal granted
        while True:
            await pacer.wait()
            granted += 1

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(worker)
        await anyio.sleep(span)
        tg.cancel_scope.cancel()
    return granted / span * 60 / rpm


def timed_create(client: anthropic.Anthropic, i: int) -> float:
    start = time.perf_counter()
    client.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": f"interactive {i}"}])
    return time.perf_counter() - start


def many_batches(rpm: float, n: int, per: int) -> None:
    """``n`` batches at once on one server: each runs with its own claimer and writer on one store."""
    sim = SimulatorProcess(rpm=int(rpm), latency="0.05:0.2").start()
    tmp = tempfile.mkdtemp(prefix="serve-bench-many-")
    with open(os.path.join(tmp, "serve.err"), "w+") as err:
        proc, url, _ = start_server(os.path.join(tmp, "store.db"), sim.base_url, rpm, stderr=err)
        try:
            client = anthropic.Anthropic(api_key=TOKEN, base_url=url, max_retries=0)
            started = time.perf_counter()
            ids = [client.messages.batches.create(requests=[
                {"custom_id": f"r{i}", "params": {"model": MODEL, "max_tokens": 16, "messages": [
                    {"role": "user", "content": f"Batch {k}, question {i}?"}]}} for i in range(per)]).id
                for k in range(n)]
            left = set(ids)
            while left:
                left = {i for i in left if client.messages.batches.retrieve(i).processing_status != "ended"}
                time.sleep(0.05)
            took = time.perf_counter() - started
            answered = sum(client.messages.batches.retrieve(i).request_counts.succeeded for i in ids)
        finally:
            proc.terminate()
            proc.wait(60)
            sim.stop()
        err.seek(0)
        locked = err.read().count("no request starts until it is free")
    print(f"many         {n} batches of {per}: {answered:,} answers in {took:.1f} s = {answered / took * 60:,.0f}/min "
          f"= {answered / took * 60 / rpm:.2f} of --rpm {rpm:g}; pauses for a locked store {locked}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=float, default=3000)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--measure", type=float, default=60.0, help="seconds of steady state measured")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between interactive requests")
    parser.add_argument("--many", type=int, default=10, help="batches created at once on a fresh server (0: none)")
    parser.add_argument("--per", type=int, default=100, help="requests in each of those batches")
    parser.add_argument("--only-many", action="store_true", help="measure only the batches created at once")
    args = parser.parse_args()
    if args.only_many:
        many_batches(args.rpm, args.many, args.per)
        return

    sim = SimulatorProcess(rpm=int(args.rpm), window=60.0, latency=f"{LATENCY_S}:{LATENCY_S}").start()
    tmp = tempfile.mkdtemp(prefix="serve-bench-")
    proc, url, startup = start_server(os.path.join(tmp, "store.db"), sim.base_url, args.rpm)
    try:
        served = anthropic.Anthropic(api_key=TOKEN, base_url=url, max_retries=0)
        direct = anthropic.Anthropic(api_key="bench-direct-key", base_url=sim.base_url, max_retries=0)
        for i in range(3):  # warm both connections up
            timed_create(served, -i), timed_create(direct, -i)
        requests = [{"custom_id": f"r{i}", "params": {"model": MODEL, "max_tokens": 16,
                                                      "messages": [{"role": "user", "content": f"Question {i}?"}]}}
                    for i in range(args.requests)]
        batch = served.messages.batches.create(requests=requests)
        time.sleep(5)  # past the start: the pace is steady
        through: list[float] = []
        straight: list[float] = []
        first = served.messages.batches.retrieve(batch.id).request_counts.succeeded
        t0 = time.perf_counter()
        i = 0
        while time.perf_counter() - t0 < args.measure:
            straight.append(timed_create(direct, i))
            through.append(timed_create(served, i))
            i += 1
            time.sleep(max(0.0, t0 + i * args.every - time.perf_counter()))
        last = served.messages.batches.retrieve(batch.id).request_counts.succeeded
        span = time.perf_counter() - t0
        # A small batch beside the big one: at a fair share it takes twice what it would alone.
        small = served.messages.batches.create(requests=requests[:100])
        small_started = time.perf_counter()
        while served.messages.batches.retrieve(small.id).processing_status != "ended":
            time.sleep(0.05)
        small_s = time.perf_counter() - small_started
        big_left = served.messages.batches.retrieve(batch.id).request_counts.processing
        served.messages.batches.cancel(batch.id)
        refused = sim.stats()["status_429"]
    finally:
        proc.terminate()
        proc.wait(60)
        sim.stop()

    alone = anyio.run(_pacer_alone, args.rpm, 10.0)
    added_ms = (statistics.median(through) - statistics.median(straight)) * 1000
    batch_rpm = (last - first) / span * 60
    share = batch_rpm / (args.rpm - len(through) / span * 60)
    print(f"startup      {startup:.2f} s to the ready line (goal < 2 s)")
    print(f"interactive  {len(through)} through the server: median {statistics.median(through) * 1000:.1f} ms, "
          f"p90 {sorted(through)[int(len(through) * 0.9)] * 1000:.1f} ms; direct median "
          f"{statistics.median(straight) * 1000:.1f} ms")
    print(f"added        {added_ms:.1f} ms at the median (goal < 50 ms)")
    print(f"batch rate   {batch_rpm:.0f}/min over {span:.0f} s = {share:.3f} of --rpm {args.rpm:g} minus the "
          f"interactive requests (goal >= 0.97)")
    print(f"fair share   a 100-request batch created beside it ended in {small_s:.1f} s "
          f"(alone at this rate: {100 / batch_rpm * 60:.1f} s; half the rate: {200 / batch_rpm * 60:.1f} s), "
          f"{big_left} of the big one's still unsent")
    print(f"pacer alone  {alone:.3f} of --rpm in this process, no HTTP, 10 s (what the machine allows any run now)")
    print(f"429s         {refused}")
    if args.many:
        many_batches(args.rpm, args.many, args.per)


if __name__ == "__main__":
    main()
