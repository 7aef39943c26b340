"""Exporting a batch's results as JSONL, in input order, from one snapshot.

Rows are streamed from a single read transaction (a consistent snapshot even
while a run keeps writing) in chunks, so memory stays flat whatever the batch
size. A file export is written beside its destination under a temporary name
and renamed into place only when complete: an interrupted export never
leaves a half-written file, and never clobbers the previous one.

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
    ``usage`` added (replacing input keys of the same names).
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from typing import IO, Any, Callable, Iterator

import orjson
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from .errors import BatcherError, StoreError, UsageError
from .schema import jobs
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
    """``BATCH.FORMAT.jsonl`` in the current folder, the name made file-safe."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in batch.name).lstrip(".") or "batch"
    return f"{safe}.{fmt}.jsonl"


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


def _render_merged(row: Any) -> bytes:
    custom_id, status = row[0], row[1]
    try:
        obj = _loads(row[6])
    except orjson.JSONDecodeError:
        raise StoreError(f"job {custom_id!r}: its stored input line is not valid JSON") from None
    if not isinstance(obj, dict):
        obj = {"input": obj}
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
                  include_pending: bool = False, chunk: int = CHUNK) -> Iterator[list[bytes]]:
    """The export's lines, a chunk at a time, in input order, from one snapshot.

    Options are checked now; the snapshot is taken when iteration starts.
    """
    if fmt not in RENDERERS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    statuses = _statuses(only, include_pending)
    render = RENDERERS[fmt]
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


# -- writing --------------------------------------------------------------------


def _write_all(chunks: Iterator[list[bytes]], out: IO[bytes]) -> int:
    """Write every chunk; on any failure, end the read transaction at once."""
    written = 0
    try:
        for lines in chunks:
            out.write(b"".join(lines))
            written += len(lines)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return written


def _new_file_mode(path: str) -> int:
    """The mode an overwritten file had, else what ``open()`` would give."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        mask = os.umask(0o022)
        os.umask(mask)
        return 0o666 & ~mask


def _write_error(shown: str, exc: OSError) -> BatcherError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"{shown}: disk full; nothing written")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UsageError(f"{shown}: cannot write here: {exc.strerror}")
    return StoreError(f"{shown}: cannot write: {exc.strerror or exc}")


def _check_destination(engine: Engine, path: str, shown: str) -> None:
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise UsageError(f"{shown}: folder {os.path.dirname(shown) or folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{shown}: is a folder; give a file name")
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if database and os.path.abspath(database) == path:
        raise UsageError(f"{shown}: that is the job store itself")


def write_atomically(engine: Engine, path: str, chunks: Iterator[list[bytes]]) -> int:
    """Write ``chunks`` to a temporary file beside ``path``, then rename it over ``path``."""
    shown, path = path, os.path.abspath(path)
    _check_destination(engine, path, shown)
    mode = _new_file_mode(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".part")
    except OSError as exc:
        raise _write_error(shown, exc) from None
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            written = _write_all(chunks, out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _write_error(shown, exc) from None
        raise
    return written


def export_batch(engine: Engine, batch: Batch, out: str | IO[bytes] = "-", fmt: str = "results",
                 only: str = "all", include_pending: bool = False) -> int:
    """Export ``batch`` to a file path (atomically), ``"-"`` (stdout) or a binary stream.

    Returns the number of lines written. Only a file path is all-or-nothing:
    a stream keeps whatever was written before a failure.
    """
    chunks = export_chunks(engine, batch, fmt, only, include_pending)
    if isinstance(out, str):
        if out != "-":
            return write_atomically(engine, out, chunks)
        out = sys.stdout.buffer
    written = _write_all(chunks, out)
    out.flush()
    return written
