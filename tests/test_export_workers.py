"""A big export rendered by forked workers: the same bytes, one snapshot, no process left behind.

The workers start only above a batch size; the in-process tests lower it
so that a few thousand jobs span many ranges and every worker. The
command-line tests use a batch above the real threshold.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from sqlalchemy import text

import batcher._export_workers as workers
from batcher._forking import write_all
from batcher.db import open_store, write
from batcher.errors import StoreError
from batcher.export import ExportNotes, export_batch
from batcher.importer import import_file
from batcher.store import find_batch

from batchdata import DEFAULTS, write_job_file

JOBS = 6000

#: Answers, errors and statuses for every job, written in one statement:
#: jobs cycle through succeeded (two kinds of answer), failed, canceled,
#: pending and running.
FILL = """
UPDATE jobs SET
  status = CASE id % 6 WHEN 0 THEN 'failed' WHEN 1 THEN 'canceled' WHEN 2 THEN 'pending'
                       WHEN 3 THEN 'running' ELSE 'succeeded' END,
  response = CASE WHEN id % 6 IN (4, 5) THEN json_object(
      'id', 'msg_' || id, 'type', 'message', 'role', 'assistant', 'model', 'claude-haiku-4-5-20251001',
      'content', json_array(json_object('type', 'text', 'text', 'Answer to ' || custom_id || ' ' || hex(randomblob(40)))),
      'stop_reason', 'end_turn', 'stop_sequence', NULL,
      'usage', json_object('input_tokens', id % 97, 'output_tokens', id % 89)) END,
  error = CASE id % 6 WHEN 0 THEN json_object('type', 'error', 'error',
      json_object('type', 'overloaded_error', 'message', 'Overloaded'), 'request_id', 'req_' || id) END,
  error_type = CASE id % 6 WHEN 0 THEN 'overloaded_error' END,
  status_code = CASE id % 6 WHEN 0 THEN 529 END
"""


def filled_store(tmp_path: Path, jobs: int, name: str = "big") -> tuple[str, Any]:
    """A store with one batch of ``jobs`` jobs in every status."""
    db = str(tmp_path / "store.db")
    engine = open_store(db)
    import_file(engine, str(write_job_file(tmp_path / f"{name}.jsonl", range(1, jobs + 1))), name, DEFAULTS)
    with write(engine) as conn:
        conn.execute(text(FILL))
    return db, engine


@pytest.fixture
def forking(monkeypatch: pytest.MonkeyPatch, reaped: None) -> list[int]:
    """Workers for batches of a few thousand jobs, in ranges of 250 lines; counts the teams started."""
    if workers._workers() < 2:
        pytest.skip("one core: an export is not forked")
    monkeypatch.setattr(workers, "FORK_FROM_LINES", 1000)
    monkeypatch.setattr(workers, "SPAN", 250)
    started: list[int] = []
    real = workers._Team.start.__func__  # type: ignore[attr-defined]

    def start(cls: Any, *args: Any) -> Any:
        team = real(cls, *args)
        started.append(len(team.pids) if team is not None else 0)
        return team

    monkeypatch.setattr(workers._Team, "start", classmethod(start))
    return started


def export_bytes(engine: Any, tmp_path: Path, name: str = "big", **options: Any) -> tuple[bytes, int]:
    out = tmp_path / "out.jsonl"
    written = export_batch(engine, find_batch(engine, name), str(out), force=True, **options)
    return out.read_bytes(), written


def serial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "FORK_FROM_LINES", 10**12)


def children() -> set[int]:
    """Processes this one started that still exist (running or unreaped)."""
    mine = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                mine.add(int(entry))
    return mine


@pytest.fixture
def reaped() -> Iterator[None]:
    """Every process a test's exports started is gone and reaped by its end.

    Children left by earlier tests in this process are not this test's.
    """
    before = children()
    yield
    assert children() <= before, "an export left a worker process behind"


@pytest.mark.parametrize("fmt", ["results", "text", "merged"])
@pytest.mark.parametrize("only, pending", [("all", False), ("all", True), ("succeeded", False), ("failed", True)])
def test_workers_write_the_same_bytes_as_one_process(tmp_path: Path, forking: list[int],
                                                     monkeypatch: pytest.MonkeyPatch, fmt: str, only: str,
                                                     pending: bool) -> None:
    _, engine = filled_store(tmp_path, JOBS)
    forked, count = export_bytes(engine, tmp_path, fmt=fmt, only=only, include_pending=pending)
    assert forking and forking[0] >= 2, "the export was not rendered by workers"
    serial(monkeypatch)
    alone, alone_count = export_bytes(engine, tmp_path, fmt=fmt, only=only, include_pending=pending)
    assert forked == alone and count == alone_count == forked.count(b"\n") > 0


def test_order_across_imports_with_the_same_line_numbers(tmp_path: Path, forking: list[int],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A second file added to the batch repeats the first one's line numbers: it follows the first, in workers too."""
    db, engine = filled_store(tmp_path, 3000)
    more = write_job_file(tmp_path / "more.jsonl", range(5001, 8001))
    import_file(engine, str(more), "big", DEFAULTS)
    forked, _ = export_bytes(engine, tmp_path, fmt="text", include_pending=True)
    assert forking and forking[0] >= 2
    ids = [orjson.loads(line)["custom_id"] for line in forked.splitlines()]
    assert ids == [f"job-{i}" for i in (*range(1, 3001), *range(5001, 8001))]
    serial(monkeypatch)
    assert export_bytes(engine, tmp_path, fmt="text", include_pending=True)[0] == forked


def test_merged_notes_count_every_workers_lines(tmp_path: Path, forking: list[int]) -> None:
    db = str(tmp_path / "store.db")
    engine = open_store(db)
    lines = [{"custom_id": f"j{i}", "prompt": f"q{i}", **({"response": "mine"} if i % 7 == 0 else {})}
             for i in range(1, 3001)]
    path = tmp_path / "keys.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    import_file(engine, str(path), "keys", DEFAULTS)
    notes = ExportNotes(replaced_keys=5)
    export_batch(engine, find_batch(engine, "keys"), str(tmp_path / "m.jsonl"), "merged", include_pending=True,
                 notes=notes)
    assert forking and forking[0] >= 2
    assert notes.replaced_keys == 5 + 3000 // 7


def test_a_bad_stored_answer_in_a_worker_fails_the_export_in_one_line(tmp_path: Path, forking: list[int]) -> None:
    db, engine = filled_store(tmp_path, JOBS)
    with write(engine) as conn:
        conn.execute(text("UPDATE jobs SET response = '{not json' WHERE custom_id = 'job-4006'"))
    out = tmp_path / "text.jsonl"
    with pytest.raises(StoreError, match="job 'job-4006': its stored answer is not valid JSON"):
        export_batch(engine, find_batch(engine, "big"), str(out), "text")
    assert forking and not out.exists() and not list(tmp_path.glob(".text.jsonl.*"))


def test_a_worker_that_dies_fails_the_export(tmp_path: Path, forking: list[int],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _, engine = filled_store(tmp_path, JOBS)
    real = workers._work

    def dies_on_its_second_range(reply: int, go: int, database: str, query: Any, render: Any, *rest: Any) -> None:
        sent = []

        def render_then_die(rows: list[Any]) -> bytes:
            sent.extend(rows)
            if len(sent) > 300:
                os.kill(os.getpid(), signal.SIGKILL)
            return render(rows)

        real(reply, go, database, query, render_then_die, *rest)

    monkeypatch.setattr(workers, "_work", dies_on_its_second_range)
    with pytest.raises(StoreError, match="a worker process reading the batch stopped"):
        export_batch(engine, find_batch(engine, "big"), str(tmp_path / "x.jsonl"), "results")
    assert not (tmp_path / "x.jsonl").exists()


def stops_mid_range(reply: int, go: int, *rest: Any) -> None:
    """A worker that begins, then sends half a range's bytes and ends."""
    if os.read(go, 1) == b"g":
        write_all(reply, workers._HEADER.pack(0, 0, 0))
        write_all(reply, workers._HEADER.pack(1000, 5, 0) + b'{"custom_id"')


def test_a_worker_that_stops_mid_range_fails_a_file_export_and_leaves_no_file(
        tmp_path: Path, forking: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """The range's bytes are moved from the pipe into the file as they come: the
    pipe ending short must still fail the export, and the part must go."""
    _, engine = filled_store(tmp_path, JOBS)
    monkeypatch.setattr(workers, "_work", stops_mid_range)
    with pytest.raises(StoreError, match="a worker process reading the batch stopped"):
        export_batch(engine, find_batch(engine, "big"), str(tmp_path / "x.jsonl"), "results")
    assert forking and not (tmp_path / "x.jsonl").exists() and not list(tmp_path.glob(".x.jsonl.*"))


def test_a_worker_that_stops_mid_range_writes_no_half_line_to_a_stream(
        tmp_path: Path, forking: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    _, engine = filled_store(tmp_path, JOBS)
    monkeypatch.setattr(workers, "_work", stops_mid_range)
    out = io.BytesIO()
    with pytest.raises(StoreError, match="a worker process reading the batch stopped"):
        export_batch(engine, find_batch(engine, "big"), out, "results")
    assert forking and out.getvalue() == b""


# -- one snapshot while another process commits ------------------------------------------

WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
n = 0
while True:
    n += 1
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE jobs SET response = json_set(response, '$.stop_reason', ?) "
                 "WHERE custom_id IN ('job-5', 'job-5999')", (f"v{n}",))
    conn.execute("COMMIT")
    print(n, flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.mark.parametrize("pause", [0.0, 0.01])
def test_workers_read_one_snapshot_while_a_run_commits(tmp_path: Path, forking: list[int], pause: float) -> None:
    """Two jobs far apart (different workers) are changed together, commit after commit."""
    db, engine = filled_store(tmp_path, JOBS)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, db, str(pause)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline()
        for _ in range(6):
            data, _ = export_bytes(engine, tmp_path, fmt="text", only="succeeded")
            seen = {o["custom_id"]: o["stop_reason"] for o in map(orjson.loads, data.splitlines())
                    if o["custom_id"] in ("job-5", "job-5999")}
            assert len(seen) == 2 and seen["job-5"] == seen["job-5999"], seen
    finally:
        writer.kill()
        writer.wait()


# -- the command line -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A batch above the real threshold, answered."""
    if workers._workers() < 2:
        pytest.skip("one core: an export is not forked")
    folder = tmp_path_factory.mktemp("big")
    db, engine = filled_store(folder, workers.FORK_FROM_LINES + 5000)
    engine.dispose()
    yield folder, db


def batcher_processes(db: str) -> list[int]:
    """Live processes whose command line names this store (the CLI and any worker it forked)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if db.encode() in cmdline and state != "Z":
                found.append(int(entry))
    return found


def gone(db: str, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while batcher_processes(db):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_cli_export_of_a_big_batch_is_the_same_as_in_process(big_store: tuple[Path, str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder, db = big_store
    out = folder / "cli.jsonl"
    done = subprocess.run([sys.executable, "-m", "batcher", "export", "big", "--db", db, "--format", "merged",
                           "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    serial(monkeypatch)
    engine = open_store(db, readonly=True)
    alone, written = export_bytes(engine, folder, fmt="merged")
    assert out.read_bytes() == alone and f"{written:,} line(s)" in done.stderr + done.stdout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_export_leaves_no_worker_behind(big_store: tuple[Path, str], signum: int) -> None:
    """Ctrl-C or SIGTERM to the process group, or kill -9 of the command alone, while it and its
    workers wait on full pipes.

    The export writes into a FIFO that is read once, then no more.
    """
    folder, db = big_store
    fifo = folder / f"fifo-{signum}"
    os.mkfifo(fifo)
    export = subprocess.Popen([sys.executable, "-m", "batcher", "export", "big", "--db", db, "-o", str(fifo)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    reader = os.open(fifo, os.O_RDONLY)
    try:
        assert os.read(reader, 1 << 16)
        deadline = time.monotonic() + 30
        while len(batcher_processes(db)) < 3:  # the command and its workers
            assert time.monotonic() < deadline, "no workers started"
            time.sleep(0.05)
        time.sleep(0.3)
        if signum != signal.SIGKILL:
            os.killpg(export.pid, signum)  # as Ctrl-C reaches the terminal's whole process group
        else:
            os.kill(export.pid, signum)  # the command alone: its workers must notice
        _, err = export.communicate(timeout=30)
    finally:
        os.close(reader)
    assert gone(db), "an export worker outlived the command"
    if signum != signal.SIGKILL:
        assert export.returncode == 130 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_reader_that_goes_away_ends_the_export_and_its_workers_quietly(big_store: tuple[Path, str]) -> None:
    folder, db = big_store
    done = subprocess.run(f"'{sys.executable}' -m batcher export big --db '{db}' -o - | head -c 100 >/dev/null; "
                          "echo \"${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash", capture_output=True,
                          text=True, timeout=120, cwd=folder)
    assert done.stdout.strip() == str(128 + signal.SIGPIPE) and done.stderr == ""
    assert gone(db), "an export worker outlived the command"


def test_export_workers_leave_stop_signals_to_the_command(big_store: tuple[Path, str]) -> None:
    """Ctrl-C or SIGTERM to the process group reaches the workers too; the command alone answers it.

    Sent to the workers alone, while they wait on full pipes, the signals
    change nothing: the export goes on and is whole.
    """
    folder, db = big_store
    fifo = folder / "fifo-workers"
    os.mkfifo(fifo)
    export = subprocess.Popen([sys.executable, "-m", "batcher", "export", "big", "--db", db, "-o", str(fifo),
                               "--include-pending"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    reader = os.open(fifo, os.O_RDONLY)
    try:
        received = [os.read(reader, 1 << 16)]
        deadline = time.monotonic() + 30
        while len(batcher_processes(db)) < 3:  # the command and its workers
            assert time.monotonic() < deadline, "no workers started"
            time.sleep(0.05)
        for worker in set(batcher_processes(db)) - {export.pid}:
            for signum in (signal.SIGINT, signal.SIGTERM):
                try:
                    os.kill(worker, signum)
                except ProcessLookupError:
                    pass
        time.sleep(0.3)
        while data := os.read(reader, 1 << 20):
            received.append(data)
        _, err = export.communicate(timeout=60)
    finally:
        os.close(reader)
        try:
            os.killpg(export.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        export.wait()
    assert export.returncode == 0, err
    assert b"".join(received).count(b"\n") == workers.FORK_FROM_LINES + 5000
    assert gone(db), "an export worker outlived the command"


def test_a_big_batch_is_estimated_by_the_workers_as_by_one_process(tmp_path: Path, forking: list[int],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Costing each unfinished job is the slow part of `batcher estimate BATCH`: the workers share it out."""
    from batcher.estimator import estimate_batch
    from batcher.validate import Defaults

    from batcher import tally

    _, engine = filled_store(tmp_path, JOBS)
    more = write_job_file(tmp_path / "more.jsonl", range(JOBS + 1, JOBS + 2001))
    import_file(engine, str(more), "big", Defaults("claude-sonnet-4.5", 100))
    batch = find_batch(engine, "big")
    with write(engine) as conn:  # the statuses were set by hand: the kept totals are brought to them
        tally.rebuild(conn, batch.id)
    forked = estimate_batch(engine, batch, progress=lambda *_: None)
    assert forking == [2]
    serial(monkeypatch)
    alone = estimate_batch(engine, batch)
    assert forking == [2] and forked.to_dict() == alone.to_dict()
    assert forked.jobs == JOBS // 3 + 2000 and set(forked.by_model) == {"claude-haiku-4.5", "claude-sonnet-4.5"}
    # A row whose request no longer rebuilds (the store changed by hand) is one clear error from a worker too.
    with write(engine) as conn:
        conn.execute(text("UPDATE jobs SET source = '{\"prompt\": 1}' WHERE custom_id = 'job-7000'"))
    monkeypatch.setattr(workers, "FORK_FROM_LINES", 1000)
    with pytest.raises(StoreError, match="job 'job-7000': its request cannot be rebuilt"):
        estimate_batch(engine, batch)
    assert forking == [2, 2]
