"""Importing job files: what is stored, what is refused, re-imports, streaming, and the import/batches/status commands."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterable

import orjson
import pytest
from sqlalchemy import Engine, func, select

import batcher
from batcher import prepare, tally
from batcher.cost import Cost, request_cost
from batcher.prepare import request_body
from batcher.db import open_store, write
from batcher.errors import UsageError
from batcher.importer import SHOWN_ERRORS, ImportRejected, import_file
from batcher.jobqueue import worst_job_cost
from batcher.jobfile import numbered_lines
from batcher.schema import batches, imports, jobs
from batcher.validate import Defaults

HAIKU = "claude-haiku-4.5"
DEFAULTS = Defaults(model=HAIKU, max_tokens=64)
TRUNCATED = "truncated JSON (the line ends before the object does)"


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def write_lines(path: Path, lines: Iterable[Any], final_newline: bool = True) -> Path:
    """Objects are JSON-encoded; bytes are written as they are."""
    raw = [line if isinstance(line, bytes) else dumps(line) for line in lines]
    path.write_bytes(b"\n".join(raw) + (b"\n" if final_newline else b""))
    return path


def numbered(n: int, start: int = 1) -> list[dict[str, Any]]:
    return [{"custom_id": f"j{i}", "prompt": f"Question {i}?"} for i in range(start, start + n)]


def rows(engine: Engine, *columns: str, batch: str | None = None) -> list[tuple[Any, ...]]:
    """Columns of the jobs in line order; ``body`` is the request as it will be sent."""
    query = (select(*(jobs.c[c] for c in columns), jobs.c.source, jobs.c.line, imports.c.defaults)
             .join_from(jobs, imports, imports.c.id == jobs.c.import_id).order_by(jobs.c.line))
    if batch is not None:
        query = query.join(batches, batches.c.id == jobs.c.batch_id).where(batches.c.name == batch)
    with engine.connect() as conn:
        found = [list(r) for r in conn.execute(query)]
    if "body" in columns:
        at = columns.index("body")
        for r in found:
            r[at] = r[at] or request_body(*r[-3:])
    return [tuple(r[:len(columns)]) for r in found]


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def rejected(engine: Engine, path: Path, **kwargs: Any) -> ImportRejected:
    with pytest.raises(ImportRejected) as caught:
        import_file(engine, str(path), **kwargs)
    return caught.value


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return open_store(str(tmp_path / "store.db"))


# --- what an import stores --------------------------------------------------

def test_both_formats_stored_as_sent(tmp_path: Path, engine: Engine) -> None:
    batch_line = {"custom_id": "req-1", "params": {"model": "claude-sonnet-4.5", "max_tokens": 300, "temperature": 0.5,
                                                   "messages": [{"role": "user", "content": "One?"}]}, "note": "n1"}
    prompt_line = {"custom_id": "req-2", "prompt": "Two?", "topic": "geo", "temperature": 0.1}
    messages_line = {"messages": [{"role": "user", "content": "Three?"}, {"role": "assistant", "content": "3"},
                                  {"role": "user", "content": [{"type": "text", "text": "Sure?"}]}],
                     "model": "claude-opus-4.5", "max_tokens": 5}
    path = write_lines(tmp_path / "jobs.jsonl", [batch_line, b"", prompt_line, b"   ", b"\t", messages_line])
    report = import_file(engine, str(path), defaults=DEFAULTS)
    assert (report.batch, report.file, report.added, report.unchanged, report.rejected) == (
        "jobs", str(path), 3, 0, 0)
    assert report.errors == [] and report.warnings == []

    stored = rows(engine, "line", "custom_id", "body", "extra", "source", "status", "attempts", "response")
    assert [(r[0], r[1]) for r in stored] == [(1, "req-1"), (3, "req-2"), (6, "line-6")]
    bodies = [json.loads(r[2]) for r in stored]
    assert bodies[0] == batch_line["params"]
    assert bodies[1] == {"temperature": 0.1, "messages": [{"role": "user", "content": "Two?"}],
                         "model": HAIKU, "max_tokens": 64}
    assert bodies[2] == messages_line
    assert [r[3] and json.loads(r[3]) for r in stored] == [{"note": "n1"}, {"topic": "geo"}, None]
    assert [r[4] for r in stored] == [dumps(batch_line).decode(), dumps(prompt_line).decode(),
                                      dumps(messages_line).decode()]
    assert {(r[5], r[6], r[7]) for r in stored} == {("pending", 0, None)}
    with engine.connect() as conn:
        hashes = rows(engine, "body", "body_hash")
        assert all(h == hashlib.blake2b(b.encode(), digest_size=16).hexdigest() for b, h in hashes)
        batch = conn.execute(select(batches)).one()
        assert (batch.name, batch.source) == ("jobs", str(path))
        imp = conn.execute(select(imports)).one()
        assert (imp.batch_id, imp.source, imp.added, imp.unchanged, imp.rejected) == (batch.id, str(path), 3, 0, 0)


def test_batch_name_from_option_or_file_stem(tmp_path: Path, engine: Engine) -> None:
    a = write_lines(tmp_path / "set.v2.jsonl", numbered(2))
    assert import_file(engine, str(a), defaults=DEFAULTS).batch == "set.v2"
    # The same custom_ids in another batch are another batch's business.
    assert import_file(engine, str(a), "other", DEFAULTS).added == 2
    assert [b for (b,) in _all(engine, select(batches.c.name).order_by(batches.c.id))] == ["set.v2", "other"]
    assert count(engine, jobs) == 4


def _all(engine: Engine, query: Any) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(query).all()


def test_defaults_apply_where_lines_leave_them_out(tmp_path: Path, engine: Engine) -> None:
    path = write_lines(tmp_path / "d.jsonl", [{"prompt": "a"}, {"prompt": "b", "max_tokens": 7, "system": "own"},
                                              {"params": {"messages": [{"role": "user", "content": "c"}]}}])
    import_file(engine, str(path), defaults=Defaults("claude-opus-4.5", 99, "Be terse."))
    bodies = [json.loads(b) for (b,) in rows(engine, "body")]
    assert [(b["model"], b["max_tokens"], b["system"]) for b in bodies] == [
        ("claude-opus-4.5", 99, "Be terse."), ("claude-opus-4.5", 7, "own"), ("claude-opus-4.5", 99, "Be terse.")]


def test_bom_and_crlf(tmp_path: Path, engine: Engine) -> None:
    path = tmp_path / "win.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + dumps({"custom_id": "a", "prompt": "x"}) + b"\r\n\r\n"
                     + dumps({"custom_id": "b", "prompt": "y"}) + b"\r\n")
    report = import_file(engine, str(path), defaults=DEFAULTS)
    assert report.added == 2 and report.rejected == 0
    assert rows(engine, "line", "custom_id", "source") == [
        (1, "a", '{"custom_id":"a","prompt":"x"}'), (3, "b", '{"custom_id":"b","prompt":"y"}')]


def test_warnings_for_unknown_models_and_stream(tmp_path: Path, engine: Engine) -> None:
    path = write_lines(tmp_path / "w.jsonl", [
        {"prompt": "a", "model": "claude-next"}, {"prompt": "b", "model": "claude-next", "stream": True},
        {"prompt": "c", "model": "gpt-4o"}, {"prompt": "d", "model": "claude-haiku-4-5-20251001", "stream": False},
        {"prompt": "e"}])
    report = import_file(engine, str(path), defaults=DEFAULTS)
    assert report.added == 5
    assert report.warnings == [
        "model 'claude-next' is not a known Claude model (2 job(s)); sent as given",
        "model 'gpt-4o' is not a known Claude model (1 job(s)); sent as given",
        "`stream` dropped from 2 job(s): the runner decides whether to stream",
    ]
    assert not any("stream" in json.loads(b) for (b,) in rows(engine, "body"))


def test_empty_file(tmp_path: Path, engine: Engine) -> None:
    path = write_lines(tmp_path / "empty.jsonl", [b"", b"  "])
    report = import_file(engine, str(path), defaults=DEFAULTS)
    assert (report.added, report.rejected) == (0, 0)
    assert count(engine, jobs) == 0


def test_missing_file_is_a_usage_error(tmp_path: Path, engine: Engine) -> None:
    with pytest.raises(UsageError, match=r"^nope\.jsonl: no such file$"):
        import_file(engine, "nope.jsonl", defaults=DEFAULTS)
    assert count(engine, batches) == 0


# --- bad lines ---------------------------------------------------------------

def bad_file(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "bad.jsonl", [
        {"custom_id": "ok-1", "prompt": "fine"},
        b'{"custom_id": "u", "prompt": "caf\xe9"}',
        b'[{"prompt": "a list"}]',
        b"",
        {"custom_id": "no-tokens", "prompt": "x", "max_tokens": 0},
        {"custom_id": "ok-1", "prompt": "same id again"},
        {"custom_id": "bad id", "prompt": "x"},
        {"custom_id": "ok-2", "prompt": "fine too"},
        b'{"custom_id": "cut", "prompt": "the file ends in the mid',
    ], final_newline=False)


BAD_LINES = [
    "bad.jsonl:2: invalid UTF-8 at byte 34",  # the é in caf\xe9
    "bad.jsonl:3: expected a JSON object, found an array",
    "bad.jsonl:5: `max_tokens` must be a positive integer",
    "bad.jsonl:6: duplicate custom_id 'ok-1' (first on line 1)",
    "bad.jsonl:7: `custom_id` must be 1-64 characters of A-Z, a-z, 0-9, _ and -",
    f"bad.jsonl:9: {TRUNCATED}",
]


def test_any_bad_line_rejects_the_whole_file(tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad_file(tmp_path)
    exc = rejected(engine, Path("bad.jsonl"), defaults=DEFAULTS)
    assert str(exc) == "bad.jsonl: 6 bad line(s), nothing imported"
    assert exc.exit_code == 2
    assert exc.report.error_lines() == BAD_LINES
    assert (count(engine, batches), count(engine, imports), count(engine, jobs)) == (0, 0, 0)


def test_skip_invalid_imports_the_rest(tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad_file(tmp_path)
    report = import_file(engine, "bad.jsonl", defaults=DEFAULTS, skip_invalid=True)
    assert (report.added, report.unchanged, report.rejected) == (2, 0, 6)
    assert report.error_lines() == BAD_LINES
    assert rows(engine, "line", "custom_id", "body") == [
        (1, "ok-1", dumps({"messages": [{"role": "user", "content": "fine"}], "model": HAIKU, "max_tokens": 64}).decode()),
        (8, "ok-2", dumps({"messages": [{"role": "user", "content": "fine too"}], "model": HAIKU,
                           "max_tokens": 64}).decode())]
    assert [(i.added, i.unchanged, i.rejected) for i in _all(engine, select(imports))] == [(2, 0, 6)]


def test_missing_model_without_default(tmp_path: Path, engine: Engine) -> None:
    path = write_lines(tmp_path / "m.jsonl", [{"prompt": "a", "max_tokens": 5}, {"prompt": "b", "model": HAIKU}])
    exc = rejected(engine, path, defaults=Defaults())
    assert exc.report.error_lines() == [
        f"{path}:1: no `model` (give one in the line or with model)",
        f"{path}:2: no `max_tokens` (give one in the line or with max_tokens)"]


def test_first_twenty_bad_lines_then_a_count(tmp_path: Path, engine: Engine) -> None:
    lines: list[Any] = [{"custom_id": "a", "prompt": "x"}, {"custom_id": "a", "prompt": "y"}]
    lines += [{"custom_id": f"bad {i}", "prompt": "z"} for i in range(25)]
    path = write_lines(tmp_path / "many.jsonl", lines)
    exc = rejected(engine, path, defaults=DEFAULTS)
    shown = exc.report.error_lines()
    assert len(shown) == SHOWN_ERRORS + 1 == 21
    # The first bad lines of the file, in order, whatever order they were found in
    # (the duplicate on line 2 is only noticed when its chunk is stored).
    assert shown[0] == f"{path}:2: duplicate custom_id 'a' (first on line 1)"
    assert [int(s.split(":")[1]) for s in shown[:20]] == list(range(2, 22))
    assert shown[20] == "... and 6 more bad line(s)"
    assert exc.report.rejected == 26


def test_duplicates_across_chunks(tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare, "BLOCK_BYTES", 90)  # about three lines a block
    lines = numbered(7) + [{"custom_id": "j2", "prompt": "Question 2?"}, {"custom_id": "j9", "prompt": "x"},
                           {"custom_id": "j9", "prompt": "x"}, {"custom_id": "j5", "prompt": "other"}]
    path = write_lines(tmp_path / "dup.jsonl", lines)
    exc = rejected(engine, path, defaults=DEFAULTS)
    assert exc.report.error_lines() == [
        f"{path}:8: duplicate custom_id 'j2' (first on line 2)",
        f"{path}:10: duplicate custom_id 'j9' (first on line 9)",
        f"{path}:11: duplicate custom_id 'j5' (first on line 5)"]


def test_nesting_too_deep_to_send_is_a_bad_line(tmp_path: Path, engine: Engine) -> None:
    """orjson reads 1024 levels but writes only 254: such a line must be refused, not crash the import."""
    deep = b"[" * 300 + b"]" * 300
    schema = b'{"a": ' * 300 + b"1" + b"}" * 300
    path = write_lines(tmp_path / "deep.jsonl", [
        b'{"custom_id": "meta", "prompt": "x", "tag": ' + deep + b"}",
        b'{"custom_id": "tool", "prompt": "y", "tools": [{"name": "t", "input_schema": ' + schema + b"}]}",
        b'{"custom_id": "fine", "prompt": "z", "tag": ' + b"[" * 200 + b"]" * 200 + b"}",
    ])
    exc = rejected(engine, path, defaults=DEFAULTS)
    assert exc.report.error_lines() == [f"{path}:1: cannot be encoded for sending: Recursion limit reached",
                                        f"{path}:2: cannot be encoded for sending: Recursion limit reached"]
    report = import_file(engine, str(path), defaults=DEFAULTS, skip_invalid=True)
    assert (report.added, report.rejected) == (1, 2)
    assert rows(engine, "custom_id") == [("fine",)]


def test_implicit_id_can_clash_with_an_explicit_one(tmp_path: Path, engine: Engine) -> None:
    path = write_lines(tmp_path / "c.jsonl", [{"custom_id": "line-2", "prompt": "a"}, {"prompt": "b"}])
    exc = rejected(engine, path, defaults=DEFAULTS)
    assert exc.report.error_lines() == [f"{path}:2: duplicate custom_id 'line-2' (first on line 1)"]


# --- re-import ----------------------------------------------------------------

def answer(engine: Engine, custom_id: str) -> None:
    with write(engine) as conn:
        conn.execute(jobs.update().where(jobs.c.custom_id == custom_id).values(
            status="succeeded", response='{"content": [{"type": "text", "text": "42"}]}', attempts=1,
            input_tokens=10, output_tokens=3, model="claude-haiku-4-5-20251001", finished_at=2000.0,
            updated_at=2000.0))
        for batch_id in conn.execute(select(jobs.c.batch_id).where(jobs.c.custom_id == custom_id)).scalars():
            tally.rebuild(conn, batch_id)


def snapshot(engine: Engine) -> dict[str, tuple[Any, ...]]:
    cols = ("custom_id", "id", "body", "body_hash", "source", "extra", "status", "attempts", "response",
            "input_tokens", "output_tokens", "model", "created_at", "updated_at", "finished_at")
    return {r[0]: r for r in rows(engine, *cols)}


def test_reimport_is_idempotent(tmp_path: Path, engine: Engine) -> None:
    path = write_lines(tmp_path / "r.jsonl", numbered(4))
    first = import_file(engine, str(path), defaults=DEFAULTS)
    assert (first.added, first.unchanged, first.rejected) == (4, 0, 0)
    answer(engine, "j2")
    before = snapshot(engine)
    assert before["j2"][6:9] == ("succeeded", 1, '{"content": [{"type": "text", "text": "42"}]}')

    again = import_file(engine, str(path), defaults=DEFAULTS)
    assert (again.batch, again.added, again.unchanged, again.rejected) == ("r", 0, 4, 0)
    assert again.unread and again.import_id == first.import_id  # the file has not changed: not read again
    assert snapshot(engine) == before

    # New lines are added; the old ones, moved down a line, are still the same jobs.
    write_lines(path, [{"custom_id": "j0", "prompt": "Question 0?"}] + numbered(4) + numbered(2, start=5))
    grown = import_file(engine, str(path), defaults=DEFAULTS)
    assert (grown.added, grown.unchanged, grown.rejected, grown.unread) == (3, 4, 0, False)
    after = snapshot(engine)
    assert {k: after[k] for k in before} == before
    assert rows(engine, "line", "custom_id", "status") == [
        (1, "j0", "pending"), (2, "j1", "pending"), (3, "j2", "succeeded"), (4, "j3", "pending"),
        (5, "j4", "pending"), (6, "j5", "pending"), (7, "j6", "pending")]
    assert [(i.added, i.unchanged, i.rejected) for i in _all(engine, select(imports).order_by(imports.c.id))] == [
        (4, 0, 0), (3, 4, 0)]


def test_a_file_rewritten_to_its_old_size_and_times_is_read_again(tmp_path: Path, engine: Engine) -> None:
    """Only the change time, which no tool sets back, tells this edit: the file must be read."""
    path = write_lines(tmp_path / "r.jsonl", numbered(3))
    import_file(engine, str(path), defaults=DEFAULTS)
    old = path.stat()
    path.write_bytes(path.read_bytes().replace(b"Question 2?", b"Question X?"))
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    exc = rejected(engine, path, defaults=DEFAULTS)
    assert exc.report.error_lines() == [f"{path}:2: custom_id 'j2' is already in the batch with a different request"]


def test_an_unchanged_file_is_read_again_when_its_last_reading_does_not_stand(tmp_path: Path, engine: Engine) -> None:
    """Other defaults, bad lines to report again, or another file imported since: each needs the lines."""
    path = write_lines(tmp_path / "r.jsonl", numbered(3))
    import_file(engine, str(path), defaults=DEFAULTS)
    assert rejected(engine, path, defaults=Defaults(HAIKU, 65)).report.rejected == 3  # another max_tokens

    other = write_lines(tmp_path / "other.jsonl", numbered(2, start=10))
    import_file(engine, str(other), "r", DEFAULTS)
    again = import_file(engine, str(path), defaults=DEFAULTS)
    assert (again.unchanged, again.unread) == (3, False)  # other's import came between
    assert import_file(engine, str(path), defaults=DEFAULTS).unread

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(path.read_bytes() + b"not json\n")
    for _ in range(2):
        report = import_file(engine, str(bad), "b", DEFAULTS, skip_invalid=True)
        assert (report.added + report.unchanged, report.rejected, report.unread) == (3, 1, False)


def test_a_grown_file_is_read_only_after_the_lines_its_last_import_read(tmp_path: Path, engine: Engine) -> None:
    """Lines appended since are all that is read: the unknown model's line warns no more; one import, in order."""
    path = write_lines(tmp_path / "g.jsonl", [*numbered(2), {"custom_id": "odd", "prompt": "?", "model": "claude-x"}])
    first = import_file(engine, str(path), defaults=DEFAULTS)
    assert first.warnings and first.skipped_lines == 0
    answer(engine, "j2")
    before = snapshot(engine)
    with path.open("ab") as grown_file:
        grown_file.write(b"\n" + b"".join(dumps(job) + b"\n" for job in numbered(2, start=10)))
    grown = import_file(engine, str(path), defaults=DEFAULTS)
    assert (grown.added, grown.unchanged, grown.rejected, grown.skipped_lines, grown.unread) == (2, 3, 0, 3, False)
    assert grown.warnings == [] and grown.import_id == first.import_id
    after = snapshot(engine)
    assert {k: after[k] for k in before} == before
    assert rows(engine, "line", "custom_id", "status", "part") == [
        (1, "j1", "pending", 1), (2, "j2", "succeeded", 1), (3, "odd", "pending", 1), (5, "j10", "pending", 1),
        (6, "j11", "pending", 1)]
    assert [(i.added, i.unchanged, i.rejected) for i in _all(engine, select(imports))] == [(5, 0, 0)]
    with engine.connect() as conn:  # the tally counts the added jobs once
        batch_id = conn.execute(select(batches.c.id)).scalar_one()
        assert tally.differences(tally.read(conn, batch_id), tally.recount(conn, batch_id)) == []
        assert tally.counts(conn, batch_id)["pending"] == 4
    again = import_file(engine, str(path), defaults=DEFAULTS)
    assert (again.unread, again.unchanged) == (True, 5)

    # A second file keeps its own part as it is read again in full (a line before its end), then grows.
    other = write_lines(tmp_path / "other.jsonl", numbered(2, start=200))
    second = import_file(engine, str(other), "g", DEFAULTS)
    write_lines(other, [{"custom_id": "j199", "prompt": "a new first line"}, *numbered(2, start=200)])
    assert import_file(engine, str(other), "g", DEFAULTS).skipped_lines == 0
    with other.open("ab") as grown_file:
        grown_file.write(dumps(numbered(1, start=300)[0]) + b"\n")
    assert import_file(engine, str(other), "g", DEFAULTS).skipped_lines == 3
    parts = {c: part for c, part, *_ in rows(engine, "custom_id", "part")}
    assert {c: parts[c] for c in ("j199", "j200", "j201", "j300")} == dict.fromkeys(
        ("j199", "j200", "j201", "j300"), second.import_id)
    after = snapshot(engine)

    # A line appended that repeats a job read before names the line it repeats.
    with path.open("ab") as grown_file:
        grown_file.write(dumps(numbered(1)[0]) + b"\n")
    exc = rejected(engine, path, defaults=DEFAULTS)
    assert exc.report.error_lines() == [f"{path}:7: duplicate custom_id 'j1' (first on line 1)"]
    assert snapshot(engine) == after


def test_a_file_changed_before_its_end_is_read_in_full(tmp_path: Path, engine: Engine) -> None:
    """Grown, but not only grown: edited in place (old size and times put back), cut short, or its last line
    unended when read (it may have grown since): every line is read and checked."""
    path = write_lines(tmp_path / "c.jsonl", numbered(3))
    import_file(engine, str(path), defaults=DEFAULTS)
    old = path.stat()
    path.write_bytes(path.read_bytes().replace(b"Question 2?", b"Question X?"))
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    with path.open("ab") as grown_file:
        grown_file.write(dumps(numbered(1, start=4)[0]) + b"\n")
    exc = rejected(engine, path, defaults=DEFAULTS)
    assert exc.report.error_lines() == [f"{path}:2: custom_id 'j2' is already in the batch with a different request"]

    write_lines(path, numbered(2))  # cut short
    report = import_file(engine, str(path), defaults=DEFAULTS)
    assert (report.added, report.unchanged, report.skipped_lines) == (0, 2, 0)

    unended = write_lines(tmp_path / "u.jsonl", numbered(2), final_newline=False)
    import_file(engine, str(unended), defaults=DEFAULTS)
    write_lines(unended, [numbered(1)[0], {"custom_id": "j2", "prompt": "Question 2? And more."}])
    exc = rejected(engine, unended, defaults=DEFAULTS)
    assert exc.report.error_lines() == [
        f"{unended}:2: custom_id 'j2' is already in the batch with a different request"]
    write_lines(unended, numbered(3))
    report = import_file(engine, str(unended), defaults=DEFAULTS)
    assert (report.added, report.unchanged, report.skipped_lines) == (1, 2, 0)


def test_a_grown_file_read_by_the_parallel_workers_is_stored_as_a_whole_reading_would(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lines after the head, cut into blocks that start past it, get the numbers and place of a full read."""
    monkeypatch.setattr(prepare, "BLOCK_BYTES", 300)  # a few lines a block
    monkeypatch.setattr(prepare, "PARALLEL_FROM_BYTES", 1)  # workers even for a small tail
    parallel: list[bool] = []
    real = prepare._parallel_worthwhile
    monkeypatch.setattr(prepare, "_parallel_worthwhile", lambda p, start: parallel.append(real(p, start)) or parallel[-1])
    jobs_of = [*numbered(30), b"", *numbered(25, start=40), {"custom_id": "last", "prompt": "?", "topic": "x"}]
    path = write_lines(tmp_path / "p.jsonl", jobs_of[:20])
    grown, whole = open_store(str(tmp_path / "grown.db")), open_store(str(tmp_path / "whole.db"))
    import_file(grown, str(path), defaults=DEFAULTS)
    write_lines(path, jobs_of)
    report = import_file(grown, str(path), defaults=DEFAULTS)
    assert (report.added, report.unchanged, report.skipped_lines) == (36, 20, 20)
    import_file(whole, str(path), defaults=DEFAULTS)
    columns = ("line", "custom_id", "body_hash", "source", "extra", "part", "import_id")
    assert rows(grown, *columns) == rows(whole, *columns)
    assert [r[0] for r in rows(grown, "line")][-3:] == [55, 56, 57]  # the blank line 31 counted
    assert parallel == [True, True, True]


def changing_while_read(path: Path, change: Any) -> Any:
    """A progress callback that makes ``change`` to ``path`` once the first block has been read."""
    done: list[bool] = []

    def progress(lines: int, part: float | None) -> None:
        if not done:
            done.append(True)
            change(path)
    return progress


@pytest.mark.parametrize("parallel", [False, True])
def test_a_file_replaced_while_it_is_read_imports_nothing_rather_than_a_mix(
        tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch, parallel: bool) -> None:
    """Blocks are opened again by name: an editor's save or a `sed -i` meanwhile would give old lines then new."""
    monkeypatch.setattr(prepare, "BLOCK_BYTES", 300)
    monkeypatch.setattr(prepare, "PARALLEL_FROM_BYTES", 1 if parallel else 10**12)
    path = write_lines(tmp_path / "p.jsonl", numbered(40))

    def replace(path: Path) -> None:
        new = write_lines(tmp_path / "new.jsonl", [{"custom_id": f"j{i}", "prompt": f"Quest10n {i}?"}
                                                   for i in range(1, 41)])
        os.replace(new, path)  # the same lengths: blocks still end at line ends

    with pytest.raises(UsageError, match="p.jsonl: replaced or rewritten while it was being read; nothing imported"):
        import_file(engine, str(path), defaults=DEFAULTS, progress=changing_while_read(path, replace))
    assert count(engine, jobs) == 0
    path.unlink()
    write_lines(path, numbered(40))
    report = import_file(engine, str(path), defaults=DEFAULTS,
                         progress=changing_while_read(path, lambda p: write_lines(p, numbered(45))))  # appended to
    assert report.added >= 40


def _worst(engine: Engine, batch: str) -> tuple[Cost | None, Cost]:
    """The figures the batch's imports kept, and the true largest of its jobs' (from every job's request)."""
    with engine.connect() as conn:
        batch_id = conn.execute(select(batches.c.id).where(batches.c.name == batch)).scalar_one()
    costs = [request_cost(orjson.loads(body)) for body, in rows(engine, "body", batch=batch)]
    return worst_job_cost(engine, batch_id), Cost(max(c.input_tokens for c in costs),
                                                   max(c.output_tokens for c in costs))


def test_each_import_keeps_the_largest_worst_case_of_its_jobs(tmp_path: Path, engine: Engine) -> None:
    """What a run under token caps trusts instead of costing every job: the largest input estimate and max_tokens
    of one job of the batch, however the jobs came in (a file, its new lines only, a second file, rows)."""
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    lines = [*numbered(3), {"custom_id": "long", "prompt": "word " * 2000}, {"custom_id": "img", "params": {
        "model": HAIKU, "max_tokens": 9, "messages": [{"role": "user", "content": [image]}]}},
             {"custom_id": "kana", "prompt": "日本語" * 500, "max_tokens": 700}]
    path = write_lines(tmp_path / "w.jsonl", lines)
    import_file(engine, str(path), defaults=DEFAULTS)
    kept, true = _worst(engine, "w")
    assert kept == true == Cost(2858, 700)
    with path.open("ab") as grown_file:  # read alone, it must not replace the figures of the lines before it
        grown_file.write(dumps({"custom_id": "late", "prompt": "?", "max_tokens": 5}) + b"\n")
    assert import_file(engine, str(path), defaults=DEFAULTS).skipped_lines == len(lines)
    assert _worst(engine, "w") == (true, true)
    with path.open("ab") as grown_file:
        grown_file.write(dumps({"custom_id": "later", "prompt": "?", "max_tokens": 4000}) + b"\n")
    import_file(engine, str(path), defaults=DEFAULTS)
    assert _worst(engine, "w")[0] == _worst(engine, "w")[1] == Cost(2858, 4000)

    import_file(engine, str(write_lines(tmp_path / "more.jsonl", [{"custom_id": "pics", "params": {
        "model": HAIKU, "max_tokens": 1, "messages": [{"role": "user", "content": [image, image]}]}}])), "w")
    with batcher.Store(str(tmp_path / "store.db")) as store:
        store.add("w", ["Tell me " * 1000], max_tokens=6000)
    kept, true = _worst(engine, "w")
    assert kept == true == Cost(3201, 6000)  # two images; the row's max_tokens


def test_reimport_with_a_changed_request_is_refused(tmp_path: Path, engine: Engine) -> None:
    path = write_lines(tmp_path / "r.jsonl", numbered(3))
    import_file(engine, str(path), defaults=DEFAULTS)
    answer(engine, "j2")
    before = snapshot(engine)
    write_lines(path, [numbered(1)[0], {"custom_id": "j2", "prompt": "Edited?"}, numbered(1, 3)[0],
                       {"custom_id": "j4", "prompt": "new"}])
    exc = rejected(engine, path, defaults=DEFAULTS)
    assert exc.report.error_lines() == [f"{path}:2: custom_id 'j2' is already in the batch with a different request"]
    assert snapshot(engine) == before  # nothing added, nothing touched
    assert count(engine, imports) == 1

    # Other defaults change the request too.
    write_lines(path, numbered(3))
    exc = rejected(engine, path, defaults=Defaults(HAIKU, 65))
    assert exc.report.rejected == 3

    # With --skip-invalid the new line goes in and the changed job keeps its stored request.
    write_lines(path, [numbered(1)[0], {"custom_id": "j2", "prompt": "Edited?"}, numbered(1, 3)[0],
                       {"custom_id": "j4", "prompt": "new"}])
    report = import_file(engine, str(path), defaults=DEFAULTS, skip_invalid=True)
    assert (report.added, report.unchanged, report.rejected) == (1, 2, 1)
    after = snapshot(engine)
    assert {k: after[k] for k in before} == before
    assert json.loads(after["j2"][2])["messages"][0]["content"] == "Question 2?"


def test_reimport_duplicate_of_an_unchanged_job(tmp_path: Path, engine: Engine) -> None:
    path = write_lines(tmp_path / "r.jsonl", numbered(2))
    import_file(engine, str(path), defaults=DEFAULTS)
    write_lines(path, numbered(2) + [numbered(1)[0]])
    exc = rejected(engine, path, defaults=DEFAULTS)
    assert exc.report.error_lines() == [f"{path}:3: duplicate custom_id 'j1' (first on line 1)"]


def test_second_file_into_the_same_batch(tmp_path: Path, engine: Engine) -> None:
    import_file(engine, str(write_lines(tmp_path / "a.jsonl", numbered(2))), "shared", DEFAULTS)
    b = write_lines(tmp_path / "b.jsonl", [numbered(1, 2)[0], {"custom_id": "j1", "prompt": "clash"},
                                           {"custom_id": "k1", "prompt": "k"}])
    exc = rejected(engine, b, batch="shared", defaults=DEFAULTS)
    assert exc.report.error_lines() == [f"{b}:2: custom_id 'j1' is already in the batch with a different request"]
    write_lines(b, [numbered(1, 2)[0], {"custom_id": "k1", "prompt": "k"}])
    report = import_file(engine, str(b), "shared", DEFAULTS)
    assert (report.added, report.unchanged) == (1, 1)
    assert sorted(c for (c,) in rows(engine, "custom_id", batch="shared")) == ["j1", "j2", "k1"]


# --- the parallel path ------------------------------------------------------------

def mixed_lines(n: int) -> list[Any]:
    out: list[Any] = []
    for i in range(1, n + 1):
        if i % 50 == 7:
            out.append(b'{"custom_id": "broken", "prompt": ')
        elif i % 2:
            out.append({"custom_id": f"job-{i}", "prompt": f"Q{i}", "model": "claude-x" if i % 9 == 0 else HAIKU,
                        "tag": i, "stream": i % 11 == 0})
        else:
            out.append({"custom_id": f"job-{i}", "params": {"messages": [{"role": "user", "content": f"Q{i}"}]}})
    out.append({"custom_id": "job-2", "params": {"messages": [{"role": "user", "content": "Q2"}]}})
    return out


def test_parallel_preparation_matches_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_lines(tmp_path / "p.jsonl", mixed_lines(400))
    monkeypatch.setattr(prepare, "BLOCK_BYTES", 1000)  # many blocks
    seen: list[bool] = []
    real = prepare._parallel_worthwhile

    def spy(p: str, start: int) -> bool:
        seen.append(real(p, start))
        return seen[-1]

    monkeypatch.setattr(prepare, "_parallel_worthwhile", spy)
    results, worst = {}, {}
    for threshold in (10**12, 1):
        monkeypatch.setattr(prepare, "PARALLEL_FROM_BYTES", threshold)
        engine = open_store(str(tmp_path / f"{threshold}.db"))
        report = import_file(engine, str(path), "p", DEFAULTS, skip_invalid=True)
        results[threshold] = (report, rows(engine, "line", "custom_id", "body", "body_hash", "source", "extra"))
        worst[threshold] = _worst(engine, "p")
        engine.dispose()
    assert seen == [False, True]
    (serial, serial_rows), (parallel, parallel_rows) = results[10**12], results[1]
    assert parallel_rows == serial_rows
    assert worst[1] == worst[10**12] == (worst[1][1], worst[1][1])  # the workers' figures reach the import
    assert len(serial_rows) == 400 - 8
    assert (parallel.added, parallel.rejected, parallel.warnings, parallel.error_lines()) == (
        serial.added, serial.rejected, serial.warnings, serial.error_lines())
    assert len(serial.error_lines()) == 9
    assert serial.error_lines()[0] == f"{path}:7: {TRUNCATED}"
    assert serial.error_lines()[-1] == f"{path}:401: duplicate custom_id 'job-2' (first on line 2)"
    assert serial.warnings == ["model 'claude-x' is not a known Claude model (21 job(s)); sent as given",
                               "`stream` dropped from 192 job(s): the runner decides whether to stream"]


BIG_IMPORT = textwrap.dedent("""
    import json, resource, sys
    import batcher.prepare as prepare
    seen = []
    real = prepare._parallel_worthwhile
    def spy(path, start):
        seen.append(real(path, start))
        return seen[-1]
    prepare._parallel_worthwhile = spy
    from batcher.cli import main
    try:
        main(sys.argv[1:], standalone_mode=False)
    finally:
        # VmHWM, not RUSAGE_SELF: Linux keeps ru_maxrss across execve, so
        # RUSAGE_SELF would include the test runner's own size at fork time.
        with open("/proc/self/status") as status:
            hwm_kb = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
        peak_kb = max(hwm_kb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        print("MEASURE " + json.dumps({"parallel": seen, "peak_kb": peak_kb}), file=sys.stderr)
""")

BIG_LINES = 200_000


def test_big_file_streams_in_flat_memory_over_processes(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    bad = {31_337: b'{"custom_id": "oops"', 150_001: b'{"custom_id": "j10", "prompt": "Question 10?"}'}
    with path.open("wb") as out:
        for i in range(1, BIG_LINES + 1):
            if i in bad:
                out.write(bad[i] + b"\n")
            elif i % 2:
                out.write(dumps({"custom_id": f"j{i}", "prompt": f"Question {i}?", "row": i}) + b"\n")
            else:
                out.write(dumps({"custom_id": f"j{i}", "params": {
                    "messages": [{"role": "user", "content": f"Question {i}?"}]}}) + b"\n")
    assert os.path.getsize(path) >= prepare.PARALLEL_FROM_BYTES
    db = tmp_path / "big.db"
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", BIG_IMPORT, "import", str(path), "--db", str(db), "--model", HAIKU,
                           "--max-tokens", "64", "--skip-invalid"], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == f"batch big: {BIG_LINES - 2:,} added, 0 unchanged, 2 rejected\n"
    stderr = done.stderr.splitlines()
    assert stderr[:2] == [f"skipped {path}:31337: {TRUNCATED}",
                          f"skipped {path}:150001: duplicate custom_id 'j10' (first on line 10)"]
    measure = json.loads(stderr[-1].removeprefix("MEASURE "))
    assert measure["parallel"] == [True]  # the worker-process path was taken
    peak_mb = measure["peak_kb"] / 1024
    assert peak_mb < 150, f"peak RSS {peak_mb:.0f} MB"
    assert elapsed < 60, f"import of {BIG_LINES} lines took {elapsed:.1f} s"

    # Rows equal what the in-process preparation makes of the same lines.
    engine = open_store(str(db))
    assert count(engine, jobs) == BIG_LINES - 2
    sample = {n: raw for n, raw in numbered_lines(str(path)) if n % 4999 == 1 or n > BIG_LINES - 3}
    expected = prepare.prepare_chunk(sorted(sample.items()), DEFAULTS).rows
    assert len(expected) == len(sample) > 40
    ids = [r[1] for r in expected]
    with engine.connect() as conn:
        got = conn.execute(select(jobs.c.line, jobs.c.custom_id, jobs.c.body_hash, jobs.c.source,
                                  jobs.c.extra).where(jobs.c.custom_id.in_(ids)).order_by(jobs.c.line)).all()
        assert [tuple(r) for r in got] == expected
        last = conn.execute(select(jobs.c.line, jobs.c.custom_id).order_by(jobs.c.line.desc()).limit(1)).one()
        assert tuple(last) == (BIG_LINES, f"j{BIG_LINES}")
    engine.dispose()


# --- the commands -------------------------------------------------------------------

def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "BATCHER_DB"}
    full_env.update(env or {})
    done = subprocess.run([sys.executable, "-m", "batcher", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=full_env)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_import_batches_status_commands(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.db")
    path = write_lines(tmp_path / "prompts.jsonl", [
        {"custom_id": "a", "prompt": "One?"}, {"custom_id": "b", "prompt": "Two?", "model": "claude-new"},
        {"custom_id": "c", "params": {"messages": [{"role": "user", "content": "Three?"}], "stream": True}}])
    done = cli("import", str(path), "--db", db, "--model", HAIKU, "--max-tokens", "100", "--system", "Be brief.")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "batch prompts: 3 added, 0 unchanged, 0 rejected\n"
    assert done.stderr.splitlines() == [
        "batcher: warning: model 'claude-new' is not a known Claude model (1 job(s)); sent as given",
        "batcher: warning: `stream` dropped from 1 job(s): the runner decides whether to stream"]
    engine = open_store(db)
    assert [json.loads(b) for (b,) in rows(engine, "body")][0] == {
        "messages": [{"role": "user", "content": "One?"}], "model": HAIKU, "max_tokens": 100, "system": "Be brief."}
    answer(engine, "b")

    again = cli("import", str(path), "--db", db, "--model", HAIKU, "--max-tokens", "100", "--system", "Be brief.",
                "--batch", "prompts")
    assert (again.returncode, again.stdout) == (
        0, "batch prompts: 0 added, 3 unchanged, 0 rejected; the file is as its last import read it: not read again\n")
    with path.open("ab") as grown_file:
        grown_file.write(b'{"custom_id": "d", "prompt": "Four?"}\n')
    grown = cli("import", str(path), "--db", db, "--model", HAIKU, "--max-tokens", "100", "--system", "Be brief.")
    assert (grown.returncode, grown.stdout, grown.stderr) == (
        0, "batch prompts: 1 added, 3 unchanged, 0 rejected; its first 3 line(s) are as its last import read them: "
           "only the lines after them were read\n", "")

    listing = cli("batches", "--db", db)
    assert listing.returncode == 0
    assert len(listing.stdout.splitlines()) == 1
    line = listing.stdout.splitlines()[0]
    assert line.startswith("prompts\t")
    assert str(path) in line
    assert re.search(r"\b4 jobs\b", line) and "pending=3" in line and "succeeded=1" in line
    assert "failed=" not in line  # zero counts are left out
    assert re.search(r"created \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line)
    listing = cli("batches", "--db", db, "--json")
    [listed] = [json.loads(line) for line in listing.stdout.splitlines()]
    assert {k: listed[k] for k in ("batch", "file", "total", "pending", "succeeded", "failed")} == {
        "batch": "prompts", "file": str(path), "total": 4, "pending": 3, "succeeded": 1, "failed": 0}

    status = cli("status", "--db", db, "--json")  # one batch: no name needed
    assert status.returncode == 0, status.stderr
    s = json.loads(status.stdout)
    assert {k: s[k] for k in ("batch", "total", "pending", "running", "succeeded", "failed", "canceled")} == {
        "batch": "prompts", "total": 4, "pending": 3, "running": 0, "succeeded": 1, "failed": 0, "canceled": 0}

    text = cli("status", "prompts", "--db", db)
    assert text.returncode == 0
    assert text.stdout.startswith(f"batch prompts ({path})")
    assert "3 pending" in text.stdout and "1 succeeded" in text.stdout


def test_import_command_refuses_a_bad_file(tmp_path: Path) -> None:
    bad_file(tmp_path)
    db = str(tmp_path / "cli.db")
    done = cli("import", "bad.jsonl", "--db", db, "--model", HAIKU, "--max-tokens", "64", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == BAD_LINES + [
        "batcher: error: nothing imported; fix the lines above or pass --skip-invalid"]
    assert count(open_store(db), jobs) == 0

    skipped = cli("import", "bad.jsonl", "--db", db, "--model", HAIKU, "--max-tokens", "64", "--skip-invalid",
                  cwd=tmp_path)
    assert skipped.returncode == 0
    assert skipped.stdout == "batch bad: 2 added, 0 unchanged, 6 rejected\n"
    assert skipped.stderr.splitlines() == [f"skipped {line}" for line in BAD_LINES]


def test_import_command_lists_twenty_then_counts(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "many.jsonl", [{"custom_id": f"x{i}", "prompt": "p"} for i in range(30)])
    done = cli("import", "many.jsonl", "--db", "s.db", cwd=tmp_path)  # no model or max_tokens anywhere
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == "many.jsonl:1: no `model` (give one in the line or with --model)"
    assert lines[19] == "many.jsonl:20: no `model` (give one in the line or with --model)"
    assert lines[20:] == ["... and 10 more bad line(s)", "batcher: error: nothing imported; no line is a valid job"]
    assert path.exists()
    # Skipping every line would leave an empty batch and exit 0, which no script could tell from success.
    for command in ("import", "run"):
        skipped = cli(command, "many.jsonl", "--db", "s.db", "--skip-invalid", cwd=tmp_path,
                      env={"POE_API_KEY": "local-test-key-123456"})
        assert skipped.returncode == 2, skipped.stderr
        assert skipped.stderr.splitlines()[-1].endswith(
            "nothing imported; no line is a valid job" if command == "import" else
            "nothing imported, nothing sent; no line is a valid job")
    assert count(open_store(str(tmp_path / "s.db")), jobs) == 0


def test_changed_request_through_the_command(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", numbered(2))
    engine = open_store(str(tmp_path / "s.db"))
    import_file(engine, str(path), defaults=DEFAULTS)
    write_lines(path, [numbered(1)[0], {"custom_id": "j2", "prompt": "changed"}])
    done = cli("import", "c.jsonl", "--db", "s.db", "--model", HAIKU, "--max-tokens", "64", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == "c.jsonl:2: custom_id 'j2' is already in the batch with a different request"
    assert "was imported from this file" not in done.stderr  # the options were the same: the line changed


def test_a_file_given_other_options_than_its_batch_had_says_which(tmp_path: Path) -> None:
    # Running the same command again resumes a batch; without its options, every line fails.
    engine = open_store(str(tmp_path / "s.db"))
    import_file(engine, str(write_lines(tmp_path / "c.jsonl", numbered(3))), defaults=DEFAULTS)
    engine.dispose()
    hint = (f"c.jsonl: batch 'c' was imported from this file with --model {HAIKU} --max-tokens 64: give those "
            "options again, or send what it holds with: batcher run c")
    for options in ([], ["--model", HAIKU, "--max-tokens", "65"]):
        done = cli("import", "c.jsonl", "--db", "s.db", *options, cwd=tmp_path)
        assert done.returncode == 2 and hint in done.stderr.splitlines(), done.stderr
    import batcher

    with batcher.Store(tmp_path / "s.db") as store, pytest.raises(batcher.InvalidRows) as refused:
        store.add(None, tmp_path / "c.jsonl", max_tokens=65)
    assert str(refused.value).endswith(f"batch 'c' was imported from this file with model={HAIKU!r}, max_tokens=64: "
                                       "give those options again")


def test_status_needs_a_known_batch(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    missing = cli("status", "--db", db)
    assert (missing.returncode, missing.stderr) == (
        2, f"batcher: error: {db}: no such database (import a job file first, or check --db/BATCHER_DB)\n")
    assert not Path(db).exists(), "a reading command must not create a store"
    engine = open_store(db)
    empty = cli("status", "--db", db)
    assert (empty.returncode, empty.stderr) == (
        2, "batcher: error: the database holds no batch yet: run `batcher import FILE` first\n")
    for name in ("alpha", "beta"):
        import_file(engine, str(write_lines(tmp_path / f"{name}.jsonl", numbered(1))), defaults=DEFAULTS)
    ambiguous = cli("status", "--db", db, "--json")
    assert (ambiguous.returncode, ambiguous.stdout) == (2, "")
    assert ambiguous.stderr == "batcher: error: the database holds several batches; name one (alpha, beta)\n"
    unknown = cli("status", "gamma", "--db", db)
    assert (unknown.returncode, unknown.stderr) == (
        2, "batcher: error: no batch named 'gamma' (batches here: alpha, beta)\n")
    named = cli("status", "beta", "--db", db, "--json")
    assert named.returncode == 0 and json.loads(named.stdout)["batch"] == "beta"


def test_store_from_env_or_cwd(tmp_path: Path) -> None:
    write_lines(tmp_path / "e.jsonl", numbered(1))
    url = f"sqlite:///{tmp_path / 'env.db'}"
    done = cli("import", "e.jsonl", "--model", HAIKU, "--max-tokens", "9", cwd=tmp_path, env={"BATCHER_DB": url})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "env.db").exists() and not (tmp_path / "batcher.db").exists()
    listing = cli("batches", cwd=tmp_path)  # no env, no --db: ./batcher.db, which is not there
    assert listing.returncode == 2 and "batcher.db: no such database" in listing.stderr
    assert not (tmp_path / "batcher.db").exists()
    cli("import", "e.jsonl", "--model", HAIKU, "--max-tokens", "9", cwd=tmp_path)
    listing = cli("batches", cwd=tmp_path)
    assert listing.returncode == 0 and listing.stdout.startswith("e\t")


def test_unreadable_inputs_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "folder.jsonl").mkdir()
    missing = cli("import", "missing.jsonl", "--db", "s.db", cwd=tmp_path)
    assert (missing.returncode, missing.stderr) == (2, "batcher: error: missing.jsonl: no such file\n")
    folder = cli("import", "folder.jsonl", "--db", "s.db", cwd=tmp_path)
    assert folder.returncode == 2 and "folder.jsonl" in folder.stderr
    zero = cli("import", "x.jsonl", "--max-tokens", "0", cwd=tmp_path)
    assert zero.returncode == 2 and "--max-tokens" in zero.stderr


@pytest.mark.parametrize("command, example", [
    ("import", "Example: batcher import prompts.jsonl --model claude-haiku-4.5 --max-tokens 1024"),
    ("batches", "Examples: batcher batches --db runs.db batcher batches --json"),
    ("status", "Example: batcher status"),
])
def test_help_has_an_example(command: str, example: str) -> None:
    done = cli(command, "--help")
    assert done.returncode == 0
    assert example in " ".join(done.stdout.split())  # as wrapped for the terminal
    assert "--db" in done.stdout


@pytest.mark.parametrize("block_size", [1, 7, 64, 1 << 20])
def test_blocks_cut_only_at_line_ends(tmp_path: Path, block_size: int) -> None:
    text = b"\xef\xbb\xbf" + b'{"a": 1}\n\n  \r\n' + b'{"long": "' + b"x" * 300 + b'"}\r\n{"b": 2}\n{"c": 3}'
    path = tmp_path / "blocks.jsonl"
    path.write_bytes(text)
    expected = [(1, b'{"a": 1}'), (4, b'{"long": "' + b"x" * 300 + b'"}'), (5, b'{"b": 2}'), (6, b'{"c": 3}')]
    assert list(numbered_lines(str(path), block_size)) == expected


def test_the_claimed_request_is_rebuilt_from_its_line_and_checked(tmp_path: Path, engine: Engine) -> None:
    from batcher.errors import StoreError
    from batcher.jobqueue import claim, start_run

    path = write_lines(tmp_path / "q.jsonl", [{"custom_id": "a", "prompt": "Two?", "stream": True, "topic": "t"}])
    import_file(engine, str(path), defaults=Defaults("claude-haiku-4.5", 64, "Be brief."))
    with engine.connect() as conn:
        assert conn.execute(select(jobs.c.body)).scalar() == ""  # rebuilt when sent
    run_id = start_run(engine, 1, "q", 60, "http://x")
    (job,) = claim(engine, 1, run_id, 10)
    assert orjson.loads(job.body) == {"messages": [{"role": "user", "content": "Two?"}], "model": "claude-haiku-4.5",
                                      "max_tokens": 64, "system": "Be brief."}
    # Another request than the one imported is never sent: the hash says so.
    with write(engine) as conn:
        conn.execute(imports.update().values(defaults='["claude-opus-4.5", 64, null]'))
        conn.execute(jobs.update().values(status="pending"))
    with pytest.raises(StoreError, match="job 'a': its request cannot be rebuilt"):
        claim(engine, 1, run_id, 10)
