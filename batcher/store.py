"""Batches in the job store: finding them and counting their jobs.

Knows SQL and nothing of HTTP. The runner's queue operations live in
:mod:`batcher.jobqueue`; a batch's running totals in :mod:`batcher.tally`; the import path in :mod:`batcher.importer`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import SQLAlchemyError

from . import tally
from ._text import as_text, is_text
from .db import open_store, store_errors
from .errors import BatcherError, UsageError, on_command_line
from .schema import batches


@dataclass(frozen=True, slots=True)
class Batch:
    id: int
    name: str
    source: str
    created_at: float


def _batch(row: Any) -> Batch:
    return Batch(row.id, row.name, row.source, row.created_at)


def check_batch_name(name: Any) -> None:
    """Refuse a name that would garble a terminal or a file name (control characters), or a blank one.

    Every path that names a batch passes here: a blank name would otherwise
    quietly become a file's stem, or a batch nobody can name.
    """
    if not isinstance(name, str):
        raise UsageError(f"a batch name must be a non-empty string, not {name!r}")
    _only_utf8(name)
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        where = " with --batch NAME" if on_command_line() else ""  # the name may be the file's, not given
        raise UsageError(f"batch name {name!r} has control characters; choose another{where}")
    if not name.strip():
        raise UsageError(f"a batch name must be a non-empty string, not {name!r}")


def _only_utf8(name: str) -> None:
    """Refuse a batch name that is not valid UTF-8 (bytes such as a Latin-1 ``\\xe9`` from a shell).

    No batch can have one: the store keeps text, and looking it up would
    fail inside the database driver instead of saying what is wrong.
    """
    if not is_text(name):
        raise UsageError(f"batch name '{as_text(name)}' is not valid UTF-8")


def get_or_create_batch(conn: Connection, name: str, source: str) -> tuple[Batch, bool]:
    """The batch called ``name``, created if new (the name checked); the flag says it was."""
    row = conn.execute(select(batches).where(batches.c.name == name)).first()
    if row is not None:
        return _batch(row), False
    check_batch_name(name)
    created = time.time()
    new_id = conn.execute(batches.insert().values(name=name, source=source, created_at=created)).inserted_primary_key[0]
    tally.create(conn, new_id)
    return Batch(new_id, name, source, created), True


def list_batches(engine: Engine) -> list[Batch]:
    with engine.connect() as conn:
        return [_batch(r) for r in conn.execute(select(batches).order_by(batches.c.id))]


def find_batch(engine: Engine, name: str | None) -> Batch:
    """The named batch, or the only one when no name is given."""
    if name is not None:
        _only_utf8(name)
    with engine.connect() as conn:
        if name is not None:
            row = conn.execute(select(batches).where(batches.c.name == name)).first()
            if row is None:
                known = [b.name for b in list_batches(engine)]
                hint = f" (batches here: {', '.join(known[:10])})" if known else " (the database holds no batch yet)"
                raise UsageError(f"no batch named {name!r}{hint}")
            return _batch(row)
        rows = conn.execute(select(batches).order_by(batches.c.id).limit(2)).all()
    if not rows:
        first = "run `batcher import FILE` first" if on_command_line() else "add one first (Store.add)"
        raise UsageError(f"the database holds no batch yet: {first}")
    if len(rows) > 1:
        names = ", ".join(b.name for b in list_batches(engine)[:10])
        raise UsageError(f"the database holds several batches; name one ({names})")
    return _batch(rows[0])


def batch_from_file(db: str | None, path: str) -> str | None:
    """The batch first imported from the job file at ``path``, if the store ``db`` holds one; else None.

    For the message about a job file that is gone (``run prompts.jsonl``
    after the file was moved): its batch can still be run by name. No
    store, or one that cannot be read, is None too: the missing file is
    the error to report.
    """
    try:
        engine = open_store(db, create=False, readonly=True)
    except BatcherError:
        return None
    try:
        with engine.connect() as conn:
            return conn.execute(select(batches.c.name).where(batches.c.source == as_text(os.path.abspath(path)))
                                .order_by(batches.c.id).limit(1)).scalar()
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()


@store_errors
def still_there(engine: Engine, batch: Batch) -> bool:
    """Whether the store still holds this very batch: not deleted, nor replaced by one made since.

    A new batch may be given a deleted one's name, or even its id (SQLite
    hands out the largest id again), so the time it was made is compared too.
    """
    with engine.connect() as conn:
        return conn.execute(select(batches.c.id).where(
            batches.c.id == batch.id, batches.c.name == batch.name, batches.c.created_at == batch.created_at)
        ).first() is not None


def status_counts(conn: Connection, batch_id: int) -> dict[str, int]:
    """Jobs of a batch by status, every status present, from its tally (no scan)."""
    return tally.counts(conn, batch_id)
