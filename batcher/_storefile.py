"""A job store's SQLite file on disk: created private, removed if set-up left it empty, why it cannot be written.

SQLite would create the file with the umask's mode; a store holds prompts
and answers, so it is created here first, readable by its owner only.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import StoreError, UsageError, option


def create_private_file(path: str, create: bool) -> bool:
    """Create an empty SQLite file readable by its owner only, if absent; whether it was created.

    Commands that only read or change existing batches pass ``create=False``:
    a mistyped ``--db`` is then an error, not a new empty store.
    """
    if not create:
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such database (import a job file first, or check {option('db')}/BATCHER_DB)")
        return False
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise UsageError(f"{path}: folder {directory} does not exist")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise StoreError(f"{path}: cannot create database: {exc.strerror}") from None
    os.close(fd)
    return True


def remove_if_unused(path: str) -> None:
    """Remove a store file this process created, if a failed set-up left it empty (a full disk).

    An empty file with no write-ahead log beside it holds nothing: left
    behind, it would pass for a store that exists. One with content, or a
    log, is another process's by now and is kept.
    """
    try:
        if os.path.getsize(path) == 0 and not os.path.exists(path + "-wal"):
            os.unlink(path)
    except OSError:
        pass


#: SQLite's "attempt to write a readonly database" and "unable to open database file" (base codes).
_SQLITE_READONLY, _SQLITE_CANTOPEN = 8, 14


def unwritable(path: str | None, error: Any) -> str:
    """What to add to SQLite's ``error`` when a store cannot be opened for writing: what may not be written.

    SQLite says "attempt to write a readonly database" or "unable to open
    database file" even when the file itself may be written: then it is
    the folder, where the write-ahead log and its index must be made.
    """
    code = getattr(error, "sqlite_errorcode", None)
    if not path or code is None or code & 0xFF not in (_SQLITE_READONLY, _SQLITE_CANTOPEN) or not os.path.exists(path):
        return ""
    folder = os.path.dirname(path) or "."
    if not os.access(path, os.W_OK):
        what = "the file cannot be written"
    elif not os.access(folder, os.W_OK):
        what = f"folder {folder} cannot be written, and a store is written with its -wal and -shm files beside it"
    else:
        return ""
    return f" ({what}; status, batches and export only read it)"
