"""A batch's results as Python objects, read lazily in input order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import orjson
from sqlalchemy import Engine, select

from ._render import _message, _text_of, anthropic_error
from .export import CHUNK, _stream, chosen_statuses
from .schema import ORDER, jobs
from .store import Batch as BatchRecord


@dataclass(frozen=True, slots=True)
class Result:
    """One job's outcome, typed; a list of them goes straight into ``pandas.DataFrame``.

    ``status`` is ``succeeded``, ``failed``, ``canceled`` or ``pending`` (not
    sent yet, or in flight). ``text`` is the answer's text blocks joined,
    ``message`` the full Messages API message, ``usage`` its token counts;
    ``error`` is Anthropic's error object (``{"type": "error", "error":
    {"type", "message"}, "request_id"}``) with ``status_code`` the HTTP status
    of the failing answer. ``row`` is the input as a job-file line's object
    (a string row appears as ``{"prompt": ...}``) and ``index`` its 0-based
    position in the input (for a file: its line number minus one).

    >>> import batcher
    >>> r = batcher.Result("line-1", "succeeded", "Hello!", "end_turn", {"output_tokens": 3}, None, None,
    ...            {"custom_id": "line-1"}, {"prompt": "Say hello"}, 0)
    >>> r.text, r.ok
    ('Hello!', True)
    """

    __module__ = "batcher"

    custom_id: str
    status: str
    text: str | None
    stop_reason: str | None
    usage: dict[str, Any] | None
    error: dict[str, Any] | None
    status_code: int | None
    message: dict[str, Any] | None
    row: Any
    index: int

    @property
    def ok(self) -> bool:
        """The job succeeded: ``text`` and ``message`` hold its answer."""
        return self.status == "succeeded"


def _result(row: Any) -> Result:
    line, custom_id, status, response, error, error_type, status_code, source = row
    try:
        given = orjson.loads(source)
    except orjson.JSONDecodeError:
        given = source
    if status == "succeeded":
        message = _message(custom_id, response)
        return Result(custom_id, status, _text_of(message), message.get("stop_reason"), message.get("usage"),
                      None, None, message, given, line - 1)
    failure = anthropic_error(error, error_type) if status == "failed" else None
    shown = "pending" if status == "running" else status
    return Result(custom_id, shown, None, None, None, failure, status_code if failure else None, None, given,
                  line - 1)


def iter_results(engine: Engine, batch: BatchRecord, only: str | Iterable[str] | None = None,
                 chunk: int = CHUNK, import_id: int | None = None) -> Iterator[Result]:
    """The batch's results in input order, from one snapshot, ``chunk`` rows at a time.

    ``only`` is checked now; the snapshot is taken when iteration starts.
    With ``import_id``, only the jobs of that import (the rows of one call).
    """
    statuses = chosen_statuses(only)
    query = select(jobs.c.line, jobs.c.custom_id, jobs.c.status, jobs.c.response, jobs.c.error, jobs.c.error_type,
                   jobs.c.status_code, jobs.c.source).where(jobs.c.batch_id == batch.id)
    if import_id is not None:
        query = query.where(jobs.c.import_id == import_id)
    if statuses is not None:
        query = query.where(jobs.c.status.in_(statuses))
    chunks = _stream(engine, query.order_by(*ORDER), _result, chunk)
    return (result for results in chunks for result in results)
