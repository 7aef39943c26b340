"""The job store: where it lives, how SQLite is set up, and schema upgrades in place."""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.exc import IntegrityError

from batcher.db import DEFAULT_DB, _setup_sqlite, open_store, resolve_url, write
from batcher.errors import StoreBusy, StoreError, UsageError
from batcher.importer import import_file
from batcher.jobfile import numbered_lines
from batcher.prepare import defaults_text, prepare_chunk, request_body
from batcher.reuse import request_key
from batcher.schema import answers, attempts, batches, imports, jobs, metadata
from batcher.validate import Defaults

DEFAULTS = Defaults(model="claude-haiku-4.5", max_tokens=32)


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(files("batcher.migrations")))
    return cfg


HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def revision(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: a file created with the default 0644/0666 would show it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def write_jobs(path: Path, n: int) -> Path:
    path.write_bytes(b"".join(orjson.dumps({"custom_id": f"j{i}", "prompt": f"Q{i}?"}) + b"\n"
                              for i in range(1, n + 1)))
    return path


def test_revisions_are_linear_and_numbered_in_order() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    walked = [r.revision for r in script.walk_revisions()]
    assert walked == sorted(walked, reverse=True) and walked[-1] == "0001" and "0003" in walked
    assert HEAD == walked[0]


# --- where the store is -----------------------------------------------------

def test_resolve_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BATCHER_DB", raising=False)
    cwd = os.getcwd()
    assert DEFAULT_DB == "batcher.db"
    assert resolve_url(None) == f"sqlite:///{cwd}/batcher.db"
    assert resolve_url("sub/x.db") == f"sqlite:///{cwd}/sub/x.db"
    assert resolve_url("/abs/y.db") == "sqlite:////abs/y.db"
    assert resolve_url("sqlite:///rel.db") == "sqlite:///rel.db"
    assert resolve_url("postgresql://u:p@h/db") == "postgresql://u:p@h/db"
    monkeypatch.setenv("BATCHER_DB", "from-env.db")
    assert resolve_url(None) == f"sqlite:///{cwd}/from-env.db"
    assert resolve_url("given.db") == f"sqlite:///{cwd}/given.db"  # --db wins over the environment
    monkeypatch.setenv("BATCHER_DB", "sqlite:////elsewhere/z.db")
    assert resolve_url(None) == "sqlite:////elsewhere/z.db"


def test_a_store_path_may_hold_what_urls_give_meaning_to(tmp_path: Path) -> None:
    """%, ?, # and non-ASCII in a folder name: the store is that file, and every command finds it."""
    folder = tmp_path / "a b%41 é#x?y"
    folder.mkdir()
    db = str(folder / "store.db")
    (folder / "jobs.jsonl").write_text('{"custom_id": "a", "prompt": "hi"}\n')
    cli = [sys.executable, "-m", "batcher"]
    imported = subprocess.run([*cli, "import", str(folder / "jobs.jsonl"), "--db", db, "--model", "claude-haiku-4.5",
                               "--max-tokens", "10"], capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert "store.db" in os.listdir(folder) and sorted(os.listdir(tmp_path)) == ["a b%41 é#x?y"]
    shown = subprocess.run([*cli, "status", "jobs", "--db", db, "--json"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and orjson.loads(shown.stdout)["pending"] == 1, shown.stderr
    missing = subprocess.run([*cli, "status", "--db", str(folder / "other.db")], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode != 0 and str(folder / "other.db") in missing.stderr


def test_default_file_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BATCHER_DB", raising=False)
    engine = open_store()
    engine.dispose()
    assert (tmp_path / "batcher.db").is_file()
    assert revision(tmp_path / "batcher.db") == HEAD


def test_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BATCHER_DB", str(tmp_path / "env.db"))
    open_store().dispose()
    assert (tmp_path / "env.db").is_file() and not (tmp_path / "batcher.db").exists()


# --- the file: private, WAL, busy timeout, foreign keys ---------------------

def test_new_file_is_private(tmp_path: Path, open_umask: None) -> None:
    db = tmp_path / "store.db"
    engine = open_store(str(db))
    assert mode(db) == 0o600
    import_file(engine, str(write_jobs(tmp_path / "a.jsonl", 3)), "a", DEFAULTS)
    with engine.connect() as conn:  # WAL and shared-memory files follow the database's mode
        conn.execute(select(jobs.c.id)).all()
        assert mode(f"{db}-wal") == 0o600
        assert mode(f"{db}-shm") == 0o600
    engine.dispose()
    assert mode(db) == 0o600


def test_new_file_from_a_url_is_private(tmp_path: Path, open_umask: None) -> None:
    db = tmp_path / "url.db"
    engine = open_store(f"sqlite:///{db}")
    report = import_file(engine, str(write_jobs(tmp_path / "a.jsonl", 2)), "a", DEFAULTS)
    engine.dispose()
    assert report.added == 2
    assert mode(db) == 0o600
    assert revision(db) == HEAD


def test_an_empty_db_is_refused_not_taken_for_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"^db is empty: give the job store's path, or leave it out for ./batcher.db"):
        open_store("")
    done = subprocess.run([sys.executable, "-m", "batcher", "import", "-", "--batch", "b", "--db", ""], input="",
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (2, "batcher: error: --db is empty: give the job store's path, or "
                                                 "leave it out for ./batcher.db\n")
    assert not (tmp_path / DEFAULT_DB).exists()
    monkeypatch.setenv("BATCHER_DB", "")  # an empty variable is an unset one
    assert resolve_url(None).endswith(f"/{DEFAULT_DB}")


def test_relative_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    open_store("sqlite:///rel.db").dispose()
    assert revision(tmp_path / "rel.db") == HEAD


def test_existing_file_keeps_its_mode(tmp_path: Path, open_umask: None) -> None:
    db = tmp_path / "shared.db"
    open_store(str(db)).dispose()
    os.chmod(db, 0o640)
    open_store(str(db)).dispose()
    assert mode(db) == 0o640


def test_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    engine = open_store(str(db))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    engine.dispose()
    # WAL is a property of the file: a plain connection sees it too.
    with sqlite3.connect(db) as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_foreign_keys_are_enforced(tmp_path: Path) -> None:
    engine = open_store(str(tmp_path / "store.db"))
    now = time.time()
    with pytest.raises(IntegrityError, match="FOREIGN KEY"):
        with write(engine) as conn:
            conn.execute(imports.insert().values(batch_id=999, source="/x", at=now, added=0, unchanged=0, rejected=0))
    # And ON DELETE CASCADE works: deleting a batch takes its jobs and imports.
    import_file(engine, str(write_jobs(tmp_path / "a.jsonl", 3)), "a", DEFAULTS)
    with write(engine) as conn:
        conn.execute(batches.delete())
    with engine.connect() as conn:
        assert conn.execute(select(jobs.c.id)).all() == []
        assert conn.execute(select(imports.c.id)).all() == []


def test_busy_store_is_waited_for_not_failed(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    engine = open_store(str(db))
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock...
    release = threading.Timer(0.6, blocker.execute, args=("COMMIT",))
    release.start()
    try:
        start = time.monotonic()
        report = import_file(engine, str(write_jobs(tmp_path / "a.jsonl", 2)), "a", DEFAULTS)
        waited = time.monotonic() - start
    finally:
        release.join()
        blocker.close()
    assert report.added == 2
    assert waited >= 0.4  # ...and the import waited for it instead of failing with "database is locked"


def test_a_lock_held_past_the_wait_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("batcher.db.BUSY_TIMEOUT_S", 0.2)
    db = tmp_path / "store.db"
    engine = open_store(str(db))
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusy) as caught:
            import_file(engine, str(write_jobs(tmp_path / "a.jsonl", 2)), "a", DEFAULTS)
    finally:
        blocker.close()
    assert str(caught.value) == f"{db}: cannot use the job store: database is locked: another process is writing to it"
    assert caught.value.exit_code == 4
    assert import_file(engine, str(tmp_path / "a.jsonl"), "a", DEFAULTS).added == 2  # nothing was half-written


def test_the_writers_of_one_process_take_turns_without_timing_out(tmp_path: Path) -> None:
    # As in `batcher serve`: a score of threads, each committing small writes many times a second
    # and waiting at most a run's 2 s (here 0.5 s). SQLite's own busy wait polls, and left some
    # of them out past their wait; queued on one lock they all get through.
    engine = open_store(str(tmp_path / "store.db"))
    with write(engine) as conn:
        conn.execute(batches.insert().values(name="b", source="-", created_at=0.0))
    deadline = time.monotonic() + 1.5

    def writer() -> int:
        done = 0
        while time.monotonic() < deadline:
            with write(engine, 0.5) as conn:
                conn.execute(text("UPDATE batches SET created_at = created_at + 1"))
                time.sleep(0.002)  # a transaction that takes a little while, as a claim does
            done += 1
        return done

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        done = sum(f.result() for f in [pool.submit(writer) for _ in range(24)])  # raises StoreBusy if one timed out
    with engine.connect() as conn:
        assert conn.execute(text("SELECT created_at FROM batches")).scalar() == done
    engine.dispose()


def test_a_thread_of_this_process_holding_the_store_is_named_as_such(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    engine = open_store(str(db))
    with write(engine):
        with pytest.raises(StoreBusy) as caught:
            concurrent.futures.ThreadPoolExecutor(1).submit(lambda: write(engine, 0.2).__enter__()).result()
    assert str(caught.value) == (f"{db}: cannot use the job store: another thread of this process has been "
                                 "writing to it for over 0.2 s")
    engine.dispose()


# --- errors as one line -----------------------------------------------------

def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        open_store(str(tmp_path / "nope" / "x.db"))
    assert str(caught.value) == f"{tmp_path}/nope/x.db: folder {tmp_path}/nope does not exist"
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("readonly", [False, True])
def test_a_folder_given_for_the_store_is_named_as_one(tmp_path: Path, readonly: bool) -> None:
    (tmp_path / "jobs.db").mkdir()
    with pytest.raises(UsageError) as caught:
        open_store(str(tmp_path / "jobs.db"), readonly=readonly)
    assert str(caught.value) == f"{tmp_path}/jobs.db: is a folder, not a job store; check db/BATCHER_DB"


def test_reading_commands_do_not_create_a_database(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        open_store(str(tmp_path / "typo.db"), create=False)
    assert "no such database" in str(caught.value)
    assert not (tmp_path / "typo.db").exists()


def test_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("this is not sqlite\n" * 100)
    with pytest.raises(StoreError) as caught:
        open_store(str(junk))
    assert str(caught.value) == f"{junk}: cannot open database: file is not a database"


def test_url_password_never_shown(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as caught:
        open_store("nosuchdialect://user:s3cret-pw@db.example/prod")
    assert "s3cret-pw" not in str(caught.value)
    assert str(caught.value).startswith("nosuchdialect://user:***@db.example/prod: cannot open database")


def test_database_from_a_newer_version_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    open_store(str(db)).dispose()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0999'")
    with pytest.raises(StoreError) as caught:
        open_store(str(db))
    assert str(caught.value).startswith(f"{db}: cannot upgrade the database schema: ")
    assert "'0999'" in str(caught.value)


# --- schema -----------------------------------------------------------------

def test_fresh_store_has_the_whole_schema(tmp_path: Path) -> None:
    engine = open_store(str(tmp_path / "store.db"))
    inspector = inspect(engine)
    assert set(inspector.get_table_names()) >= {"alembic_version", "batches", "imports", "jobs", "attempts", "runs",
                                                "batch_tallies", "model_tallies", "failure_tallies", "timing_tallies",
                                                "api_batches", "answers"}
    for table in metadata.sorted_tables:
        assert {c["name"] for c in inspector.get_columns(table.name)} == set(table.c.keys()), table.name
    assert {i["name"] for i in inspector.get_indexes("jobs")} >= {"ix_jobs_batch_order", "ix_jobs_pending",
                                                                   "ix_jobs_running", "ix_jobs_failed"}
    engine.dispose()
    assert revision(tmp_path / "store.db") == HEAD


def test_reopen_does_not_migrate_again(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    engine = open_store(str(db))
    import_file(engine, str(write_jobs(tmp_path / "a.jsonl", 2)), "a", DEFAULTS)
    engine.dispose()
    engine = open_store(str(db))
    with engine.connect() as conn:
        assert conn.execute(select(jobs.c.custom_id).order_by(jobs.c.id)).scalars().all() == ["j1", "j2"]
    assert revision(db) == HEAD


def migrate(db: Path | str, to: str, down: bool = False) -> Any:
    """Bring the SQLite store ``db`` to revision ``to`` with Alembic; return an engine on it."""
    engine = create_engine(f"sqlite:///{db}")
    _setup_sqlite(engine)
    cfg = alembic_config()
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, to)
        conn.commit()
    return engine


def make_0001_store(db: Path, job_file: Path) -> None:
    """A store left at revision 0001 holding batch ``old``: the file's jobs, j1 answered after two attempts."""
    engine = migrate(db, "0001")
    prepared = prepare_chunk(list(numbered_lines(str(job_file))), DEFAULTS)
    assert not prepared.errors
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO batches (id, name, source, created_at) VALUES (1, 'old', ?, 1000.0)",
                             (str(job_file),))
        conn.exec_driver_sql("INSERT INTO imports (id, batch_id, source, at, added, unchanged, rejected) "
                             "VALUES (1, 1, ?, 1000.0, ?, 0, 0)", (str(job_file), len(prepared.rows)))
        for line, custom_id, body_hash, source, extra in prepared.rows:
            body = request_body(source, line, defaults_text(DEFAULTS))  # stored in full before 0003
            done = custom_id == "j1"
            conn.exec_driver_sql(
                "INSERT INTO jobs (batch_id, import_id, line, custom_id, body, body_hash, source, extra, status,"
                " attempts, created_at, updated_at, finished_at, response, model, input_tokens, output_tokens)"
                " VALUES (1, 1, ?, ?, ?, ?, ?, ?, ?, ?, 1000.0, 1001.0, ?, ?, ?, ?, ?)",
                (line, custom_id, body, body_hash, source, extra, "succeeded" if done else "pending",
                 2 if done else 0, 1001.0 if done else None, '{"content": "old answer"}' if done else None,
                 "claude-haiku-4-5-20251001" if done else None, 11 if done else None, 22 if done else None))
        conn.exec_driver_sql("INSERT INTO attempts (job_id, started_at, status_code, error_type, latency_ms) "
                             "VALUES (1, 1000.0, 529, 'overloaded_error', 40), (1, 1000.5, 200, NULL, 50)")
    engine.dispose()


def test_store_at_0001_upgrades_in_place_keeping_its_data(tmp_path: Path) -> None:
    db, job_file = tmp_path / "old.db", write_jobs(tmp_path / "old.jsonl", 4)
    make_0001_store(db, job_file)
    assert revision(db) == "0001"
    with sqlite3.connect(db) as conn:
        assert "runs" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    engine = open_store(str(db))
    assert revision(db) == HEAD
    inspector = inspect(engine)
    assert "runs" in inspector.get_table_names()
    assert {"streamed", "ttft_ms"} <= {c["name"] for c in inspector.get_columns("jobs")}
    assert {"streamed", "ttft_ms"} <= {c["name"] for c in inspector.get_columns("attempts")}
    with engine.connect() as conn:
        assert conn.execute(select(batches.c.id, batches.c.name, batches.c.created_at)).all() == [(1, "old", 1000.0)]
        rows = conn.execute(select(jobs.c.custom_id, jobs.c.line, jobs.c.status, jobs.c.attempts, jobs.c.response,
                                   jobs.c.input_tokens, jobs.c.streamed).order_by(jobs.c.id)).all()
        assert rows == [("j1", 1, "succeeded", 2, '{"content": "old answer"}', 11, None),
                        ("j2", 2, "pending", 0, None, None, None),
                        ("j3", 3, "pending", 0, None, None, None),
                        ("j4", 4, "pending", 0, None, None, None)]
        kept = conn.execute(select(attempts.c.job_id, attempts.c.status_code, attempts.c.error_type,
                                   attempts.c.streamed).order_by(attempts.c.id)).all()
        assert kept == [(1, 529, "overloaded_error", False), (1, 200, None, False)]
        # The answer already held is filed for reuse under its request's key.
        body = conn.execute(select(jobs.c.body).where(jobs.c.custom_id == "j1")).scalar_one()
        assert conn.execute(select(answers.c.job_id, answers.c.request_key)).all() == [
            (1, request_key(orjson.loads(body)))]

    # The upgraded store is fully usable: re-importing the file finds every job unchanged,
    # and the answered one keeps its answer. An import recorded before the file's
    # fingerprint was kept has none: the file is read again, once.
    same = import_file(engine, str(job_file), "old", DEFAULTS)
    assert (same.added, same.unchanged, same.unread) == (0, 4, False)
    assert import_file(engine, str(job_file), "old", DEFAULTS).unread
    write_jobs(job_file, 5)
    report = import_file(engine, str(job_file), "old", DEFAULTS)
    assert (report.added, report.unchanged, report.rejected) == (1, 4, 0)
    with engine.connect() as conn:
        j1 = conn.execute(select(jobs).where(jobs.c.custom_id == "j1")).one()
        assert (j1.status, j1.response, j1.attempts) == ("succeeded", '{"content": "old answer"}', 2)
        assert conn.execute(select(jobs.c.custom_id).where(jobs.c.status == "pending")
                            .order_by(jobs.c.id)).scalars().all() == ["j2", "j3", "j4", "j5"]
    engine.dispose()


def test_upgrade_with_the_command_line(tmp_path: Path) -> None:
    """A command opening an old store upgrades it before reading (here: status)."""
    import subprocess
    import sys

    db, job_file = tmp_path / "old.db", write_jobs(tmp_path / "old.jsonl", 3)
    make_0001_store(db, job_file)
    done = subprocess.run([sys.executable, "-m", "batcher", "status", "--db", str(db), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status = orjson.loads(done.stdout)
    assert (status["batch"], status["total"], status["succeeded"], status["pending"]) == ("old", 3, 1, 2)
    assert revision(db) == HEAD


@pytest.mark.parametrize("db", ["sqlite://", "sqlite:///:memory:", ":memory:"])
def test_an_in_memory_store_is_refused(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its answers would vanish with the call; a plain ":memory:" once made a file of that name.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="must be a file"):
        open_store(db)
    assert list(tmp_path.iterdir()) == []


def test_threads_opening_a_new_store_at_once_all_get_it(tmp_path: Path) -> None:
    # The schema is made once, by one of them; the others wait and find it made.
    db = str(tmp_path / "new.db")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        engines = list(pool.map(lambda _: open_store(db), range(6)))
    assert revision(db) == HEAD
    for engine in engines:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 0
        engine.dispose()
