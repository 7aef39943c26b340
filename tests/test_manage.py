"""Retry and cancel: which jobs move, what is reset, what is kept; the commands; retry then run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import event, func, select

from batcher.db import open_store
from batcher.errors import UsageError
from batcher.manage import cancel, retry
from batcher.schema import attempts, jobs, metadata

from batchdata import fail, make_batch, mixed_batch, statuses, write_job_file


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Any, Any, str]:
    return mixed_batch(tmp_path)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batcher", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def job(engine: Any, custom_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(jobs).where(jobs.c.custom_id == custom_id)).one()


def attempt_rows(engine: Any) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(attempts)).scalar_one()


def test_retry_all_failed_resets_budget_and_error_keeps_history(mixed: Any) -> None:
    engine, batch, _ = mixed
    before = attempt_rows(engine)
    assert retry(engine, batch) == 3
    now = statuses(engine, batch)
    assert [k for k, v in sorted(now.items()) if v == "pending"] == ["job-3", "job-6", "job-7", "job-9"]
    assert now["job-4"] == "canceled" and now["job-10"] == "running" and now["job-1"] == "succeeded"
    row = job(engine, "job-6")
    assert (row.attempts, row.error, row.error_type, row.status_code, row.finished_at) == (0, None, None, None, None)
    assert attempt_rows(engine) == before
    assert retry(engine, batch) == 0


def test_retry_reads_the_failed_jobs_not_the_whole_batch(tmp_path: Path) -> None:
    """On a big batch with few failures, retry must find them through their index. SQLite's
    own count of the instructions it ran tells, whatever the machine's speed."""
    engine, batch, _ = make_batch(tmp_path, 5000)
    fail(engine, batch, "job-2500")
    fail(engine, batch, "job-4000", "overloaded_error", 529, "Overloaded")
    steps = [0]

    def count(dbapi_conn: Any, *_: Any) -> None:
        dbapi_conn.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1), 100)

    event.listen(engine, "checkout", count)
    assert retry(engine, batch, status_codes=[529]) == 1
    assert retry(engine, batch) == 1
    assert retry(engine, batch) == 0
    # Walking the batch's 5,000 jobs costs about 250 hundreds of instructions a retry; the index, a few.
    assert steps[0] < 60
    assert statuses(engine, batch)["job-2500"] == statuses(engine, batch)["job-4000"] == "pending"


@pytest.mark.parametrize("options, moved", [
    ({"error_types": ["overloaded_error"]}, ["job-6"]),
    ({"status_codes": [400]}, ["job-3"]),
    ({"error_types": ["overloaded_error", "connection_error"]}, ["job-6", "job-9"]),
    ({"status_codes": [400, 529]}, ["job-3", "job-6"]),
    ({"error_types": ["overloaded_error"], "status_codes": [400]}, []),
    ({"error_types": ["invalid_request_error"], "status_codes": [400]}, ["job-3"]),
])
def test_retry_filters(mixed: Any, options: dict[str, Any], moved: list[str]) -> None:
    engine, batch, _ = mixed
    before = statuses(engine, batch)
    assert retry(engine, batch, **options) == len(moved)
    after = statuses(engine, batch)
    assert sorted(k for k in after if after[k] != before[k]) == moved
    assert all(after[k] == "pending" for k in moved)


def test_retry_canceled(mixed: Any) -> None:
    engine, batch, _ = mixed
    assert retry(engine, batch, canceled=True) == 1
    assert statuses(engine, batch)["job-4"] == "pending" and job(engine, "job-4").finished_at is None
    assert statuses(engine, batch)["job-3"] == "failed"
    with pytest.raises(UsageError, match="^error_type and status_code choose failed jobs; they do not combine with canceled=True$"):
        retry(engine, batch, error_types=["api_error"], canceled=True)


def test_cancel_marks_only_pending_jobs(mixed: Any) -> None:
    engine, batch, _ = mixed
    assert cancel(engine, batch) == 1
    now = statuses(engine, batch)
    assert now["job-7"] == "canceled" and now["job-10"] == "running" and now["job-3"] == "failed"
    assert job(engine, "job-7").finished_at is not None
    assert cancel(engine, batch) == 0
    assert retry(engine, batch, canceled=True) == 2  # job-4 and job-7
    assert statuses(engine, batch)["job-7"] == "pending"


def test_cli_retry_and_cancel(mixed: Any) -> None:
    engine, batch, db = mixed
    done = cli("retry", "--db", db, "--error-type", "overloaded_error")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("batch b: 1 failed job(s) back to pending; send them with: batcher run b")
    done = cli("retry", "b", "--db", db, "--status-code", "400", "--status-code", "529")
    assert "1 failed job(s) back to pending" in done.stdout
    done = cli("cancel", "b", "--db", db)
    assert done.returncode == 0 and done.stdout.strip() == "batch b: 3 pending job(s) canceled"
    done = cli("retry", "b", "--db", db, "--canceled")
    assert done.stdout.startswith("batch b: 4 canceled job(s) back to pending")
    done = cli("retry", "b", "--db", db)
    assert done.returncode == 0 and done.stdout.strip() == "batch b: 1 failed job(s) back to pending; send them " \
        "with: batcher run b"


@pytest.mark.parametrize("args, message", [
    (["retry", "nope"], "batcher: error: no batch named 'nope'"),
    (["cancel", "nope"], "batcher: error: no batch named 'nope'"),
    (["retry", "b", "--canceled", "--error-type", "api_error"], "batcher: error: --error-type and --status-code"),
    (["retry", "b", "--status-code", "abc"], "batcher: error: --status-code 'abc' is not a whole number"),
])
def test_cli_errors_exit_2(mixed: Any, args: list[str], message: str) -> None:
    _, _, db = mixed
    done = cli(*args, "--db", db)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    if message.startswith("batcher: error"):
        assert len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", ["retry", "cancel", "delete", "status", "export"])
def test_help_has_an_example(command: str) -> None:
    done = cli(command, "--help")
    assert done.returncode == 0 and "Example" in done.stdout


# -- end to end: retry, then a real run against the simulator ----------------------------


@pytest.mark.skipif(importlib.util.find_spec("batcher.runner") is None, reason="the runner is not there yet")
def test_retry_then_run_completes_the_failures_against_the_simulator(mixed: Any, simulator: Any) -> None:
    engine, batch, db = mixed
    env = {**os.environ, "POE_API_KEY": "test"}
    assert cli("cancel", "b", "--db", db).returncode == 0  # job-7; job-10 is left running by a dead run
    assert cli("retry", "b", "--db", db).returncode == 0  # job-3, job-6, job-9
    assert cli("retry", "b", "--db", db, "--canceled").returncode == 0  # job-4, job-7
    done = cli("run", "b", "--db", db, "--base-url", simulator.base_url, "--quiet", env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(statuses(engine, batch).values()) == {"succeeded"}
    # Only the six unfinished jobs were sent: answers already stored are kept.
    assert simulator.stats()["succeeded"] == 6
    out = cli("export", "b", "--db", db, "-o", "-", "--format", "text")
    lines = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert [o["custom_id"] for o in lines] == [f"job-{i}" for i in range(1, 11)]
    assert all(o["status"] == "succeeded" and o["text"] for o in lines)
    # The retried jobs' answers come from the simulator; the earlier ones are kept.
    assert lines[0]["text"] == "Answer to job-1."
    assert lines[2]["text"] != "Answer to job-3." and "Question 3?" in lines[2]["text"]
    assert job(engine, "job-6").attempts >= 1 and job(engine, "job-6").error is None


def test_a_run_leaving_canceled_jobs_exits_1_and_says_how_to_send_them(mixed: Any, simulator: Any) -> None:
    """Exit 0 means every job succeeded: a script must not take a canceled batch for a done one."""
    engine, batch, db = mixed
    env = {**os.environ, "POE_API_KEY": "test"}
    assert cli("retry", "b", "--db", db).returncode == 0  # the failures go back: only canceled ones stay unanswered
    done = cli("run", "b", "--db", db, "--base-url", simulator.base_url, "--quiet", env=env, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 job(s) of the batch are canceled, not answered; send them with: batcher retry b --canceled" in (
        done.stdout + done.stderr)
    assert cli("retry", "b", "--db", db, "--canceled").returncode == 0
    done = cli("run", "b", "--db", db, "--base-url", simulator.base_url, "--quiet", env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(statuses(engine, batch).values()) == {"succeeded"}


# -- delete ---------------------------------------------------------------------------


def rows_of(db: str) -> dict[str, int]:
    """Rows in every table of the store."""
    engine = open_store(db, create=False)
    try:
        with engine.connect() as conn:
            return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                    for t in metadata.sorted_tables}
    finally:
        engine.dispose()


def test_delete_takes_a_batch_whole_and_leaves_the_others(tmp_path: Path, simulator: Any) -> None:
    import batcher

    db = str(tmp_path / "store.db")
    with batcher.Store(db) as store:  # the setting up is done in-process: the command under test is delete
        for name, n in (("a", 12), ("b", 5)):
            store.add(name, write_job_file(tmp_path / f"{name}.jsonl", range(1, n + 1)), max_tokens=64)
        summary = store.batch("a").run(api_key="test", base_url=simulator.base_url, reuse=True, progress=False)
        assert summary.exit_code == 0, summary
    before = rows_of(db)
    assert before["answers"] == 12 and before["attempts"] == 12 and before["jobs"] == 17
    # Not from a terminal, and not told --yes: nothing goes.
    done = cli("delete", "a", "--db", db)
    assert done.returncode == 2 and done.stderr == "batcher: error: batch 'a' holds 12 job(s), 12 answered: " \
        "add --yes to delete it\n"
    assert rows_of(db) == before
    done = cli("delete", "a", "--db", db, "--yes", "--compact")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "batch a: deleted, with its 12 job(s)"
    assert done.stdout.splitlines()[1].startswith("store compacted: ")
    after = rows_of(db)
    assert after["jobs"] == 5 and after["answers"] == after["attempts"] == after["runs"] == 0
    assert after["batches"] == after["imports"] == after["batch_tallies"] == 1
    assert cli("batches", "--db", db).stdout.startswith("b\t")
    assert cli("status", "b", "--db", db, "--verify").returncode == 0
    done = cli("delete", "a", "--db", db, "--yes")
    assert done.returncode == 2 and done.stderr.startswith("batcher: error: no batch named 'a' (batches here: b)")


def on_a_terminal(*args: str, typed: bytes) -> tuple[int, str]:
    """``batcher ARGS`` with a terminal for stdin on which ``typed`` is typed; its exit code and stderr."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "batcher", *args], stdin=follower, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        os.write(leader, typed)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(leader)
        os.close(follower)
    return proc.returncode, err.decode()


@pytest.mark.parametrize("typed, deleted", [(b"n\n", False), (b"\x04", False), (b"y\n", True)])
def test_delete_asks_on_a_terminal_and_the_end_of_input_is_a_no(mixed: Any, typed: bytes, deleted: bool) -> None:
    _, _, db = mixed
    code, err = on_a_terminal("delete", "b", "--db", db, typed=typed)
    assert code == 0, err
    assert err.startswith("batch 'b' holds 10 job(s), ") and "Delete it? [y/N]: " in err
    assert ("batcher: nothing deleted" in err) is not deleted
    assert rows_of(db)["batches"] == (0 if deleted else 1)


def test_delete_refuses_a_live_run_and_spends_the_handle(tmp_path: Path) -> None:
    import batcher
    from batcher.jobqueue import finish_run, start_run
    from batcher.store import find_batch

    path = tmp_path / "store.db"
    with batcher.Store(path) as store:
        b = store.add("big", [f"Prompt {i}: " + "words " * 40 for i in range(3000)])
        record = find_batch(store.engine, "big")
        run_id = start_run(store.engine, record.id, "big", 500, "http://127.0.0.1:9")  # this process: alive
        with pytest.raises(batcher.BatchBusy, match="being run by another thread of this process .*; stop it, then delete the batch"):
            b.delete()
        assert b.status()["total"] == 3000
        finish_run(store.engine, run_id, "interrupted")
        other = store.batch("big")  # a second handle, made before the delete
        assert b.delete() == 3000
        with pytest.raises(batcher.UsageError, match="batch 'big' was deleted: this handle can no longer be used"):
            b.results()
        freed = store.compact()
        assert freed > 1_000_000 and path.stat().st_size < 500_000
        assert store.batches() == []
        # A batch made since under the same name (SQLite even gives it the same id) is not the old handles' one.
        again = store.add("big", ["Once more."])
        assert find_batch(store.engine, "big").id == record.id
        for stale in (b, other):
            with pytest.raises(batcher.UsageError, match="batch 'big' was deleted"):
                stale.delete()
            with pytest.raises(batcher.UsageError, match="batch 'big' was deleted"):
                stale.cancel()
        assert again.status()["pending"] == 1


def test_a_delete_killed_midway_leaves_the_batch_whole(tmp_path: Path) -> None:
    """One transaction: kill -9 during the delete leaves every row of the batch; the next delete takes it all."""
    import signal
    import sqlite3
    import time

    engine, _, db = make_batch(tmp_path, 40_000, "big")
    make_batch(tmp_path, 3, "other")
    engine.dispose()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the log is empty: it grows again as the delete works
    whole = rows_of(db)
    wal = Path(db + "-wal")
    proc = subprocess.Popen([sys.executable, "-m", "batcher", "delete", "big", "--db", db, "--yes"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    # A tenth of the way: deleting 40,000 jobs writes about 20 MB of changed pages to the log.
    while (not wal.exists() or wal.stat().st_size < 2_000_000) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert rows_of(db) == whole
    assert cli("status", "big", "--db", db, "--verify").returncode == 0
    done = cli("delete", "big", "--db", db, "--yes")
    assert done.returncode == 0 and done.stdout == "batch big: deleted, with its 40,000 job(s)\n"
    now = rows_of(db)
    assert now["jobs"] == 3 and now["batches"] == now["imports"] == now["batch_tallies"] == 1
    assert cli("status", "other", "--db", db, "--verify").returncode == 0
