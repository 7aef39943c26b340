"""Running a batch for the handles: checking the options, stopping, and the errors a run ends with.

Kept apart from the handles so :class:`batcher.Batch` reads as what a batch
can do; this is how a run is configured and how its end is reported.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import anyio

from .errors import EXIT_API_STOPPED, EXIT_INTERRUPTED, EXIT_USAGE, APIStopped, BatcherError, Interrupted, \
    UsageError
from .runner import RunConfig, Runner, RunSummary

NO_KEY = "no API key: set POE_API_KEY (export POE_API_KEY=your-key; keys at https://poe.com/api_key)"


class RunControl:
    """How a caller on another thread stops a run: gracefully, then at once."""

    def __init__(self) -> None:
        self.runner: Runner | None = None
        self.scope: anyio.CancelScope | None = None
        self.stop_asked = False

    def attach(self, runner: Runner) -> None:
        self.runner = runner
        if self.stop_asked:
            runner.request_stop()

    def stop(self) -> None:
        """In-flight requests get the grace period; nothing new is sent."""
        self.stop_asked = True
        if self.runner is not None:
            self.runner.request_stop()

    def cancel(self) -> None:
        """Stop now: what is stored stays, answers not yet written are sent again next run."""
        if self.scope is not None:
            self.scope.cancel()
        else:
            self.stop()


def run_config(options: dict[str, Any], signals: bool = False) -> tuple[str, RunConfig]:
    """The key and the RunConfig from :meth:`Batch.run`'s options, checked like the CLI's."""
    from .client import DEFAULT_BASE_URL, check_base_url

    options = dict(options)
    key = (options.pop("api_key") or os.environ.get("POE_API_KEY", "")).strip()
    if not key:
        raise UsageError(NO_KEY)
    base_url = options.pop("base_url") or os.environ.get("POE_BASE_URL") or DEFAULT_BASE_URL
    check_base_url(base_url)
    options.pop("progress")
    _check_numbers(options)
    renamed = {"timeout": "timeout_s", "grace": "grace_s"}
    fields = {renamed.get(k, k): v for k, v in options.items()}
    if signals and threading.current_thread() is not threading.main_thread():
        signals = False  # signal handlers can only be installed by the main thread
    try:
        return key, RunConfig(base_url=base_url, handle_signals=signals, **fields)
    except TypeError as exc:
        raise UsageError(f"unknown run option: {exc}") from None


def _check_numbers(options: dict[str, Any]) -> None:
    checks = (("rpm", 0, False), ("timeout", 0, False), ("grace", 0, True), ("concurrency", 1, True),
              ("max_attempts", 1, True))
    for name, low, inclusive in checks:
        value = options.get(name)
        if value is None and name == "concurrency":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or \
                (value < low if inclusive else value <= low):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise UsageError(f"{name} must be a number {bound}, not {value!r}")


def checked(summary: RunSummary) -> RunSummary:
    """The summary of a run that ended normally; else the error its exit code stands for.

    Failed jobs are not an error (exit code 1): they are results.
    """
    if summary.exit_code in (0, 1):
        return summary
    if summary.exit_code == EXIT_INTERRUPTED:
        done = summary.succeeded + summary.failed
        error: BatcherError = Interrupted(
            f"batch {summary.batch}: interrupted: {done} done, {summary.left} left; run the same call again to resume")
    elif summary.exit_code == EXIT_API_STOPPED:
        error = APIStopped(f"run stopped: {summary.message}")
    elif summary.exit_code == EXIT_USAGE:
        error = UsageError(f"run stopped: {summary.message}")
    else:
        error = BatcherError(f"run stopped: {summary.message}", summary.exit_code)
    error.summary = summary
    raise error
