"""The handle on the job store: :class:`Store`, which hands out :class:`~batcher.Batch` es.

Everything the command line does goes through these: ``batcher import`` is
:meth:`Store.add`, ``batcher run`` is :meth:`Batch.run`, and so on, so a
batch made from Python is the same as one made by the CLI and the other way
round. The handles hold no API key: it is read (or given) for each run and
handed to the runner alone.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from ._batch import Batch
from .db import compact, display_name, open_store
from .errors import Interrupted, UsageError, on_command_line
from .store import check_batch_name, find_batch, list_batches

# The importer loads on first use, so that the reading commands (status,
# batches) start quickly.
if TYPE_CHECKING:
    from .validate import Defaults


#: Defaults of :meth:`Store.add` and :func:`batcher.run` for rows that leave them out.
DEFAULT_MODEL = "claude-haiku-4.5"
DEFAULT_MAX_TOKENS = 512

PathLike = str | os.PathLike[str]


@contextmanager
def _interrupts_said() -> Iterator[None]:
    """A Ctrl-C during an import is :class:`batcher.Interrupted` from Python, as during a run.

    It was a bare KeyboardInterrupt, which ``except batcher.Interrupted``
    (what the README tells a notebook to catch) let through. The command
    line says it its own way.
    """
    try:
        yield
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted) or on_command_line():
            raise
        raise Interrupted("import interrupted (an import is stored whole or not at all): "
                          "run the same call again") from None


class Store:
    """The job store: an SQLite file or a SQLAlchemy URL, opened (and upgraded) once.

    ``db`` defaults to ``$BATCHER_DB``, then ``./batcher.db``, like ``--db``.
    With ``create=False`` a missing SQLite file is an error instead of a new,
    empty store; ``readonly=True`` opens an SQLite store without writing to
    it or its folder (for reading only). Use it as a context manager, or
    call :meth:`close`.

    >>> import batcher
    >>> with batcher.Store("example.db") as store:
    ...     b = store.add("greetings", ["Say hello", {"custom_id": "fr", "prompt": "Dis bonjour"}])
    ...     [x.name for x in store.batches()]
    ['greetings']
    """

    __module__ = "batcher"

    def __init__(self, db: PathLike | None = None, *, create: bool = True, readonly: bool = False) -> None:
        self._engine = open_store(os.fspath(db) if db is not None else None, create=create, readonly=readonly)

    @property
    def engine(self) -> Any:
        """The SQLAlchemy engine, for tools built on the store."""
        return self._engine

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the store's connections now, rather than when the process ends.

        A handle made from it that is used again opens a connection again.
        """
        self._engine.dispose()

    def __repr__(self) -> str:
        return f"<batcher.Store {display_name(self._engine.url.render_as_string(hide_password=False))!r}>"

    def add(self, name: str | None, rows: Iterable[Any] | PathLike, *, model: str | None = DEFAULT_MODEL,
            max_tokens: int | None = DEFAULT_MAX_TOKENS, system: str | None = None,
            skip_invalid: bool = False, progress: bool | None = None) -> Batch:
        """Import rows (or a JSONL job file) into the batch ``name``; return its handle.

        ``rows`` is an iterable of ``str`` (a prompt) or ``dict`` (either
        job-file line format: ``{"custom_id", "params": {...}}`` or the
        shorthand with ``prompt``/``messages``), a pandas DataFrame (its
        records) or Series, or the path of a job file. ``model``,
        ``max_tokens`` and ``system`` fill in what rows leave out.

        Like ``batcher import``: idempotent (unchanged rows are left alone,
        new ones added), and all or nothing: one invalid row raises
        :class:`batcher.InvalidRows` naming every bad row, and nothing is
        stored, unless ``skip_invalid`` (which still raises when no row is
        valid: an empty batch is no one's intent; the rows it skipped are
        ``report.errors``, as ``(index, reason)`` like :attr:`InvalidRows.errors
        <batcher.InvalidRows>`: rows count from 0). Rows are streamed, so memory stays
        flat. With ``name=None`` a file's batch is named after the file, and
        rows' batch after a hash of the rows and these options (the rows are
        then read twice, so an iterator is first turned into a list; no rows
        at all are refused, as a batch named after nothing is no one's). Rows
        given again exactly as the batch's last import stored them (a call
        made again to resume) are known by that hash and not imported again,
        as an unchanged file is not read again (``report.unread``).
        The returned handle's :attr:`Batch.report` says what was done; a
        Ctrl-C raises :class:`batcher.Interrupted`, as during a run.
        An import that takes more than a second shows how far it has read:
        with ``progress=None`` on a terminal only, with True also elsewhere (a
        line every 10 s), with False never; a notebook shows only the run's.

        >>> import batcher
        >>> with batcher.Store("example.db") as store:
        ...     b = store.add(None, ["What is 2 + 2?"], max_tokens=64)
        ...     b.name, b.report.added
        ('rows-...', 1)
        """
        from ._progress import counting
        from ._rows import (InvalidRows, defaults_of, name_and_fingerprint, positions, prepared_rows, records,
                            refuse_a_prompt_for_a_path, rows_report)
        from .importer import ImportRejected, import_chunks
        from .jobfile import ROWS_SOURCE

        if name is not None:
            check_batch_name(name)
        defaults = defaults_of(model, max_tokens, system)
        if isinstance(rows, str):
            refuse_a_prompt_for_a_path(rows)
        if isinstance(rows, (str, os.PathLike)):
            return self._add_file(name, os.fspath(rows), defaults, skip_invalid, progress)
        given = records(rows)
        if name is None and not isinstance(given, Sequence):
            given = list(given)
        if name is None and not given:
            raise UsageError("no rows given: a batch named after its rows needs some (name it to make an empty one)")
        fingerprint = None
        if isinstance(given, Sequence):  # read twice: to know them again, then to import them
            derived, fingerprint = name_and_fingerprint(given, defaults)
            name = name or derived
        assert name is not None
        try:
            with _interrupts_said(), counting(progress, "reading rows") as display:
                report = import_chunks(self._engine, rows_report(name), ROWS_SOURCE,
                                       prepared_rows(given, defaults, progress=display), skip_invalid,
                                       defaults=defaults, fingerprint=fingerprint)
        except ImportRejected as exc:
            raise InvalidRows(exc.report, from_rows=True) from None
        report.errors = positions(report.errors, from_rows=True)  # type: ignore[assignment]
        return Batch(self._engine, find_batch(self._engine, name), report)

    def _add_file(self, name: str | None, path: str, defaults: Defaults, skip_invalid: bool,
                  progress: bool | None) -> Batch:
        from ._progress import counting
        from ._rows import InvalidRows
        from .importer import ImportRejected, import_file
        from .jobfile import describe, ensure_readable

        ensure_readable(path)
        try:
            with _interrupts_said(), counting(progress, f"reading {describe(path)}") as display:
                report = import_file(self._engine, path, name, defaults, skip_invalid, display)
        except ImportRejected as exc:
            raise InvalidRows(exc.report, from_rows=False) from None
        return Batch(self._engine, find_batch(self._engine, report.batch), report)

    def batch(self, name: str | None = None) -> Batch:
        """The batch called ``name``; with no name, the store's only batch.

        Raises :class:`batcher.UsageError` naming the batches there are when
        there is no such batch.

        >>> import batcher
        >>> with batcher.Store("example.db") as store:
        ...     _ = store.add("greetings", ["Say hello", {"custom_id": "fr", "prompt": "Dis bonjour"}])
        ...     store.batch("greetings").status()["total"]
        2
        """
        return Batch(self._engine, find_batch(self._engine, name))

    def compact(self) -> int:
        """Shrink an SQLite store's file to what it holds; return the bytes given back to the disk.

        A deleted batch (:meth:`Batch.delete`) leaves its room in the file,
        for later imports to reuse; this rewrites the file without it (like
        ``batcher delete --compact``). It needs free disk space about the
        store's size, and other processes wait for it. A store in another
        database is refused with :class:`batcher.UsageError`: use its own tools.

        >>> import batcher
        >>> with batcher.Store("example.db") as store:
        ...     _ = store.add("scratch", ["Try this."] * 1000).delete()
        ...     store.compact() > 0
        True
        """
        return compact(self._engine)

    def batches(self) -> list[Batch]:
        """Every batch in the store, oldest first (what ``batcher batches`` lists)."""
        return [Batch(self._engine, record) for record in list_batches(self._engine)]
