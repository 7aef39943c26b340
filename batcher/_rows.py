"""Rows given in Python, turned into jobs the way a job file's lines are.

A row is a ``str`` (a prompt) or a ``dict`` in either job-file line format;
a pandas DataFrame (its records) or Series (its values) works by duck
typing, pandas itself never imported. Rows are prepared in chunks as they
are iterated, so an import's memory stays flat in the number of rows. Row
``i`` is stored as line ``i + 1``: a row without ``custom_id`` gets
``line-{i+1}``, exactly as if the rows were written to a file one per line.
"""

from __future__ import annotations

import hashlib
import os
import re
import reprlib
from typing import Any, Iterable, Iterator, Sequence

import orjson

from ._text import as_text, is_text
from ._told import Progress
from .errors import UsageError, on_command_line, option
from .importer import ImportRejected, ImportReport
from .jobfile import ROWS_SOURCE, STDIN, LineError
from .prepare import PreparedChunk, prepare_object
from .validate import Defaults

#: Rows per prepared chunk handed to the importer.
ROWS_PER_CHUNK = 2000
#: Bad rows named in an exception's message (all of them are in ``errors``).
SHOWN_IN_MESSAGE = 20


def _missing(value: Any) -> bool:
    """An empty DataFrame cell: None, NaN, pandas' NA/NaT."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    return type(value).__name__ in ("NAType", "NaTType")


def records(rows: Any) -> Iterable[Any]:
    """The rows of ``rows``: a DataFrame's records (empty cells left out), a Series' values, or ``rows``.

    A single row (a dict) or something that is no collection is refused: a
    dict would otherwise be read as its keys, each one a prompt. So is a
    set: rows are known again by their order.
    """
    if hasattr(rows, "columns") and hasattr(rows, "iloc") and hasattr(rows, "to_dict"):
        return _frame_records(rows)
    if hasattr(rows, "iloc") and hasattr(rows, "tolist"):
        return rows.tolist()  # type: ignore[no-any-return]
    if isinstance(rows, dict):
        raise UsageError("rows must be a collection of rows; for one row, pass [row]")
    if isinstance(rows, (set, frozenset)):
        # Its order changes from one process to the next: the same call made
        # again would be other rows (another batch, line-1 another prompt) and pay again.
        raise UsageError("rows must come in an order, and a set has none (the same call made again would send "
                         "them again): pass sorted(rows) or a list")
    if isinstance(rows, bytes) or not hasattr(rows, "__iter__"):
        raise UsageError(f"rows must be prompts, dicts, a DataFrame or a job file's path, not {type(rows).__name__}")
    return rows  # type: ignore[no-any-return]


def refuse_a_prompt_for_a_path(rows: str) -> None:
    """Refuse a string that names no file, from Python, saying how to send it as a prompt.

    ``run("Name a colour.")`` takes the string for a job file's path, as the
    command line does; alone, "no such file" leaves the caller guessing.
    The command line keeps its plain message: there, a path was meant.

    >>> refuse_a_prompt_for_a_path("Name a colour.")
    Traceback (most recent call last):
    batcher.UsageError: 'Name a colour.': no such file (for one prompt, pass a list: [prompt])
    """
    if rows == STDIN or on_command_line() or os.path.lexists(rows):
        return
    raise UsageError(f"{_SHORT.repr(rows)}: no such file ({PROMPT_HINT})")


#: What a string meant as one prompt is told (see :func:`refuse_a_prompt_for_a_path`).
PROMPT_HINT = "for one prompt, pass a list: [prompt]"


#: A prompt shown in a message: quoted, on one line, its middle cut when long.
_SHORT = reprlib.Repr()
_SHORT.maxstring = 60


def defaults_of(model: Any, max_tokens: Any, system: Any) -> Defaults:
    """The defaults given in Python, checked once: a bad one is one error naming the option, not one per row.

    ``max_tokens`` is taken as ``--max-tokens`` takes it, like the run's
    numbers: numpy's integers, ``"16"`` and ``16.0`` are the number 16.

    >>> defaults_of("claude-haiku-4.5", "16", None).max_tokens
    16
    >>> defaults_of("claude-haiku-4.5", 0, None)
    Traceback (most recent call last):
    batcher.UsageError: max_tokens: '0' is not in [1, 10000000]
    """
    from . import options as opt

    if max_tokens is not None:
        max_tokens = opt.checked(option("max_tokens"), opt.MAX_TOKENS, max_tokens)
    if model is not None and (not isinstance(model, str) or not model):
        raise UsageError(f"{option('model')} must be a model's name (a non-empty string), not {reprlib.repr(model)}")
    if system is not None and not isinstance(system, (str, list)):
        raise UsageError(f"{option('system')} must be a string or a list of text blocks, not {reprlib.repr(system)}")
    for name, value in (("model", model), ("system", system)):
        if isinstance(value, str) and not is_text(value):  # os.fsdecode of a Latin-1 name, say
            raise UsageError(f"{option(name)} '{as_text(value)}' is not valid UTF-8")
    return Defaults(model, max_tokens, system)


def _plain(value: Any) -> Any:
    """A value JSON knows, for one that only data libraries make (numpy scalars, timestamps, arrays)."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


#: Integer request fields that pandas turns into floats when a cell is empty.
INTEGER_FIELDS = ("max_tokens", "top_k")


def _frame_records(frame: Any) -> Iterator[dict[str, Any]]:
    # A slice at a time: to_dict converts numpy scalars to Python ones.
    for start in range(0, len(frame), ROWS_PER_CHUNK):
        for record in frame.iloc[start:start + ROWS_PER_CHUNK].to_dict("records"):
            row = {k: v for k, v in record.items() if not _missing(v)}
            for key in INTEGER_FIELDS:
                value = row.get(key)
                if isinstance(value, float) and value.is_integer():
                    row[key] = int(value)
            yield row


def as_job_object(row: Any) -> Any:
    """A row as a job-file line's object: a string is a prompt."""
    return {"prompt": row} if isinstance(row, str) else row


def prepared_rows(rows: Iterable[Any], defaults: Defaults, keep_bodies: bool = False,
                  progress: Progress | None = None) -> Iterator[PreparedChunk]:
    """Rows validated and prepared in chunks, in order (see :func:`batcher.prepare.prepare_object`).

    ``keep_bodies`` keeps each valid row's request body too (``PreparedChunk.bodies``).
    ``progress`` is told the rows read so far (and their part of all, for a
    sequence) each time the reader has taken a chunk and asks for the next.
    """
    total = len(rows) if isinstance(rows, Sequence) and rows else None
    chunk = PreparedChunk(bodies=[] if keep_bodies else None)
    dumps = orjson.dumps
    for number, row in enumerate(rows, start=1):
        obj = as_job_object(row)
        try:
            try:
                source = dumps(obj).decode()
            except (orjson.JSONEncodeError, TypeError):
                # A numpy number or a timestamp: kept as the plain value the file line would hold.
                source = dumps(obj, default=_plain).decode()
                obj = orjson.loads(source)
        except (orjson.JSONEncodeError, TypeError) as exc:
            chunk.errors.append(LineError(number, f"cannot be stored as JSON: {exc}"))
        else:
            prepare_object(chunk, number, obj, source, defaults)
        if number % ROWS_PER_CHUNK == 0:
            yield chunk
            if progress is not None:
                progress(number, total and number / total)
            chunk = PreparedChunk(bodies=[] if keep_bodies else None)
    yield chunk


def name_and_fingerprint(rows: Iterable[Any], defaults: Defaults) -> tuple[str, str]:
    """A batch name that is the same for the same rows and import options, and the rows' fingerprint.

    Run options (pace, retries) do not count: they do not change what is
    sent. The fingerprint (a SHA-256 of the same bytes) is what an import
    keeps to know the same rows again: a call made again with them, its
    last import standing, reads none of them (see :mod:`batcher.importer`).
    """
    digest, whole = hashlib.blake2b(digest_size=6), hashlib.sha256()
    for data in _canonical(rows, defaults):
        digest.update(data)
        whole.update(data)
    return f"rows-{digest.hexdigest()}", f"rows:{whole.hexdigest()}"


def _canonical(rows: Iterable[Any], defaults: Defaults) -> Iterator[bytes]:
    """The import options, then each row, as bytes that are equal for equal rows (object keys sorted)."""
    yield orjson.dumps([defaults.model, defaults.max_tokens, defaults.system], default=repr)
    for row in rows:
        try:
            yield orjson.dumps(as_job_object(row), option=orjson.OPT_SORT_KEYS, default=repr)
        except (orjson.JSONEncodeError, TypeError):
            yield repr(row).encode()
        yield b"\n"


class InvalidRows(ImportRejected):
    """Some rows (or job-file lines) are invalid, and nothing was imported.

    ``errors`` lists every bad one as ``(position, reason)``: the row's
    0-based index for rows given in Python, the line number for a file.

    >>> import batcher
    >>> with batcher.Store("example.db") as store:
    ...     store.add("x", ["fine", "", {"prompt": "hi", "max_tokens": 0}])
    Traceback (most recent call last):
    batcher.InvalidRows: 2 bad row(s), nothing imported: row 1: `prompt` must be a non-empty string; row 2: `max_tokens` must be a positive integer
    """

    __module__ = "batcher"

    def __init__(self, report: ImportReport, from_rows: bool) -> None:
        super().__init__(report)
        what = "row" if from_rows else "line"
        self.errors = positions(report.errors, from_rows)
        shown = "; ".join(f"{what} {pos}: {reason}" for pos, reason in self.errors[:SHOWN_IN_MESSAGE])
        more = report.rejected - min(len(self.errors), SHOWN_IN_MESSAGE)
        if more > 0:
            shown += f"; ... and {more} more"
        where = "" if from_rows else f"{report.file}: "
        hint = f"; {report.hint}" if report.hint else ""  # the options the batch was imported with, if others
        if from_rows and any(_POSITIONAL_CLASH.search(reason) for _, reason in self.errors):
            hint += ("; rows without a custom_id are named by their position (line-1, line-2, ...), so other rows "
                     "cannot be added to a named batch that way: give each row a custom_id, or pass the batch's "
                     "earlier rows first")
        self.args = (f"{where}{report.rejected} bad {what}(s), nothing imported: {shown}{hint}",)


def positions(errors: Iterable[LineError], from_rows: bool) -> list[tuple[int, str]]:
    """Bad rows or lines as ``(position, reason)``, in order: a row's 0-based index, or a file's line number.

    The import numbers rows as lines, from 1; Python counts them from 0, as
    :attr:`batcher.Result.index` does, and so does every message about them.

    >>> positions([LineError(3, "duplicate custom_id 'a' (first on line 1)")], from_rows=True)
    [(2, "duplicate custom_id 'a' (first in row 0)")]
    """
    return [(e.line - 1, _as_rows(e.message)) if from_rows else (e.line, e.message)
            for e in sorted(errors, key=lambda e: e.line)]


#: A row named by its position (no custom_id of its own) that clashes with a row stored under that name.
_POSITIONAL_CLASH = re.compile(r"^custom_id 'line-\d+' is already in the batch with a different request")


def _as_rows(message: str) -> str:
    """A line's message about another line, said of 0-based rows (``first on line 2`` is row 1)."""
    return re.sub(r"\(first on line (\d+)\)", lambda m: f"(first in row {int(m[1]) - 1})", message)


def rows_report(batch: str) -> ImportReport:
    """The report of an import of rows: every bad row kept, not only the first."""
    return ImportReport(batch=batch, file="rows", keep=None)
