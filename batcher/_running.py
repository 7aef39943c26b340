"""Running a batch for the handles: checking the options, stopping, and the errors a run ends with.

Kept apart from the handles so :class:`batcher.Batch` reads as what a batch
can do; this is how a run is configured and how its end is reported.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import anyio

from .errors import (EXIT_API_STOPPED, EXIT_INTERRUPTED, EXIT_LIMIT, EXIT_USAGE, APIStopped, BatcherError,
                     Interrupted, UsageError)
from .runconfig import RunConfig, RunSummary
from .runner import Runner


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
    from .client import DEFAULT_BASE_URL, check_api_key, check_base_url

    options = dict(options)
    key = check_api_key(options.pop("api_key") or os.environ.get("POE_API_KEY", ""))
    base_url = options.pop("base_url") or os.environ.get("POE_BASE_URL") or DEFAULT_BASE_URL
    check_base_url(base_url)
    options.pop("progress")
    _check_numbers(options)
    renamed = {"timeout": "timeout_s", "grace": "grace_s", "stream_limit": "stream_limit_s"}
    fields = {renamed.get(k, k): v for k, v in options.items()}
    if signals and threading.current_thread() is not threading.main_thread():
        signals = False  # signal handlers can only be installed by the main thread
    try:
        return key, RunConfig(base_url=base_url, handle_signals=signals, **fields)
    except TypeError as exc:
        raise UsageError(f"unknown run option: {exc}") from None


def _check_numbers(options: dict[str, Any]) -> None:
    """The CLI's option types check the same values here, ranges included."""
    from . import options as opt

    types = {"rpm": opt.RPM, "timeout": opt.SECONDS, "grace": opt.SECONDS_OR_ZERO, "concurrency": opt.CONCURRENCY,
             "max_attempts": opt.ATTEMPTS, "stream_limit": opt.SECONDS}
    for name, kind in types.items():
        value = options.get(name)
        if value is None and name in ("concurrency", "stream_limit"):
            continue
        if kind.check(value)[1] is not None:
            whole = "a whole number" if kind.integer else "a number"
            raise UsageError(f"{name} must be {whole} in {kind.describe()}, not {value!r}")


def checked(summary: RunSummary) -> RunSummary:
    """The summary of a run that ended normally; else the error its exit code stands for.

    Failed jobs are not an error (exit code 1): they are results. Nor is a
    stop at ``limit`` or a token cap (exit code 5): the caller asked for it;
    ``summary.outcome`` is then "limit" or "budget" and ``summary.message``
    says which.
    """
    if summary.exit_code in (0, 1, EXIT_LIMIT):
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
