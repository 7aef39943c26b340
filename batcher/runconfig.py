"""What a run is given and what it reports: its configuration, progress and summary.

Plain values, apart from the runner itself, so the displays and the faces
(CLI, Python API, server) can speak of a run without loading the rooms that
make one (HTTP client, pacer, writer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .budget import Caps
from .client import DEFAULT_BASE_URL, STREAM_LIMIT_S
from .errors import EXIT_API_STOPPED, EXIT_FAILED_JOBS, EXIT_INTERRUPTED, EXIT_LIMIT, EXIT_OK, EXIT_USAGE
from .spend import check_limits

#: Jobs whose max_tokens exceed this are streamed by default: a long
#: non-streamed answer leaves the connection silent for minutes.
STREAM_ABOVE_MAX_TOKENS = 4096


def claim_ahead(rpm: float, workers: int) -> int:
    """Jobs claimed before a worker asks: a tenth of a second of sends, at least 2, at most the workers."""
    return max(1, min(workers, max(2, math.ceil(rpm / 600))))


def default_concurrency(rpm: float) -> int:
    """Enough workers that 60-second answers cannot hold the rate back."""
    return max(4, min(1000, int(rpm)))


@dataclass
class RunConfig:
    """How to run: pace, retries, endpoint. Defaults match Poe's limits."""

    rpm: float = 500.0
    concurrency: int | None = None
    max_attempts: int = 6
    timeout_s: float = 600.0
    stream_limit_s: float = STREAM_LIMIT_S
    base_url: str = DEFAULT_BASE_URL
    auth: str = "x-api-key"
    stream: bool | None = None
    grace_s: float = 10.0
    handle_signals: bool = True
    # Spend control: send only the first ``limit`` pending jobs; keep this
    # run's tokens within the caps (in-flight aware, see batcher.budget);
    # give jobs the stored answer of an identical request (batcher.reuse).
    limit: int | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    reuse: bool = False

    def __post_init__(self) -> None:
        check_limits(self.limit, self.max_input_tokens, self.max_output_tokens)

    @property
    def workers(self) -> int:
        return self.concurrency or default_concurrency(self.rpm)

    @property
    def caps(self) -> Caps:
        return Caps(self.max_input_tokens, self.max_output_tokens)


@dataclass
class RunSummary:
    """How a run ended, for the final lines and the exit code.

    What :meth:`batcher.Batch.run` returns: a run that stops at a limit or
    a cap returns one too (``exit_code`` 5), since that is an expected end.

    >>> import batcher
    >>> with batcher.Store("example.db") as store:
    ...     summary = store.add("summary", ["Say hi."]).run(progress=False)
    >>> summary.outcome, summary.exit_code, summary.succeeded, summary.left
    ('finished', 0, 1, 0)
    """

    batch: str
    outcome: str  # finished, interrupted, stopped
    exit_code: int
    succeeded: int
    failed: int
    left: int
    attempts: int
    rate_limited: int
    elapsed_s: float
    input_tokens: int
    output_tokens: int
    message: str | None = None
    failed_in_batch: int = 0
    #: Jobs of the batch canceled (by ``batcher cancel``, say): not answered, so not a clean finish.
    canceled_in_batch: int = 0
    reused: int = 0


@dataclass
class Snapshot:
    """What the progress display shows."""

    total: int
    done: int
    succeeded: int
    failed: int
    retrying: int
    in_flight: int
    rate_rpm: float
    target_rpm: float
    eta_s: float | None
    input_tokens: int
    output_tokens: int
    paused_s: float
    stopping: bool
    #: --rpm, and why the pace (target_rpm) is lower when it is.
    max_rpm: float | None = None
    pace_reason: str | None = None
    #: While the store takes no write (full, or locked by another process): jobs whose
    #: outcome waits in memory (sending is paused), and the pause as the progress line says it.
    held: int | None = None
    stall: str | None = None


def exit_code_for(outcome: str, failed_in_batch: int, left: int, canceled_in_batch: int = 0) -> int:
    """The documented exit code of a run that ended with ``outcome``."""
    if outcome in ("limit", "budget"):
        return EXIT_LIMIT
    codes = {"stopped": EXIT_API_STOPPED, "misconfigured": EXIT_USAGE, "interrupted": EXIT_INTERRUPTED}
    if outcome in codes:
        return codes[outcome]
    # Not every job succeeded if any failed (in this run or before it) or was canceled.
    return EXIT_FAILED_JOBS if failed_in_batch or canceled_in_batch or left else EXIT_OK
