"""Runs that cannot work as configured, and a store that cannot be written."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import event, select

from batcher.db import open_store
from batcher.errors import StoreBusy, StoreFull
from batcher.runner import RunConfig, Runner, run_batch
from batcher.schema import runs
from batcher.status import batch_status
from batcher.store import find_batch
from test_runner import PROMPTS, run, stored, write_jobs
from batcher.importer import import_file
from batcher.validate import Defaults


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_unreachable_base_url_stops_the_run_with_nothing_failed(tmp_path: Path) -> None:
    class Nowhere:
        base_url = closed_port_url()

    summary, engine = run(tmp_path, Nowhere, PROMPTS, concurrency=4)
    assert (summary.outcome, summary.exit_code) == ("misconfigured", 2)
    assert "cannot reach http://127.0.0.1:" in summary.message and "check base_url / POE_BASE_URL" in summary.message
    assert {r.status for r in stored(engine).values()} == {"pending"}


@pytest.mark.parametrize("jobs, max_attempts", [(1, 6), (3, 2)])
def test_a_trial_of_a_few_jobs_against_an_unreachable_url_fails_none_of_them(
        tmp_path: Path, jobs: int, max_attempts: int) -> None:
    """Fewer jobs than the guard's count must not use up their attempts and fail for good: the
    corrected run would then send nothing."""
    class Nowhere:
        base_url = closed_port_url()

    started = time.monotonic()
    summary, engine = run(tmp_path, Nowhere, PROMPTS[:jobs], concurrency=1, max_attempts=max_attempts)
    assert (summary.outcome, summary.exit_code, summary.failed) == ("misconfigured", 2, 0)
    assert {r.status for r in stored(engine).values()} == {"pending"}
    assert time.monotonic() - started < 15  # held attempts keep the first back-off: the guard stops it at once


@pytest.mark.parametrize("status", [404, 405])
def test_404_on_everything_stops_the_run_with_nothing_failed(tmp_path: Path, simulator: Any, status: int) -> None:
    """405 too: a website at --base-url that takes no POST at /v1/messages."""
    sim = simulator(fail_status={status: 1.0})
    summary, engine = run(tmp_path, sim, PROMPTS, concurrency=4)
    assert (summary.outcome, summary.exit_code) == ("misconfigured", 2)
    assert f"every request so far got HTTP {status} from " in summary.message
    assert {r.status for r in stored(engine).values()} == {"pending"}
    assert sim.stats()["requests"] <= 8 + 4


def test_a_404_after_answers_fails_only_its_job(tmp_path: Path, simulator: Any) -> None:
    sim = simulator()
    prompts = [f"fine {i}" for i in range(12)] + ["gone #sim:status=404"]
    summary, engine = run(tmp_path, sim, prompts, concurrency=2)
    assert (summary.exit_code, summary.failed) == (1, 1)
    assert stored(engine)["j12"].status_code == 404


class CappedStore:
    """A real store whose connections may grow the file only up to ``cap`` pages:
    SQLite's own "database or disk is full", which raising the cap mends, as
    freeing disk space would."""

    def __init__(self, tmp_path: Path, jobs: int) -> None:
        self.db = str(tmp_path / "full.db")
        engine = open_store(self.db)
        prompts = [f"a longer question number {i} " * 8 for i in range(jobs)]
        import_file(engine, str(write_jobs(tmp_path / "jobs.jsonl", prompts)), defaults=Defaults("claude-haiku-4.5", 64))
        with engine.connect() as conn:
            self.cap = conn.exec_driver_sql("PRAGMA page_count").scalar()  # no room for the answers
        engine.dispose()
        self.engine = open_store(self.db)
        event.listen(self.engine, "checkout", self._apply)
        self.engine.dispose()

    def _apply(self, dbapi_conn: Any, *_: Any) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count = {self.cap}")

    def make_room(self) -> None:
        self.cap = 1 << 30

    def runner(self, sim: Any) -> Runner:
        return Runner(self.engine, find_batch(self.engine, "jobs"), "key",
                      RunConfig(rpm=6000, base_url=sim.base_url, handle_signals=False, concurrency=8))


def test_a_full_store_holds_the_answers_and_the_run_goes_on_once_there_is_room(
        tmp_path: Path, simulator: Any, capfd: Any) -> None:
    sim = simulator()
    store = CappedStore(tmp_path, 150)
    seen: list[tuple[float, int | None, int]] = []

    def watch(snapshot: Any) -> None:
        seen.append((time.monotonic(), snapshot.held, sim.stats()["requests"]))
        held_since = next((at for at, held, _ in seen if held is not None), None)
        if held_since is not None and time.monotonic() - held_since > 2.0:
            store.make_room()

    summary = anyio.run(store.runner(sim).run, watch)
    assert summary.exit_code == 0
    assert {r.status for r in stored(store.engine).values()} == {"succeeded"}
    assert sim.stats()["requests"] == 150  # no answer lost, none paid for twice
    full = [(held, requests) for _, held, requests in seen if held is not None]
    assert full and max(held for held, _ in full) > 0
    # Nothing starts while the store is full, but the few admitted just before it filled.
    assert full[-1][1] - full[0][1] <= 8
    err = capfd.readouterr().err
    assert "full.db: cannot use the job store: database or disk is full: no request starts until there is room" in err
    assert "the store has room again; sending resumes" in err


def lock_holder(db: str, release: threading.Event, most_s: float) -> threading.Thread:
    """Another connection holding the store's write lock, as a large import does, until
    ``release`` is set or ``most_s`` have passed (start the thread to take it)."""
    def hold() -> None:
        conn = sqlite3.connect(db, isolation_level=None, timeout=10)
        conn.execute("BEGIN IMMEDIATE")
        release.wait(most_s)
        conn.execute("COMMIT")
        conn.close()

    return threading.Thread(target=hold)


def test_a_store_another_process_keeps_locked_holds_the_answers_and_the_run_goes_on_once_it_is_free(
        tmp_path: Path, simulator: Any, capfd: Any, monkeypatch: Any) -> None:
    """A large import into the same store holds its write lock from start to commit: past the
    wait for it, the run must neither end nor drop the answers it has paid for."""
    monkeypatch.setattr("batcher.jobqueue.RUN_WAIT_S", 0.3)
    sim = simulator()
    store = CappedStore(tmp_path, 150)
    store.make_room()
    holder = lock_holder(store.db, threading.Event(), 2.5)
    seen: list[tuple[int | None, str | None]] = []

    def watch(snapshot: Any) -> None:
        seen.append((snapshot.held, snapshot.stall))
        if snapshot.done >= 20 and holder.ident is None:
            holder.start()

    summary = anyio.run(store.runner(sim).run, watch)
    holder.join()
    assert summary.exit_code == 0
    assert {r.status for r in stored(store.engine).values()} == {"succeeded"}
    assert sim.stats()["requests"] == 150  # no answer lost, none paid for twice
    assert any(stall and stall.startswith("store locked: paused, ") for _, stall in seen)
    err = capfd.readouterr().err
    assert ("full.db: cannot use the job store: database is locked: another process is writing to it: "
            "no request starts until it is free") in err
    assert "the store is free again; sending resumes" in err


def test_a_stop_while_another_process_keeps_the_store_locked_ends_at_once(
        tmp_path: Path, simulator: Any, monkeypatch: Any) -> None:
    """No request is in flight and no claim can come: the stop must not wait out the grace, nor
    the lock to close the run's row (the next run closes it)."""
    monkeypatch.setattr("batcher.jobqueue.RUN_WAIT_S", 0.3)
    sim = simulator()
    store = CappedStore(tmp_path, 150)
    store.make_room()
    runner = store.runner(sim)
    release = threading.Event()
    holder = lock_holder(store.db, release, 20)
    stopped_at: list[float] = []

    def watch(snapshot: Any) -> None:
        if snapshot.done >= 20 and holder.ident is None:
            holder.start()
        # Only the holder's lock counts: on a loaded machine, the run's own writer and claimer may
        # keep each other out past the short wait set here, and that pause passes by itself.
        if snapshot.stall and holder.ident is not None and not stopped_at:
            stopped_at.append(time.monotonic())
            runner.request_stop()

    given_up = 0
    try:
        try:  # what was in flight is stored or given up: given up if the writer held any of it
            assert anyio.run(runner.run, watch).outcome == "interrupted"
        except StoreBusy as exc:
            message = str(exc)
            assert message.startswith(f"{store.db}: cannot use the job store: database is locked: another process "
                                      "is writing to it; the outcome of ")
            given_up = int(message.split("the outcome of ")[1].split(" ")[0])
        took = time.monotonic() - stopped_at[0]
    finally:
        release.set()
        if holder.ident is not None:
            holder.join()
    assert took < 7  # about 3 s of retries spaced 1 s apart; the grace alone is 10 s, the store's own wait 30 s
    answered = sum(r.status == "succeeded" for r in stored(store.engine).values())
    assert sim.stats()["requests"] == answered + given_up  # every request paid for is stored or named
    # Once the store is free, the row left open is closed from this process, which lives on
    # (a notebook): else other processes would be refused the batch while it does.
    deadline = time.monotonic() + 10
    outcome = None
    while outcome is None and time.monotonic() < deadline:
        time.sleep(0.1)
        with store.engine.connect() as conn:
            outcome = conn.execute(select(runs.c.outcome).where(runs.c.id == runner.run_id)).scalar()
    assert outcome in ("failed", "interrupted")
    assert batch_status(store.engine, find_batch(store.engine, "jobs"))["running"] == 0
    assert {r.status for r in stored(store.engine).values()} == {"succeeded", "pending"}


def test_a_run_stopped_while_the_store_is_full_says_in_one_line_what_it_could_not_store(
        tmp_path: Path, simulator: Any) -> None:
    sim = simulator()
    store = CappedStore(tmp_path, 150)
    runner = store.runner(sim)

    def watch(snapshot: Any) -> None:
        if snapshot.held:
            runner.request_stop()

    with pytest.raises(StoreFull) as caught:
        anyio.run(runner.run, watch)
    message = str(caught.value)
    assert message.startswith(f"{store.db}: cannot use the job store: database or disk is full; the outcome of ")
    assert message.endswith(" job(s) could not be stored: the next run sends them again")
    assert "\n" not in message
    store.engine.dispose()

    engine = open_store(store.db)
    summary = anyio.run(run_batch, engine, find_batch(engine, "jobs"), "key",
                        RunConfig(rpm=6000, base_url=sim.base_url, handle_signals=False))
    assert summary.exit_code == 0
    assert {r.status for r in stored(engine).values()} == {"succeeded"}
