"""Errors a user can cause, each carrying the exit code the CLI reports.

Exit codes: 0 ok, 1 finished with failed jobs, 2 usage or configuration
error, 3 run stopped by the API (bad key, no points), 130 interrupted.
"""

EXIT_OK = 0
EXIT_FAILED_JOBS = 1
EXIT_USAGE = 2
EXIT_API_STOPPED = 3
EXIT_STORE = 4
EXIT_INTERRUPTED = 130


class BatcherError(Exception):
    """A failure with a one-line explanation for the user and an exit code."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(BatcherError):
    """Bad option, unknown batch, unreadable file: the user can fix it."""


class StoreError(BatcherError):
    """The database cannot be opened or written (full disk, locked, read-only)."""

    exit_code = EXIT_STORE
