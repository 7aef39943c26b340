"""What a batch's earlier imports say to a new one.

Whether the input is as the last import read it (then it is not read
again, or only what follows), whether it is the file the batch was made
from, and, when every line is refused, with which options the batch was
imported from it before: the likely cause.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, select

from .errors import UsageError, on_command_line, option
from .jobfile import ROWS_SOURCE, Head
from .prepare import FileChunks
from .schema import imports
from .store import Batch


def last_reading(conn: Connection, batch_id: int, source: str, fingerprint: str, file: FileChunks | None,
                  defaults: str) -> Any:
    """The batch's last import, if it read this input with these defaults and no bad line, and the input still
    is (the same ``fingerprint``) or starts with (a ``file``'s same first bytes) what it read; else None.

    Then reading that again would find every job unchanged: it is not read,
    and that import's jobs stand under its id (no later import has moved
    them to another). An import that had bad lines is not taken: they are
    reported again, as an import always reports them.
    """
    last = conn.execute(select(imports).where(imports.c.batch_id == batch_id)
                        .order_by(imports.c.id.desc()).limit(1)).first()
    if last is None or (last.source, last.defaults, last.rejected) != (source, defaults, 0):
        return None
    if last.fingerprint == fingerprint:
        return last
    if file is None or last.read_bytes is None:  # only a hashed file reading keeps how far it read
        return None
    return last if file.skip(Head(last.read_bytes, last.read_lines, last.digest)) else None


def options_hint(conn: Connection, stored: Batch, source: str, given: str, this_import: int) -> str | None:
    """The options the batch's last import of ``source`` before this one had, if not those ``given``: say them.

    Run again without its ``--model``, or with another ``--max-tokens``,
    every line fails (no model, a changed request), and they do not say why.
    """
    earlier = (imports.c.batch_id == stored.id, imports.c.source == source, imports.c.id != this_import)
    before = conn.scalar(select(imports.c.defaults).where(*earlier).order_by(imports.c.id.desc()).limit(1))
    if before is None or before == given:
        return None
    values = dict(zip(("model", "max_tokens", "system"), orjson.loads(before)))
    given_then = [(k, v) for k, v in values.items() if v is not None]
    spelled = (" ".join(f"{option(k)} {v if k != 'system' else repr(v)}" for k, v in given_then) if on_command_line()
               else ", ".join(f"{k}={v!r}" for k, v in given_then))
    had = f"with {spelled}" if spelled else "with no options"
    resume = f", or send what it holds with: batcher run {stored.name}" if on_command_line() else ""
    what = "given its earlier rows" if source == ROWS_SOURCE else "imported from this file"
    return f"batch {stored.name!r} was {what} {had}: give those options again{resume}"


def check_same_source(conn: Connection, stored: Batch, file: str, source: str) -> None:
    """Refuse to add ``source`` to a batch made from other files, unless named (``--batch``)."""
    known = set(conn.scalars(select(imports.c.source).where(imports.c.batch_id == stored.id))) | {stored.source}
    if source not in known:
        raise UsageError(f"{file}: batch {stored.name!r} already holds jobs from {stored.source}; "
                         f"add this file to it with --batch {stored.name}, or name a new batch with --batch NAME")
