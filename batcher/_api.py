"""The one-call functions: rows in, results out, through the same handles as everything else.

``batcher.run(rows, ...)`` *is* ``Store(db).add(batch, rows, ...).run(...)``
followed by the batch's results: no second code path.
"""

from __future__ import annotations

import itertools
import os
import warnings
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import anyio

from ._batch import Batch, check_run
from ._handles import DEFAULT_MAX_TOKENS, DEFAULT_MODEL, Store
from ._results import Result
from .estimator import Estimate

if TYPE_CHECKING:
    from .runconfig import RunSummary


def _add(store: Store, batch: str | None, rows: Iterable[Any] | str | os.PathLike[str], model: str | None,
         max_tokens: int | None, system: str | None, progress: bool | None) -> Batch:
    handle = store.add(batch, rows, model=model, max_tokens=max_tokens, system=system, progress=progress)
    for warning in handle.report.warnings if handle.report else ():
        warnings.warn(f"batcher: {warning}", stacklevel=4)
    return handle


def run(rows: Iterable[Any] | str | os.PathLike[str], *, model: str | None = DEFAULT_MODEL,
        max_tokens: int | None = DEFAULT_MAX_TOKENS, system: str | None = None, batch: str | None = None,
        db: str | os.PathLike[str] | None = None, rpm: float = 500, concurrency: int | None = None,
        max_attempts: int = 6, stream: bool | None = None, api_key: str | None = None,
        base_url: str | None = None, progress: bool | None = None, **options: Any) -> list[Result]:
    """Send rows through Claude; return one :class:`batcher.Result` per row, in input order.

    ``rows`` are strings (prompts) or dicts in either job-file line format, a
    pandas DataFrame or Series, or a job file's path; ``model``,
    ``max_tokens`` and ``system`` fill in what rows leave out. The rows are
    stored in the job store ``db`` (``$BATCHER_DB``, then ``./batcher.db``)
    as the batch ``batch``; when None, its name is derived from the rows and
    those three options, so the same call finds the same batch: re-running
    it after a crash or a Ctrl-C resumes, and answered rows are never sent
    again. Run options are :meth:`batcher.Batch.run`'s. No rows at all
    return ``[]``: no batch is made, nothing stored.

    Raises :class:`batcher.InvalidRows` (nothing stored) if any row is
    invalid, :class:`batcher.APIStopped` if the API refuses the key,
    :class:`batcher.Interrupted` on Ctrl-C. Failed jobs are results with
    ``status == "failed"``. A run stopped by ``limit`` or a token cap warns
    which; the rows it did not send are ``pending`` results. The results are
    those of these rows, even when ``batch`` holds others: for millions of
    rows, use :meth:`batcher.Batch.results` to read them lazily.

    >>> import batcher
    >>> results = batcher.run(["Name a colour.", "Name a fruit."], max_tokens=64, progress=False)
    >>> [(r.custom_id, r.status) for r in results]
    [('line-1', 'succeeded'), ('line-2', 'succeeded')]
    """
    rows = _rows_to_send(rows, model, max_tokens, system, rpm=rpm, concurrency=concurrency, max_attempts=max_attempts,
                         stream=stream, api_key=api_key, base_url=base_url, **options)
    if rows is None:
        return []
    with Store(db) as store:
        handle = _add(store, batch, rows, model, max_tokens, system, progress)
        _say_why_stopped(handle.run(rpm=rpm, concurrency=concurrency, max_attempts=max_attempts, stream=stream,
                                    api_key=api_key, base_url=base_url, progress=progress, **options))
        return list(handle._added_results())


def _rows_to_send(rows: Any, model: Any, max_tokens: Any, system: Any, **run_options: Any) -> Any:
    """The rows to send, or None when there are none (nothing to store: no batch is made for them).

    Rows that are none (a dict, a prompt alone) or a bad option are one
    UsageError saying so, before the store is opened or a row read. An
    iterator's first row is read to know it is not empty, and put back.
    """
    from ._rows import defaults_of, records, refuse_a_prompt_for_a_path

    if isinstance(rows, str):
        refuse_a_prompt_for_a_path(rows)
    given = rows if isinstance(rows, (str, os.PathLike)) else records(rows)
    defaults_of(model, max_tokens, system)
    check_run(**run_options)
    if isinstance(given, (str, os.PathLike)):
        return rows
    if isinstance(given, Sequence):
        return rows if given else None
    iterator = iter(given)
    first = next(iterator, _NONE)
    return None if first is _NONE else itertools.chain([first], iterator)


#: No row at all (None may be a row, though a bad one).
_NONE = object()


def _say_why_stopped(summary: RunSummary) -> None:
    """A run stopped by ``limit`` or a token cap returns results, some pending: a warning says why."""
    if summary.outcome in ("limit", "budget"):
        warnings.warn(f"batcher: {summary.message}; {summary.left:,} job(s) not sent, their results are pending "
                      "(call again to go on)", stacklevel=3)


async def arun(rows: Iterable[Any] | str | os.PathLike[str], *, model: str | None = DEFAULT_MODEL,
               max_tokens: int | None = DEFAULT_MAX_TOKENS, system: str | None = None, batch: str | None = None,
               db: str | os.PathLike[str] | None = None, rpm: float = 500, concurrency: int | None = None,
               max_attempts: int = 6, stream: bool | None = None, api_key: str | None = None,
               base_url: str | None = None, progress: bool | None = None, signals: bool = False,
               **options: Any) -> list[Result]:
    """:func:`batcher.run` for async code; the store's work runs on worker threads.

    Cancelling the calling task stops the run at once; stored answers stay.
    ``signals=True`` lets the run catch SIGINT/SIGTERM itself for a graceful
    stop (in-flight answers kept, :class:`batcher.Interrupted` raised), as
    :meth:`batcher.Batch.arun` does (main thread only).

    >>> import anyio, batcher
    >>> async def main():
    ...     return await batcher.arun(["Name a colour."], max_tokens=64, progress=False)
    >>> [r.status for r in anyio.run(main)]
    ['succeeded']
    """
    rows = _rows_to_send(rows, model, max_tokens, system, rpm=rpm, concurrency=concurrency, max_attempts=max_attempts,
                         stream=stream, api_key=api_key, base_url=base_url, **options)
    if rows is None:
        return []
    store = await anyio.to_thread.run_sync(Store, db)
    try:
        handle = await anyio.to_thread.run_sync(lambda: _add(store, batch, rows, model, max_tokens, system, progress))
        _say_why_stopped(await handle.arun(rpm=rpm, concurrency=concurrency, max_attempts=max_attempts,
                                           stream=stream, api_key=api_key, base_url=base_url, progress=progress,
                                           signals=signals, **options))
        return await anyio.to_thread.run_sync(lambda: list(handle._added_results()))
    finally:
        store.close()


def estimate(rows: Iterable[Any] | str | os.PathLike[str], *, model: str | None = DEFAULT_MODEL,
             max_tokens: int | None = DEFAULT_MAX_TOKENS, system: str | None = None,
             db: str | os.PathLike[str] | None = None, rpm: float = 500) -> Estimate:
    """What sending ``rows`` takes, sending and storing nothing.

    ``rows`` are what :func:`batcher.run` takes (prompts, job-line dicts, a
    DataFrame, a job file's path), validated the same way and counted in
    full: answers already in a store are not looked up. A string that is
    not a file names a batch in ``db``, whose unfinished jobs are counted
    (what a run of it would still send).
    The :class:`batcher.Estimate` has ``jobs``, ``input_tokens_estimate``
    (a local estimate: UTF-8 bytes of the text / 3.5), ``max_output_tokens``
    (the sum of ``max_tokens``), ``minutes(requests)`` at ``rpm``, ``by_model``
    and ``to_dict()`` (the ``batcher estimate --json`` object). Raises
    :class:`batcher.InvalidRows` if any row is invalid.

    >>> import batcher
    >>> e = batcher.estimate(["Name a colour.", "Name a fruit."], max_tokens=64)
    >>> e.jobs, e.max_output_tokens
    (2, 128)
    """
    from . import options as opt
    from ._rows import PROMPT_HINT, InvalidRows, defaults_of, records
    from .errors import UsageError
    from .estimator import estimate as estimate_source
    from .estimator import estimate_rows
    from .importer import ImportRejected

    rpm = opt.checked("rpm", opt.RPM, rpm)
    defaults = defaults_of(model, max_tokens, system)
    try:
        if isinstance(rows, (str, os.PathLike)):
            return estimate_source(os.fspath(rows), None if db is None else os.fspath(db), defaults, rpm)
        return estimate_rows(records(rows), defaults, rpm)
    except ImportRejected as exc:
        raise InvalidRows(exc.report, from_rows=not isinstance(rows, (str, os.PathLike))) from None
    except UsageError as exc:
        if not isinstance(rows, str) or os.path.exists(rows):
            raise
        # Neither a file nor a batch: most likely a prompt given alone.
        raise UsageError(f"{exc}; {PROMPT_HINT}") from None
