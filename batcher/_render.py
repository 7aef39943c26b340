"""Each line of an export, in its format, from a job's stored row.

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
from dataclasses import dataclass
from typing import Any, Callable

import orjson

from .errors import StoreError

#: ``error.type`` values Anthropic's result format knows.
ANTHROPIC_ERROR_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "billing_error", "permission_error", "not_found_error",
    "rate_limit_error", "timeout_error", "api_error", "overloaded_error",
})

_NL = orjson.OPT_APPEND_NEWLINE
_dumps = orjson.dumps
_loads = orjson.loads


@dataclass
class ExportNotes:
    """What an export did that deserves a word: input keys ``merged`` replaced."""

    replaced_keys: int = 0

    def warnings(self) -> list[str]:
        if not self.replaced_keys:
            return []
        return [f"{self.replaced_keys} input line(s) had their own {', '.join(MERGED_KEYS)} key(s): "
                "replaced in the merged export (the text or results format keeps them apart)"]


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


def renderer(fmt: str, notes: ExportNotes | None = None) -> Callable[[Any], bytes]:
    """What makes a row's line in ``fmt``; the merged format counts the keys it replaces into ``notes``."""
    return functools.partial(_render_merged, notes=notes) if fmt == "merged" else RENDERERS[fmt]
