"""Batch status: counts, attempts, failures by kind, tokens by model, pace, the live run, streaming medians."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from batcher.db import write
from batcher.importer import import_file
from batcher.jobqueue import BatchBusy, start_run
from batcher.schema import runs
from batcher.status import batch_status, status_lines
from batcher.store import find_batch

from batchdata import DEFAULTS, fail, make_batch, message, mixed_batch, set_status, succeed, write_job_file

OLD_KEYS = ("batch", "file", "created_at", "total", "pending", "running", "succeeded", "failed", "canceled",
            "attempts", "input_tokens", "output_tokens")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batcher", *args], capture_output=True, text=True, timeout=60)


def gone_pid() -> int:
    """The id of a process that has ended (and been collected)."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


def add_run(engine: Any, batch: Any, heartbeat_ago: float = 2.0, ended: bool = False, pid: int | None = None,
            recent_rpm: float | None = None, started_ago: float = 600) -> None:
    now = time.time()
    pid = gone_pid() if pid is None else pid
    with write(engine) as conn:
        conn.execute(runs.insert().values(batch_id=batch.id, pid=pid, host=socket.gethostname(),
                                          started_at=now - started_ago,
                                          heartbeat_at=now - heartbeat_ago, ended_at=now if ended else None,
                                          outcome="completed" if ended else None, rpm=500,
                                          recent_rpm=recent_rpm))


def test_fresh_batch(tmp_path: Path) -> None:
    engine, batch, _ = make_batch(tmp_path, 3)
    s = batch_status(engine, batch)
    assert all(k in s for k in OLD_KEYS)
    assert (s["total"], s["pending"], s["attempts"], s["attempts_made"]) == (3, 3, 0, 0)
    assert s["models"] == [] and s["failures"] == []
    assert s["started_at"] is s["ended_at"] is s["achieved_rpm"] is s["run"] is s["streaming"] is None
    json.dumps(s)


def test_counts_attempts_failures_and_tokens(tmp_path: Path) -> None:
    engine, batch, _ = mixed_batch(tmp_path)
    succeed(engine, batch, "job-7", failed_before=2)  # two 529s, then an answer
    fail(engine, batch, "job-10", "overloaded_error", 529, "Overloaded (again)", tries=6)
    s = batch_status(engine, batch)
    assert {k: s[k] for k in ("total", "pending", "running", "succeeded", "failed", "canceled")} == {
        "total": 10, "pending": 0, "running": 0, "succeeded": 5, "failed": 4, "canceled": 1}
    # 4 answers + 3 for job-7 + 1 + 6 + 6 + 6 failures' attempts
    assert s["attempts_made"] == 4 + 3 + 1 + 6 + 6 + 6
    assert s["attempts"] == 4 + 3 + 1 + 6 + 6 + 6
    assert s["input_tokens"] == 5 * 12 and s["output_tokens"] == 5 * 30
    assert s["failures"] == [
        {"error_type": "overloaded_error", "status_code": 529, "count": 2, "example": "Overloaded"},
        {"error_type": "connection_error", "status_code": None, "count": 1, "example": "Connection reset by peer"},
        {"error_type": "invalid_request_error", "status_code": 400, "count": 1,
         "example": "max_tokens: must be positive"},
    ]


def test_failure_examples_from_odd_error_bodies(tmp_path: Path) -> None:
    engine, batch, _ = make_batch(tmp_path, 2)
    fail(engine, batch, "job-1", "api_error", 502, stored="<html>502 Bad Gateway</html>")
    fail(engine, batch, "job-2", "invalid_request_error", 400, stored='{"error": {"message": "bad", "code": 1}}')
    examples = {f["status_code"]: f["example"] for f in batch_status(engine, batch)["failures"]}
    assert examples == {502: "<html>502 Bad Gateway</html>", 400: "bad"}


def test_tokens_by_model(tmp_path: Path) -> None:
    engine, batch, _ = make_batch(tmp_path, 4)
    succeed(engine, batch, "job-1", msg=message("job-1", model="claude-sonnet-4-5-20250929", tokens=(100, 10),
                                                 cache=(50, 0)))
    for i in (2, 3):
        succeed(engine, batch, f"job-{i}", msg=message(f"job-{i}", tokens=(10, 20), cache=(0, 7)))
    s = batch_status(engine, batch)
    assert s["models"] == [
        {"model": "claude-haiku-4-5-20251001", "succeeded": 2, "input_tokens": 20, "output_tokens": 40,
         "cache_creation_input_tokens": 0, "cache_read_input_tokens": 14},
        {"model": "claude-sonnet-4-5-20250929", "succeeded": 1, "input_tokens": 100, "output_tokens": 10,
         "cache_creation_input_tokens": 50, "cache_read_input_tokens": 0},
    ]
    assert (s["input_tokens"], s["output_tokens"]) == (120, 50)
    assert (s["cache_creation_input_tokens"], s["cache_read_input_tokens"]) == (50, 14)
    assert len(batch_status(engine, batch, detail=False)) == len(OLD_KEYS) + 3


def test_start_end_and_achieved_rate(tmp_path: Path) -> None:
    engine, batch, _ = make_batch(tmp_path, 3)
    succeed(engine, batch, "job-1", started_at=1000.0, latency_ms=1000)
    succeed(engine, batch, "job-2", started_at=1030.0, latency_ms=1000)
    s = batch_status(engine, batch)
    assert s["started_at"] == 1000.0 and s["ended_at"] is None  # job-3 still pending
    succeed(engine, batch, "job-3", started_at=1059.0, latency_ms=1000)
    s = batch_status(engine, batch)
    assert s["ended_at"] == 1060.0
    # 3 requests between 1000 and 1060: the 2 intervals between starts, and the last answer, took a minute.
    assert s["achieved_rpm"] == 2.0
    assert s["run"] is None


def test_the_achieved_rate_of_a_short_run_does_not_read_above_its_pace(tmp_path: Path) -> None:
    """Three starts 0.12 s apart (500/min) answered in 20 ms: three over 0.26 s would read 692/min."""
    engine, batch, _ = make_batch(tmp_path, 3)
    succeed(engine, batch, "job-1", started_at=1000.0, latency_ms=20)
    assert batch_status(engine, batch)["achieved_rpm"] is None  # one request is no rate
    succeed(engine, batch, "job-2", started_at=1000.12, latency_ms=20)
    succeed(engine, batch, "job-3", started_at=1000.24, latency_ms=20)
    assert 400 < batch_status(engine, batch)["achieved_rpm"] <= 500


def test_live_run_rate_eta_and_in_flight(tmp_path: Path) -> None:
    engine, batch, _ = make_batch(tmp_path, 10)
    now = time.time()
    succeed(engine, batch, "job-1", started_at=now - 3600)
    for i, ago in ((2, 50), (3, 30), (4, 10)):
        succeed(engine, batch, f"job-{i}", started_at=now - ago, latency_ms=500)
    set_status(engine, batch, "job-5", "running")
    assert batch_status(engine, batch)["run"] is None
    assert ("  running   no live run: the 1 running job(s) a stopped run left go back to pending when the next "
            "run starts") in status_lines(batch_status(engine, batch))
    add_run(engine, batch, heartbeat_ago=40)  # dead: heartbeat too old
    add_run(engine, batch, ended=True)  # over
    assert batch_status(engine, batch)["run"] is None
    add_run(engine, batch, heartbeat_ago=3)  # fresh heartbeat, but its process is gone
    assert batch_status(engine, batch)["run"] is None
    add_run(engine, batch, heartbeat_ago=3, pid=os.getpid(), recent_rpm=3.2)  # the rate the run last wrote
    s = batch_status(engine, batch)
    run = s["run"]
    assert run["pid"] == os.getpid() and run["host"] == socket.gethostname()
    assert run["current_rpm"] == 3 and run["in_flight"] == 1
    assert run["eta_s"] == pytest.approx(6 / 3 * 60)  # 5 pending + 1 running at 3 per minute
    assert s["ended_at"] is None
    line = next(x for x in status_lines(s) if x.strip().startswith("running"))
    assert f"pid {os.getpid()}" in line and "3 requests/min now" in line and "1 in flight" in line and "ETA 2m 00s" in line


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="only Linux tells when a process started")
def test_a_run_silent_while_its_store_takes_no_write_is_alive_if_its_process_is(tmp_path: Path) -> None:
    """A run waiting out a full or locked store writes no heartbeat: neither status nor the
    next run may take it for dead while its process lives; a process id given since to a
    later program does not pass for it."""
    engine, batch, _ = make_batch(tmp_path, 4)
    set_status(engine, batch, "job-1", "running")
    paused = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.05)
        add_run(engine, batch, heartbeat_ago=95, pid=paused.pid, started_ago=0, recent_rpm=480)
        s = batch_status(engine, batch)
        silent = s["run"]["silent_s"]
        assert s["run"]["pid"] == paused.pid and 95 <= silent < 100 and s["run"]["current_rpm"] == 0
        line = next(x for x in status_lines(s) if x.strip().startswith("running"))
        assert line.endswith(f"pid {paused.pid} on {socket.gethostname()}: silent for 1m {silent - 60}s, waiting for "
                             "its store to take writes (full, or locked by another process) or stopped; 1 in flight")
        with pytest.raises(BatchBusy, match=f"process {paused.pid}"):
            start_run(engine, batch.id, batch.name, 500, "http://x")
    finally:
        paused.kill()
        paused.wait()
    assert batch_status(engine, batch)["run"] is None  # its process ended: the run is over
    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live process, but one started after the run it is named in
        add_run(engine, batch, heartbeat_ago=95, pid=later.pid, started_ago=120)
        assert batch_status(engine, batch)["run"] is None
        start_run(engine, batch.id, batch.name, 500, "http://x")  # takes the batch over
        assert batch_status(engine, batch)["running"] == 0
    finally:
        later.kill()
        later.wait()


def test_streaming_medians_only_successful_streamed_attempts(tmp_path: Path) -> None:
    engine, batch, _ = make_batch(tmp_path, 7)
    for i, (ttft, took) in enumerate([(100, 1000), (300, 4000), (200, 2000), (900, 3000)], start=1):
        succeed(engine, batch, f"job-{i}", streamed=True, ttft_ms=ttft, latency_ms=took)
    succeed(engine, batch, "job-5", streamed=False, latency_ms=99999)
    s = batch_status(engine, batch)
    assert s["streaming"] == {"streamed": 4, "median_ttft_ms": 250.0, "median_duration_ms": 2500.0}
    succeed(engine, batch, "job-6", streamed=True, ttft_ms=50, latency_ms=500)
    s = batch_status(engine, batch)
    assert s["streaming"] == {"streamed": 5, "median_ttft_ms": 200.0, "median_duration_ms": 2000.0}
    assert any("median first token 200 ms, median duration 2.0 s" in x for x in status_lines(s))


def test_no_streaming_line_without_streamed_answers(tmp_path: Path) -> None:
    engine, batch, _ = mixed_batch(tmp_path)
    s = batch_status(engine, batch)
    assert s["streaming"] is None
    labels = [line.split()[0] for line in status_lines(s)[1:] if line[2] != " "]
    # The batch's one running job has no live run: a line says so.
    assert labels == ["jobs", "attempts", "tokens", "failures", "timing", "running"]
    text = "\n".join(status_lines(s))
    assert "failures" in text and "overloaded_error (HTTP 529), e.g. 'Overloaded'" in text
    assert "no HTTP status" in text


def test_other_batches_do_not_leak_in(tmp_path: Path) -> None:
    engine, first, db = make_batch(tmp_path, 2, name="first")
    (tmp_path / "two").mkdir()
    import_file(engine, str(write_job_file(tmp_path / "two" / "second.jsonl", [1, 2, 3])), "second", DEFAULTS)
    second = find_batch(engine, "second")
    succeed(engine, first, "job-1", streamed=True, ttft_ms=100)
    fail(engine, second, "job-1", tries=3)
    succeed(engine, second, "job-2", streamed=True, ttft_ms=900)
    a, b = batch_status(engine, first), batch_status(engine, second)
    assert (a["attempts_made"], b["attempts_made"]) == (1, 4)
    assert a["streaming"]["median_ttft_ms"] == 100 and b["streaming"]["median_ttft_ms"] == 900
    assert a["failures"] == [] and b["failures"][0]["count"] == 1


def test_cli_text_and_json(tmp_path: Path) -> None:
    engine, batch, db = mixed_batch(tmp_path)
    done = cli("status", "--db", db)
    assert done.returncode == 0, done.stderr
    labels = [line.split()[0] for line in done.stdout.splitlines()[1:] if line[2] != " "]
    assert labels == ["jobs", "attempts", "tokens", "failures", "timing", "running"]
    assert "10: 1 pending, 1 running, 4 succeeded, 3 failed, 1 canceled" in done.stdout
    done = cli("status", "b", "--db", db, "--json")
    assert done.returncode == 0 and len(done.stdout.strip().splitlines()) == 1
    s = json.loads(done.stdout)
    assert set(s) == set(batch_status(engine, batch))
    assert (s["failed"], s["attempts_made"], len(s["failures"]), s["models"][0]["succeeded"]) == (3, 17, 3, 4)
    done = cli("batches", "--db", db)
    assert done.returncode == 0 and "pending=1" in done.stdout


def test_cli_unknown_batch_is_one_line(tmp_path: Path) -> None:
    _, _, db = make_batch(tmp_path, 1)
    done = cli("status", "nope", "--db", db)
    assert done.returncode == 2
    assert done.stderr.startswith("batcher: error: no batch named 'nope'") and len(done.stderr.splitlines()) == 1
    done = cli("status", "--db", str(tmp_path / "missing" / "x.db"))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert os.path.exists(db)
