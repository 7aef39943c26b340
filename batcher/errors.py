"""Errors a user can cause, each carrying the exit code the CLI reports.

Exit codes: 0 ok, 1 finished with failed jobs, 2 usage or configuration
error, 3 run stopped by the API (bad key, no points), 4 job store unusable,
5 run stopped at its --limit or a token cap (the jobs not sent are not
failed; run again to go on), 130 interrupted. Finished-with-failures (1)
is not an error: the failed jobs are results like any other.
"""

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

EXIT_OK = 0
EXIT_FAILED_JOBS = 1
EXIT_USAGE = 2
EXIT_API_STOPPED = 3
EXIT_STORE = 4
EXIT_LIMIT = 5
EXIT_INTERRUPTED = 130


class BatcherError(Exception):
    """A failure with a one-line explanation for the user and an exit code.

    Every error batcher raises on purpose is one of these; the subclass says
    which exit code the command line reports for it. ``summary`` holds the
    run's summary when a run ended with this error (else None).

    >>> import batcher
    >>> with batcher.Store("example.db") as store:
    ...     try:
    ...         store.batch("no-such-batch")
    ...     except batcher.BatcherError as exc:
    ...         print(exc.exit_code, exc)
    2 no batch named 'no-such-batch' ...
    """

    __module__ = "batcher"

    exit_code = EXIT_USAGE
    summary: Any = None

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickling calls ``type(exc)(*exc.args)`` by default, which fails for a
        # subclass whose __init__ takes other arguments (InvalidRows takes a
        # report): the error then cannot leave a process pool's worker. It is
        # rebuilt from its message and attributes instead, __init__ not called.
        return _rebuilt, (type(self), self.args), self.__dict__


def _rebuilt(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """An unpickled error: its class, its message, and (set after) its attributes."""
    return cls.__new__(cls, *args)


class UsageError(BatcherError):
    """Bad option, unknown batch, unreadable file: the user can fix it."""

    __module__ = "batcher"


class StoreError(BatcherError):
    """The database cannot be opened or written (full disk, locked, read-only)."""

    __module__ = "batcher"

    exit_code = EXIT_STORE


class StoreStalled(StoreError):
    """The store takes no write for now, and will again once room is made or another writer is done.

    Unlike a read-only or broken store it mends without the run doing
    anything, so a run holds its answers and waits rather than end (see
    :func:`batcher.writer.run_writer`); any other command ends with it.
    Catch :class:`StoreError` for every failure of the store.
    """

    #: What the store is, how long the run waits, and what ends the wait: for the run's messages.
    kind, until, again = "stalled", "until it takes writes again", "takes writes again"

    def pause_note(self, held: int) -> str:
        """The run's progress line while it waits, with ``held`` outcomes in memory.

        >>> StoreFull("x").pause_note(7)
        'store full: paused, 7 outcome(s) held until there is room'
        """
        return f"store {self.kind}: paused, {held:,} outcome(s) held {self.until}"


class StoreFull(StoreStalled):
    """The store's disk (or its size cap) is full: nothing more fits until room is made."""

    kind, until, again = "full", "until there is room", "has room again"


class StoreBusy(StoreStalled):
    """Another process has held the store's write lock longer than batcher waits for it.

    SQLite lets one process write at a time; a large import, cancel or retry
    into the same store holds the lock from its start to its commit, all
    or nothing: a million lines hold it for about 20 s here.
    """

    kind, until, again = "locked", "until it is free", "is free again"


class APIStopped(BatcherError):
    """The API refused to go on (key refused, no points left): the jobs not answered are not marked failed."""

    __module__ = "batcher"

    exit_code = EXIT_API_STOPPED


class Interrupted(KeyboardInterrupt):
    """The run was interrupted (Ctrl-C, SIGTERM, a notebook's stop button).

    Answers already received are stored; running the same call again resumes.
    A :class:`KeyboardInterrupt` and not a :class:`BatcherError`: like any
    Ctrl-C it passes through ``except Exception``, so a loop that logs and
    goes on after an error still stops when asked to. It carries
    ``exit_code`` and ``summary`` as the errors do.

    >>> import batcher
    >>> issubclass(batcher.Interrupted, KeyboardInterrupt), issubclass(batcher.Interrupted, Exception)
    (True, False)
    """

    __module__ = "batcher"

    exit_code = EXIT_INTERRUPTED
    summary: Any = None


class OutputError(UsageError):
    """The user's output (stdout, an ``-o`` file) cannot be written: not the store's fault."""


def first_user_error(group: BaseExceptionGroup) -> BaseException:
    """The error worth one line (a store failure, say) out of a task group's, else the group."""
    for exc in group.exceptions:
        found = first_user_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if isinstance(found, BatcherError):
            return found
    return group


#: Whether this call came from the command line (see :func:`option`).
_COMMAND_LINE: ContextVar[bool] = ContextVar("batcher_command_line", default=False)


def option(name: str, *, switch: bool = False) -> str:
    """An option named as its caller spelled it: ``--max-output-tokens`` in a shell, ``max_output_tokens`` in Python.

    The rooms that refuse or stop something name the option to change, and
    the same message reaches a terminal and a notebook: each sees its own
    spelling. ``switch`` marks an on/off option (``--force``, ``force=True``).
    """
    if on_command_line():
        return "--" + name.replace("_", "-")
    return f"{name}=True" if switch else name


def place(line: int) -> str:
    """A job's place as its caller counts: ``line 3`` of a file in a shell, ``row 2`` of the rows in Python.

    ``line`` is the job's line number (from 1) in what its import read.
    Python counts rows from 0, as :attr:`batcher.Result.index` and
    :attr:`batcher.InvalidRows.errors` do, so a message naming ``line 14``
    would send a notebook's user to the wrong row.
    """
    return f"line {line}" if on_command_line() else f"row {line - 1}"


def on_command_line() -> bool:
    """The call came from the ``batcher`` command (for advice only a shell can take)."""
    return _COMMAND_LINE.get()


@contextmanager
def command_line_words() -> Iterator[None]:
    """Messages inside speak to the command line (the CLI's commands run in it)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)
