"""`batcher run` against servers that misbehave on purpose, and against careless input.

Each test drives the real command in a subprocess over real HTTP on
127.0.0.1 (see ``misbehaving.py``) and checks the exit code, that stderr is
one clear line and never a traceback, and what the store holds afterwards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from batcher.client import safe_error_text

from misbehaving import Misbehaving
from test_run_cli import (Spawned, assert_clean, cli, counts, error_lines, query, run_args, succeeded_count,
                          wait_for, write_jobs)

SECRET = "sk-poe-SECRET-4d1f"


@pytest.fixture(scope="module")
def bad() -> Iterator[Misbehaving]:
    with Misbehaving() as server:
        yield server


def one_job(tmp_path: Path, name: str = "b") -> Path:
    path = tmp_path / f"{name}.jsonl"
    write_jobs(path, ["hello"])
    return path


def job_row(db: Path) -> tuple[Any, ...]:
    (row,) = query(db, "SELECT status, error_type, error, response, attempts FROM jobs")
    return row


# -- the key ----------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key", [f"{SECRET}\nX-Injected: 1", f"{SECRET}é", "\t"])
def test_a_malformed_key_is_refused_before_anything_is_sent(tmp_path: Path, bad: Misbehaving, key: str) -> None:
    db = tmp_path / "store.db"
    before = bad.hits["ok"]
    done = cli(*run_args(one_job(tmp_path), db, bad.url("ok")), key=key)
    assert done.returncode == 2, done.stderr
    assert_clean(done.stderr)
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("batcher: error: ")
    assert ("POE_API_KEY is malformed" if key.strip() else "no API key") in done.stderr
    assert SECRET not in done.stderr + done.stdout
    assert bad.hits["ok"] == before
    assert query(db, "SELECT count(*) FROM jobs WHERE status != 'pending'") in ([], [(0,)])


def test_an_httpx_error_that_quotes_a_header_is_reduced_to_its_kind(bad: Misbehaving) -> None:
    # httpx itself refuses the header, quoting it: the text that would reach the store.
    with httpx.Client() as client, pytest.raises(httpx.LocalProtocolError) as caught:
        client.post(bad.url("ok") + "/v1/messages", headers={"x-api-key": f"{SECRET}\nX-Injected: 1"})
    assert SECRET in str(caught.value)
    shown = safe_error_text(caught.value, f"{SECRET}\nX-Injected: 1")
    assert SECRET not in shown and "\n" not in shown
    # Any other text loses a copy of the key, however it was quoted.
    for form in (SECRET, repr(SECRET), repr(SECRET.encode())):
        assert SECRET not in safe_error_text(httpx.ConnectError(f"failed near {form}"), SECRET)


# -- answers that are not answers ---------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", [0, 1])
def test_a_malformed_200_is_retried_and_never_a_success(tmp_path: Path, bad: Misbehaving, which: int) -> None:
    db = tmp_path / "store.db"
    mode = f"malformed-{which}"
    before = bad.hits[mode]
    done = cli(*run_args(one_job(tmp_path), db, bad.url(mode), "--max-attempts", "2"))
    assert done.returncode == 1, done.stderr
    assert_clean(done.stderr)
    status, error_type, error, response, attempts = job_row(db)
    assert (status, error_type, response, attempts) == ("failed", "invalid_response", None, 2)
    assert "not a Messages API answer" in json.loads(error)["error"]["message"]
    assert bad.hits[mode] - before == 2
    assert query(db, "SELECT count(*) FROM jobs WHERE input_tokens IS NOT NULL") == [(0,)]
    if which == 0:
        return

    shown = cli("status", "b", "--db", str(db))
    assert shown.returncode == 0 and "invalid_response" in shown.stdout, shown.stdout

    # A type the batch has no failures of is named, with those it has.
    again = cli("retry", "b", "--db", str(db), "--error-type", "nope")
    assert again.returncode == 0 and "0 failed job(s) back to pending" in again.stdout
    assert "no failed job has error type 'nope'; the batch's failures: invalid_response (1)" in again.stderr


@pytest.mark.timeout(60)
def test_a_page_under_a_200_stops_the_run_with_every_job_pending(tmp_path: Path, bad: Misbehaving) -> None:
    """A sign-in page answering for the API (hotel wifi): each job would fail in turn, all of them.
    Named as not JSON, with its type: not "the body is a string"."""
    db = tmp_path / "store.db"
    path = tmp_path / "p.jsonl"
    write_jobs(path, [f"q{i}" for i in range(3)])
    done = cli(*run_args(path, db, bad.url("portal"), "--concurrency", "2"))
    assert done.returncode == 2, done.stderr
    assert_clean(done.stderr)
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("batcher: run stopped: ")]
    assert f"every request so far got a page, not an API answer, from {bad.url('portal')}/v1/messages" in line
    assert "the body is not JSON (text/html; charset=utf-8)" in line
    assert counts(db) == {"pending": 3}


# -- deadlines ----------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode, extra, says", [
    ("trickle", [], "no complete answer within 1 s (--timeout)"),
    ("pings", ["--stream"], "the stream sent nothing new for 1 s (--timeout)"),
    ("drip", ["--stream", "--timeout", "30", "--stream-limit", "1"], "more than 1 s (--stream-limit)"),
])
def test_a_slow_server_cannot_keep_an_answer_in_flight(tmp_path: Path, bad: Misbehaving, mode: str,
                                                        extra: list[str], says: str) -> None:
    db = tmp_path / "store.db"
    started = time.monotonic()
    done = cli(*run_args(one_job(tmp_path), db, bad.url(mode), "--max-attempts", "2", "--timeout", "1", *extra))
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert_clean(done.stderr)
    status, error_type, error, response, attempts = job_row(db)
    assert (status, error_type, attempts) == ("failed", "timeout_error", 2)
    assert says in json.loads(error)["error"]["message"]
    assert elapsed < 30  # two attempts of about a second each, not the server's minutes


# -- redirects and plain JSON ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_redirect_stops_the_run_naming_the_new_location(tmp_path: Path, bad: Misbehaving) -> None:
    db = tmp_path / "store.db"
    path = tmp_path / "r.jsonl"
    write_jobs(path, [f"q{i}" for i in range(20)])
    before, ok_before = bad.hits["redirect"], bad.hits["ok"]
    done = cli(*run_args(path, db, bad.url("redirect"), "--concurrency", "2"))
    assert done.returncode == 2, done.stderr
    assert_clean(done.stderr)
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("batcher: run stopped: ")]
    assert f"redirects to {bad.url('ok')}/v1/messages" in line and f"use --base-url {bad.url('ok')}" in line
    assert counts(db) == {"pending": 20}  # nothing failed for the configuration's fault
    assert bad.hits["redirect"] - before <= 2
    assert bad.hits["ok"] == ok_before  # the redirect was not followed, the key not sent along
    assert query(db, "SELECT count(*) FROM attempts WHERE status_code = 301")[0][0] >= 1


@pytest.mark.timeout(60)
def test_a_json_answer_to_a_streamed_request_is_taken(tmp_path: Path, bad: Misbehaving) -> None:
    db = tmp_path / "store.db"
    done = cli(*run_args(one_job(tmp_path), db, bad.url("json"), "--stream"))
    assert done.returncode == 0, done.stderr
    assert job_row(db)[:2] == ("succeeded", None)
    assert query(db, "SELECT streamed FROM jobs") == [(1,)]


# -- option values -----------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, says", [
    (["--rpm", "nan"], "--rpm 'nan' is not a finite number"),
    (["--rpm", "inf"], "--rpm 'inf' is not a finite number"),
    (["--timeout", "nan"], "--timeout 'nan' is not a finite number"),
    (["--base-url", "http://127.0.0.1:99999"], "--base-url 'http://127.0.0.1:99999' has no valid port (1-65535)"),
    (["--concurrency", "1000000000"], "--concurrency '1000000000' is not in [1, 1000]"),
])
def test_unusable_option_values_are_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    done = cli("run", str(one_job(tmp_path)), "--db", str(tmp_path / "s.db"), *args)
    assert done.returncode == 2 and error_lines(done.stderr) == [f"batcher: error: {says}"], done.stderr
    assert_clean(done.stderr)
    assert not (tmp_path / "s.db").exists()


def test_simulate_refuses_a_port_out_of_range() -> None:
    done = cli("simulate", "--port", "99999", timeout=30)
    assert done.returncode == 2 and error_lines(done.stderr) == ["batcher: error: --port '99999' is not in [0, 65535]"]


@pytest.mark.parametrize("args, says", [
    (["--latency", "abc"], "latency must be MIN:MAX seconds (e.g. 0.1:0.4), got 'abc'"),
    (["--latency", "0.1:inf"], "latency needs 0 <= MIN <= MAX, finite seconds, got '0.1:inf'"),
    (["--fail-status", "x=0.1"], "fail-status must be CODE=P (e.g. 503=0.1), got 'x=0.1'"),
])
def test_simulate_names_the_option_a_bad_value_was_given_to(args: list[str], says: str) -> None:
    done = cli("simulate", "--port", "0", *args, timeout=10)
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"batcher: error: {says} (see python -m batcher simulate --help)"], done.stderr


# -- cancel during a run ---------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_cancel_during_a_run_stops_every_job_not_yet_sent(tmp_path: Path, simulator: Any) -> None:
    server = simulator(rpm=100_000, latency=(0.3, 0.5))
    db = tmp_path / "store.db"
    n, concurrency = 200, 10
    write_jobs(tmp_path / "slow.jsonl", [f"q{i}" for i in range(n)])
    run = Spawned(tmp_path, "run", run_args(tmp_path / "slow.jsonl", db, server.base_url, "--rpm", "600",
                                             "--concurrency", str(concurrency)))
    running: list[int] = []

    def some_done() -> bool:
        running.extend(n for (n,) in query(db, "SELECT count(*) FROM jobs WHERE status = 'running'"))
        return succeeded_count(db) >= 20

    wait_for(some_done, timeout=40, what="20 answers", proc=run)
    # Running means in flight, answered and about to be written, or one of the
    # two claimed ahead at 600 rpm; not a queue (chunks claimed ahead of the
    # workers showed well over 100 here).
    assert running and max(running) <= 2 * concurrency, max(running)

    canceled = cli("cancel", "slow", "--db", str(db))
    assert canceled.returncode == 0, canceled.stderr
    n_canceled = int(canceled.stdout.split(": ")[1].split()[0])
    sent_by_then = server.stats()["requests"]
    assert run.wait(40) == 1, run.stderr  # not every job answered: the canceled ones
    sent = server.stats()["requests"]
    final = counts(db)
    assert final["canceled"] == n_canceled and final["succeeded"] + n_canceled == n, final
    assert sent == final["succeeded"]
    # At most the two claimed ahead went out after the cancel (chunks claimed
    # ahead of the workers sent ~170 more).
    assert sent - sent_by_then <= concurrency, (sent_by_then, sent)
    assert n_canceled > 0
