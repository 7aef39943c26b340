"""The Message Batches API's shapes: what comes in, what goes out, errors.

Checked against the official ``anthropic`` SDK's types (``MessageBatch``,
``MessageBatchRequestCounts``, ``DeletedMessageBatch``, the list page) and
its JSONL results decoder. Pure functions: no I/O.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import string
from datetime import datetime, timezone
from typing import Any, Mapping

import orjson

from batcher.apibatches import ApiBatch

MAX_REQUESTS = 100_000
MAX_BODY = 256 * 1024 * 1024
#: The Messages API's own limit on a request, for ``/v1/messages`` passed through.
MAX_MESSAGE_BODY = 32 * 1024 * 1024
DEFAULT_LIMIT, MAX_LIMIT = 20, 1000
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_ALPHABET = string.ascii_letters + string.digits


class ApiError(Exception):
    """An answer in Anthropic's error format: HTTP status, error type, message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


def not_found(batch_id: str) -> ApiError:
    return ApiError(404, "not_found_error", f"no message batch with id {batch_id!r}")


def new_request_id() -> str:
    return "req_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def error_body(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def processing_status(batch: ApiBatch) -> str:
    if batch.ended_at is not None:
        return "ended"
    return "canceling" if batch.cancel_requested_at is not None else "in_progress"


def message_batch(batch: ApiBatch, base_url: str) -> dict[str, Any]:
    """A ``MessageBatch``; ``results_url`` (absolute, on this server) once it has ended."""
    ended = batch.ended_at is not None
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": processing_status(batch),
        "request_counts": dataclasses.asdict(batch.counts),
        "created_at": rfc3339(batch.batch.created_at),
        "expires_at": rfc3339(batch.expires_at),
        "ended_at": rfc3339(batch.ended_at),
        "cancel_initiated_at": rfc3339(batch.cancel_requested_at),
        "archived_at": None,
        "results_url": f"{base_url}/v1/messages/batches/{batch.id}/results" if ended else None,
    }


def page_body(batches: list[ApiBatch], has_more: bool, base_url: str) -> dict[str, Any]:
    data = [message_batch(b, base_url) for b in batches]
    return {"data": data, "has_more": has_more, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


def page_query(query: Mapping[str, str]) -> tuple[int, str | None, str | None]:
    """``limit``, ``after_id``, ``before_id`` of a list request, checked."""
    raw = query.get("limit")
    try:
        limit = DEFAULT_LIMIT if raw is None else int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid(f"limit: must be an integer from 1 to {MAX_LIMIT}, got {raw!r}")
    after_id, before_id = query.get("after_id") or None, query.get("before_id") or None
    if after_id and before_id:
        raise invalid("give after_id or before_id, not both")
    return limit, after_id, before_id


def parse_create(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The ``(custom_id, params)`` pairs of a create body; ApiError 400 if malformed.

    Only the structure is checked here. What is inside ``params`` is the
    API's business: a request it refuses ends ``errored`` with its error.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object with a `requests` list")
    _no_extra(body, ("requests",), "")
    requests = body.get("requests")
    if not isinstance(requests, list):
        raise invalid("requests: a list of {custom_id, params} objects is required")
    if not requests:
        raise invalid("requests: at least one request is required")
    if len(requests) > MAX_REQUESTS:
        raise invalid(f"requests: at most {MAX_REQUESTS} requests per batch, got {len(requests)}")
    out: list[tuple[str, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for i, request in enumerate(requests):
        if not isinstance(request, dict):
            raise invalid(f"requests.{i}: must be an object with `custom_id` and `params`")
        _no_extra(request, ("custom_id", "params"), f"requests.{i}.")
        custom_id = request.get("custom_id")
        if custom_id is None:
            raise invalid(f"requests.{i}.custom_id: Field required")
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            raise invalid(f"requests.{i}.custom_id: must be 1-64 characters of a-z, A-Z, 0-9, _ and -")
        if custom_id in seen:
            raise invalid(f"requests.{i}.custom_id: {custom_id!r} is already used by requests.{seen[custom_id]}; "
                          "custom_id must be unique within a batch")
        seen[custom_id] = i
        params = request.get("params")
        if not isinstance(params, dict):
            raise invalid(f"requests.{i}.params: must be an object (a Messages API request body)")
        try:
            orjson.dumps(params)  # as the store will keep it: JSON nested deeper than 254 levels cannot be
        except orjson.JSONEncodeError as exc:
            raise invalid(f"requests.{i}.params: cannot be stored as JSON: {exc}") from None
        out.append((custom_id, params))
    return out


def _no_extra(given: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    """Refuse a field the API does not know, as Anthropic's API does, rather than drop it unsaid."""
    for key in given:
        if key not in known:
            raise invalid(f"{where}{key}: Extra inputs are not permitted")
