"""Exporting a batch's results as JSONL, in input order, from one snapshot.

Rows are streamed from a single read transaction (a consistent snapshot even
while a run keeps writing) in chunks, so memory stays flat whatever the batch
size. A regular file (or a new one) is written beside its destination under
a temporary name and renamed into place only when complete: an interrupted
export never leaves a half-written file, and never clobbers the previous one.
A symlink is followed (the file it points to is replaced), and anything that
is not a regular file -- a FIFO, ``/dev/null``, ``/dev/stdout``, a ``>(cmd)``
pipe -- is written into directly. New files are created 0600, like the store:
they hold the same prompts and answers. The temporary name carries the
writer's process id, so the next export to the same place removes what a
killed one left behind.

The formats are described, and each line made, in :mod:`batcher._render`.
A big batch is rendered by forked workers (:mod:`batcher._export_workers`).
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any, Callable, Iterable, Iterator, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from . import _export_workers
from ._told import Progress, told
from ._render import RENDERERS, ExportNotes, renderer
from .db import read_failure
from .errors import OutputError, UsageError, option
from .outfile import Chunk, binary_writer, stream_destination, write_atomically, write_into, write_stream
from .outstream import CLOSED_EXPORT, stdout_closed
from .schema import ORDER, batches, imports, jobs
from .store import Batch, status_counts

FORMATS = ("results", "text", "merged")
#: What ``only`` accepts besides ``"all"``, alone or several: the same for an export and for results.
STATUS_CHOICES = ("succeeded", "failed", "canceled", "pending")
#: The statuses of finished jobs: what an export of ``all`` writes unless pending ones are included.
FINISHED = ("succeeded", "failed", "canceled")
#: Where an export can go: a file's path (``"-"`` is stdout), or an open stream, binary or text.
Destination = str | os.PathLike[str] | IO[bytes] | IO[str]
#: Rows fetched per round trip; also the unit written at once.
CHUNK = 500

T = TypeVar("T")


def default_output(batch: Batch, fmt: str) -> str:
    """``BATCH.FORMAT.jsonl`` in the current folder, the name made file-safe.

    Letters, digits, ``-``, ``_`` and ``.`` stay; any other character is
    percent-encoded (UTF-8 bytes as ``%XX``, ``%`` itself as ``%25``, a
    leading dot as ``%2E``), so distinct batch names give distinct files.
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "".join(f"%{b:02X}" for b in c.encode())
                   for c in batch.name)
    if safe.startswith("."):
        safe = "%2E" + safe[1:]
    return f"{safe or 'batch'}.{fmt}.jsonl"


def chosen_statuses(only: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """The job statuses ``only`` names (``pending`` takes in jobs in flight), or None for ``all``.

    One reading for :meth:`batcher.Batch.results` and :meth:`batcher.Batch.export`,
    so that both take the same values and refuse others with the same words.

    >>> chosen_statuses(["succeeded", "pending"])
    ('succeeded', 'pending', 'running')
    """
    if only is None or only == "all":
        return None
    chosen: tuple[Any, ...]
    try:
        chosen = (only,) if isinstance(only, str) else tuple(only)
    except TypeError:
        chosen = (only,)  # refused below, by name
    for status in chosen:
        if status not in STATUS_CHOICES:
            raise UsageError(f"{option('only')} takes 'all' or one or more of {', '.join(STATUS_CHOICES)}, "
                             f"not {status!r}")
    return chosen + ("running",) if "pending" in chosen else chosen


def _statuses(only: str | Iterable[str], include_pending: bool) -> tuple[str, ...] | None:
    """Job statuses to export, or None for every status."""
    chosen = chosen_statuses(only)
    if include_pending:
        return None if chosen is None else tuple(dict.fromkeys(chosen + ("pending", "running")))
    return FINISHED if chosen is None else chosen


# -- reading --------------------------------------------------------------------


def export_chunks(engine: Engine, batch: Batch, fmt: str = "results", only: str | Iterable[str] = "all",
                  include_pending: bool = False, chunk: int = CHUNK,
                  notes: ExportNotes | None = None, piped: bool = False) -> Iterator[Chunk]:
    """The export's lines, a chunk at a time, in input order, from one snapshot.

    Options are checked now; the snapshot is taken when iteration starts.
    A big batch in an SQLite store is rendered by forked workers (see
    :mod:`batcher._export_workers`), in chunks of their own size; with
    ``piped`` their chunks may come as :class:`~batcher.outfile.Piped`, for
    the writers of :mod:`batcher.outfile`. ``notes`` collects what deserves
    a warning.
    """
    if fmt not in RENDERERS:
        raise UsageError(f"{option('format')} must be one of {', '.join(FORMATS)}, not {fmt!r}")
    statuses = _statuses(only, include_pending)
    render = renderer(fmt, notes)
    columns = [jobs.c.custom_id, jobs.c.status, jobs.c.response, jobs.c.error, jobs.c.error_type,
               jobs.c.status_code]
    if fmt == "merged":
        columns.append(jobs.c.source)
    query = select(*columns).where(jobs.c.batch_id == batch.id)
    if statuses is not None:
        query = query.where(jobs.c.status.in_(statuses))
    # (batch_id, part, line) is indexed and SQLite appends the rowid to every
    # index, so this order is read straight off ix_jobs_batch_order: no sort.
    return _export_stream(engine, batch, query.order_by(*ORDER), render, chunk, notes, piped)


def _export_stream(engine: Engine, batch: Batch, query: Any, render: Callable[[Any], bytes], chunk: int,
                   notes: ExportNotes | None, piped: bool) -> Iterator[Chunk]:
    try:
        forked = _export_workers.forked_chunks(engine, batch.id, query, _export_workers.each_row(render), notes, piped)
    except SQLAlchemyError as exc:
        raise read_failure(exc) from None
    if forked is not None:
        yield from forked
        return
    for lines in _stream(engine, query, render, chunk):
        yield b"".join(lines), len(lines)


def _stream(engine: Engine, query: Any, render: Callable[[Any], T], chunk: int) -> Iterator[list[T]]:
    """What ``render`` makes of each row, a list per ``chunk`` rows, from one snapshot."""
    try:
        with engine.connect() as conn, conn.begin():
            result = conn.execution_options(yield_per=chunk).execute(query)
            for rows in result.partitions():
                yield [render(row) for row in rows]
    except SQLAlchemyError as exc:
        raise read_failure(exc) from None


# -- writing ---------------------------------------------------------------------


def _check_destination(engine: Engine, path: str, shown: str, force: bool) -> None:
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise UsageError(f"{shown}: folder {os.path.dirname(shown) or folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{shown}: is a folder; give a file name")
    if shown.endswith(("/", os.sep)):  # a folder meant, and none there
        raise UsageError(f"{shown}: folder {shown} does not exist")
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if database and os.path.realpath(database) == path:
        raise UsageError(f"{shown}: that is the job store itself")
    if not force and os.path.exists(path):
        # Any batch's job file, not only the exported one's: it may be the only copy of those prompts.
        with engine.connect() as conn:
            sources = conn.execute(select(imports.c.source, batches.c.name).join(
                batches, imports.c.batch_id == batches.c.id).union(select(batches.c.source, batches.c.name))).all()
        for source, name in sources:
            if source and os.path.realpath(source) == path:
                raise UsageError(f"{shown}: that is the job file batch {name!r} was imported from; "
                                 f"choose another name (or {option('force', switch=True)} to overwrite it)")


def _lines_to_export(engine: Engine, batch: Batch, only: str | Iterable[str], include_pending: bool) -> int:
    """How many lines the export will write, from the batch's tally (a live run may change it meanwhile)."""
    statuses = _statuses(only, include_pending)
    with engine.connect() as conn:
        counts = status_counts(conn, batch.id)
    return sum(n for status, n in counts.items() if statuses is None or status in statuses)


def is_stream_destination(out: str) -> bool:
    """``-`` or a path written into directly: a report of the export belongs on stderr."""
    return out == "-" or stream_destination(out)


def destination(out: Destination) -> str | IO[bytes] | IO[str]:
    """``out`` as a path (a ``str``; ``-`` is stdout) or an open stream, or one UsageError saying what is taken."""
    if isinstance(out, os.PathLike):
        return os.fsdecode(out)
    if isinstance(out, str):
        return out
    if isinstance(out, (bytes, bytearray)) or not callable(getattr(out, "write", None)):
        raise UsageError(f"an export is written to a file name, '-' (stdout), a path object or an open stream, "
                         f"not {type(out).__name__}")
    if getattr(out, "closed", False):
        raise UsageError(f"{described(out)} is closed: nothing can be written to it")
    return out


def described(out: str | IO[bytes] | IO[str]) -> str:
    """Where an export goes, as messages name it: a path, ``stdout``, a stream's file name, or what it is."""
    if isinstance(out, str):
        return "stdout" if out == "-" else out
    name = getattr(out, "name", None)
    return name if isinstance(name, str) else f"the {type(out).__name__} given"


def export_batch(engine: Engine, batch: Batch, out: Destination = "-", fmt: str = "results",
                 only: str | Iterable[str] = "all", include_pending: bool = False, force: bool = False,
                 notes: ExportNotes | None = None, progress: Progress | None = None) -> int:
    """Export ``batch`` to a file path (``str`` or path object), ``"-"`` (stdout) or an open stream.

    Returns the number of lines written. A regular file is written
    all-or-nothing (see the module's notes); a stream, a FIFO or a device
    keeps whatever was written before a failure. A text stream gets text
    unless it has a binary buffer (see :func:`batcher.outfile.binary_writer`).
    Writing over the job file of any batch in the store needs ``force``.
    Failures to write are :class:`~batcher.errors.OutputError` (a closed
    pipe stays BrokenPipeError). ``progress`` hears the lines written so
    far, and their part of all.
    """
    out = destination(out)
    if not isinstance(only, str) and isinstance(only, Iterable):
        only = tuple(only)  # read twice: for the lines, and for their count
    chunks = export_chunks(engine, batch, fmt, only, include_pending, notes=notes, piped=True)
    if progress is not None:
        total = _lines_to_export(engine, batch, only, include_pending)
        chunks = told(chunks, progress, lambda chunk: chunk[1],
                      lambda _, written: min(1.0, written / total) if total else None)
    if isinstance(out, str):
        if out == "-":
            if stdout_closed():
                raise OutputError(CLOSED_EXPORT)
            return write_stream(chunks, binary_writer(sys.stdout), "stdout")
        if stream_destination(out):
            return write_into(out, chunks)
        path = os.path.realpath(out)
        _check_destination(engine, path, out, force)
        return write_atomically(path, chunks, shown=out)
    return write_stream(chunks, binary_writer(out), described(out))
