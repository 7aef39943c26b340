"""`batcher run` end to end: the real command in a subprocess against a real simulator.

Every test drives ``python -m batcher run`` over HTTP and then checks three
things: the exit code, what the command printed (one clear line per error,
never a traceback), and what the job store holds afterwards, read straight
from the SQLite file. The simulator's counters say what reached the server.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest

MODEL = "claude-haiku-4.5"
RUN_DEFAULTS = ["--model", MODEL, "--max-tokens", "64"]
KEY = "poe-test-key"
SECRET = "sk-poe-SECRET-9f4c2e7a1b-DO-NOT-LEAK"


# -- helpers -------------------------------------------------------------------------------


def clean_env(key: str | None = KEY) -> dict[str, str]:
    """The environment minus anything that would steer batcher, plus the key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POE_", "BATCHER_"))}
    if key is not None:
        env["POE_API_KEY"] = key
    return env


def cli(*args: str, key: str | None = KEY, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batcher", *args], capture_output=True, text=True,
                          env=clean_env(key), timeout=timeout)


#: Runs each command of a JSON list through the CLI's own entry in this one process, as the command line
#: would, and prints ``[exit code, stdout, stderr]`` for each: checks that read a store several ways pay
#: for loading the modules once.
_EACH = """
import json, sys
from click.testing import CliRunner
from batcher.cli import main
ends = []
for args in json.load(sys.stdin):
    done = CliRunner().invoke(main, args)
    ends.append([done.exit_code, done.stdout, done.stderr])
json.dump(ends, sys.stdout)
"""


def cli_each(*commands: list[str], key: str | None = KEY, timeout: float = 60) -> list[subprocess.CompletedProcess[str]]:
    """Each of ``commands`` as ``cli`` would run it, all in one subprocess (for commands that only read)."""
    done = subprocess.run([sys.executable, "-c", _EACH], input=json.dumps(commands), capture_output=True, text=True,
                          env=clean_env(key), timeout=timeout)
    assert done.returncode == 0, done.stderr
    return [subprocess.CompletedProcess(["batcher", *args], code, out, err)
            for args, (code, out, err) in zip(commands, json.loads(done.stdout))]


def run_args(target: str | Path, db: Path, base_url: str, *extra: str) -> list[str]:
    return ["run", str(target), "--db", str(db), "--base-url", base_url, *RUN_DEFAULTS, *extra]


class Spawned:
    """A ``batcher`` process in the background, its output going to files."""

    alive: list[Spawned] = []  # killed at the end of each test, whatever happened

    def __init__(self, tmp_path: Path, name: str, args: list[str], key: str = KEY) -> None:
        self.out_path = tmp_path / f"{name}.out"
        self.err_path = tmp_path / f"{name}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "batcher", *args], stdout=out, stderr=err,
                                         env=clean_env(key))
        self.pid = self.proc.pid
        Spawned.alive.append(self)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def wait_for(condition: Callable[[], Any], timeout: float = 20, what: str = "condition",
             proc: Spawned | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.proc.returncode}) before {what}: {proc.stderr}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def prompt_of(i: int) -> str:
    return f"Question {i}: how many sides has a shape number {i}?"


def write_jobs(path: Path, prompts: Iterable[str]) -> dict[str, str]:
    """A job file in the shorthand form; returns custom_id -> prompt."""
    mapping = {f"job-{i}": p for i, p in enumerate(prompts, 1)}
    path.write_text("".join(json.dumps({"custom_id": c, "prompt": p}) + "\n" for c, p in mapping.items()))
    return mapping


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(str(db), timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def statuses(db: Path) -> dict[str, str]:
    return dict(query(db, "SELECT custom_id, status FROM jobs"))


def counts(db: Path) -> Counter[str]:
    return Counter(dict(query(db, "SELECT status, count(*) FROM jobs GROUP BY status")))


def succeeded_count(db: Path) -> int:
    rows = query(db, "SELECT count(*) FROM jobs WHERE status = 'succeeded'")
    return rows[0][0] if rows else 0


def answer_text(response: str) -> str:
    message = json.loads(response)
    assert message["type"] == "message", message
    return "".join(block["text"] for block in message["content"] if block["type"] == "text")


def assert_answers_are_their_own(db: Path, prompts: dict[str, str]) -> dict[str, str]:
    """Every succeeded job's answer quotes its own prompt; returns custom_id -> response id."""
    ids = {}
    for custom_id, response in query(db, "SELECT custom_id, response FROM jobs WHERE status = 'succeeded'"):
        assert response, custom_id
        text = answer_text(response)
        assert text.startswith(f"Answer to: {prompts[custom_id]}\n\n"), (custom_id, text[:120])
        ids[custom_id] = json.loads(response)["id"]
    return ids


def assert_clean(stream: str) -> None:
    assert "Traceback" not in stream, stream
    assert "Exception" not in stream, stream


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("batcher: error:")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settled_stats(server: Any, timeout: float = 10) -> dict[str, Any]:
    """The simulator's counters once no request is being answered any more."""
    return wait_for(lambda: (st := server.stats())["concurrency"] == 0 and st, timeout, "the server to settle")


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    yield
    while Spawned.alive:
        Spawned.alive.pop().kill()


@pytest.fixture
def sim(simulator: Any) -> Callable[..., Any]:
    """A simulator with a limit far above what the tests send, unless told otherwise."""

    def start(**options: Any) -> Any:
        options.setdefault("rpm", 100_000)
        return simulator(**options)

    return start


# -- 1. the happy path --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_happy_path_every_job_gets_its_own_answer(tmp_path: Path, sim: Any) -> None:
    server = sim(latency=(0, 0.05))
    db = tmp_path / "store.db"
    prompts = write_jobs(tmp_path / "happy.jsonl", (prompt_of(i) for i in range(1, 26)))

    done = cli(*run_args(tmp_path / "happy.jsonl", db, server.base_url, "--rpm", "6000", "--concurrency", "8"))
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    out = done.stdout.splitlines()
    assert len(out) == 1 and out[0].startswith("batch happy: 25 succeeded, 0 failed this run, 0 left; 25 requests"), out
    assert "batch happy: 25 new job(s) imported" in done.stderr

    assert counts(db) == {"succeeded": 25}
    ids = assert_answers_are_their_own(db, prompts)
    assert len(set(ids.values())) == 25
    rows = query(db, "SELECT model, input_tokens, output_tokens, response, attempts, error, run_id, finished_at "
                     "FROM jobs")
    for model, tokens_in, tokens_out, response, attempts_used, error, run_id, finished in rows:
        usage = json.loads(response)["usage"]
        assert (model, tokens_in, tokens_out) == (MODEL, usage["input_tokens"], usage["output_tokens"])
        assert attempts_used == 1 and error is None and run_id is not None and finished is not None
    assert query(db, "SELECT status_code, error_type, count(*) FROM attempts GROUP BY 1, 2") == [(200, None, 25)]
    assert query(db, "SELECT outcome, ended_at IS NOT NULL FROM runs") == [("finished", 1)]

    stats = server.stats()
    assert stats["requests"] == 25 and stats["by_status"] == {"200": 25}

    status = cli("status", "happy", "--db", str(db), "--json")
    assert status.returncode == 0, status.stderr
    s = json.loads(status.stdout)
    assert {k: s[k] for k in ("total", "pending", "running", "succeeded", "failed", "canceled")} == \
        {"total": 25, "pending": 0, "running": 0, "succeeded": 25, "failed": 0, "canceled": 0}
    assert s["attempts_made"] == 25 and s["attempts"] == 25 and s["failures"] == [] and s["run"] is None
    assert (s["input_tokens"], s["output_tokens"]) == (stats["input_tokens"], stats["output_tokens"])

    # The same command again: nothing new to send, nothing sent.
    again = cli(*run_args(tmp_path / "happy.jsonl", db, server.base_url, "--rpm", "6000", "--concurrency", "8"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("batch happy: 0 succeeded, 0 failed this run, 0 left; 0 requests")
    assert "imported" not in again.stderr
    assert server.stats()["requests"] == 25


# -- 2. refused before anything is sent ----------------------------------------------------------


@pytest.mark.timeout(30)
def test_no_api_key_exits_2_before_touching_the_database(tmp_path: Path, sim: Any) -> None:
    server = sim()
    db = tmp_path / "store.db"
    write_jobs(tmp_path / "b.jsonl", ["hello"])
    for key in (None, "   "):
        done = cli(*run_args(tmp_path / "b.jsonl", db, server.base_url), key=key)
        assert done.returncode == 2, (key, done.stderr)
        assert_clean(done.stderr)
        assert done.stdout == ""
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("batcher: error: ") and "POE_API_KEY" in lines[0], lines
    assert not db.exists() and list(tmp_path.glob("store.db*")) == []
    assert server.stats()["requests"] == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("url, says", [
    ("http://example.com", "refusing to send the API key over plain http"),
    ("http://10.1.2.3:8788", "refusing to send the API key over plain http"),
    ("ftp://127.0.0.1/", "is not an http(s) URL"),
])
def test_unsafe_base_url_exits_2_without_connecting(tmp_path: Path, url: str, says: str) -> None:
    db = tmp_path / "store.db"
    write_jobs(tmp_path / "b.jsonl", ["hello"])
    done = cli(*run_args(tmp_path / "b.jsonl", db, url))
    assert done.returncode == 2, done.stderr
    assert_clean(done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("batcher: error: --base-url") and says in lines[0], lines
    assert not db.exists()


def store_with_known(tmp_path: Path) -> Path:
    """A store holding the one-job batch ``known``."""
    db = tmp_path / "store.db"
    write_jobs(tmp_path / "known.jsonl", ["hello"])
    assert cli("import", str(tmp_path / "known.jsonl"), "--db", str(db), *RUN_DEFAULTS).returncode == 0
    return db


@pytest.mark.timeout(30)
def test_unknown_batch_or_missing_file_exits_2(tmp_path: Path, sim: Any) -> None:
    server = sim()
    db = store_with_known(tmp_path)

    done = cli(*run_args("nope", db, server.base_url))
    assert done.returncode == 2
    assert_clean(done.stderr)
    assert done.stderr.splitlines() == ["batcher: error: no batch named 'nope' (batches here: known)"]

    done = cli(*run_args(tmp_path / "missing.jsonl", db, server.base_url))
    assert done.returncode == 2
    assert_clean(done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "missing.jsonl: no such file" in lines[0], lines

    assert statuses(db) == {"job-1": "pending"}
    assert server.stats()["requests"] == 0


@pytest.mark.timeout(30)
def test_options_for_a_file_given_with_a_batch_are_named_as_doing_nothing(tmp_path: Path, sim: Any) -> None:
    server = sim()
    db = store_with_known(tmp_path)
    done = cli("estimate", "known", "--db", str(db), "--max-tokens", "7")
    assert done.returncode == 0 and "at most 64 out" in done.stdout, done.stdout
    assert "batcher: warning: --max-tokens applies only to a job file being imported" in done.stderr
    done = cli(*run_args("known", db, server.base_url, "--max-tokens", "7", "--system", "terse"))
    assert done.returncode == 0, done.stderr
    assert ("batcher: warning: --model, --max-tokens, --system apply only to a job file being imported; "
            "the jobs of batch known keep what they were imported with") in done.stderr.splitlines()


@pytest.mark.timeout(30)
def test_invalid_job_file_sends_nothing(tmp_path: Path, sim: Any) -> None:
    server = sim()
    db = tmp_path / "store.db"
    path = tmp_path / "bad.jsonl"
    path.write_text('{"custom_id": "a", "prompt": "fine"}\n{"custom_id": "b"}\n')
    done = cli(*run_args(path, db, server.base_url))
    assert done.returncode == 2
    assert_clean(done.stderr)
    assert f"{path}:2:" in done.stderr
    assert error_lines(done.stderr) == ["batcher: error: nothing imported, nothing sent; fix the lines above "
                                        "(or pass --skip-invalid)"]
    assert statuses(db) == {}
    assert server.stats()["requests"] == 0

    # As suggested: the valid line is imported and sent, the other reported.
    done = cli(*run_args(path, db, server.base_url, "--skip-invalid"))
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    assert f"skipped {path}:2:" in done.stderr
    assert statuses(db) == {"a": "succeeded"}
    assert server.stats()["requests"] == 1


# -- 3. the API refuses the key: stop, fail nothing ----------------------------------------------


@pytest.mark.timeout(30)
def test_wrong_key_stops_at_once_and_fails_nothing(tmp_path: Path, sim: Any) -> None:
    server = sim(key="right", latency=0.01)
    db = tmp_path / "store.db"
    write_jobs(tmp_path / "k.jsonl", (prompt_of(i) for i in range(1, 31)))
    done = cli(*run_args(tmp_path / "k.jsonl", db, server.base_url, "--rpm", "6000", "--concurrency", "4"),
               key="wrong")
    assert done.returncode == 3, done.stderr
    assert_clean(done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert "batcher: run stopped: the API refused the key (HTTP 401, authentication_error): Invalid API key" in lines
    assert "the 30 job(s) not answered are not marked failed: they wait for the next run" in lines

    assert counts(db) == {"pending": 30}
    # The key problem does not use up any job's attempt budget.
    assert query(db, "SELECT max(attempts), count(run_id) FROM jobs") == [(0, 0)]
    stats = settled_stats(server)
    assert 1 <= stats["requests"] <= 4, stats  # at most the requests already in flight
    assert stats["by_status"] == {"401": stats["requests"]}
    recorded = query(db, "SELECT status_code, error_type, count(*) FROM attempts GROUP BY 1, 2")
    assert len(recorded) == 1 and recorded[0][:2] == (401, "authentication_error") and recorded[0][2] <= 4
    assert query(db, "SELECT outcome FROM runs") == [("stopped",)]


@pytest.mark.timeout(30)
def test_out_of_points_stops_with_the_answered_jobs_kept(tmp_path: Path, sim: Any) -> None:
    server = sim(points=5, latency=0.01)
    db = tmp_path / "store.db"
    prompts = write_jobs(tmp_path / "p.jsonl", (prompt_of(i) for i in range(1, 13)))
    done = cli(*run_args(tmp_path / "p.jsonl", db, server.base_url, "--rpm", "6000", "--concurrency", "1"))
    assert done.returncode == 3, done.stderr
    assert_clean(done.stderr)
    lines = done.stderr.splitlines()
    assert any(line.startswith("batcher: run stopped: ") and "HTTP 402" in line and "Insufficient points" in line
               for line in lines), lines
    assert "the 7 job(s) not answered are not marked failed: they wait for the next run" in lines
    assert lines[-3].startswith("batch p: 5 succeeded, 0 failed this run, 7 left;"), lines

    assert statuses(db) == {f"job-{i}": "succeeded" if i <= 5 else "pending" for i in range(1, 13)}
    assert_answers_are_their_own(db, prompts)
    stats = settled_stats(server)
    assert stats["by_status"] == {"200": 5, "402": 1}, stats
    assert query(db, "SELECT status_code, count(*) FROM attempts GROUP BY 1") == [(200, 5), (402, 1)]
    assert query(db, "SELECT max(attempts) FROM jobs WHERE status = 'pending'") == [(0,)]


@pytest.mark.timeout(30)
def test_out_of_points_keeps_the_answers_already_in_flight(tmp_path: Path, sim: Any) -> None:
    # Requests are still in flight when the first 402 comes back: the server
    # admitted five, answers them and charges for them. Those answers must be
    # kept, not thrown away and bought again on the next run.
    server = sim(points=5, latency=0.3)
    db = tmp_path / "store.db"
    prompts = write_jobs(tmp_path / "p.jsonl", (prompt_of(i) for i in range(1, 13)))
    done = cli(*run_args(tmp_path / "p.jsonl", db, server.base_url, "--rpm", "6000", "--concurrency", "4"))
    assert done.returncode == 3, done.stderr
    assert_clean(done.stderr)
    stats = settled_stats(server)
    assert stats["by_status"]["200"] == 5 and set(stats["by_status"]) == {"200", "402"}, stats
    answered = counts(db)["succeeded"]
    assert answered == stats["succeeded"] == 5, f"{stats['succeeded']} answers paid for, {answered} stored"
    assert counts(db) == {"succeeded": 5, "pending": 7}
    assert_answers_are_their_own(db, prompts)


# -- 4. permanent failures ------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_permanent_failures_are_stored_and_reported(tmp_path: Path, sim: Any) -> None:
    server = sim(latency=(0, 0.02))
    db = tmp_path / "store.db"
    raw = [prompt_of(i) for i in range(1, 11)]
    raw[2] = "Please fail #sim:status=400 here"
    raw[6] = "Please also fail #sim:status=404"
    prompts = write_jobs(tmp_path / "perm.jsonl", raw)
    done = cli(*run_args(tmp_path / "perm.jsonl", db, server.base_url, "--rpm", "6000", "--concurrency", "4"))
    assert done.returncode == 1, done.stderr
    assert_clean(done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert any(line.startswith("batch perm: 8 succeeded, 2 failed this run, 0 left;") for line in lines), lines
    assert lines[-1] == "see why with: batcher status perm; retry with: batcher retry perm"

    assert statuses(db) == {c: "failed" if c in ("job-3", "job-7") else "succeeded" for c in prompts}
    assert_answers_are_their_own(db, prompts)
    failed = {c: (json.loads(e), t, s, a, r) for c, e, t, s, a, r in query(
        db, "SELECT custom_id, error, error_type, status_code, attempts, response FROM jobs WHERE status='failed'")}
    error, error_type, status_code, used, response = failed["job-3"]
    assert (error_type, status_code, used, response) == ("invalid_request_error", 400, 1, None)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"] == "Invalid request" and error["request_id"].startswith("req_")
    error, error_type, status_code, used, _ = failed["job-7"]
    assert (error["error"]["type"], error_type, status_code, used) == ("not_found_error", "not_found_error", 404, 1)
    # Not retried: one request each.
    assert server.stats()["by_status"] == {"200": 8, "400": 1, "404": 1}

    status = json.loads(cli("status", "perm", "--db", str(db), "--json").stdout)
    assert (status["succeeded"], status["failed"]) == (8, 2)
    assert sorted((f["error_type"], f["status_code"], f["count"]) for f in status["failures"]) == \
        [("invalid_request_error", 400, 1), ("not_found_error", 404, 1)]


# -- 5. kill -9 at random moments, then resume -----------------------------------------------------


@pytest.mark.timeout(90)
def test_kill_9_at_random_moments_then_resume(tmp_path: Path, sim: Any) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    server = sim(latency=(0.05, 0.3))
    db = tmp_path / "store.db"
    n, concurrency, rpm = 300, 16, 6000
    prompts = write_jobs(tmp_path / "kill.jsonl", (prompt_of(i) for i in range(1, n + 1)))
    args = run_args(tmp_path / "kill.jsonl", db, server.base_url, "--rpm", str(rpm), "--concurrency",
                    str(concurrency))
    note = f"seed {seed}"

    killed: list[Spawned] = []
    running_after_kill: list[int] = []
    dead_runs: list[int] = []
    mid_run_kills = 0
    for k in range(4):
        proc = Spawned(tmp_path, f"run{k}", args)
        if k == 0:
            time.sleep(rng.uniform(0.05, 0.8))  # anywhere from start-up to the first answers
        else:
            wait_for(lambda: query(db, "SELECT 1 FROM runs WHERE pid = ? AND ended_at IS NULL", proc.pid),
                     what=f"run {k} to start ({note})", proc=proc)
            # Taking over the batch put the dead runs' claimed jobs back to pending.
            for dead in dead_runs:
                assert query(db, "SELECT count(*) FROM jobs WHERE status = 'running' AND run_id = ?", dead) == \
                    [(0,)], (dead, note)
            # At least one answer of this run committed first, so the kill
            # lands mid-run however slow the machine is; then a random delay.
            done_before = counts(db).get("succeeded", 0)
            wait_for(lambda: counts(db).get("succeeded", 0) > done_before,
                     what=f"run {k} to record an answer ({note})", proc=proc)
            time.sleep(rng.uniform(0.0, 0.3))
        assert proc.proc.poll() is None, f"run {k} ended before its kill ({note}): {proc.stderr}"
        proc.kill()
        killed.append(proc)
        dead_runs += [r for (r,) in query(db, "SELECT id FROM runs WHERE pid = ?", proc.pid)]
        now = counts(db)
        running_after_kill.append(now["running"])
        mid_run_kills += 0 < now["succeeded"] < n
        assert now["failed"] == 0, (now, note)
        # Whatever the kill cut short, the kept totals agree with the rows.
        if query(db, "SELECT 1 FROM batches"):
            verified = cli("status", "--verify", "--db", str(db), key=None)
            assert verified.returncode == 0, (verified.stderr, note)
    assert mid_run_kills >= 2, (running_after_kill, note)
    assert sum(running_after_kill) > 0, note

    final = cli(*args)
    assert final.returncode == 0, (final.stderr, note)
    assert_clean(final.stderr)
    assert final.stdout.startswith("batch kill: ") and ", 0 failed this run, 0 left;" in final.stdout, final.stdout
    for proc in killed:
        assert_clean(proc.stderr)
        assert "already being run" not in proc.stderr, (proc.stderr, note)

    # Every job succeeded exactly once, with its own answer.
    assert counts(db) == {"succeeded": n}, note
    assert cli("status", "--verify", "--db", str(db), key=None).returncode == 0, note
    ids = assert_answers_are_their_own(db, prompts)
    assert len(set(ids.values())) == n

    # Sent twice only what was claimed but unrecorded when a run died.
    stats = settled_stats(server)
    resent = stats["requests"] - n
    # A request whose body the kill cut short is answered 400 by the simulator, to nobody.
    assert set(stats["by_status"]) <= {"200", "400"} and stats["by_status"].get("400", 0) <= len(killed), stats
    assert 0 <= resent <= sum(running_after_kill), (resent, running_after_kill, note)
    per_kill_bound = concurrency + int(rpm / 60 * 0.5)  # in flight + answers awaiting their commit
    assert resent <= len(killed) * per_kill_bound, (resent, note)
    (recorded,) = query(db, "SELECT count(*) FROM attempts")[0]
    assert n <= recorded <= stats["requests"], (recorded, stats["requests"], note)
    ok_per_job = dict(query(db, "SELECT job_id, count(*) FROM attempts WHERE status_code = 200 GROUP BY job_id"))
    assert len(ok_per_job) == n
    assert sum(c - 1 for c in ok_per_job.values()) <= resent, note

    # The dead runs were noticed and closed by the next start; nothing is left open.
    outcomes = Counter(o for (o,) in query(db, "SELECT outcome FROM runs"))
    assert outcomes == {"finished": 1, "died": len(dead_runs)}, (outcomes, note)
    assert len(dead_runs) >= 3
    assert query(db, "SELECT count(*) FROM runs WHERE ended_at IS NULL") == [(0,)]
    # Each resume found the job file as the first import read it, and did not read it again.
    assert query(db, "SELECT count(*) FROM imports") == [(1,)], note


# -- 6. Ctrl-C and SIGTERM ------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_gracefully_and_the_same_command_resumes(tmp_path: Path, sim: Any, sig: int) -> None:
    server = sim(latency=(0.05, 0.2))
    db = tmp_path / "store.db"
    n = 150
    prompts = write_jobs(tmp_path / "sig.jsonl", (prompt_of(i) for i in range(1, n + 1)))
    args = run_args(tmp_path / "sig.jsonl", db, server.base_url, "--rpm", "3000", "--concurrency", "8")
    proc = Spawned(tmp_path, "first", args)
    wait_for(lambda: succeeded_count(db) >= 20, what="20 answers", proc=proc)
    proc.proc.send_signal(sig)
    rc = proc.wait(15)
    stderr = proc.stderr
    assert rc == 130, stderr
    assert_clean(stderr)
    assert proc.stdout == ""
    assert "batcher: stopping: waiting up to 10 s for " in stderr

    now = counts(db)
    assert now["running"] == 0 and now["failed"] == 0, now
    done, left = now["succeeded"], now["pending"]
    assert 20 <= done < n and done + left == n, now
    lines = stderr.splitlines()
    assert f"{done} done, {left} left: run the same command again to resume" in lines, lines
    assert any(line.startswith(f"batch sig: {done} succeeded, 0 failed this run, {left} left;") for line in lines)
    assert query(db, "SELECT outcome FROM runs") == [("interrupted",)]
    # The requests in flight were given time to finish: every request sent has its attempt stored.
    stats = server.stats()
    assert stats["concurrency"] == 0
    assert query(db, "SELECT count(*) FROM attempts") == [(stats["requests"],)]
    assert stats["succeeded"] == done

    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"batch sig: {left} succeeded, 0 failed this run, 0 left;"), again.stdout
    assert counts(db) == {"succeeded": n}
    assert_answers_are_their_own(db, prompts)
    assert server.stats()["requests"] == n  # nothing sent twice


@pytest.mark.timeout(30)
def test_second_ctrl_c_quits_at_once_keeping_what_was_committed(tmp_path: Path, sim: Any) -> None:
    server = sim(latency=0)
    db = tmp_path / "store.db"
    raw = ["A slow one #sim:sleep=6"] + [prompt_of(i) for i in range(2, 11)]
    prompts = write_jobs(tmp_path / "twice.jsonl", raw)
    proc = Spawned(tmp_path, "twice", run_args(tmp_path / "twice.jsonl", db, server.base_url, "--rpm", "6000",
                                                "--concurrency", "4"))
    wait_for(lambda: succeeded_count(db) == 9, what="the nine quick answers", proc=proc)
    proc.proc.send_signal(signal.SIGINT)
    wait_for(lambda: "stopping: waiting up to 10 s for 1 request(s) in flight" in proc.stderr,
             what="the grace period", proc=proc)
    time.sleep(0.2)
    assert proc.proc.poll() is None, "the first Ctrl-C should wait for the slow request"
    second = time.monotonic()
    proc.proc.send_signal(signal.SIGINT)
    rc = proc.wait(10)
    took = time.monotonic() - second
    assert rc == 130, proc.stderr
    assert took < 2.0, took  # the slow answer had about 5 s to go
    assert_clean(proc.stderr)
    assert "batcher: stopped at once; 9 done are safely stored, the rest resumes on the next run" in proc.stderr

    # What was committed stays: nine answers, each its own. The process left
    # without closing its run, so the slow job is still marked running.
    now = statuses(db)
    assert [c for c, s in now.items() if s == "succeeded"] == [f"job-{i}" for i in range(2, 11)]
    assert now["job-1"] == "running"
    assert_answers_are_their_own(db, prompts)
    assert server.stats()["succeeded"] == 9
    assert query(db, "SELECT pid, ended_at FROM runs") == [(proc.pid, None)]

    # The next run is not refused by the dead one and takes its job back; a
    # Ctrl-C without grace then ends it with the job pending again.
    again = Spawned(tmp_path, "again", run_args("twice", db, server.base_url, "--grace", "0"))
    wait_for(lambda: query(db, "SELECT 1 FROM runs WHERE pid = ?", again.pid), what="the next run", proc=again)
    wait_for(lambda: server.stats()["requests"] == 11, what="the slow job to be sent again", proc=again)
    again.proc.send_signal(signal.SIGINT)
    assert again.wait(10) == 130, again.stderr
    assert_clean(again.stderr)
    assert "0 done, 1 left: run the same command again to resume" in again.stderr.splitlines()
    assert query(db, "SELECT pid, outcome FROM runs ORDER BY id") == [(proc.pid, "died"), (again.pid, "interrupted")]
    # The request it gave up may have reached the API, and be paid for: it counts among those sent.
    assert query(db, "SELECT count(*) FROM attempts WHERE error_type = 'abandoned' AND status_code IS NULL") == [(1,)]
    assert "attempts  10 requests sent" in cli("status", "twice", "--db", str(db)).stdout  # 9 answered, 1 given up
    assert counts(db) == {"succeeded": 9, "pending": 1}


def without_stderr(args: list[str]) -> list[str]:
    """``batcher ARGS 2>&-``: the command started with no stderr at all (``sys.stderr`` is None)."""
    return ["bash", "-c", 'exec "$@" 2>&-', "bash", sys.executable, "-m", "batcher", *args]


@pytest.mark.timeout(60)
def test_a_closed_stderr_imports_and_runs_saying_nothing_there(tmp_path: Path, sim: Any) -> None:
    server = sim(latency=0)
    db = tmp_path / "store.db"
    raw = ["A slow one #sim:sleep=1.5"] + [prompt_of(i) for i in range(2, 6)]
    prompts = write_jobs(tmp_path / "mute.jsonl", raw)
    imported = subprocess.run(without_stderr(["import", str(tmp_path / "mute.jsonl"), "--db", str(db), *RUN_DEFAULTS]),
                              capture_output=True, text=True, env=clean_env(), timeout=60)
    assert (imported.returncode, imported.stdout) == (0, "batch mute: 5 added, 0 unchanged, 0 rejected\n")

    # Ctrl-C: the run waits for the slow answer, keeps it, and says nothing on stdout (the results' place).
    with open(tmp_path / "first.out", "w") as out:
        proc = subprocess.Popen(without_stderr(run_args("mute", db, server.base_url, "--rpm", "6000")), stdout=out,
                                env=clean_env())
    wait_for(lambda: succeeded_count(db) == 4, what="the four quick answers")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 130
    assert (tmp_path / "first.out").read_text() == ""
    assert counts(db) == {"succeeded": 5}

    write_jobs(tmp_path / "mute.jsonl", raw + [prompt_of(6)])
    ran = subprocess.run(without_stderr(run_args(tmp_path / "mute.jsonl", db, server.base_url)), capture_output=True,
                         text=True, env=clean_env(), timeout=60)
    assert ran.returncode == 0
    assert ran.stdout.startswith("batch mute: 1 succeeded, 0 failed this run, 0 left;"), ran.stdout
    assert_answers_are_their_own(db, {**prompts, "job-6": prompt_of(6)})


@pytest.mark.timeout(60)
def test_a_run_whose_stderr_reader_goes_away_stops_as_on_ctrl_c_and_ends_quietly(tmp_path: Path, sim: Any) -> None:
    """``batcher run ... 2>&1 >out | head -1``: the status line due every 10 s finds no reader."""
    server = sim(latency=(0.3, 0.6))
    db = tmp_path / "store.db"
    n = 30
    prompts = write_jobs(tmp_path / "gone.jsonl", (prompt_of(i) for i in range(1, n + 1)))
    assert cli("import", str(tmp_path / "gone.jsonl"), "--db", str(db), *RUN_DEFAULTS).returncode == 0
    with open(tmp_path / "gone.out", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "batcher", "run", "gone", "--db", str(db), "--base-url",
                                 server.base_url, "--rpm", "90"], stdout=out, stderr=subprocess.PIPE, env=clean_env())
    assert proc.stderr is not None
    proc.stderr.close()  # the reader is gone before the first line
    assert proc.wait(30) == -signal.SIGPIPE
    assert (tmp_path / "gone.out").read_text() == ""

    now = counts(db)
    done = now["succeeded"]
    assert 5 <= done < n and now == {"succeeded": done, "pending": n - done}, now
    assert query(db, "SELECT outcome FROM runs") == [("interrupted",)]
    stats = settled_stats(server)  # the requests in flight were let finish, and their answers stored
    assert query(db, "SELECT count(*) FROM attempts") == [(stats["requests"],)]
    assert stats["succeeded"] == done

    again = cli(*run_args("gone", db, server.base_url, "--rpm", "6000"))
    assert again.returncode == 0, again.stderr
    assert counts(db) == {"succeeded": n}
    assert_answers_are_their_own(db, prompts)
    assert server.stats()["requests"] == n  # nothing sent twice



# -- 7. one run per batch ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_second_concurrent_run_is_refused_naming_the_first(tmp_path: Path, sim: Any) -> None:
    server = sim(latency=0.02)
    db = tmp_path / "store.db"
    n = 40
    # The first job keeps the first run busy for a while whatever the machine's speed;
    # the first run is stopped at once (no grace) when the others have been refused.
    raw = ["Take your time #sim:sleep=20"] + [prompt_of(i) for i in range(2, n + 1)]
    prompts = write_jobs(tmp_path / "busy.jsonl", raw)
    args = run_args(tmp_path / "busy.jsonl", db, server.base_url, "--rpm", "1200", "--concurrency", "4",
                    "--grace", "0")
    first = Spawned(tmp_path, "first", args)
    wait_for(lambda: query(db, "SELECT 1 FROM runs WHERE pid = ? AND ended_at IS NULL", first.pid)
             and succeeded_count(db) == n - 1, what="the first run to be waiting on its slow job", proc=first)

    # The same command, and the batch by name, both at once.
    others = [Spawned(tmp_path, f"other{i}", run_args(target, db, server.base_url, "--rpm", "1200"))
              for i, target in enumerate((tmp_path / "busy.jsonl", "busy"))]
    for other in others:
        assert other.wait(30) == 2, other.stderr
        assert_clean(other.stderr)
        errors = error_lines(other.stderr)
        assert len(errors) == 1 and f"batch 'busy' is already being run by process {first.pid} on " in errors[0], \
            other.stderr
        assert "wait for it, or stop it and run again" in errors[0]
    assert first.proc.poll() is None, "the first run ended too soon for the test to mean anything"
    assert statuses(db)["job-1"] == "running"  # the refused runs did not take the first one's jobs

    first.proc.send_signal(signal.SIGINT)
    assert first.wait(15) == 130, first.stderr
    assert counts(db) == {"succeeded": n - 1, "pending": 1}
    assert_answers_are_their_own(db, prompts)
    stats = server.stats()
    # The refused runs sent nothing: the first run's requests are all the server saw.
    assert stats["requests"] == n and stats["by_status"].get("200") == n - 1, stats
    # Every request the server saw is stored as an attempt, the one given up at the stop included.
    assert query(db, "SELECT count(*), count(status_code) FROM attempts") == [(n, n - 1)]
    assert query(db, "SELECT outcome FROM runs") == [("interrupted",)]


# -- 8. the key never leaks -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_api_key_never_written_or_printed(tmp_path: Path, sim: Any) -> None:
    good = sim(key=SECRET, latency=(0, 0.02))
    refusing = sim(key="right", latency=0)
    db = tmp_path / "store.db"
    write_jobs(tmp_path / "secret.jsonl", (prompt_of(i) for i in range(1, 9)))
    write_jobs(tmp_path / "nokey.jsonl", (prompt_of(i) for i in range(20, 24)))
    write_jobs(tmp_path / "down.jsonl", (prompt_of(i) for i in range(30, 33)))
    fast = ["--rpm", "6000", "--concurrency", "4"]
    outputs: list[str] = []

    def record(done: subprocess.CompletedProcess[str], code: int) -> None:
        assert done.returncode == code, done.stderr
        assert_clean(done.stderr)
        outputs.extend([done.stdout, done.stderr])

    record(cli(*run_args(tmp_path / "secret.jsonl", db, good.base_url, *fast), key=SECRET), 0)
    record(cli(*run_args(tmp_path / "nokey.jsonl", db, refusing.base_url, *fast), key=SECRET), 3)
    closed = f"http://127.0.0.1:{free_port()}"
    # Nothing answers there before any answer: the run stops (exit 2) with its jobs pending.
    record(cli(*run_args(tmp_path / "down.jsonl", db, closed, *fast, "--max-attempts", "2"), key=SECRET), 2)
    record(cli(*run_args(tmp_path / "secret.jsonl", db, good.base_url, *fast, "--auth", "bearer"), key=SECRET), 0)
    reads = [["status", "down", "--db", str(db)], ["status", "secret", "--db", str(db), "--json"],
             *(["export", batch, "--db", str(db), "--format", fmt, "-o", "-", "--include-pending"]
               for batch, fmt in (("secret", "results"), ("down", "text"), ("nokey", "merged"))),
             ["export", "secret", "--db", str(db), "--format", "merged", "-o", str(tmp_path / "out.merged")]]
    for done in cli_each(*reads, key=SECRET):
        record(done, 0)

    assert counts(db) == {"succeeded": 8, "pending": 7}
    assert query(db, "SELECT DISTINCT error_type FROM attempts WHERE status_code IS NULL") == [("connection_error",)]
    assert '"custom_id": "job-1"' in "".join(outputs) or '"custom_id":"job-1"' in "".join(outputs)
    needles = (SECRET, SECRET[8:24])
    for text in outputs:
        for needle in needles:
            assert needle not in text
    files = [p for p in tmp_path.iterdir() if p.is_file() and not p.name.endswith(".jsonl")]
    assert any(p.name == "store.db" for p in files)
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, path
            assert needle.encode("utf-16-le") not in data, path


# -- 9. retries over the wire ---------------------------------------------------------------------

#: (attempt status code, error type) each simulator fault kind is recorded as.
RECORDED_AS = {
    "500": (500, "api_error"),
    "529": (529, "overloaded_error"),
    "502": (502, "api_error"),
    "503": (503, "api_error"),
    "408": (408, "timeout_error"),
    "html": (502, "api_error"),
    "bad_json": (200, "invalid_response"),
    "cut": (None, "connection_error"),
    "429": (429, "rate_limit_error"),
    "stall": (None, "timeout_error"),
}


@pytest.mark.timeout(60)
def test_retryable_faults_end_in_success(tmp_path: Path, sim: Any) -> None:
    server = sim(seed=11, latency=(0, 0.02), fail_500=0.05, fail_529=0.04, fail_cut=0.05, fail_html=0.04,
                 fail_bad_json=0.05, fail_429=0.05, fail_stall=0.03, stall_seconds=5,
                 fail_status={502: 0.04, 503: 0.04, 408: 0.04})
    db = tmp_path / "store.db"
    n = 50
    prompts = write_jobs(tmp_path / "flaky.jsonl", (prompt_of(i) for i in range(1, n + 1)))
    done = cli(*run_args(tmp_path / "flaky.jsonl", db, server.base_url, "--rpm", "6000", "--concurrency", "8",
                         "--max-attempts", "10", "--timeout", "1"))
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    assert counts(db) == {"succeeded": n}
    assert_answers_are_their_own(db, prompts)

    stats = server.stats()
    faults = stats["faults"]
    assert set(faults) == set(RECORDED_AS), f"seed 11 no longer produces every fault kind: {faults}"
    expected: Counter[tuple[Any, Any]] = Counter({(200, None): n})
    for kind, times in faults.items():
        expected[RECORDED_AS[kind]] += times
    recorded = Counter({(s, t): c for s, t, c in query(
        db, "SELECT status_code, error_type, count(*) FROM attempts GROUP BY 1, 2")})
    assert recorded == expected, (recorded, faults)
    assert sum(recorded.values()) == stats["requests"]
    # The job's attempt budget counts every retry but the 429s.
    per_job = query(db, "SELECT j.attempts, count(a.id), sum(a.status_code IS 429) FROM jobs j "
                        "JOIN attempts a ON a.job_id = j.id GROUP BY j.id")
    assert all(used == tries - limited for used, tries, limited in per_job), per_job
    assert max(tries for _, tries, _ in per_job) > 1
    summary = done.stdout.splitlines()[0]
    assert summary.startswith(f"batch flaky: {n} succeeded, 0 failed this run, 0 left; {stats['requests']} requests")
    assert f"{faults['429']} rate-limited" in summary


@pytest.mark.timeout(30)
def test_server_rate_limit_429s_do_not_use_attempts(tmp_path: Path, sim: Any) -> None:
    # The key's real limit (20 per second) is far below --rpm and answers are
    # slow, so the window fills before any answer says so: the server answers
    # 429s, and with --max-attempts 1 any 429 counted would fail a job.
    server = sim(rpm=20, window=1, latency=0.5)
    db = tmp_path / "store.db"
    n = 40
    prompts = write_jobs(tmp_path / "limited.jsonl", (prompt_of(i) for i in range(1, n + 1)))
    done = cli(*run_args(tmp_path / "limited.jsonl", db, server.base_url, "--rpm", "6000", "--concurrency", "30",
                         "--max-attempts", "1"))
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    assert counts(db) == {"succeeded": n}
    assert_answers_are_their_own(db, prompts)
    stats = settled_stats(server)
    assert stats["status_429"] > 0, stats
    assert query(db, "SELECT max(attempts), min(attempts) FROM jobs") == [(1, 1)]
    recorded = dict(query(db, "SELECT status_code, count(*) FROM attempts GROUP BY 1"))
    assert recorded == {200: n, 429: stats["status_429"]}, recorded
    assert f"{stats['status_429']} rate-limited" in done.stdout


STREAM_RECORDED_AS = {
    "500": (500, "api_error"),
    "stream_error": (200, "overloaded_error"),  # the error event's own type
    "bad_json": (200, "malformed_event"),
    "cut": (None, "connection_error"),  # the server drops the connection mid-stream
}


@pytest.mark.timeout(60)
def test_streamed_faults_end_in_success(tmp_path: Path, sim: Any) -> None:
    server = sim(seed=5, latency=(0, 0.02), fail_500=0.08, fail_cut=0.1, fail_stream_error=0.1, fail_bad_json=0.08)
    db = tmp_path / "store.db"
    n = 30
    prompts = write_jobs(tmp_path / "streamy.jsonl", (prompt_of(i) for i in range(1, n + 1)))
    done = cli(*run_args(tmp_path / "streamy.jsonl", db, server.base_url, "--rpm", "6000", "--concurrency", "8",
                         "--max-attempts", "10", "--stream"))
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    assert counts(db) == {"succeeded": n}
    assert_answers_are_their_own(db, prompts)
    assert query(db, "SELECT count(*) FROM jobs WHERE streamed = 1 AND ttft_ms IS NOT NULL") == [(n,)]

    stats = settled_stats(server)
    faults = stats["faults"]
    assert set(faults) == {"500", "cut", "stream_error", "bad_json"}, faults
    recorded = Counter({(s, t): c for s, t, c in query(
        db, "SELECT status_code, error_type, count(*) FROM attempts GROUP BY 1, 2")})
    assert sum(recorded.values()) == stats["requests"]
    assert recorded[(200, None)] == n
    for kind, shape in STREAM_RECORDED_AS.items():
        assert recorded[shape] == faults[kind], (kind, recorded, faults)
    assert sum(recorded.values()) == n + sum(faults.values()), recorded
    assert query(db, "SELECT count(*) FROM attempts WHERE streamed = 0") == [(0,)]


def test_a_run_does_not_load_what_it_never_uses() -> None:
    """httpx's own command-line client (click, rich, pygments) would be a tenth
    of a run's start: the HTTP client keeps it from loading with httpx."""
    code = ("import sys, batcher.runner; "
            "print(sorted(m for m in ('pygments', 'rich.syntax', 'rich.table') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
