"""The user's output as distinct from the store: how writing to it fails.

A full disk under ``> /dev/full``, a closed stdout or a reader that went
away are the output's failures, not the database's: they must not end with
the store's exit code 4. Standard output is wrapped so that a failed write
says it was stdout (:class:`~batcher.errors.OutputError`, exit 2), and a
closed pipe ends the process as other Unix filters end: killed by SIGPIPE,
without a word.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from typing import Any, NoReturn

from .errors import OutputError
from .outfile import write_failure


CLOSED = "stdout is closed (started with >&-?); redirect it to a file"
#: The same for an export, which can write its file itself.
CLOSED_EXPORT = "stdout is closed (started with >&-?); give a file with -o FILE or redirect it"


def stdout_closed() -> bool:
    """Whether the process started with no standard output (``>&-``)."""
    return sys.stdout is None or (isinstance(sys.stdout, GuardedStdout) and sys.stdout.missing)


class GuardedStdout(io.TextIOBase):
    """``sys.stdout`` whose write failures are OutputErrors (a closed pipe stays BrokenPipeError).

    ``inner`` is None when the process started with stdout closed: then any
    write is an OutputError instead of output silently dropped.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    @property
    def missing(self) -> bool:
        """The process started with stdout closed."""
        return self._inner is None

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._inner.encoding if self._inner is not None else "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self._inner.errors if self._inner is not None else "strict"

    @property
    def buffer(self) -> Any:
        if self._inner is None:
            raise OutputError(CLOSED)
        return self._inner.buffer

    def fileno(self) -> int:
        if self._inner is None:
            raise OutputError(CLOSED)
        return self._inner.fileno()

    def isatty(self) -> bool:
        return self._inner is not None and self._inner.isatty()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._inner is None:
            raise OutputError(CLOSED)
        try:
            return self._inner.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise write_failure("stdout", exc) from None

    def flush(self) -> None:
        if self._inner is None:
            return
        try:
            self._inner.flush()
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as exc:
            if isinstance(exc, ValueError):  # flushed after being closed: nothing to lose
                return
            raise write_failure("stdout", exc) from None

    def close(self) -> None:
        """Never closes the real stdout (the interpreter still flushes it at exit)."""


def guard_stdout() -> None:
    """Wrap ``sys.stdout`` (once) so its failures name it."""
    if not isinstance(sys.stdout, GuardedStdout):
        sys.stdout = GuardedStdout(sys.stdout)


def flush_stdout() -> None:
    """Flush now, so a failure is reported instead of lost at interpreter exit."""
    if sys.stdout is not None:
        sys.stdout.flush()


def end_on_closed_pipe() -> NoReturn:
    """End as ``yes | head`` ends: killed by SIGPIPE, no message, nothing left to flush."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
    except OSError:
        pass
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    sys.exit(128 + signal.SIGPIPE)  # only if the signal could not end the process
