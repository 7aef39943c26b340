"""Importing a JSONL job file into a batch: validate, then store, atomically.

The file is streamed and inserted chunk by chunk inside one transaction, so
memory stays flat and a bad file leaves nothing behind. Rows whose
``custom_id`` is already stored are skipped by the insert itself; only for
those does the importer look closer, to tell an unchanged job (left alone)
from a duplicate line or a changed request (both errors). The file the
batch's last import read, unchanged since (the same fingerprint, defaults,
and no bad line then), is not read at all: running the same command again
on a million lines starts at once. If it only grew since (it still starts
with the bytes that import read), only what follows them is read.
"""

from __future__ import annotations

import bisect
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson
from sqlalchemy import Connection, Engine, bindparam, func, literal_column, select

from . import tally
from ._earlier import check_same_source, last_reading, options_hint
from ._text import as_text, is_text
from ._told import Progress
from .apibatches import refuse_import
from .cost import CostSums, merge_costs
from .db import store_errors, write
from .errors import UsageError
from .interrupts import CommitPoint
from .jobfile import STDIN, LineError, describe, needs_batch_name, one_document, readable_copy
from .jobfile import fingerprint as file_fingerprint
from .prepare import ROW_FIELDS, FileChunks, PreparedChunk, defaults_text
from .schema import imports, jobs
from .store import check_batch_name, get_or_create_batch
from .validate import Defaults

SHOWN_ERRORS = 20
LINE, CUSTOM_ID, BODY_HASH = (ROW_FIELDS.index(k) for k in ("line", "custom_id", "body_hash"))


@dataclass
class ImportReport:
    """What an import did: counts, the first bad lines, warnings."""

    batch: str
    file: str
    added: int = 0
    unchanged: int = 0
    rejected: int = 0
    #: The bad lines kept; in the report of rows given in Python (:meth:`batcher.Store.add`), once imported,
    #: ``(index, reason)`` pairs, rows counted from 0 as :class:`batcher.InvalidRows` counts them.
    errors: list[LineError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: How many bad lines to keep (the lowest); None keeps every one.
    keep: int | None = SHOWN_ERRORS
    #: The import's id in the store: every job of the file (added or unchanged) carries it.
    import_id: int | None = None
    #: The file was not read: it is as the batch's last import read it, and
    #: that import's jobs (``unchanged``, under its ``import_id``) stand.
    unread: bool = False
    #: Lines not read again: the file still starts with the lines the batch's
    #: last import read (their jobs count as ``unchanged``, and this import
    #: goes on under that import's id); 0 when the file was read in full.
    skipped_lines: int = 0
    #: For a refused import: the options the batch's earlier import of the
    #: same file was given, when these differ (the likely cause), or None.
    hint: str | None = None
    #: For a file none of whose lines is valid: what it is, when it is one
    #: JSON document rather than JSONL (its lines are then not listed).
    whole: str | None = None

    def reject(self, error: LineError) -> None:
        """Count a bad line; keep it if it is among the first lines of the file.

        Lines are not rejected in file order (a chunk's duplicates are found
        after its unparsable lines), so the kept ones are the lowest lines
        seen, held sorted.
        """
        self.rejected += 1
        if self.keep is not None and len(self.errors) >= self.keep:
            if error.line >= self.errors[-1].line:
                return
            self.errors.pop()
        bisect.insort(self.errors, error, key=lambda e: e.line)

    @property
    def none_valid(self) -> bool:
        """Every line was bad: even ``skip_invalid`` imports nothing (and says so)."""
        return self.rejected > 0 and self.added + self.unchanged == 0

    def error_lines(self, prefix: str = "") -> list[str]:
        """``FILE:LINE: message`` for the first bad lines, then a count; or what the whole file is instead."""
        if self.whole is not None:
            return [f"{prefix}{self.file}: {self.whole}"]
        shown = [f"{prefix}{self.file}:{e.line}: {e.message}" for e in sorted(self.errors, key=lambda e: e.line)]
        if self.rejected > len(self.errors):
            shown.append(f"... and {self.rejected - len(self.errors):,} more bad line(s)")
        if self.hint is not None:
            shown.append(f"{self.file}: {self.hint}")
        return shown


class ImportRejected(UsageError):
    """The file has bad lines (with ``skip_invalid``: only bad lines) and nothing was imported."""

    def __init__(self, report: ImportReport) -> None:
        super().__init__(f"{report.file}: {report.rejected:,} bad line(s), nothing imported")
        self.report = report


class _Compiled:
    """A statement compiled once and run with plain tuples, in ``names`` order.

    SQLAlchemy's per-row parameter processing costs more than SQLite's own
    insert or update at a million rows; compiling once and handing the
    driver tuples keeps import several times faster while staying
    dialect-neutral.
    """

    def __init__(self, conn: Connection, stmt: Any, names: tuple[str, ...]) -> None:
        compiled = stmt.compile(dialect=conn.dialect)
        self.conn, self.sql, self.names = conn, str(compiled), names
        order = [names.index(k) for k in compiled.positiontup] if compiled.positional else None
        self.order = None if order == list(range(len(names))) else order

    def __call__(self, rows: list[tuple[Any, ...]]) -> int:
        """Run it once per row; return how many rows it changed."""
        params: list[Any] = rows
        if not self.conn.dialect.positional:
            params = [dict(zip(self.names, row)) for row in rows]
        elif self.order is not None:
            params = [tuple(row[i] for i in self.order) for row in rows]
        return self.conn.exec_driver_sql(self.sql, params).rowcount


def _inline(value: int | float | str) -> Any:
    """A value every row shares, written into the statement: numbers and fixed words, never user text."""
    return literal_column(repr(value))


def _bulk_insert(conn: Connection, columns: tuple[str, ...], shared: dict[str, int | float | str]) -> _Compiled:
    """The INSERT of new jobs, skipping stored custom_ids; the shared values inline, halving what is bound."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(jobs).values({**{c: bindparam(c) for c in columns}, **{k: _inline(v) for k, v in shared.items()}})
    return _Compiled(conn, stmt.on_conflict_do_nothing(index_elements=["batch_id", "custom_id"]), columns)


class _Importer:
    """One import's state: the open transaction and the report."""

    def __init__(self, conn: Connection, batch_id: int, import_id: int, report: ImportReport,
                 new_batch: bool, part: int | None = None) -> None:
        self.conn, self.batch_id, self.import_id, self.report = conn, batch_id, import_id, report
        self.new_batch = new_batch
        #: The part of the batch the import fills: given (an import going on), else settled by its first rows.
        self.part = part
        self.insert: _Compiled | None = None
        self.move: _Compiled | None = None
        self.retag: _Compiled | None = None
        self.models: Counter[str] = Counter()
        self.streams = 0
        #: The largest figures of one job read (see PreparedChunk.worst_input).
        self.worst_input = self.worst_output = 0
        #: What the jobs it added cost, by model; None once it met jobs already stored.
        self.costs: CostSums | None = {}

    def _prepare(self, rows: list[tuple[Any, ...]]) -> None:
        """The statements, once the first rows tell which part of the batch this import fills.

        If the first rows find jobs already stored, the import takes their
        part (the earliest, if several): a file read again (changed or grown,
        a call made again with more rows) stays where it was in the batch,
        and the jobs it finds again move with it. Otherwise the import starts
        a new part, after the others, so that a second file or a second set
        of rows follows the first instead of interleaving with it line by line.
        An import going on after the lines of an earlier one is given its part.
        """
        part = self.part
        if part is None and not self.new_batch:
            part = self.conn.execute(select(func.min(jobs.c.part)).where(
                jobs.c.batch_id == self.batch_id, jobs.c.custom_id.in_([r[CUSTOM_ID] for r in rows]))).scalar()
        self.part = self.import_id if part is None else part
        now = time.time()
        self.insert = _bulk_insert(self.conn, ROW_FIELDS, {
            "batch_id": self.batch_id, "import_id": self.import_id, "part": self.part, "body": "",
            "status": "pending", "attempts": 0, "created_at": now, "updated_at": now})
        # Unchanged jobs keep their status and answer; their place (part and
        # line) and the import that last saw them are brought up to date. Most
        # keep their place: then only the import is set, which no index holds.
        same_job = (jobs.c.batch_id == _inline(self.batch_id), jobs.c.custom_id == bindparam("cid"))
        self.move = _Compiled(self.conn, jobs.update().where(*same_job).values(
            line=bindparam("new_line"), import_id=_inline(self.import_id), part=_inline(self.part)),
            ("new_line", "cid"))
        self.retag = _Compiled(self.conn, jobs.update().where(*same_job).values(import_id=_inline(self.import_id)),
                               ("cid",))

    def take(self, chunk: PreparedChunk) -> None:
        for error in chunk.errors:
            self.report.reject(error)
        self.models.update(chunk.unknown_models)
        self.streams += chunk.streams_dropped
        self.worst_input = max(self.worst_input, chunk.worst_input)
        self.worst_output = max(self.worst_output, chunk.worst_output)
        added = self.store(chunk.rows)
        if self.costs is not None and added == len(chunk.rows):
            merge_costs(self.costs, chunk.costs)
        else:  # which rows it added is not worth working out: a batch it is in is costed job by job
            self.costs = None

    def store(self, rows: list[tuple[Any, ...]]) -> int:
        """Insert the rows, sort out those already stored; return how many were added."""
        if not rows:
            return 0
        if self.insert is None:
            self._prepare(rows)
        assert self.insert is not None
        inserted = self.insert(rows)
        self.report.added += inserted
        if inserted < len(rows):
            self._sort_out_conflicts(rows)
        return inserted

    def _sort_out_conflicts(self, rows: list[tuple[Any, ...]]) -> None:
        """Classify rows the insert skipped: unchanged, duplicate or changed."""
        ids = [r[CUSTOM_ID] for r in rows]
        query = select(jobs.c.custom_id, jobs.c.line, jobs.c.import_id, jobs.c.body_hash, jobs.c.part).where(
            jobs.c.batch_id == self.batch_id, jobs.c.custom_id.in_(ids))
        stored = {r.custom_id: r for r in self.conn.execute(query)}
        touched: dict[str, int] = {}
        moved: list[tuple[int, str]] = []  # unchanged jobs at another place: (new line, custom_id)
        kept: list[tuple[str]] = []  # unchanged jobs at the same place
        for row in rows:
            line, custom_id, digest = row[LINE], row[CUSTOM_ID], row[BODY_HASH]
            known = stored[custom_id]
            if known.import_id == self.import_id:
                if known.line != line:
                    self.report.reject(LineError(line, f"duplicate custom_id {custom_id!r} (first on line {known.line})"))
            elif custom_id in touched:
                self.report.reject(LineError(line, f"duplicate custom_id {custom_id!r} (first on line {touched[custom_id]})"))
            elif known.body_hash == digest:
                touched[custom_id] = line
                if (known.line, known.part) != (line, self.part):
                    moved.append((line, custom_id))
                else:
                    kept.append((custom_id,))
            else:
                self.report.reject(LineError(line, f"custom_id {custom_id!r} is already in the batch with a different request"))
        if touched:
            assert self.move is not None and self.retag is not None
            if moved:
                self.move(moved)
            if kept:
                self.retag(kept)
            self.report.unchanged += len(touched)

    def finish(self) -> None:
        self.report.warnings.extend(file_warnings(self.models, self.streams))


def file_warnings(unknown_models: Counter[str], streams_dropped: int) -> list[str]:
    """What is worth a warning about a job file's valid lines."""
    warnings = [f"model {model!r} is not a known Claude model ({n} job(s)); sent as given"
                for model, n in unknown_models.most_common()]
    if streams_dropped:
        warnings.append(f"`stream` dropped from {streams_dropped} job(s): the runner decides whether to stream")
    return warnings


@store_errors
def import_file(engine: Engine, path: str, batch: str | None = None, defaults: Defaults = Defaults(),
                skip_invalid: bool = False, progress: Progress | None = None) -> ImportReport:
    """Import ``path`` into ``batch`` (default: the file's stem).

    ``path`` may be ``-`` (standard input), a FIFO or ``<(cmd)``: read once,
    then imported like a file; those need ``batch``. Idempotent: unchanged
    jobs are left alone, new lines added. Raises :class:`ImportRejected`
    when a line is bad and ``skip_invalid`` is off; then nothing is written.
    Without ``batch``, a batch of the same name made from another file is
    refused (two ``u.jsonl`` in different folders do not merge silently).
    ``progress`` is told how far the reading is as it goes (see :class:`FileChunks`).
    """
    if batch is not None:
        check_batch_name(batch)  # here, before a blank name becomes the file's
    if batch is None and needs_batch_name(path):
        raise UsageError(f"{describe(path)}: give the batch a name with --batch NAME when reading from it")
    name = batch or os.path.splitext(os.path.basename(path))[0] or "batch"
    if not is_text(name):  # the file's name (a name given is checked above): the file may keep it
        raise UsageError(f"{describe(path)}: the file's name is not valid UTF-8; give the batch a name with "
                         "--batch NAME")
    report = ImportReport(batch=name, file=describe(path))
    source = path if path == STDIN else as_text(os.path.abspath(path))  # the same text at each import
    seen = file_fingerprint(path)  # before reading: a write from here on makes the next import read it again
    with readable_copy(path) as readable:
        try:
            return import_chunks(engine, report, source, FileChunks(readable, defaults, seen, progress),
                                 skip_invalid, defaults=defaults, same_source=batch is None)
        except ImportRejected:
            report.whole = one_document(readable) if report.none_valid else None
            raise


@store_errors
def import_chunks(engine: Engine, report: ImportReport, source: str, chunks: Iterable[PreparedChunk],
                  skip_invalid: bool = False, *, defaults: Defaults, same_source: bool = False,
                  fingerprint: str | None = None) -> ImportReport:
    """Store prepared ``chunks`` into the batch ``report.batch``, in one transaction.

    The one import path, whether the chunks come from a file or from rows
    given in Python: all or nothing unless ``skip_invalid``; ``source`` is
    what the batch and the import record as their origin. ``defaults`` must
    be those the chunks were prepared with: they are kept with the import,
    to rebuild each job's request body when it is sent. With
    ``same_source`` an existing batch must have been imported from
    ``source``. A signal landing once the import is complete waits for the
    commit (see :mod:`batcher.interrupts`). Chunks with the ``fingerprint``
    of the batch's last import are not read, and a job file
    (:class:`FileChunks`, which has its own) is read only as far as it
    changed since (see :func:`batcher._earlier.last_reading`).
    """
    given = defaults_text(defaults)
    file = chunks if isinstance(chunks, FileChunks) else None
    if file is not None:
        fingerprint = file.fingerprint
    with CommitPoint() as commit, write(engine) as conn:
        stored, created = get_or_create_batch(conn, report.batch, source)
        if not created:
            refuse_import(conn, stored)
        if same_source and not created:
            check_same_source(conn, stored, report.file, source)
        last = None if fingerprint is None or created else last_reading(conn, stored.id, source, fingerprint,
                                                                         file, given)
        if last is not None and last.fingerprint == fingerprint:
            report.unchanged, report.import_id, report.unread = last.added + last.unchanged, last.id, True
            return report  # nothing to write
        added_before = 0
        if last is not None:  # the file grew: the import goes on after the lines read then, under its id
            import_id, part = last.id, last.part
            report.skipped_lines, report.unchanged = last.read_lines, last.added + last.unchanged
            added_before = last.added
        else:
            import_id, part = conn.execute(imports.insert().values(
                batch_id=stored.id, source=source, at=time.time(), added=0, unchanged=0, rejected=0,
                defaults=given)).inserted_primary_key[0], None
        report.import_id = import_id
        importer = _Importer(conn, stored.id, import_id, report, new_batch=created, part=part)
        for chunk in chunks:
            importer.take(chunk)
        importer.finish()
        if report.rejected and (not skip_invalid or report.none_valid):
            if not created:
                report.hint = options_hint(conn, stored, source, given, import_id)
            raise ImportRejected(report)  # with every line bad, skipping them would leave nothing
        head = file.read if file is not None else None
        worst: tuple[int | None, int | None] = (importer.worst_input, importer.worst_output)
        costs = importer.costs
        if last is not None:  # the lines read then count too; unknown if they were never costed
            worst = (None, None) if last.worst_input_tokens is None else (
                max(last.worst_input_tokens, importer.worst_input),
                max(last.worst_output_tokens, importer.worst_output))
            costs = None if last.costs is None or costs is None else merge_costs(orjson.loads(last.costs), costs)
        # The import's figures cover the whole file: what it added when it first read it stays "added".
        conn.execute(imports.update().where(imports.c.id == import_id).values(
            at=time.time(), added=added_before + report.added, unchanged=report.unchanged - added_before,
            rejected=report.rejected, fingerprint=fingerprint,
            read_bytes=head and head.size, read_lines=head and head.lines, digest=head and head.digest,
            part=importer.part, worst_input_tokens=worst[0], worst_output_tokens=worst[1],
            costs=None if costs is None else orjson.dumps(costs).decode()))
        tally.add_statuses(conn, stored.id, {"pending": report.added})
        commit.reached()
    return report
