"""Reading what the API said when it said no.

Poe answers errors in Anthropic's shape, sometimes in its general API's
shape, and a proxy in between may answer with HTML or plain text. Whatever
arrived becomes one Anthropic-format error object, so the store and the
exports only ever see that shape.
"""

from __future__ import annotations

import html
import re
from typing import Any

import orjson

#: Anthropic's error type for each HTTP status, when the body does not say.
TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def make_error(error_type: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """An error object in Anthropic's format."""
    return {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}


def _plain(text: str, limit: int = 300) -> str:
    """Readable text out of an HTML or text body, shortened."""
    text = _SPACE.sub(" ", html.unescape(_TAGS.sub(" ", text))).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_error(status: int, body: bytes, request_id: str | None = None) -> dict[str, Any]:
    """The Anthropic-format error for an HTTP error answer, whatever its body."""
    default_type = TYPE_BY_STATUS.get(status, "api_error")
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        request_id = data.get("request_id") or request_id
        if isinstance(error, dict):
            error_type = error.get("type") if isinstance(error.get("type"), str) else default_type
            message = error.get("message")
            if not isinstance(message, str):
                message = orjson.dumps(error).decode()
            return make_error(error_type or default_type, message, request_id)
        if isinstance(error, str):
            return make_error(default_type, error, request_id)
        if isinstance(data.get("message"), str):
            return make_error(default_type, data["message"], request_id)
    text = _plain(body.decode("utf-8", "replace")) if body else ""
    return make_error(default_type, text or f"HTTP {status} with an empty body", request_id)


def says_out_of_points(error: dict[str, Any]) -> bool:
    """Whether an error means the account cannot pay for more requests."""
    inner = error.get("error", {})
    if inner.get("type") == "billing_error":
        return True
    message = str(inner.get("message", "")).lower()
    return any(phrase in message for phrase in ("insufficient points", "out of points", "not enough points",
                                                "insufficient credit", "credit balance"))
