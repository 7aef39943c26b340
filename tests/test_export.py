"""Exporting results: the three formats, filters, input order, snapshots, atomic files, the CLI."""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from anthropic.types.messages import MessageBatchIndividualResponse

from batcher import export as export_module
from batcher import outfile
from batcher.db import write
from batcher.errors import OutputError, StoreError, UsageError
from batcher.export import default_output, export_batch, export_chunks
from batcher.importer import import_file
from batcher._results import iter_results
from batcher.jobqueue import unfinished_bodies
from batcher.schema import ORDER, jobs

from batchdata import DEFAULTS, fail, make_batch, message, mixed_batch, succeed, write_job_file

FINISHED = ["job-1", "job-2", "job-3", "job-4", "job-5", "job-6", "job-8", "job-9"]


def lines_of(engine: Any, batch: Any, **options: Any) -> list[dict[str, Any]]:
    return [orjson.loads(line) for data, _ in export_chunks(engine, batch, **options) for line in data.splitlines()]


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Any, Any, str]:
    return mixed_batch(tmp_path)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batcher", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


# -- results ------------------------------------------------------------------


def test_results_lines_follow_anthropic_format(mixed: Any) -> None:
    engine, batch, _ = mixed
    out = lines_of(engine, batch)
    assert [o["custom_id"] for o in out] == FINISHED
    kinds = {o["custom_id"]: o["result"]["type"] for o in out}
    assert kinds == {"job-1": "succeeded", "job-2": "succeeded", "job-3": "errored", "job-4": "canceled",
                     "job-5": "succeeded", "job-6": "errored", "job-8": "succeeded", "job-9": "errored"}
    for obj in out:
        parsed = MessageBatchIndividualResponse.model_validate(obj)
        assert parsed.custom_id == obj["custom_id"]
    assert out[0]["result"]["message"] == message("job-1")
    assert out[2]["result"]["error"] == {"type": "error", "request_id": "req_1", "error": {
        "type": "invalid_request_error", "message": "max_tokens: must be positive"}}
    assert out[5]["result"]["error"]["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    # Not an Anthropic error type: mapped, the original kept in the message.
    assert out[7]["result"]["error"] == {"type": "error", "request_id": None, "error": {
        "type": "api_error", "message": "connection_error: Connection reset by peer"}}


def test_include_pending_keeps_rows_aligned_with_the_input(mixed: Any) -> None:
    engine, batch, _ = mixed
    out = lines_of(engine, batch, include_pending=True)
    assert [o["custom_id"] for o in out] == [f"job-{i}" for i in range(1, 11)]
    assert out[6]["result"] == {"type": "pending"} and out[9]["result"] == {"type": "pending"}
    for obj in out:
        if obj["result"]["type"] != "pending":
            MessageBatchIndividualResponse.model_validate(obj)


@pytest.mark.parametrize("only, expected", [
    ("succeeded", ["job-1", "job-2", "job-5", "job-8"]),
    ("failed", ["job-3", "job-6", "job-9"]),
    ("all", FINISHED),
    ("canceled", ["job-4"]),
    ("pending", ["job-7", "job-10"]),
    (["succeeded", "canceled"], ["job-1", "job-2", "job-4", "job-5", "job-8"]),
])
def test_only_filters(mixed: Any, only: Any, expected: list[str]) -> None:
    engine, batch, _ = mixed
    for fmt in ("results", "text", "merged"):
        assert [o["custom_id"] for o in lines_of(engine, batch, fmt=fmt, only=only)] == expected


def test_only_with_include_pending_adds_the_unfinished(mixed: Any) -> None:
    engine, batch, _ = mixed
    out = lines_of(engine, batch, only="failed", include_pending=True)
    assert [o["custom_id"] for o in out] == ["job-3", "job-6", "job-7", "job-9", "job-10"]


def test_export_and_results_take_the_same_only_and_refuse_others_alike(mixed: Any, tmp_path: Path) -> None:
    """results(only="canceled") worked where export(only="canceled") was refused, each in its own words."""
    import batcher

    _, batch, db = mixed
    with batcher.Store(db) as store:
        b = store.batch(batch.name)
        for only in ("canceled", "pending", ("failed", "canceled")):
            out = tmp_path / "only.jsonl"
            assert b.export(out, format="text", only=only) == len(list(b.results(only=only)))
            assert [orjson.loads(line)["custom_id"] for line in out.read_bytes().splitlines()] == [
                r.custom_id for r in b.results(only=only)]
        refusals = []
        for call in (lambda: list(b.results(only="done")), lambda: b.export(tmp_path / "x.jsonl", only="done")):
            with pytest.raises(UsageError) as caught:
                call()
            refusals.append(str(caught.value))
    assert refusals == ["only takes 'all' or one or more of succeeded, failed, canceled, pending, not 'done'"] * 2
    done = cli("export", batch.name, "--db", db, "--only", "canceled", "-o", "-")
    assert [orjson.loads(line)["custom_id"] for line in done.stdout.splitlines()] == ["job-4"], done.stderr


def test_unusual_stored_errors_still_validate(tmp_path: Path) -> None:
    engine, batch, _ = make_batch(tmp_path, 4)
    fail(engine, batch, "job-1", "api_error", 502, stored="<html>502 Bad Gateway</html>")
    fail(engine, batch, "job-2", "invalid_request_error", 400, stored='{"error": {"message": "bad", "code": 1}}')
    fail(engine, batch, "job-3", "request_too_large", 413, text="Request exceeds 32 MB")
    fail(engine, batch, "job-4", None, None, stored="")
    out = lines_of(engine, batch)
    for obj in out:
        MessageBatchIndividualResponse.model_validate(obj)
    errors = [o["result"]["error"]["error"] for o in out]
    assert errors[0] == {"type": "api_error", "message": "<html>502 Bad Gateway</html>"}
    assert errors[1] == {"type": "invalid_request_error", "message": "bad"}
    assert errors[2] == {"type": "invalid_request_error", "message": "request_too_large: Request exceeds 32 MB"}
    assert errors[3]["type"] == "api_error"


# -- text and merged ----------------------------------------------------------------


def test_text_joins_the_text_blocks(tmp_path: Path) -> None:
    engine, batch, _ = make_batch(tmp_path, 1)
    msg = message("job-1")
    msg["content"] = [{"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "text", "text": "Hello, "},
                      {"type": "tool_use", "id": "t1", "name": "f", "input": {}}, {"type": "text", "text": "world"}]
    msg["stop_reason"] = "tool_use"
    succeed(engine, batch, "job-1", msg=msg)
    assert lines_of(engine, batch, fmt="text") == [{
        "custom_id": "job-1", "status": "succeeded", "text": "Hello, world", "stop_reason": "tool_use",
        "usage": msg["usage"], "error": None}]


def test_text_format(mixed: Any) -> None:
    engine, batch, _ = mixed
    out = {o["custom_id"]: o for o in lines_of(engine, batch, fmt="text", include_pending=True)}
    assert all(list(o) == ["custom_id", "status", "text", "stop_reason", "usage", "error"] for o in out.values())
    assert out["job-1"]["text"] == "Answer to job-1." and out["job-1"]["stop_reason"] == "end_turn"
    assert out["job-1"]["usage"]["output_tokens"] == 30 and out["job-1"]["error"] is None
    assert out["job-6"] == {"custom_id": "job-6", "status": "failed", "text": None, "stop_reason": None,
                            "usage": None, "error": {"type": "overloaded_error", "message": "Overloaded",
                                                     "status_code": 529, "request_id": "req_6"}}
    assert out["job-9"]["error"] == {"type": "connection_error", "message": "Connection reset by peer",
                                     "status_code": None, "request_id": None}
    assert out["job-4"]["status"] == "canceled" and out["job-4"]["text"] is None and out["job-4"]["error"] is None
    assert out["job-10"]["status"] == "pending" and out["job-7"]["status"] == "pending"


def test_merged_format_keeps_the_input_object(mixed: Any) -> None:
    engine, batch, _ = mixed
    out = {o["custom_id"]: o for o in lines_of(engine, batch, fmt="merged")}
    assert out["job-1"] == {"custom_id": "job-1", "prompt": "Question 1?", "topic": "t1",
                            "response": "Answer to job-1.", "error": None, "usage": message("job-1")["usage"]}
    assert out["job-2"]["params"]["messages"][0]["content"] == "Question 2?"
    assert out["job-2"]["response"] == "Answer to job-2."
    assert out["job-3"]["response"] is None and out["job-3"]["usage"] is None
    assert out["job-3"]["error"]["message"] == "max_tokens: must be positive"
    assert out["job-4"]["response"] is None and out["job-4"]["error"] is None


def test_lines_follow_the_input_file_not_insertion_order(tmp_path: Path) -> None:
    engine, batch, _ = make_batch(tmp_path, 3)
    # The file gains lines before and between the stored ones: new jobs get
    # higher ids but earlier line numbers.
    path = write_job_file(tmp_path / "b.jsonl", [7, 1, 8, 2, 3, 9])
    import_file(engine, str(path), "b", DEFAULTS)
    for i in (1, 2, 3, 7, 8, 9):
        succeed(engine, batch, f"job-{i}")
    expected = ["job-7", "job-1", "job-8", "job-2", "job-3", "job-9"]
    for fmt in ("results", "text", "merged"):
        assert [o["custom_id"] for o in lines_of(engine, batch, fmt=fmt)] == expected
        assert [o["custom_id"] for o in lines_of(engine, batch, fmt=fmt, only="succeeded", chunk=2)] == expected


def test_a_batch_of_two_files_exports_the_first_then_the_second(tmp_path: Path) -> None:
    """Lines of different files share numbers: by line alone they interleaved (job-1, job-7, job-2, job-8...)."""
    engine, batch, _ = make_batch(tmp_path, 3)  # b.jsonl: job-1..job-3
    second = write_job_file(tmp_path / "more.jsonl", [7, 8])
    import_file(engine, str(second), "b", DEFAULTS)
    expected = ["job-1", "job-2", "job-3", "job-7", "job-8"]
    assert [o["custom_id"] for o in lines_of(engine, batch, include_pending=True)] == expected
    # The first file read again, grown by a line in its middle, keeps its place before the second.
    import_file(engine, str(write_job_file(tmp_path / "b.jsonl", [1, 4, 2, 3])), "b", DEFAULTS)
    expected = ["job-1", "job-4", "job-2", "job-3", "job-7", "job-8"]
    assert [o["custom_id"] for o in lines_of(engine, batch, include_pending=True)] == expected
    assert [r.custom_id for r in iter_results(engine, batch)] == expected
    assert [custom_id for custom_id, _, _ in unfinished_bodies(engine, batch.id)] == expected


def test_query_reads_the_order_index_without_sorting(mixed: Any) -> None:
    engine, batch, _ = mixed
    from sqlalchemy import select

    for statuses in (None, ("succeeded",), ("succeeded", "failed", "canceled")):
        query = select(jobs.c.custom_id).where(jobs.c.batch_id == batch.id)
        if statuses:
            query = query.where(jobs.c.status.in_(statuses))
        sql = str(query.order_by(*ORDER).compile(engine, compile_kwargs={"literal_binds": True}))
        with engine.connect() as conn:
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
        assert "ix_jobs_batch_order" in plan and "TEMP B-TREE" not in plan, plan


# -- a consistent snapshot while a run writes -------------------------------------------


def _finish_everything(engine: Any, batch: Any) -> None:
    with write(engine) as conn:
        conn.execute(jobs.update().where(jobs.c.batch_id == batch.id).values(status="canceled"))


def test_export_is_a_snapshot_while_another_connection_commits(tmp_path: Path) -> None:
    engine, batch, _ = make_batch(tmp_path, 3000)
    chunks = export_chunks(engine, batch, include_pending=True, chunk=100)
    first = next(chunks)[0].splitlines()
    writer = threading.Thread(target=_finish_everything, args=(engine, batch))
    writer.start()
    writer.join(10)
    assert not writer.is_alive(), "the export must not block a writer"
    rest = [line for data, _ in chunks for line in data.splitlines()]
    kinds = {orjson.loads(line)["result"]["type"] for line in first + rest}
    assert len(first) + len(rest) == 3000 and kinds == {"pending"}
    # A new export sees the committed change.
    assert {o["result"]["type"] for o in lines_of(engine, batch)} == {"canceled"}


def test_export_does_not_wait_for_an_open_write_transaction(tmp_path: Path) -> None:
    engine, batch, _ = make_batch(tmp_path, 500)
    started, release = threading.Event(), threading.Event()

    def hold_write_lock() -> None:
        with write(engine) as conn:
            conn.execute(jobs.update().where(jobs.c.batch_id == batch.id).values(status="canceled"))
            started.set()
            release.wait(10)

    writer = threading.Thread(target=hold_write_lock)
    writer.start()
    try:
        assert started.wait(10)
        out = tmp_path / "during.jsonl"
        assert export_batch(engine, batch, str(out), include_pending=True) == 500
    finally:
        release.set()
        writer.join(10)
    assert {orjson.loads(line)["result"]["type"] for line in out.read_bytes().splitlines()} == {"pending"}


# -- files: atomic, errors ------------------------------------------------------------


def test_writes_a_file_atomically_and_returns_the_count(mixed: Any, tmp_path: Path) -> None:
    engine, batch, _ = mixed
    out = tmp_path / "out" / "results.jsonl"
    out.parent.mkdir()
    out.write_text("old\n")
    os.chmod(out, 0o640)
    assert export_batch(engine, batch, str(out)) == 8
    assert len(out.read_bytes().splitlines()) == 8
    assert os.stat(out).st_mode & 0o777 == 0o640
    assert os.listdir(out.parent) == ["results.jsonl"]


@pytest.mark.parametrize("boom", [RuntimeError, KeyboardInterrupt])
def test_failure_mid_write_leaves_the_destination_untouched(mixed: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, boom: type) -> None:
    engine, batch, _ = mixed
    real = export_module.RENDERERS["results"]
    seen = []

    def flaky(row: Any) -> bytes:
        seen.append(row[0])
        if len(seen) == 5:
            raise boom("failed mid-export")
        return real(row)

    monkeypatch.setitem(export_module.RENDERERS, "results", flaky)
    monkeypatch.setattr(export_module, "CHUNK", 2)
    out = tmp_path / "dest" / "r.jsonl"
    out.parent.mkdir()
    out.write_text("previous export\n")
    with pytest.raises(boom):
        export_batch(engine, batch, str(out))
    assert len(seen) == 5
    assert out.read_text() == "previous export\n"
    assert os.listdir(out.parent) == ["r.jsonl"]


def test_corrupt_stored_answer_is_one_error_and_no_file(tmp_path: Path) -> None:
    engine, batch, _ = make_batch(tmp_path, 3)
    succeed(engine, batch, "job-1")
    with write(engine) as conn:
        conn.execute(jobs.update().where(jobs.c.custom_id == "job-2").values(status="succeeded", response="{trunc"))
    out = tmp_path / "o" / "x.jsonl"
    out.parent.mkdir()
    with pytest.raises(StoreError, match="job 'job-2'"):
        export_batch(engine, batch, str(out))
    assert os.listdir(out.parent) == []


def test_disk_full_removes_the_temporary_file(mixed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, batch, _ = mixed

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outfile.os, "fsync", full)
    (tmp_path / "o").mkdir()
    with pytest.raises(OutputError, match="cannot write: disk full") as caught:
        export_batch(engine, batch, str(tmp_path / "o" / "x.jsonl"))
    # The user's output, not the store: a usage-class error.
    assert caught.value.exit_code == 2
    assert os.listdir(tmp_path / "o") == []


def test_a_failed_background_flush_fails_the_export(mixed: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk is flushed while lines are still written; an error there must
    not be lost, even if the final flush succeeds (the kernel may report a
    write-back error only once)."""
    engine, batch, _ = mixed
    calls: list[str] = []

    def full_once(fd: int) -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outfile, "SYNC_EVERY", 1)
    monkeypatch.setattr(outfile.os, "fsync", full_once)
    (tmp_path / "o").mkdir()
    with pytest.raises(OutputError, match="cannot write: disk full"):
        export_batch(engine, batch, str(tmp_path / "o" / "x.jsonl"), fmt="merged")
    assert calls[0] != threading.current_thread().name
    assert os.listdir(tmp_path / "o") == []


def test_destination_problems_are_usage_errors(mixed: Any, tmp_path: Path) -> None:
    engine, batch, db = mixed
    with pytest.raises(UsageError, match="does not exist"):
        export_batch(engine, batch, str(tmp_path / "missing" / "x.jsonl"))
    with pytest.raises(UsageError, match="is a folder"):
        export_batch(engine, batch, str(tmp_path))
    with pytest.raises(UsageError, match="job store itself"):
        export_batch(engine, batch, db)
    with pytest.raises(UsageError, match="^format must be one of"):
        export_batch(engine, batch, str(tmp_path / "x.jsonl"), fmt="csv")
    assert not (tmp_path / "x.jsonl").exists()


def test_unwritable_folder(mixed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, batch, _ = mixed

    def denied(**_: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(outfile.tempfile, "mkstemp", denied)
    with pytest.raises(UsageError, match="cannot write here: Permission denied"):
        export_batch(engine, batch, str(tmp_path / "x.jsonl"))
    assert not (tmp_path / "x.jsonl").exists()


def test_writes_to_a_stream(mixed: Any) -> None:
    import io

    engine, batch, _ = mixed
    buffer = io.BytesIO()
    assert export_batch(engine, batch, buffer, fmt="text", only="succeeded") == 4
    assert len(buffer.getvalue().splitlines()) == 4


def test_batch_export_takes_path_objects_text_streams_and_a_replaced_stdout(
        mixed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pathlib.Path was taken for a stream (no .flush), a text stream was given bytes, and "-" wrote
    to sys.stdout.buffer, which a notebook's stdout or a StringIO put in its place does not have."""
    import io

    import batcher

    _, batch, db = mixed
    with batcher.Store(db) as store:
        b = store.batch(batch.name)
        assert b.export(tmp_path / "p.jsonl", format="text") == 8
        assert len((tmp_path / "p.jsonl").read_bytes().splitlines()) == 8
        text = io.StringIO()
        assert b.export(text, format="text", only="succeeded") == 4
        assert [orjson.loads(line)["status"] for line in text.getvalue().splitlines()] == ["succeeded"] * 4
        with open(tmp_path / "t.jsonl", "w") as opened:  # over a binary buffer: what was written first stays first
            opened.write("header\n")
            assert b.export(opened, only="failed") == 3
        assert (tmp_path / "t.jsonl").read_text().splitlines()[0] == "header"
        monkeypatch.setattr(sys, "stdout", io.StringIO())
        assert b.export("-", format="text") == 8
        assert len(sys.stdout.getvalue().splitlines()) == 8


@pytest.mark.parametrize("where, message", [
    (5, "an export is written to a file name, '-' (stdout), a path object or an open stream, not int"),
    (b"x.jsonl", "an export is written to a file name, '-' (stdout), a path object or an open stream, not bytes"),
    ("closed", "the StringIO given is closed: nothing can be written to it"),
])
def test_what_an_export_cannot_write_to_is_one_usage_error(mixed: Any, where: Any, message: str) -> None:
    import io

    import batcher

    _, batch, db = mixed
    if where == "closed":
        where = io.StringIO()
        where.close()
    with batcher.Store(db) as store, pytest.raises(batcher.UsageError) as caught:
        store.batch(batch.name).export(where)
    assert str(caught.value) == message


def test_default_output_name(mixed: Any) -> None:
    _, batch, _ = mixed
    assert default_output(batch, "results") == "b.results.jsonl"
    assert default_output(dataclasses.replace(batch, name="../x y"), "text") == "%2E.%2Fx%20y.text.jsonl"
    # Distinct names, distinct files.
    names = ["%", "_", " ", "%25", "a/b", "a%2Fb", ".x", "%2Ex", "é", "e\u0301"]
    files = {default_output(dataclasses.replace(batch, name=n), "text") for n in names}
    assert len(files) == len(names)
    assert all("/" not in f and not f.startswith(".") for f in files)


# -- the command line -----------------------------------------------------------------


def test_cli_default_output_file_and_stdout(mixed: Any, tmp_path: Path) -> None:
    _, _, db = mixed
    done = cli("export", "--db", db, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "8 line(s) written to b.results.jsonl" in done.stdout
    assert len((tmp_path / "b.results.jsonl").read_bytes().splitlines()) == 8

    done = cli("export", "b", "--db", db, "-o", "-", "--format", "merged", "--only", "succeeded")
    assert done.returncode == 0, done.stderr
    exported = [orjson.loads(line)["custom_id"] for line in done.stdout.splitlines()]
    assert exported == ["job-1", "job-2", "job-5", "job-8"]
    assert "4 line(s) written to stdout" in done.stderr


@pytest.mark.parametrize("args, message", [
    (["export", "nope"], "no batch named 'nope'"),
    (["export", "b", "-o", "/nonexistent/dir/x.jsonl"], "does not exist"),
    (["export", "b", "--format", "csv"], "Invalid value for '--format'"),
])
def test_cli_errors_are_one_line_exit_2(mixed: Any, args: list[str], message: str) -> None:
    _, _, db = mixed
    done = cli(*args, "--db", db)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    if "Invalid value" not in message:
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("batcher: error: ")


def test_cli_help_has_an_example() -> None:
    done = cli("export", "--help")
    assert done.returncode == 0 and "Example" in done.stdout and "--include-pending" in done.stdout
