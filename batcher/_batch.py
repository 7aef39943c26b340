"""The handle on one batch of a store: run it, watch it, read and export its results.

Everything ``batcher run``, ``status``, ``export``, ``retry``, ``cancel`` and
``delete`` do goes through :class:`Batch`; a :class:`~batcher.Store` hands them out.
Like the store's handle, it holds no API key: a run reads (or is given) one
and hands it to the runner alone.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import sys
import warnings
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .errors import Interrupted, UsageError
from .store import Batch as BatchRecord
from .store import still_there

# Rooms a call needs load on first use, so that the reading commands
# (status, batches) start quickly: the export for results, anyio and the
# runner, HTTP client and display when a run starts.
if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ._results import Result
    from ._running import RunControl
    from .estimator import Estimate
    from .export import Destination
    from .importer import ImportReport
    from .runconfig import RunSummary


class Batch:
    """A batch of jobs in a :class:`Store`: run it, watch it, read and export its results.

    Get one from :meth:`Store.add` or :meth:`Store.batch`. Every method reads
    or changes the store directly, so a handle never goes stale, and the
    CLI's commands (``status``, ``export``, ``retry``, ``cancel``, ``run``)
    see the same batch. Once the batch is deleted (here or elsewhere), every
    method raises :class:`batcher.UsageError`, even if a new batch took its name.

    >>> import batcher
    >>> with batcher.Store("example.db") as store:
    ...     b = store.add("greetings", ["Say hello", {"custom_id": "fr", "prompt": "Dis bonjour"}])
    ...     summary = b.run(progress=False)          # sends what is pending
    ...     [(r.custom_id, r.status) for r in b.results()]
    [('line-1', 'succeeded'), ('fr', 'succeeded')]
    """

    __module__ = "batcher"

    def __init__(self, engine: Engine, record: BatchRecord, report: ImportReport | None = None) -> None:
        # The store's engine, not the store: a batch reads and writes through
        # it alone, and the store's handle stays the one that makes batches.
        self._engine, self._stored, self._deleted = engine, record, False
        #: What the :meth:`Store.add` that returned this handle imported (None otherwise).
        self.report = report

    @property
    def _record(self) -> BatchRecord:
        """The batch's row, once the store is seen to hold it still (else every use says so, not only this one).

        Each read asks the store: a method reads it once.
        """
        if not self._deleted and not still_there(self._engine, self._stored):
            self._deleted = True  # elsewhere: by another handle, or another process
        if self._deleted:
            raise UsageError(f"batch {self.name!r} was deleted: this handle can no longer be used")
        return self._stored

    @property
    def name(self) -> str:
        """The batch's name (unique in its store)."""
        return self._stored.name

    @property
    def source(self) -> str:
        """Where its jobs came from: the job file's path, or ``<python rows>``."""
        return self._stored.source

    @property
    def created_at(self) -> float:
        """When the batch was created (Unix seconds)."""
        return self._stored.created_at

    def __repr__(self) -> str:
        return f"<batcher.Batch {self.name!r}>"

    # --- reading ---------------------------------------------------------------
    def status(self, detail: bool = True) -> dict[str, Any]:
        """The batch's state: the fields of ``batcher status --json``.

        Counts per status (``total``, ``pending``, ``running``, ``succeeded``,
        ``failed``, ``canceled``), tokens, failures by kind, pace and the live
        run. ``detail=False`` stops after the counts and token totals.

        >>> import batcher
        >>> with batcher.Store("example.db") as store:
        ...     s = store.add("tomorrow", ["Not today."]).status()
        >>> s["total"], s["pending"]
        (1, 1)
        """
        from .status import batch_status

        return batch_status(self._engine, self._record, detail=detail)

    def verify(self) -> list[str]:
        """Recount the batch from its rows; say where the kept totals differ (empty: they agree).

        What ``batcher status --verify`` does: reads every row, seconds for a
        million jobs; :meth:`status` never needs it.

        >>> import batcher
        >>> with batcher.Store("example.db") as store:
        ...     store.add("tomorrow", ["Not today."]).verify()
        []
        """
        from .status import verify

        return verify(self._engine, self._record)

    def estimate(self, rpm: float = 500) -> Estimate:
        """What sending its unfinished jobs would take: a :class:`batcher.Estimate` (like ``batcher estimate``).

        >>> import batcher
        >>> with batcher.Store("example.db") as store:
        ...     e = store.add("later-still", ["Not yet."], max_tokens=64).estimate()
        >>> e.jobs, e.max_output_tokens
        (1, 64)
        """
        from . import options as opt
        from .estimator import estimate_batch

        return estimate_batch(self._engine, self._record, opt.checked("rpm", opt.RPM, rpm))

    def results(self, only: str | Iterable[str] | None = "all") -> Iterator[Result]:
        """Its jobs' :class:`batcher.Result` s, lazily, in input order.

        ``only`` is ``"all"`` (every job, pending ones too, so results line up
        with the input) or a status (``succeeded``, ``failed``, ``canceled``,
        ``pending``) or several. Memory stays flat: this is the way through
        millions of rows.

        >>> import batcher
        >>> with batcher.Store("example.db") as store:
        ...     b = store.add("colours", ["Name a colour.", "Name another colour."])
        ...     _ = b.run(progress=False)
        ...     texts = [r.text for r in b.results(only="succeeded")]
        >>> len(texts)
        2
        """
        from ._results import iter_results

        return iter_results(self._engine, self._record, only)

    def _added_results(self) -> Iterator[Result]:
        """The results of the rows the :meth:`Store.add` that made this handle was given, in their order.

        A batch may hold rows of earlier calls too; this is one result per row of that call.
        """
        from ._results import iter_results

        import_id = self.report.import_id if self.report is not None else None
        return iter_results(self._engine, self._record, "all", import_id=import_id)

    def export(self, path: Destination | None = None, format: str = "results", only: str | Iterable[str] = "all",
               include_pending: bool = False, *, force: bool = False, notes: Any = None,
               progress: bool | None = None) -> int:
        """Write the results as JSONL, like ``batcher export``; return the lines written.

        ``format`` is ``results`` (Anthropic's Message Batches result lines),
        ``text`` or ``merged``; ``only`` is ``all`` (every finished job) or,
        as for :meth:`results`, a status or several (``pending`` ones are
        written as pending lines, as ``include_pending`` adds them).
        ``path`` is a file's name or path object (default:
        ``NAME.FORMAT.jsonl`` here), ``"-"`` for stdout, or an open stream:
        binary, or text (``io.StringIO``, a notebook's stdout), which is
        given text. A file is written whole or not at all; a FIFO, device or
        stream is written into. Writing over the batch's own job file needs ``force``.
        ``notes`` (a :class:`batcher.export.ExportNotes`) collects warnings;
        without it they are issued as Python warnings (input keys the
        ``merged`` format replaced). An export that takes more than a second
        shows how far it is as :meth:`Store.add <batcher.Store.add>` does
        (``progress``), except while it writes to a terminal.

        >>> import batcher
        >>> with batcher.Store("example.db") as store:
        ...     b = store.add("colours", ["Name a colour.", "Name another colour."])
        ...     _ = b.run(progress=False)
        ...     b.export("colours.jsonl", format="text")
        2
        """
        from ._progress import counting
        from .export import ExportNotes, default_output, described, destination, export_batch

        kept = ExportNotes() if notes is None else notes
        record = self._record
        out = default_output(record, format) if path is None or path == "" else destination(path)
        onto_terminal = out == "-" and sys.stdout is not None and sys.stdout.isatty()
        with counting(False if onto_terminal else progress, f"writing {described(out)}") as display:
            written = export_batch(self._engine, record, out, format, only, include_pending, force=force,
                                   notes=kept, progress=display)
        if notes is None:
            for warning in kept.warnings():
                warnings.warn(f"batcher: {warning}", stacklevel=2)
        return written

    # --- changing what a run sends --------------------------------------------------
    def retry(self, error_type: str | Iterable[str] | None = None, status_code: int | Iterable[int] | None = None,
              canceled: bool = False) -> int:
        """Put failed jobs (those matching, if given) back to pending; return how many.

        Like ``batcher retry``: ``error_type`` and ``status_code`` narrow the
        failures chosen; ``canceled=True`` brings back cancelled jobs instead.
        The next :meth:`run` sends them.

        >>> import batcher
        >>> with batcher.Store("example.db") as store:
        ...     store.add("greetings", ["Say hello"]).retry(error_type="overloaded_error", status_code=529)
        0
        """
        from . import options as opt
        from .apibatches import refuse_reopen
        from .manage import retry

        types = _several("error_type", error_type, str, "an error type (a string)")
        given_codes = _several("status_code", status_code, (str, numbers.Integral), "an HTTP status code")
        codes = tuple(opt.checked("status_code", opt.HTTP_STATUS, code) for code in given_codes)
        record = self._record
        refuse_reopen(self._engine, record)
        return retry(self._engine, record, types, codes, canceled)

    def failure_kinds(self) -> dict[str, int]:
        """Failed jobs by error type, most frequent first: the values ``retry(error_type=...)`` can match."""
        from .manage import failure_kinds

        return failure_kinds(self._engine, self._record)

    def cancel(self) -> int:
        """Mark pending jobs canceled so no run sends them; return how many (like ``batcher cancel``).

        >>> import batcher
        >>> with batcher.Store("example.db") as store:
        ...     b = store.add("later", ["Not now.", "Nor now."])
        ...     b.cancel(), b.retry(canceled=True)
        (2, 2)
        """
        from .manage import cancel

        return cancel(self._engine, self._record)

    def delete(self) -> int:
        """Delete the batch from its store, with every job, answer and attempt; return how many jobs it had.

        What ``batcher delete`` does. Answers paid for go with it, so export
        them first. Refused (:class:`batcher.BatchBusy`) while a run sends its
        jobs. Deleted rows leave room in the store's file that later imports
        reuse; :meth:`Store.compact` gives it back to the disk. The handle
        is spent: any use of it after raises :class:`batcher.UsageError`.

        >>> import batcher
        >>> with batcher.Store("example.db") as store:
        ...     store.add("scratch", ["Try this.", "And this."]).delete()
        2
        """
        from .manage import delete_batch

        n = delete_batch(self._engine, self._record)
        self._deleted = True
        return n

    # --- running ------------------------------------------------------------------------
    def run(self, *, rpm: float = 500, concurrency: int | None = None, max_attempts: int = 6,
            timeout: float = 600, stream: bool | None = None, api_key: str | None = None,
            base_url: str | None = None, auth: str = "x-api-key", grace: float = 10,
            progress: bool | None = None, **options: Any) -> RunSummary:
        """Send every pending job, at the rate limit; return the run's summary.

        The same run as ``batcher run``, with the same options; ``api_key`` and
        ``base_url`` default to ``$POE_API_KEY`` and ``$POE_BASE_URL``.
        Further keyword ``options`` are :class:`batcher.runconfig.RunConfig` fields.
        ``progress=None`` shows a live line on a terminal or in a notebook and
        nothing otherwise; True or False force it on or off.

        Works inside a running event loop too (Jupyter): the run then goes on
        a worker thread. Ctrl-C (or a notebook's stop) lets in-flight answers
        finish within ``grace`` seconds, keeps every stored answer and raises
        :class:`batcher.Interrupted`; a second one stops at once. Calling
        again resumes. A key the API refuses raises :class:`batcher.APIStopped`
        with nothing marked failed; jobs that failed are results, not errors.

        Spend control, as on the command line: ``limit=N`` sends only the
        first N pending jobs; ``max_input_tokens=`` / ``max_output_tokens=``
        cap this run's tokens (in-flight aware); ``reuse=True`` answers jobs
        from identical requests already answered in the store. A run stopped
        by one of them returns its summary (``outcome`` "limit" or "budget",
        ``exit_code`` 5, ``message`` saying which, and naming a job by its
        0-based row, as :attr:`Result.index <batcher.Result.index>` does);
        calling again goes on.
        """
        from ._running import RunControl, run_config
        from ._sync import call_sync

        given = dict(rpm=rpm, concurrency=concurrency, max_attempts=max_attempts, timeout=timeout, stream=stream,
                     api_key=api_key, base_url=base_url, auth=auth, grace=grace, progress=progress, **options)
        run_config(given)  # a bad option fails here, before a thread starts
        control = RunControl()
        return call_sync(functools.partial(self._arun, given, control), control.stop, control.cancel)

    async def arun(self, *, rpm: float = 500, concurrency: int | None = None, max_attempts: int = 6,
                   timeout: float = 600, stream: bool | None = None, api_key: str | None = None,
                   base_url: str | None = None, auth: str = "x-api-key", grace: float = 10,
                   progress: bool | None = None, signals: bool = False, **options: Any) -> RunSummary:
        """:meth:`run` for async code (asyncio or trio, through anyio).

        Cancelling the calling task stops the run at once (stored answers
        stay). ``signals=True`` lets the run catch SIGINT/SIGTERM itself for a
        graceful stop, as the command line does (main thread only).

        >>> import anyio, batcher
        >>> async def main():
        ...     with batcher.Store("example.db") as store:
        ...         b = store.add("fruits", ["Name a fruit."])
        ...         return (await b.arun(progress=False)).left
        >>> anyio.run(main)
        0
        """
        return await self._arun(dict(rpm=rpm, concurrency=concurrency, max_attempts=max_attempts,
                                     timeout=timeout, stream=stream, api_key=api_key, base_url=base_url,
                                     auth=auth, grace=grace, progress=progress, **options),
                                signals=signals)

    async def _arun(self, options: dict[str, Any], control: RunControl | None = None,
                    signals: bool = False) -> RunSummary:
        import anyio

        from ._progress import run_display
        from ._running import checked, run_config
        from .runner import Runner

        key, config = run_config(options, signals)
        display = run_display(options["progress"])
        try:
            runner = Runner(self._engine, self._record, key, config)
            if control is not None:
                control.attach(runner)
            with anyio.CancelScope() as scope:
                if control is not None:
                    control.scope = scope
                summary = await runner.run(display)
            if scope.cancelled_caught:
                raise Interrupted(f"batch {self.name}: stopped at once; answers already received are stored, "
                                  "the rest resumes on the next run")
        finally:
            if display is not None:
                display.close()
        return checked(summary)


def _several(name: str, given: Any, one: type | tuple[type, ...], kind: str) -> tuple[Any, ...]:
    """The option ``name``'s value or values as a tuple of ``one`` (a single string is one value, not its letters).

    Anything else is refused naming the option: ``error_type=5`` was "expected one value or a list of
    them", and ``error_type=[5]`` matched no failure, silently.
    """
    if given is None:
        return ()
    values = (given,) if isinstance(given, one) else tuple(given) if isinstance(given, Iterable) else None
    if values is None or not all(isinstance(value, one) for value in values):
        raise UsageError(f"{name} must be {kind} or a list of them, not {given!r}")
    return values


def check_run(**options: Any) -> None:
    """Raise now if :meth:`Batch.run` would refuse these options (no key, unsafe URL, bad number).

    Lets a caller refuse before it imports anything or touches the store.
    """
    from ._running import run_config

    run_config({**RUN_DEFAULTS, **options})


#: :meth:`Batch.run`'s keyword defaults.
RUN_DEFAULTS = {name: p.default for name, p in inspect.signature(Batch.run).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
