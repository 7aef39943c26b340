"""What an attempt leaves for the writer: its attempt row, and the job's outcome.

The runner decides what an attempt means (success, failure, retry); this
module only says what each of those stores, column by column (and what a
refused key tells the user), so the runner reads as the flow it is and the
stored shape is written down once.
"""

from __future__ import annotations

import time

import orjson

from .client import Attempt
from .jobqueue import AttemptRow, Outcome


#: The error type of a request given up in flight (see :func:`abandoned_row`).
ABANDONED = "abandoned"


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def attempt_row(job_id: int, started: float, attempt: Attempt, counts: bool) -> AttemptRow:
    """The ``attempts`` row of one HTTP attempt (``counts``: against the job's attempt budget)."""
    return AttemptRow(job_id, started, _ms(attempt.latency_s), attempt.status_code, attempt.error_type,
                      attempt.streamed, _ms(attempt.ttft_s), counts)


def abandoned_row(job_id: int, started: float, streamed: bool) -> AttemptRow:
    """The ``attempts`` row of a request given up in flight (a stop's grace ran out, the run ended).

    It may have reached the API, and be paid for: the store counts it among
    the requests sent, with no status and ``error_type`` ``abandoned``. It
    does not count against the job's attempt budget.
    """
    return AttemptRow(job_id, started, _ms(time.time() - started), None, ABANDONED, streamed, None, False)


def succeeded(job_id: int, attempt: Attempt, request_key: str | None) -> Outcome:
    """A success: the answer as stored, what it cost, and how it came."""
    message = attempt.message or {}
    usage = message.get("usage") or {}
    return Outcome(job_id, "succeeded", {
        "response": orjson.dumps(message).decode(),
        "model": message.get("model"),
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "cache_creation_input_tokens": usage.get("cache_creation_input_tokens"),
        "cache_read_input_tokens": usage.get("cache_read_input_tokens"),
        "latency_ms": _ms(attempt.latency_s),
        "streamed": attempt.streamed,
        "ttft_ms": _ms(attempt.ttft_s),
        "error": None,
        "error_type": None,
        "status_code": None,
    }, request_key)


def failed(job_id: int, attempt: Attempt) -> Outcome:
    """A failure: the last error as the API gave it, its type and HTTP status."""
    return Outcome(job_id, "failed", {
        "error": orjson.dumps(attempt.error).decode() if attempt.error else None,
        "error_type": attempt.error_type,
        "status_code": attempt.status_code,
    })


def refusal(attempt: Attempt) -> str:
    """What to tell the user when the API will not take the key."""
    error = (attempt.error or {}).get("error", {})
    why = "is out of points" if attempt.status_code == 402 else "refused the key"
    return f"the API {why} (HTTP {attempt.status_code}, {error.get('type')}): {error.get('message')}"
