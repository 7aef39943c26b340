"""Running a batch for the handles: checking the options, stopping, and the errors a run ends with.

Kept apart from the handles so :class:`batcher.Batch` reads as what a batch
can do; this is how a run is configured and how its end is reported.
"""

from __future__ import annotations

import dataclasses
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
    from .client import DEFAULT_BASE_URL, KEY_VARIABLE, check_api_key, check_base_url

    options = dict(options)
    given = options.pop("api_key")
    # An empty api_key (an unset variable read with a default of "") is refused, not taken
    # for "read POE_API_KEY": that could be another account's key.
    key = check_api_key(given, "api_key") if given is not None else check_api_key(os.environ.get(KEY_VARIABLE, ""))
    base_url = options.pop("base_url") or os.environ.get("POE_BASE_URL") or DEFAULT_BASE_URL
    check_base_url(base_url)
    options.pop("progress")
    _check_numbers(options)
    _check_choices(options)
    renamed = {"timeout": "timeout_s", "grace": "grace_s", "stream_limit": "stream_limit_s"}
    fields = {renamed.get(k, k): v for k, v in options.items()}
    unknown = sorted(set(fields) - _GIVEN_FIELDS)
    if unknown:
        known = ", ".join(sorted({_SHOWN.get(k, k) for k in _GIVEN_FIELDS} | {"api_key", "base_url", "progress"}))
        raise UsageError(f"unknown run option(s): {', '.join(unknown)} (the run options are {known})")
    if signals and threading.current_thread() is not threading.main_thread():
        signals = False  # signal handlers can only be installed by the main thread
    return key, RunConfig(base_url=base_url, handle_signals=signals, **fields)


#: RunConfig's fields a caller may give (by these names; the rest are set here).
_GIVEN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {"base_url", "handle_signals"}
_SHOWN = {"timeout_s": "timeout", "grace_s": "grace", "stream_limit_s": "stream_limit"}


def _check_numbers(options: dict[str, Any]) -> None:
    """The CLI's option types check the same values here, ranges included."""
    from . import options as opt

    types = {"rpm": opt.RPM, "timeout": opt.SECONDS, "grace": opt.SECONDS_OR_ZERO, "concurrency": opt.CONCURRENCY,
             "max_attempts": opt.ATTEMPTS, "stream_limit": opt.SECONDS, "limit": opt.COUNT,
             "max_input_tokens": opt.COUNT, "max_output_tokens": opt.COUNT}
    optional = ("concurrency", "stream_limit", "limit", "max_input_tokens", "max_output_tokens")
    for name, kind in types.items():
        value = options.get(name)
        if value is None and name in optional:
            continue
        # "500" or numpy's int64 is taken as the number it stands for.
        options[name] = opt.checked(name, kind, value)


def _check_choices(options: dict[str, Any]) -> None:
    """``auth`` is one of the two header styles, ``stream`` and ``reuse`` are yes or no."""
    from .options import AUTH_STYLES

    auth = options.get("auth", "x-api-key")
    if not isinstance(auth, str) or auth.lower() not in AUTH_STYLES:
        raise UsageError(f"auth must be one of {', '.join(AUTH_STYLES)}, not {auth!r}")
    options["auth"] = auth.lower()
    for name, optional in (("stream", True), ("reuse", False)):
        if name not in options or (optional and options[name] is None):
            continue
        value = options[name]
        if not (isinstance(value, bool) or type(value).__name__ == "bool_"):  # numpy's bool too
            raise UsageError(f"{name} must be True or False{' (or None)' if optional else ''}, not {value!r}")
        options[name] = bool(value)


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
        error: BatcherError | Interrupted = Interrupted(
            f"batch {summary.batch}: interrupted: {done:,} done, {summary.left:,} left; run the same call again to resume")
    elif summary.exit_code == EXIT_API_STOPPED:
        error = APIStopped(f"run stopped: {summary.message}")
    elif summary.exit_code == EXIT_USAGE:
        error = UsageError(f"run stopped: {summary.message}")
    else:
        error = BatcherError(f"run stopped: {summary.message}", summary.exit_code)
    error.summary = summary
    raise error
