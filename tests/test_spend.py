"""Spend control over real HTTP: --limit, the token caps, --reuse.

The runner runs against the simulator on 127.0.0.1 and a real SQLite file;
the simulator's counters say what was really sent and what it cost, so every
test checks the store against what reached the server.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from batcher import apibatches
from batcher.budget import Budget, Caps
from batcher.cost import Cost
from batcher.db import open_store
from batcher.errors import EXIT_LIMIT, UsageError
from batcher.export import export_batch
from batcher.importer import import_file
from batcher.reuse import request_key
from batcher.runner import RunConfig, RunSummary, run_batch
from batcher.status import batch_status
from batcher.store import find_batch
from batcher.validate import Defaults

KEY = "sk-test-spend-0123456789"
MODEL = "claude-haiku-4.5"


def write_jobs(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def prompts(numbers: range, **extra: Any) -> list[dict[str, Any]]:
    return [{"custom_id": f"j{i}", "prompt": f"question number {i} about topic {i % 7}", **extra} for i in numbers]


def run(db: Path, sim: Any, name: str, rows: list[dict[str, Any]] | None = None, **config: Any) -> RunSummary:
    engine = open_store(str(db))
    if rows is not None:
        import_file(engine, str(write_jobs(db.parent / f"{name}.jsonl", rows)), defaults=Defaults(MODEL, 64))
    options = {"rpm": 60_000, "base_url": sim.base_url, "handle_signals": False, **config}
    try:
        return anyio.run(run_batch, engine, find_batch(engine, name), KEY, RunConfig(**options))
    finally:
        engine.dispose()


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"POE_API_KEY": KEY, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "batcher", *args], capture_output=True, text=True, env=env,
                          timeout=120)


# -- the accounting alone ---------------------------------------------------------------


def test_budget_counts_in_flight_worst_cases_and_settles_to_usage() -> None:
    budget = Budget(Caps(max_input_tokens=100, max_output_tokens=50))
    assert budget.reserve(Cost(30, 20)) and budget.reserve(Cost(30, 20))
    assert not budget.reserve(Cost(1, 11))  # 40 reserved + 11 > 50
    assert budget.exhausted_side(Cost(1, 11)) == "output"
    budget.settle(Cost(30, 20), input_tokens=28, output_tokens=5)  # answered short: room opens
    assert budget.reserve(Cost(1, 11))
    assert (budget.used_input, budget.used_output, budget.in_flight) == (28, 5, 2)
    assert not budget.reserve(Cost(50, 1))  # 28 used + 31 reserved + 50 > 100
    assert budget.exhausted_side(Cost(50, 1)) == "input"
    assert Caps(max_output_tokens=10).exceeded_alone(Cost(10**6, 11)) == "output"
    assert Caps(max_output_tokens=10).exceeded_alone(Cost(10**6, 10)) is None
    assert Budget(Caps()).reserve(Cost(10**9, 10**9))


def test_canonical_request_ignores_what_does_not_change_the_answer() -> None:
    body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
    same = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi",
                                                       "cache_control": {"type": "ephemeral"}}]}],
            "max_tokens": 64, "model": MODEL, "metadata": {"user_id": "u1"}, "service_tier": "auto"}
    assert request_key(body) == request_key(same)
    assert request_key(body) != request_key({**body, "temperature": 0.5})
    assert request_key(body) != request_key({**body, "max_tokens": 65})
    assert request_key(body) != request_key({**body, "model": "claude-sonnet-4.5"})
    assert request_key({**body, "system": "Be brief."}) == request_key(
        {**body, "system": [{"type": "text", "text": "Be brief."}]})


@pytest.mark.parametrize("option", ["limit", "max_input_tokens", "max_output_tokens"])
@pytest.mark.parametrize("value", [0, -3])
def test_zero_or_negative_limits_are_usage_errors(option: str, value: int) -> None:
    with pytest.raises(UsageError, match=f"{option} must be a whole number >= 1"):
        RunConfig(**{option: value})


def test_cli_refuses_zero_limits_with_exit_2(tmp_path: Path) -> None:
    for flag in ("--limit", "--max-input-tokens", "--max-output-tokens"):
        done = cli("run", "nothing", "--db", str(tmp_path / "s.db"), flag, "0")
        assert done.returncode == 2, done.stderr
        assert flag in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "s.db").exists()


# -- --limit -----------------------------------------------------------------------------


def test_limit_sends_the_first_n_in_input_order_then_the_rest_once(tmp_path: Path, simulator: Any) -> None:
    sim = simulator(rpm=100_000, latency=(0, 0.02))
    db = tmp_path / "s.db"
    rows = prompts(range(100))
    rows[10], rows[50] = rows[50], rows[10]  # input order is the file's, not the ids'
    path = write_jobs(tmp_path / "limited.jsonl", rows)
    base = ["run", str(path), "--db", str(db), "--base-url", sim.base_url, "--model", MODEL, "--max-tokens", "64",
            "--rpm", "60000"]

    first = cli(*base, "--limit", "30")
    assert first.returncode == EXIT_LIMIT == 5, first.stderr
    assert sim.stats()["requests"] == 30
    done = [r[0] for r in query(db, "SELECT custom_id FROM jobs WHERE status = 'succeeded' ORDER BY line")]
    assert done == [r["custom_id"] for r in rows[:30]]
    stop_line = [line for line in first.stderr.splitlines() if "--limit 30" in line]
    assert len(stop_line) == 1 and "run the same command again" in stop_line[0]
    assert "job(s) left, not sent and not failed" in stop_line[0] and "output tokens" in stop_line[0]
    assert "Traceback" not in first.stderr
    assert query(db, "SELECT count(*) FROM jobs WHERE status = 'failed'") == [(0,)]

    rest = cli(*base)
    assert rest.returncode == 0, rest.stderr
    assert sim.stats()["requests"] == 100
    assert query(db, "SELECT count(*), count(DISTINCT job_id) FROM attempts") == [(100, 100)]


def test_a_limit_beyond_what_is_left_just_finishes(tmp_path: Path, simulator: Any) -> None:
    sim = simulator(rpm=100_000)
    summary = run(tmp_path / "s.db", sim, "few", prompts(range(5)), limit=30)
    assert (summary.exit_code, summary.succeeded, summary.left) == (0, 5, 0)


# -- token caps --------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_output_cap_holds_with_hundreds_in_flight(tmp_path: Path, simulator: Any) -> None:
    sim = simulator(rpm=1_000_000, latency=(0.4, 0.6))
    rows = [{"custom_id": f"j{i}", "prompt": f"a question about the number {i}", "max_tokens": 8 + i % 33}
            for i in range(500)]
    cap = 6_000  # room for about 250 of the 500 jobs, and for 150 worst cases at once
    summary = run(tmp_path / "s.db", sim, "capped", rows, concurrency=500, max_output_tokens=cap)
    stats = sim.stats()
    assert summary.outcome == "budget" and summary.exit_code == 5, summary
    assert stats["output_tokens"] <= cap
    # It stopped only when the next job's max_tokens (at most 40) no longer fitted.
    assert stats["output_tokens"] > cap - 40
    assert stats["peak_concurrency"] >= 50  # well over a hundred on an idle machine; a safe bound here
    assert summary.output_tokens == stats["output_tokens"]
    assert "stopped at max_output_tokens 6,000:" in (summary.message or "")
    assert summary.failed == 0 and summary.left == 500 - summary.succeeded


def test_input_cap_holds_by_the_estimate(tmp_path: Path, simulator: Any) -> None:
    sim = simulator(rpm=100_000, latency=(0.05, 0.1))
    summary = run(tmp_path / "s.db", sim, "inputs", prompts(range(200)), concurrency=50, max_input_tokens=500)
    assert summary.exit_code == 5 and "stopped at max_input_tokens 500:" in (summary.message or "")
    assert 400 < sim.stats()["input_tokens"] <= 500


def test_a_cap_below_one_job_stops_before_sending_anything(tmp_path: Path, simulator: Any) -> None:
    sim = simulator(rpm=100_000)
    rows = prompts(range(5))
    rows[2]["max_tokens"] = 900
    path = write_jobs(tmp_path / "big.jsonl", rows)
    done = cli("run", str(path), "--db", str(tmp_path / "s.db"), "--base-url", sim.base_url, "--model", MODEL,
               "--max-tokens", "64", "--max-output-tokens", "500")
    assert done.returncode == 5, done.stderr
    assert sim.stats()["requests"] == 0
    line = [x for x in done.stderr.splitlines() if "nothing sent" in x]
    assert len(line) == 1 and "'j2' (line 3)" in line[0] and "max_tokens 900" in line[0], done.stderr
    assert query(tmp_path / "s.db", "SELECT status, count(*) FROM jobs GROUP BY status") == [("pending", 5)]


def test_the_input_cap_below_one_job_names_the_input_as_the_fix(tmp_path: Path, simulator: Any) -> None:
    sim = simulator(rpm=100_000)
    path = write_jobs(tmp_path / "in.jsonl", prompts(range(3)))
    done = cli("run", str(path), "--db", str(tmp_path / "s.db"), "--base-url", sim.base_url, "--model", MODEL,
               "--max-tokens", "64", "--max-input-tokens", "1")
    assert done.returncode == 5, done.stderr
    line = [x for x in done.stderr.splitlines() if "nothing sent" in x]
    assert len(line) == 1 and "raise the cap (or shorten that job's input)" in line[0], done.stderr
    assert "max_tokens" not in line[0]
    assert "with a larger cap, or none" in done.stderr


def test_a_job_over_a_cap_is_found_before_sending_however_it_came_in(tmp_path: Path, simulator: Any) -> None:
    """The check reads no job when the figures the batch's imports kept show none over a cap; else it finds
    the job that is: a line appended to a file already run (read alone by its import), an API batch's
    request, and a batch whose imports kept no figures (a store from before them)."""
    sim = simulator(rpm=100_000)
    db = tmp_path / "s.db"
    assert run(db, sim, "g", prompts(range(5)), max_output_tokens=500).exit_code == 0  # max_tokens 64 each
    with (tmp_path / "g.jsonl").open("ab") as grown:
        grown.write(orjson.dumps({"custom_id": "big", "prompt": "?", "max_tokens": 900}) + b"\n")
    engine = open_store(str(db))
    assert import_file(engine, str(tmp_path / "g.jsonl"), defaults=Defaults(MODEL, 64)).skipped_lines == 5
    params = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    api = apibatches.create(engine, [("small", params), ("large", dict(params, max_tokens=2000))], 3600)
    engine.dispose()
    sent = sim.stats()["requests"]
    for name, cap, named in (("g", 500, "job 'big' (row 5) has max_tokens 900"),
                             (api.name, 1000, "job 'large' (row 1) has max_tokens 2,000")):
        refused = run(db, sim, name, max_output_tokens=cap)
        assert refused.exit_code == 5 and f"nothing sent: {named}" in (refused.message or ""), refused.message
    query(db, "UPDATE imports SET worst_input_tokens = NULL, worst_output_tokens = NULL")
    refused = run(db, sim, "g", max_output_tokens=500)
    assert "nothing sent: job 'big' (row 5)" in (refused.message or "")
    assert sim.stats()["requests"] == sent
    assert run(db, sim, "g", max_output_tokens=1000).exit_code == 0
    assert sim.stats()["requests"] == sent + 1


# -- --reuse -----------------------------------------------------------------------------


def test_reuse_answers_jobs_a_cap_could_not_have_sent(tmp_path: Path, simulator: Any) -> None:
    """A reused answer costs nothing: a cap below a job's worst case stops only a job that must be sent."""
    sim = simulator(rpm=100_000, latency=(0, 0.02))
    db = tmp_path / "s.db"
    assert run(db, sim, "first", prompts(range(10))).exit_code == 0
    again = [dict(r, custom_id="b" + r["custom_id"]) for r in prompts(range(10))]
    second = run(db, sim, "second", again, reuse=True, max_output_tokens=10)
    assert (second.exit_code, second.reused, second.attempts) == (0, 10, 0)
    # One new job that needs sending, over the cap on its own: the run stops at it, having answered the rest.
    third = run(db, sim, "third", [dict(r, custom_id="c" + r["custom_id"]) for r in prompts(range(11))],
                reuse=True, max_output_tokens=10)
    assert (third.outcome, third.exit_code, third.reused, third.attempts, third.left) == ("budget", EXIT_LIMIT, 10, 0, 1)
    assert "the next job ('cj10') may use 64 output tokens, more than max_output_tokens 10 allows on its own" in (
        third.message or "")
    assert sim.stats()["requests"] == 10



def test_reuse_across_batches_sends_only_new_requests(tmp_path: Path, simulator: Any) -> None:
    sim = simulator(rpm=100_000, latency=(0, 0.02))
    db = tmp_path / "s.db"
    first = run(db, sim, "first", prompts(range(0, 60)))
    assert first.exit_code == 0 and sim.stats()["requests"] == 60

    # Half the second batch asks what the first asked (other ids and metadata: same requests).
    second_rows = prompts(range(30, 90), topic="x")
    for row in second_rows:
        row["custom_id"] = "b" + row["custom_id"]
    second = run(db, sim, "second", second_rows, reuse=True)
    assert (second.exit_code, second.succeeded, second.reused) == (0, 60, 30)
    assert sim.stats()["requests"] == 90  # only the 30 new ones were sent

    third = run(db, sim, "third", [dict(r, custom_id="c" + r["custom_id"]) for r in second_rows], reuse=True)
    assert (third.exit_code, third.reused, third.attempts) == (0, 60, 0)
    assert sim.stats()["requests"] == 90

    engine = open_store(str(db))
    status = batch_status(engine, find_batch(engine, "second"))
    assert (status["succeeded"], status["reused"], status["attempts_made"]) == (60, 30, 30)
    # Reused answers export exactly like the sent ones they copy.
    export_batch(engine, find_batch(engine, "first"), str(tmp_path / "first.out.jsonl"), "results", "all", False)
    export_batch(engine, find_batch(engine, "third"), str(tmp_path / "third.out.jsonl"), "text", "all", False)
    export_batch(engine, find_batch(engine, "second"), str(tmp_path / "second.out.jsonl"), "results", "all", False)
    engine.dispose()
    sent = {r["custom_id"]: r["result"] for r in map(json.loads, (tmp_path / "first.out.jsonl").read_text().splitlines())}
    again = {r["custom_id"]: r["result"] for r in map(json.loads, (tmp_path / "second.out.jsonl").read_text().splitlines())}
    for i in range(30, 60):
        assert again[f"bj{i}"] == sent[f"j{i}"]
    assert len((tmp_path / "third.out.jsonl").read_text().splitlines()) == 60


def test_identical_requests_in_one_batch_are_sent_once_only_with_reuse(tmp_path: Path, simulator: Any) -> None:
    sim = simulator(rpm=100_000, latency=(0.1, 0.2))
    rows = [{"custom_id": f"d{i}", "prompt": f"the same question {i % 10}"} for i in range(40)]
    summary = run(tmp_path / "a.db", sim, "dupes", rows, reuse=True, concurrency=40)
    assert (summary.exit_code, summary.succeeded, summary.reused) == (0, 40, 30)
    assert sim.stats()["requests"] == 10
    texts = query(tmp_path / "a.db", "SELECT custom_id, response FROM jobs")
    for custom_id, response in texts:
        assert f"the same question {int(custom_id[1:]) % 10}" in response

    sim.reset()
    plain = run(tmp_path / "b.db", sim, "dupes", rows)  # off by default: every sample is fresh
    assert (plain.succeeded, plain.reused, sim.stats()["requests"]) == (40, 0, 40)


def test_an_identical_request_claimed_while_its_twin_is_answered_is_not_sent_again(tmp_path: Path,
                                                                                   simulator: Any) -> None:
    # Paced: each job is claimed (and looked up in the store) a little before it is sent, so some
    # are claimed while the first request is in flight and taken up after its answer came, before
    # the writer committed it. They must take that answer, not send the question again.
    sim = simulator(rpm=100_000, latency=(0.25, 0.3))
    rows = [{"custom_id": f"s{i}", "prompt": "the same question"} for i in range(24)]
    summary = run(tmp_path / "a.db", sim, "same", rows, reuse=True, rpm=1200)
    assert (summary.exit_code, summary.succeeded, summary.reused) == (0, 24, 23)
    assert sim.stats()["requests"] == 1


def test_reuse_summary_and_status_say_how_many(tmp_path: Path, simulator: Any) -> None:
    sim = simulator(rpm=100_000)
    db = tmp_path / "s.db"
    run(db, sim, "one", prompts(range(4)))
    path = write_jobs(tmp_path / "two.jsonl", prompts(range(6)))
    done = cli("run", str(path), "--db", str(db), "--base-url", sim.base_url, "--model", MODEL, "--max-tokens", "64",
               "--reuse")
    assert done.returncode == 0, done.stderr
    assert "6 succeeded (4 reused)" in done.stderr + done.stdout
    status = cli("status", "two", "--db", str(db))
    assert "4 of the succeeded answered by an identical request" in status.stdout


# -- the Python API ------------------------------------------------------------------------


def test_python_api_takes_the_same_options(tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import batcher

    sim = simulator(rpm=100_000)
    monkeypatch.setenv("POE_API_KEY", KEY)
    monkeypatch.setenv("POE_BASE_URL", sim.base_url)
    db = str(tmp_path / "api.db")
    rows = [f"prompt {i}" for i in range(10)] + ["prompt 0"]  # the last one repeats the first

    figures = batcher.estimate(rows, max_tokens=20)
    assert (figures.jobs, figures.max_output_tokens) == (11, 220)
    with pytest.raises(batcher.InvalidRows, match="row 1"):
        batcher.estimate(["fine", ""], max_tokens=20)

    with batcher.Store(db) as store:
        handle = store.add("api", rows, max_tokens=20)
        assert handle.estimate().jobs == 11
        first = handle.run(limit=4, progress=False, rpm=60_000)  # a stop asked for is not an error
        assert (first.exit_code, first.outcome, first.succeeded) == (5, "limit", 4)
        capped = handle.run(max_output_tokens=30, progress=False, rpm=60_000)
        assert capped.outcome == "budget" and capped.output_tokens <= 30
        rest = handle.run(reuse=True, progress=False, rpm=60_000)
        assert rest.exit_code == 0 and rest.reused == 1
        assert handle.estimate().jobs == 0
        with pytest.raises(batcher.UsageError, match="limit: '0' is not at least 1"):
            handle.run(limit=0, progress=False)
    assert sim.stats()["requests"] == 10
    results = batcher.run(rows, max_tokens=20, db=db, batch="again", reuse=True, progress=False, rpm=60_000)
    assert [r.status for r in results] == ["succeeded"] * 11
    assert sim.stats()["requests"] == 10


def test_python_names_a_job_over_a_cap_by_its_row(tmp_path: Path, simulator: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows count from 0 in Python: the 13th row (index 12) was named "line 13" and sent people to row 13."""
    import batcher

    sim = simulator(rpm=100_000)
    monkeypatch.setenv("POE_API_KEY", KEY)
    rows: list[Any] = [f"prompt {i}" for i in range(14)]
    rows[12] = {"prompt": "a long answer", "max_tokens": 900}
    with batcher.Store(tmp_path / "rows.db") as store:
        summary = store.add("rows", rows, max_tokens=16).run(max_output_tokens=500, base_url=sim.base_url,
                                                             progress=False)
    assert summary.outcome == "budget" and sim.stats()["requests"] == 0
    assert "job 'line-13' (row 12) has max_tokens 900" in (summary.message or ""), summary.message
