"""The tally: a batch's figures kept in the transactions that change its rows, never drifting from them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from sqlalchemy import select

from batcher import tally
from batcher.db import open_store, write
from batcher.importer import import_file
from batcher.jobqueue import claim, finish_run, start_run
from batcher.manage import cancel, retry
from batcher.runner import RunConfig, run_batch
from batcher.schema import jobs, runs
from batcher.status import batch_status, verify
from batcher.store import find_batch
from batcher.validate import Defaults

from test_db import migrate

DEFAULTS = Defaults("claude-haiku-4.5", 64)


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_bytes(b"".join(orjson.dumps({"custom_id": f"j{i}", "prompt": p}) + b"\n"
                              for i, p in enumerate(prompts)))
    return path


def agrees(engine: Any, batch: Any) -> dict[str, Any]:
    """Assert the tally equals a recount of the rows; return the status."""
    assert verify(engine, batch) == []
    return batch_status(engine, batch)


def test_every_path_that_changes_a_job_keeps_the_tally(tmp_path: Path, simulator: Any) -> None:
    sim = simulator(fail_500=0.3, fail_529=0.1)
    engine = open_store(str(tmp_path / "t.db"))
    prompts = [f"question {i}" for i in range(30)] + [f"refused {i} #sim:status=400" for i in range(4)]
    path = write_prompts(tmp_path / "t.jsonl", prompts)
    import_file(engine, str(path), defaults=DEFAULTS)
    batch = find_batch(engine, "t")
    assert agrees(engine, batch)["pending"] == 34

    config = RunConfig(rpm=60000, base_url=sim.base_url, handle_signals=False, max_attempts=2, stream=None)
    anyio.run(run_batch, engine, batch, "k", config)
    s = agrees(engine, batch)
    assert s["failed"] >= 4 and s["succeeded"] + s["failed"] == 34
    assert s["attempts_made"] > 34 and s["input_tokens"] > 0 and s["models"]

    # Streamed answers feed the timing medians.
    anyio.run(run_batch, engine, batch, "k", RunConfig(rpm=60000, base_url=sim.base_url, handle_signals=False,
                                                       stream=True))
    retry(engine, batch, error_types=["api_error"])
    agrees(engine, batch)
    retry(engine, batch, status_codes=[500, 529])
    agrees(engine, batch)
    sim2 = simulator()
    anyio.run(run_batch, engine, batch, "k", RunConfig(rpm=60000, base_url=sim2.base_url, handle_signals=False,
                                                       stream=True))
    s = agrees(engine, batch)
    assert s["streaming"] and s["streaming"]["median_ttft_ms"] is not None

    # Re-import: unchanged jobs keep their status, new lines come in pending.
    write_prompts(path, prompts + ["one more", "and another"])
    report = import_file(engine, str(path), defaults=DEFAULTS)
    assert (report.added, report.unchanged) == (2, 34)
    assert agrees(engine, batch)["pending"] == 2

    assert cancel(engine, batch) == 2
    assert agrees(engine, batch)["canceled"] == 2
    assert retry(engine, batch, canceled=True) == 2
    assert retry(engine, batch) == 4  # the refused ones
    s = agrees(engine, batch)
    assert (s["pending"], s["failed"], s["canceled"]) == (6, 0, 0)

    # Claimed, then the run dies: the next one takes the jobs back.
    run_id = start_run(engine, batch.id, batch.name, 60, "http://x")
    assert len(claim(engine, batch.id, run_id, 4)) == 4
    assert agrees(engine, batch)["running"] == 4
    with write(engine) as conn:  # its heartbeat stops
        conn.execute(runs.update().where(runs.c.id == run_id).values(heartbeat_at=0.0))
    next_run = start_run(engine, batch.id, batch.name, 60, "http://x")
    assert agrees(engine, batch)["running"] == 0
    claim(engine, batch.id, next_run, 3)
    assert finish_run(engine, next_run, "interrupted") == 3
    assert agrees(engine, batch)["pending"] == 6


def test_batches_and_status_read_the_tally_not_the_rows(tmp_path: Path) -> None:
    """A tally edited by hand shows through: status does not recount."""
    engine = open_store(str(tmp_path / "s.db"))
    import_file(engine, str(write_prompts(tmp_path / "s.jsonl", ["a", "b"])), defaults=DEFAULTS)
    batch = find_batch(engine, "s")
    with write(engine) as conn:
        tally.add_statuses(conn, batch.id, {"pending": -1, "canceled": 1})
    assert batch_status(engine, batch, detail=False)["canceled"] == 1
    problems = verify(engine, batch)
    assert len(problems) == 1 and problems[0].startswith("counts: ")
    done = subprocess.run([sys.executable, "-m", "batcher", "status", "--verify", "--db", str(tmp_path / "s.db")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 4 and done.stderr.startswith("batcher: batch s: tally differs from the rows: counts: ")
    done = subprocess.run([sys.executable, "-m", "batcher", "status", "--verify", "--json", "--db",
                           str(tmp_path / "s.db")], capture_output=True, text=True, timeout=60)
    found = json.loads(done.stdout)  # a script gets its answer on stdout, whatever it is
    assert done.returncode == 4 and (found["batch"], found["agrees"]) == ("s", False)
    assert found["problems"] == problems
    with write(engine) as conn:
        tally.rebuild(conn, batch.id)
    done = subprocess.run([sys.executable, "-m", "batcher", "status", "--verify", "--db", str(tmp_path / "s.db")],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "batch s: the kept totals agree with a recount of the rows\n")
    done = subprocess.run([sys.executable, "-m", "batcher", "status", "--verify", "--json", "--db",
                           str(tmp_path / "s.db")], capture_output=True, text=True, timeout=60)
    assert (done.returncode, json.loads(done.stdout)) == (0, {"batch": "s", "agrees": True, "problems": []})


def test_unknown_status_is_refused(tmp_path: Path) -> None:
    engine = open_store(str(tmp_path / "u.db"))
    import_file(engine, str(write_prompts(tmp_path / "u.jsonl", ["a"])), defaults=DEFAULTS)
    with pytest.raises(ValueError, match="not job statuses"), write(engine) as conn:
        tally.add_statuses(conn, find_batch(engine, "u").id, {"done": 1})


def test_median_of_a_histogram() -> None:
    def median(*pairs: tuple[int, int]) -> float | None:
        return tally.Tally({}, 0, {}, {}, 0, None, None, None, 0, {"ttft": list(pairs)}).median("ttft")

    assert median() is None
    assert median((5, 1)) == 5
    assert median((5, 1), (7, 1)) == 6
    assert median((1, 2), (9, 1)) == 1
    assert median((1, 1), (3, 2), (10, 1)) == 3
    assert median((1, 2), (4, 2)) == 2.5


def test_migration_counts_an_existing_store(tmp_path: Path) -> None:
    """A store at the revision before the tally gets it filled from its rows."""
    from batchdata import mixed_batch

    # Build the data at head, then drop the schema back to 0002 and upgrade again.
    engine, batch, db = mixed_batch(tmp_path)
    expected = batch_status(engine, batch)
    engine.dispose()
    plain = migrate(db, "0002", down=True)
    with plain.connect() as conn:
        assert "batch_tallies" not in {r[0] for r in conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    plain.dispose()
    engine = open_store(db)
    assert verify(engine, batch) == []
    got = batch_status(engine, batch)
    assert got == expected
    assert (got["succeeded"], got["failed"], got["canceled"], got["pending"], got["running"]) == (4, 3, 1, 1, 1)


def test_claim_and_requeue_use_the_partial_indexes(tmp_path: Path) -> None:
    """The queries a run starts with must not read the whole batch."""
    engine = open_store(str(tmp_path / "p.db"))
    import_file(engine, str(write_prompts(tmp_path / "p.jsonl", ["a", "b"])), defaults=DEFAULTS)
    from batcher.jobqueue import START
    from batcher.schema import ORDER, in_status
    from sqlalchemy import tuple_, update

    claim_query = (select(jobs.c.id).where(jobs.c.batch_id == 1, in_status("pending"),
                                           tuple_(*ORDER) > tuple_(*START))
                   .order_by(*ORDER).limit(10))
    requeue = update(jobs).where(jobs.c.batch_id == 1, in_status("running")).values(status="pending")
    example = select(jobs.c.error).where(jobs.c.batch_id == 1, in_status("failed"),
                                         jobs.c.error_type == "x", jobs.c.status_code == 1)
    with engine.connect() as conn:
        for stmt, index in ((claim_query, "ix_jobs_pending"), (requeue, "ix_jobs_running"),
                            (example, "ix_jobs_failed")):
            sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
            plan = " ".join(str(r) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert index in plan, (sql, plan)
