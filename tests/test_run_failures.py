"""Runs that cannot work as configured, and a store that cannot be written."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import event

from batcher.db import open_store
from batcher.errors import StoreError
from batcher.runner import RunConfig, run_batch
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
    assert "cannot reach http://127.0.0.1:" in summary.message and "--base-url" in summary.message
    assert {r.status for r in stored(engine).values()} == {"pending"}


def test_404_on_everything_stops_the_run_with_nothing_failed(tmp_path: Path, simulator: Any) -> None:
    sim = simulator(fail_status={404: 1.0})
    summary, engine = run(tmp_path, sim, PROMPTS, concurrency=4)
    assert (summary.outcome, summary.exit_code) == ("misconfigured", 2)
    assert "HTTP 404" in summary.message
    assert {r.status for r in stored(engine).values()} == {"pending"}
    assert sim.stats()["requests"] <= 8 + 4


def test_a_404_after_answers_fails_only_its_job(tmp_path: Path, simulator: Any) -> None:
    sim = simulator()
    prompts = [f"fine {i}" for i in range(12)] + ["gone #sim:status=404"]
    summary, engine = run(tmp_path, sim, prompts, concurrency=2)
    assert (summary.exit_code, summary.failed) == (1, 1)
    assert stored(engine)["j12"].status_code == 404


def test_full_disk_is_one_line_and_the_next_run_finishes(tmp_path: Path, simulator: Any) -> None:
    sim = simulator()
    db = str(tmp_path / "full.db")
    engine = open_store(db)
    prompts = [f"a longer question number {i} " * 8 for i in range(150)]
    import_file(engine, str(write_jobs(tmp_path / "jobs.jsonl", prompts)), defaults=Defaults("claude-haiku-4.5", 64))
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    engine.dispose()

    full = open_store(db)

    @event.listens_for(full, "connect")
    def _cap(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")  # no room for the answers

    full.dispose()  # connections made from here on have the cap

    config = RunConfig(rpm=6000, base_url=sim.base_url, handle_signals=False)
    with pytest.raises(StoreError) as caught:
        anyio.run(run_batch, full, find_batch(full, "jobs"), "key", config)
    assert "full.db: cannot use the job store: database or disk is full" in str(caught.value)
    assert "\n" not in str(caught.value)
    full.dispose()

    engine = open_store(db)
    summary = anyio.run(run_batch, engine, find_batch(engine, "jobs"), "key", config)
    assert summary.exit_code == 0
    assert {r.status for r in stored(engine).values()} == {"succeeded"}
