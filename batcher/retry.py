"""The retry policy: what an attempt's outcome means for its job and the run.

Pure decisions, no I/O: a job succeeds, is retried after a delay, fails for
good, or the whole run must stop because the key cannot be used.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from .apierror import says_out_of_points
from .client import Attempt

BASE_DELAY_S = 0.25
MAX_DELAY_S = 60.0

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
PERMANENT_STATUS = frozenset({400, 404, 413, 422})
FATAL_STATUS = frozenset({401, 402, 403})
#: Error types from a stream's ``error`` event that will not get better.
PERMANENT_TYPES = frozenset({"invalid_request_error", "not_found_error", "request_too_large"})


class Verdict(Enum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FAILED = "failed"
    STOP_RUN = "stop_run"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    delay_s: float = 0.0
    #: Whether the attempt used up one of the job's attempts (429s do not).
    counts: bool = True


def backoff(retry_number: int, harder: bool = False, rng: random.Random | None = None) -> float:
    """Exponential back-off with full jitter: 250 ms doubling, capped at 60 s."""
    exponent = retry_number + (2 if harder else 0)
    ceiling = min(MAX_DELAY_S, BASE_DELAY_S * (2 ** max(exponent, 0)))
    return (rng or random).uniform(0, ceiling)


def server_delay(attempt: Attempt) -> float | None:
    """The wait the server asked for: retry-after, or the reset of a spent window.

    A 429 while the window has room is an upstream refusal: the reset says
    nothing about it, and back-off is the wait.
    """
    rate = attempt.rate
    if rate.retry_after_s is not None:
        return max(0.0, rate.retry_after_s)
    if attempt.status_code == 429 and rate.reset_s is not None and not (rate.remaining or 0) > 0:
        return max(0.0, rate.reset_s)
    return None


def _retryable(attempt: Attempt) -> bool:
    if attempt.status_code is None or attempt.status_code == 200:
        return attempt.error_type not in PERMANENT_TYPES
    if attempt.status_code in RETRYABLE_STATUS:
        return True
    if attempt.status_code in PERMANENT_STATUS:
        return False
    return attempt.status_code >= 500


def decide(attempt: Attempt, attempts_used: int, max_attempts: int) -> Decision:
    """What to do after ``attempt``; ``attempts_used`` counts it already
    unless it was a 429."""
    if attempt.ok:
        return Decision(Verdict.SUCCEEDED)
    status = attempt.status_code
    if status in FATAL_STATUS or (attempt.error is not None and says_out_of_points(attempt.error)):
        return Decision(Verdict.STOP_RUN, counts=False)
    if status == 429:
        delay = server_delay(attempt)
        should = attempt.rate.should_retry
        if should is False:
            return Decision(Verdict.FAILED)
        return Decision(Verdict.RETRY, delay if delay is not None else backoff(attempts_used), counts=False)
    retry = attempt.rate.should_retry if attempt.rate.should_retry is not None else _retryable(attempt)
    if not retry or attempts_used >= max_attempts:
        return Decision(Verdict.FAILED)
    delay = server_delay(attempt)
    if delay is None:
        delay = backoff(attempts_used - 1, harder=status == 529 or attempt.error_type == "overloaded_error")
    return Decision(Verdict.RETRY, min(delay, MAX_DELAY_S * 5))
