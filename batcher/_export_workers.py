"""Rendering a big export (or costing a big estimate) in forked processes, each reading its own ranges of lines.

Rendering a line (parsing the stored answer, writing the new JSON) costs
several times what reading its row does, and one process renders on one
core. So a big SQLite export forks workers: worker ``k`` of ``W`` reads
and renders ranges ``k``, ``k + W``, ... of the batch's lines, and this
process writes what they send back, range by range, in input order. Only
rendered lines cross between processes, never rows.

The export must still come from one snapshot. Each worker reads in one
read transaction of its own, all begun after this process noted the
store's data version and before it looks again: if the version did not
move in between, no commit landed while the workers began, and they all
see the same snapshot. If it did (a run recording answers at that very
moment), the workers are stopped and started again, and after a few tries
the export is read by this process alone.

Workers are forked only from a process with no other thread and with no
store connection open, so that a child never inherits a lock or a
half-used SQLite connection; each opens its own, read-only.
"""

from __future__ import annotations

import functools
import os
import signal
import struct
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sqlalchemy import Engine, bindparam, func, select, tuple_
from sqlalchemy.exc import SQLAlchemyError

from ._forking import can_fork, fork_worker, freeze_inherited, widen, write_all
from .db import open_store, read_failure
from .errors import StoreError
from .outfile import Chunk, Piped
from .schema import jobs

if TYPE_CHECKING:
    from ._render import ExportNotes

#: Lines of the batch per range: ~2 MB of output for typical answers.
SPAN = 2000
#: Batches spanning fewer lines are read by this process alone: starting
#: workers would cost more than they save.
FORK_FROM_LINES = 20_000
#: Workers are started again this many times when a commit lands while
#: they begin reading; then the export is read here.
TRIES = 3
#: A part or line number beyond any, for the open-ended ranges (before the first, after the last).
_FAR = 1 << 62

Render = Callable[[Any], bytes]
#: What a worker sends back for a range of rows: their lines, or what sums them up.
RenderRange = Callable[[list[Any]], bytes]


def _workers() -> int:
    try:
        return min(4, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return min(4, os.cpu_count() or 1)


def worthwhile(engine: Engine) -> bool:
    """An SQLite store on disk, at least two cores, and a process that can fork."""
    url = engine.url
    return (url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
            and _workers() >= 2 and engine.pool.checkedout() == 0 and can_fork())


def forked_chunks(engine: Engine, batch_id: int, query: Any, render: RenderRange,
                  notes: ExportNotes | None, piped: bool = False) -> Iterator[Chunk] | None:
    """What forked workers make of the batch's rows, range by range in order, or None to read it here.

    ``query`` is the ordered select of the rows (an export's, or an
    estimate's unfinished jobs); ``render`` makes what a range sends back
    of its rows: their lines (:func:`each_row`), or what sums them up,
    counting into ``notes`` (each worker into its own copy: what they
    counted is added to ``notes`` here). None when the batch is small or a
    snapshot could not be shared: the caller then reads it itself. With
    ``piped``, ranges come as :class:`~batcher.outfile.Piped` (see
    :meth:`_Team.chunks`).
    """
    if not worthwhile(engine):
        return None
    bounds = _bounds(engine, batch_id)
    if bounds is None:
        return None
    place = tuple_(jobs.c.part, jobs.c.line)
    ranged = query.where(place >= tuple_(bindparam("lo_part"), bindparam("lo_line")),
                         place < tuple_(bindparam("hi_part"), bindparam("hi_line")))
    for _ in range(TRIES):
        team = _Team.start(engine, ranged, render, notes, bounds)
        if team is not None:
            return team.chunks(notes, piped)
    return None


def _bounds(engine: Engine, batch_id: int) -> list[tuple[int, int]] | None:
    """Where the ranges of the batch's order start, ``(part, line)``, and its end; None for a small batch.

    Every ``SPAN`` lines of each part (a part is one file's lines). Each
    figure is one aggregate a query, so a step down the (batch, part, line)
    index, however big the batch.
    """
    parts: list[tuple[int, int, int]] = []  # (part, first line, last line)
    with engine.connect() as conn, conn.begin():
        def one(value: Any, *where: Any) -> Any:
            return conn.execute(select(value).where(jobs.c.batch_id == batch_id, *where)).scalar()

        part = one(func.min(jobs.c.part))
        while part is not None:
            here = jobs.c.part == part
            parts.append((part, one(func.min(jobs.c.line), here), one(func.max(jobs.c.line), here)))
            part = one(func.min(jobs.c.part), jobs.c.part > part)
    if sum(last - first + 1 for _, first, last in parts) < FORK_FROM_LINES:
        return None
    bounds = [(-_FAR, -_FAR)]
    for k, (part, first, last) in enumerate(parts):
        if k:
            bounds.append((part, -_FAR))
        bounds += [(part, line) for line in range(first + SPAN, last + 1, SPAN)]
    return [*bounds, (_FAR, _FAR)]


class _Team:
    """The forked workers of one export, and the pipes they answer on."""

    def __init__(self, ranges: int) -> None:
        self.ranges = ranges
        self.pids: list[int] = []
        self.answers: list[int] = []

    @classmethod
    def start(cls, engine: Engine, query: Any, render: RenderRange, notes: ExportNotes | None,
              bounds: list[tuple[int, int]]) -> _Team | None:
        """Fork the workers; None if a commit landed while they began reading."""
        database = engine.url.database
        engine.dispose()  # no connection of this process is inherited
        team = cls(len(bounds) - 1)
        count = min(_workers(), team.ranges)
        go_read, go_write = os.pipe()
        try:
            for k in range(count):
                answer, reply = os.pipe()
                widen(reply)

                def worker() -> None:  # runs in the child, at once
                    for fd in (answer, go_write, *team.answers):
                        os.close(fd)
                    _work(reply, go_read, database, query, render, notes, bounds, k, count)

                pid = fork_worker(worker)
                os.close(reply)
                team.pids.append(pid)
                team.answers.append(answer)
            os.close(go_read)
            go_read = -1
            with engine.connect() as conn:
                before = _data_version(conn)
                os.write(go_write, b"g" * count)  # begin reading now
                for answer in team.answers:
                    team.receive(answer)
                if _data_version(conn) == before:
                    return team
        except BaseException:
            team.stop()
            raise
        finally:
            os.close(go_write)
            if go_read >= 0:
                os.close(go_read)
        team.stop()
        return None

    def chunks(self, notes: ExportNotes | None, piped: bool) -> Iterator[Chunk]:
        """Each range's lines, in order; the workers are stopped however this ends.

        With ``piped`` a range comes as a :class:`~batcher.outfile.Piped`,
        still in its worker's pipe, for the writer to move or read.
        """
        try:
            for index in range(self.ranges):
                fd = self.answers[index % len(self.answers)]
                size, lines, replaced = self.header(fd)
                if notes is not None:
                    notes.replaced_keys += replaced
                data = Piped(fd, size, _STOPPED)
                yield (data if piped else data.read()), lines
                if not data.done:
                    data.read()  # the caller left it: the next header follows it
        finally:
            self.stop()

    def header(self, fd: int) -> tuple[int, int, int]:
        """The next answer's size, lines and replaced keys; a worker's error is raised here."""
        size, lines, replaced = _HEADER.unpack(Piped(fd, _HEADER.size, _STOPPED).read())
        if lines < 0:
            raise StoreError(Piped(fd, size, _STOPPED).read().decode(errors="replace"))
        return size, lines, replaced

    def receive(self, fd: int) -> None:
        """A worker's first, empty answer: it has begun reading."""
        size, _, _ = self.header(fd)
        Piped(fd, size, _STOPPED).read()

    def stop(self) -> None:
        """Close the pipes (a worker still writing then stops) and reap every worker."""
        for fd in self.answers:
            os.close(fd)
        self.answers = []
        deadline = time.monotonic() + 1.0
        for pid in self.pids:
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.005)
        self.pids = []


#: An answer's header: its size in bytes, its lines (-1: an error message), keys replaced.
_HEADER = struct.Struct("<qqq")
_STOPPED = "cannot read the job store: a worker process reading the batch stopped before its part was done"


def each_row(render: Render) -> RenderRange:
    """A range's lines, each row rendered by ``render`` (an export's)."""
    return functools.partial(_each, render)


def _each(render: Render, rows: list[Any]) -> bytes:
    return b"".join([render(row) for row in rows])


def _data_version(conn: Any) -> int:
    """SQLite's count of commits other connections made, as this connection last saw it."""
    with conn.begin():
        return int(conn.exec_driver_sql("PRAGMA data_version").scalar())


def _work(reply: int, go: int, database: str, query: Any, render: RenderRange, notes: ExportNotes | None,
          bounds: list[tuple[int, int]], k: int, count: int) -> None:
    """A worker: read and render ranges ``k``, ``k + count``, ... and send each back.

    Ctrl-C and SIGTERM reach the whole process group; the parent alone
    answers them, and stops the workers (see :func:`~batcher._forking.fork_worker`).
    """
    freeze_inherited()

    def answer(data: bytes, lines: int, replaced: int = 0) -> None:
        write_all(reply, _HEADER.pack(len(data), lines, replaced))
        write_all(reply, data)

    try:
        reported = notes.replaced_keys if notes is not None else 0
        engine = open_store(database, upgrade=False, create=False, readonly=True)
        # Connected before the signal to begin, so that all workers begin
        # within a few milliseconds: a commit is then unlikely to land between.
        with engine.connect() as conn:
            if os.read(go, 1) != b"g":
                return  # the export ended before it began
            conn.begin()
            conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()  # the snapshot starts here
            answer(b"", 0)
            for index in range(k, len(bounds) - 1, count):
                (lo_part, lo_line), (hi_part, hi_line) = bounds[index], bounds[index + 1]
                rows = conn.execute(query, {"lo_part": lo_part, "lo_line": lo_line, "hi_part": hi_part,
                                            "hi_line": hi_line}).all()
                data = render(rows)
                now = notes.replaced_keys if notes is not None else 0
                answer(data, len(rows), now - reported)
                reported = now
    except BrokenPipeError:
        pass  # the export ended early: nothing to say
    except StoreError as exc:
        _tell(answer, str(exc))
    except SQLAlchemyError as exc:
        _tell(answer, str(read_failure(exc)))
    except Exception as exc:
        _tell(answer, f"cannot read the batch: {type(exc).__name__}: {exc}")


def _tell(answer: Callable[[bytes, int], None], message: str) -> None:
    try:
        answer(message.encode(), -1)
    except OSError:
        pass
