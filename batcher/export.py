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

Formats (one line per job):

``results``
    Anthropic's Message Batches result lines (``succeeded`` / ``errored`` /
    ``canceled``). Error types outside Anthropic's set (``connection_error``,
    ``request_too_large``, ...) become ``api_error`` (or
    ``invalid_request_error`` for ``request_too_large``) with the original
    type prefixed to the message, so every line validates as Anthropic's.
    Pending/running jobs appear only with ``include_pending``, as
    ``{"type": "pending"}`` (not an Anthropic type).
``text``
    ``{"custom_id", "status", "text", "stop_reason", "usage", "error"}``,
    always all six keys: ``text`` is the answer's text blocks joined, ``null``
    unless succeeded; ``error`` is ``{"type", "message", "status_code",
    "request_id"}`` for failed jobs, else ``null``.
``merged``
    The input line's object with ``response`` (the text), ``error`` and
    ``usage`` added. Input keys of the same names are replaced, and the
    export warns how many lines had them (the format stays flat, as
    dataset tools expect).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterator

import orjson
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from .errors import OutputError, StoreError, UsageError
from .outstream import CLOSED
from .outfile import stream_destination, write_atomically, write_into, write_stream
from .schema import imports, jobs
from .store import Batch

FORMATS = ("results", "text", "merged")
ONLY = ("all", "succeeded", "failed")
#: Rows fetched per round trip; also the unit written at once.
CHUNK = 500

#: ``error.type`` values Anthropic's result format knows.
ANTHROPIC_ERROR_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "billing_error", "permission_error", "not_found_error",
    "rate_limit_error", "timeout_error", "api_error", "overloaded_error",
})

_NL = orjson.OPT_APPEND_NEWLINE
_dumps = orjson.dumps
_loads = orjson.loads


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


@dataclass
class ExportNotes:
    """What an export did that deserves a word: input keys ``merged`` replaced."""

    replaced_keys: int = 0

    def warnings(self) -> list[str]:
        if not self.replaced_keys:
            return []
        return [f"{self.replaced_keys} input line(s) had their own {', '.join(MERGED_KEYS)} key(s): "
                "replaced in the merged export (the text or results format keeps them apart)"]


def _statuses(only: str, include_pending: bool) -> tuple[str, ...] | None:
    """Job statuses to export, or None for every status."""
    if only not in ONLY:
        raise UsageError(f"--only must be one of {', '.join(ONLY)}, not {only!r}")
    chosen = {"all": ("succeeded", "failed", "canceled"), "succeeded": ("succeeded",), "failed": ("failed",)}[only]
    if include_pending:
        if only == "all":
            return None
        chosen += ("pending", "running")
    return chosen


# -- rendering ------------------------------------------------------------------


def error_parts(stored: str | None, error_type: str | None) -> tuple[str, str, str | None]:
    """(type, message, request_id) of a stored error, whatever shape it came in.

    The type is the job's ``error_type`` column when set (what status and
    retry group by), else the one inside the stored error.
    """
    etype, message, request_id = error_type, None, None
    try:
        obj = _loads(stored) if stored else None
    except orjson.JSONDecodeError:
        obj = None
        message = stored
    if isinstance(obj, dict):
        inner = obj.get("error")
        if isinstance(inner, dict):
            if not etype and isinstance(inner.get("type"), str):
                etype = inner["type"]
            message = inner.get("message")
        elif isinstance(inner, str):
            message = inner
        rid = obj.get("request_id")
        request_id = rid if isinstance(rid, str) else None
    if not isinstance(message, str):
        # No message where Anthropic puts one: keep what was said, as said.
        message = str(message) if message is not None else (stored or "")
    return etype or "api_error", message, request_id


def anthropic_error(stored: str | None, error_type: str | None) -> dict[str, Any]:
    """The ``result.error`` object of an errored line, in Anthropic's vocabulary."""
    etype, message, request_id = error_parts(stored, error_type)
    if etype not in ANTHROPIC_ERROR_TYPES:
        message = f"{etype}: {message}"
        etype = "invalid_request_error" if etype == "request_too_large" else "api_error"
    return {"type": "error", "error": {"type": etype, "message": message}, "request_id": request_id}


def plain_error(stored: str | None, error_type: str | None, status_code: int | None) -> dict[str, Any]:
    """The ``error`` key of text and merged lines: the error as it was reported."""
    etype, message, request_id = error_parts(stored, error_type)
    return {"type": etype, "message": message, "status_code": status_code, "request_id": request_id}


def _message(custom_id: str, response: str) -> dict[str, Any]:
    try:
        message = _loads(response)
    except (orjson.JSONDecodeError, TypeError):
        raise StoreError(f"job {custom_id!r}: its stored answer is not valid JSON") from None
    return message


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content") or ()
    if len(content) == 1 and content[0].get("type") == "text":
        return content[0].get("text") or ""
    return "".join(b.get("text") or "" for b in content if b.get("type") == "text")


def _compact(response: Any) -> bool:
    """A stored answer that can be copied into a line as it is.

    The runner stores answers as compact JSON objects; anything that does not
    look like one (a line break, other ends) goes through the parser instead.
    """
    return isinstance(response, str) and response[:1] == "{" and response[-1:] == "}" and "\n" not in response


def _render_results(row: Any) -> bytes:
    custom_id, status, response, error, error_type, _code = row[:6]
    if status == "succeeded":
        if _compact(response):
            # Copying the stored text avoids a parse and a dump per line: the
            # bulk of the export's cost.
            return b'{"custom_id":%b,"result":{"type":"succeeded","message":%b}}\n' % (
                _dumps(custom_id), response.encode())
        result: dict[str, Any] = {"type": "succeeded", "message": _message(custom_id, response)}
    elif status == "failed":
        result = {"type": "errored", "error": anthropic_error(error, error_type)}
    elif status == "canceled":
        # A batch's deadline passing cancels what was unsent as "expired".
        result = {"type": "expired" if error_type == "expired" else "canceled"}
    else:
        result = {"type": "pending"}
    return _dumps({"custom_id": custom_id, "result": result}, option=_NL)


def _render_text(row: Any) -> bytes:
    custom_id, status = row[0], row[1]
    if status == "succeeded":
        message = _message(custom_id, row[2])
        return _dumps({"custom_id": custom_id, "status": status, "text": _text_of(message),
                       "stop_reason": message.get("stop_reason"), "usage": message.get("usage"), "error": None},
                      option=_NL)
    error = plain_error(row[3], row[4], row[5]) if status == "failed" else None
    return _dumps({"custom_id": custom_id, "status": "pending" if status == "running" else status, "text": None,
                   "stop_reason": None, "usage": None, "error": error}, option=_NL)


MERGED_KEYS = ("response", "error", "usage")


def _render_merged(row: Any, notes: ExportNotes | None = None) -> bytes:
    custom_id, status = row[0], row[1]
    try:
        obj = _loads(row[6])
    except orjson.JSONDecodeError:
        raise StoreError(f"job {custom_id!r}: its stored input line is not valid JSON") from None
    if not isinstance(obj, dict):
        obj = {"input": obj}
    elif notes is not None and ("response" in obj or "error" in obj or "usage" in obj):
        notes.replaced_keys += 1
    if status == "succeeded":
        message = _message(custom_id, row[2])
        obj["response"], obj["error"], obj["usage"] = _text_of(message), None, message.get("usage")
    else:
        error = plain_error(row[3], row[4], row[5]) if status == "failed" else None
        obj["response"], obj["error"], obj["usage"] = None, error, None
    return _dumps(obj, option=_NL)


RENDERERS: dict[str, Callable[[Any], bytes]] = {
    "results": _render_results, "text": _render_text, "merged": _render_merged,
}


# -- reading --------------------------------------------------------------------


def export_chunks(engine: Engine, batch: Batch, fmt: str = "results", only: str = "all",
                  include_pending: bool = False, chunk: int = CHUNK,
                  notes: ExportNotes | None = None) -> Iterator[list[bytes]]:
    """The export's lines, a chunk at a time, in input order, from one snapshot.

    Options are checked now; the snapshot is taken when iteration starts.
    ``notes`` collects what deserves a warning.
    """
    if fmt not in RENDERERS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    statuses = _statuses(only, include_pending)
    render = functools.partial(_render_merged, notes=notes) if fmt == "merged" else RENDERERS[fmt]
    columns = [jobs.c.custom_id, jobs.c.status, jobs.c.response, jobs.c.error, jobs.c.error_type,
               jobs.c.status_code]
    if fmt == "merged":
        columns.append(jobs.c.source)
    query = select(*columns).where(jobs.c.batch_id == batch.id)
    if statuses is not None:
        query = query.where(jobs.c.status.in_(statuses))
    # (batch_id, line) is indexed and SQLite appends the rowid to every
    # index, so this order is read straight off ix_jobs_batch_line: no sort.
    return _stream(engine, query.order_by(jobs.c.line, jobs.c.id), render, chunk)


def _stream(engine: Engine, query: Any, render: Callable[[Any], bytes], chunk: int) -> Iterator[list[bytes]]:
    try:
        with engine.connect() as conn, conn.begin():
            result = conn.execution_options(yield_per=chunk).execute(query)
            for rows in result.partitions():
                yield [render(row) for row in rows]
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the job store: {getattr(exc, 'orig', None) or exc}") from None


# -- writing ---------------------------------------------------------------------


def _check_destination(engine: Engine, batch: Batch, path: str, shown: str, force: bool) -> None:
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise UsageError(f"{shown}: folder {os.path.dirname(shown) or folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{shown}: is a folder; give a file name")
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if database and os.path.realpath(database) == path:
        raise UsageError(f"{shown}: that is the job store itself")
    if not force and os.path.exists(path):
        with engine.connect() as conn:
            sources = set(conn.scalars(select(imports.c.source).where(imports.c.batch_id == batch.id)))
        if any(os.path.realpath(source) == path for source in sources | {batch.source}):
            raise UsageError(f"{shown}: that is the job file batch {batch.name!r} was imported from; "
                             "choose another name (or --force to overwrite it)")


def is_stream_destination(out: str) -> bool:
    """``-`` or a path written into directly: a report of the export belongs on stderr."""
    return out == "-" or stream_destination(out)


def export_batch(engine: Engine, batch: Batch, out: str | IO[bytes] = "-", fmt: str = "results",
                 only: str = "all", include_pending: bool = False, force: bool = False,
                 notes: ExportNotes | None = None) -> int:
    """Export ``batch`` to a file path, ``"-"`` (stdout) or a binary stream.

    Returns the number of lines written. A regular file is written
    all-or-nothing (see the module's notes); a stream, a FIFO or a device
    keeps whatever was written before a failure. Writing over one of the
    batch's own job files needs ``force``. Failures to write are
    :class:`~batcher.errors.OutputError` (a closed pipe stays BrokenPipeError).
    """
    chunks = export_chunks(engine, batch, fmt, only, include_pending, notes=notes)
    if isinstance(out, str):
        if out == "-":
            if sys.stdout is None:
                raise OutputError(CLOSED)
            return write_stream(chunks, sys.stdout.buffer, "stdout")
        if stream_destination(out):
            return write_into(out, chunks)
        path = os.path.realpath(out)
        _check_destination(engine, batch, path, out, force)
        return write_atomically(path, chunks, shown=out)
    return write_stream(chunks, out, getattr(out, "name", "the output"))
