"""Turning a job file's lines into rows for the jobs table, chunk by chunk.

Parsing and validating costs more than SQLite's insert, so for large files
the chunks are prepared in worker processes while the importer inserts the
previous ones: the import then uses both cores. Chunks come back in file
order and only a few are in flight, so memory stays flat.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, TypeVar

import orjson

from ._forking import can_fork, fork_worker, freeze_inherited, read_exactly, widen, write_all
from ._told import Progress, told
from .cost import CostSums, input_tokens_estimate
from .errors import UsageError
from .jobfile import (Block, Head, LineError, Reading, block_lines, blocks, check_read_from_one_file, parse_line,
                      starts_with)
from .validate import KNOWN_MODELS, Defaults, InvalidJob, not_an_object, to_job

#: Bytes of the file per unit of work: ~1,800 typical lines, whose prepared
#: rows (about 1.5 times the bytes) fit in a pipe (1 MB, see
#: :func:`batcher._forking.widen`). Against blocks of 1 MB, a 1M-line import
#: took 15% less time and 17% less CPU, and 5 MB less memory; 256 KB
#: measured the same as this.
BLOCK_BYTES = 1 << 19
#: Files smaller than this are prepared in-process: a worker's start-up
#: would cost more than it saves.
PARALLEL_FROM_BYTES = 8 * 1024 * 1024
WORKERS = 2
WORKER_NICENESS = 10

#: The jobs columns each prepared row fills, in order; the importer supplies
#: the rest (batch, import, status, timestamps), the same for every row. The
#: request body is hashed but not stored: :func:`request_body` rebuilds it
#: from the source and the import's defaults, so the request is stored once.
ROW_FIELDS = ("line", "custom_id", "body_hash", "source", "extra")


@dataclass
class PreparedChunk:
    """Valid rows of a chunk, its bad lines and what is worth a warning."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    unknown_models: Counter[str] = field(default_factory=Counter)
    streams_dropped: int = 0
    #: The largest input estimate and ``max_tokens`` of one valid row (see
    #: :mod:`batcher.cost`): kept with the import, they let a run under
    #: token caps know that no job exceeds one without reading them.
    worst_input: int = 0
    worst_output: int = 0
    #: What the valid rows cost, by model (see :data:`batcher.cost.CostSums`): kept with
    #: the import for the jobs it adds, so that a fresh batch is estimated without reading them.
    costs: CostSums = field(default_factory=dict)
    #: For a block of a file: the offset after its last line, to tell how far a reading is.
    read_to: int = 0
    #: With a list here, each valid row's request body (a dict) is kept too,
    #: for readers that look into requests (the estimate); import keeps none.
    bodies: list[dict[str, Any]] | None = None

    @property
    def lines(self) -> int:
        """Lines read: valid or not."""
        return len(self.rows) + len(self.errors)


def prepare_chunk(lines: list[tuple[int, bytes]], defaults: Defaults,
                  out: PreparedChunk | None = None) -> PreparedChunk:
    """Parse and validate lines into ``ROW_FIELDS`` tuples (added to ``out``, if given)."""
    out = PreparedChunk() if out is None else out
    for number, raw in lines:
        obj = parse_line(number, raw)
        if isinstance(obj, LineError):
            out.errors.append(obj)
        elif not isinstance(obj, dict):
            out.errors.append(LineError(number, not_an_object(obj)))
        else:
            prepare_object(out, number, obj, raw.decode(), defaults)
    return out


def prepare_object(out: PreparedChunk, number: int, obj: Any, source: str, defaults: Defaults) -> None:
    """Validate one parsed job (a line's object, or a row given in Python) into ``out``.

    ``source`` is the input as stored for the merged export: the line as
    given, or the row's JSON.
    """
    try:
        job = to_job(obj, number, defaults)
    except InvalidJob as exc:
        out.errors.append(LineError(number, str(exc)))
        return
    try:
        body = orjson.dumps(job.body)
        extra = orjson.dumps(job.extra).decode() if job.extra else None
    except orjson.JSONEncodeError as exc:
        # Parsing allows deeper nesting than encoding does.
        out.errors.append(LineError(number, f"cannot be encoded for sending: {exc}"))
        return
    if job.warnings:
        out.streams_dropped += 1
    if job.body["model"] not in KNOWN_MODELS:
        out.unknown_models[job.body["model"]] += 1
    tokens = input_tokens_estimate(job.body)  # request_cost's figures, without its object
    max_tokens = job.body["max_tokens"]
    if tokens > out.worst_input:
        out.worst_input = tokens
    if max_tokens > out.worst_output:
        out.worst_output = max_tokens
    figures = out.costs.get(job.body["model"])  # add_cost, written out: this runs for every line imported
    if figures is None:
        out.costs[job.body["model"]] = [1, tokens, max_tokens]
    else:
        figures[0] += 1
        figures[1] += tokens
        figures[2] += max_tokens
    out.rows.append((
        number,
        job.custom_id,
        body_hash(body),
        source,
        extra,
    ))
    if out.bodies is not None:
        out.bodies.append(job.body)


def body_hash(body: bytes) -> str:
    """What tells an unchanged request from a changed one on re-import."""
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def defaults_text(defaults: Defaults) -> str:
    """The import's defaults as stored with it (see :func:`request_body`)."""
    return orjson.dumps([defaults.model, defaults.max_tokens, defaults.system]).decode()


def request_body(source: str, line: int, defaults: str | None) -> str:
    """The exact request body a job's stored source gives with its import's defaults.

    Validation made the same body from the same two on import; the hash
    stored then lets the caller check it.
    """
    given = Defaults(*orjson.loads(defaults)) if defaults else Defaults()
    return orjson.dumps(to_job(orjson.loads(source), line, given).body).decode()


def prepare_block(block: Block, defaults: Defaults) -> PreparedChunk:
    """Read a block's lines and prepare them (runs in a worker process)."""
    chunk = prepare_chunk(list(block_lines(block)), defaults)
    chunk.read_to = block.offset + block.length
    return chunk


def _parallel_worthwhile(path: str, start: int) -> bool:
    """A lot of the file left to read from ``start``, and a process that can fork safely."""
    try:
        return can_fork() and os.path.getsize(path) - start >= PARALLEL_FROM_BYTES
    except OSError:
        return False


T = TypeVar("T")

class _Read(Protocol):
    read_to: int

    @property
    def lines(self) -> int: ...


R = TypeVar("R", bound=_Read)


def told_reading(chunks: Iterator[R], progress: Progress, path: str) -> Iterator[R]:
    """The chunks of ``path``, telling ``progress`` the lines read and the part of the file they reach."""
    size = max(1, os.path.getsize(path))
    return told(chunks, progress, lambda chunk: chunk.lines, lambda chunk, _: chunk.read_to / size)


def prepared_chunks(path: str, defaults: Defaults,
                    work: Callable[[Block, Defaults], T] = prepare_block,  # type: ignore[assignment]
                    reading: Reading | None = None) -> Iterator[T]:
    """``work(block, defaults)`` for every block of ``path``, in file order.

    By default a :func:`prepare_block` chunk per block; other readers of job
    files (the estimate) pass a ``work`` that validates through it and
    returns a smaller summary, so only that crosses the process boundary.
    With a ``reading``, the file is read from where it starts, through it.
    """
    chunks = blocks(path, BLOCK_BYTES, reading)
    if not _parallel_worthwhile(path, reading.start.size if reading else 0):
        for block in chunks:
            yield work(block, defaults)
        return
    team = _Team(path, defaults, work)
    try:
        yield from team.results(chunks)
    finally:
        team.stop()


class FileChunks:
    """A job file's prepared chunks, from its start or from after a head an import read before.

    Iterated once. :attr:`read` then says what was read in all (the head
    included), for the next import of the file to skip. Input read once
    (no ``fingerprint``: stdin, a pipe) is not hashed: it cannot be read again.
    ``progress`` is told the lines read so far and the part of the file
    they reach each time the reader has taken a chunk and asks for the next.
    """

    def __init__(self, path: str, defaults: Defaults, fingerprint: str | None,
                 progress: Progress | None = None) -> None:
        self.path, self.defaults, self.fingerprint, self.progress = path, defaults, fingerprint, progress
        self.reading = Reading() if fingerprint is not None else None

    def skip(self, head: Head) -> bool:
        """Read only what follows ``head``, if the file starts with those very bytes; whether it does."""
        reading = starts_with(self.path, head)
        if reading is not None:
            self.reading = reading
        return reading is not None

    @property
    def read(self) -> Head | None:
        """What the chunks were read from, up to the last line end (None if the file ended inside a line)."""
        return self.reading.head if self.reading is not None else None

    def __iter__(self) -> Iterator[PreparedChunk]:
        chunks = prepared_chunks(self.path, self.defaults, reading=self.reading)
        chunks = chunks if self.progress is None else told_reading(chunks, self.progress, self.path)
        return chunks if self.fingerprint is None else self._from_one_file(chunks)

    def _from_one_file(self, chunks: Iterator[PreparedChunk]) -> Iterator[PreparedChunk]:
        """``chunks``, then a check that they were all read from one version of the file (see
        :func:`~batcher.jobfile.check_read_from_one_file`); a block that could not be read is
        named as such if the file went away or was replaced."""
        assert self.fingerprint is not None and self.reading is not None
        try:
            yield from chunks
        except UsageError:
            check_read_from_one_file(self.path, self.fingerprint, self.reading)
            raise
        check_read_from_one_file(self.path, self.fingerprint, self.reading)


#: A block to prepare, parent to worker: offset, length, first line's number.
_TASK = struct.Struct("<qqq")
#: A result, worker to parent: its pickled size and kind.
_RESULT = struct.Struct("<qq")
_DONE, _RAISED = 0, 1
#: Blocks handed to each worker ahead of the one being read: enough to keep
#: both cores busy, few enough that memory stays flat.
AHEAD = 2


class _Team:
    """Worker processes preparing blocks, each over a pipe of tasks and a pipe of results.

    Block ``i`` goes to worker ``i % WORKERS``, whose results come back in
    the order it was given blocks: reading the workers in turn gives the
    file's order. The parent runs no thread, and reads only pipes whose
    other end a worker alone holds: a worker that dies ends its pipe, and
    the parent says so rather than wait. The workers ignore Ctrl-C and
    SIGTERM (see :func:`~batcher._forking.fork_worker`): the parent stops
    them, however it ends.
    """

    def __init__(self, path: str, defaults: Defaults, work: Callable[[Block, Defaults], Any]) -> None:
        self.path = path
        self.pids: list[int] = []
        self.tasks: list[int] = []
        self.answers: list[int] = []
        try:
            for _ in range(WORKERS):
                task_read, task_write = os.pipe()
                answer_read, answer_write = os.pipe()
                widen(answer_write)
                inherited = [task_write, answer_read, *self.tasks, *self.answers]
                self.pids.append(fork_worker(
                    lambda: _serve(task_read, answer_write, inherited, path, defaults, work)))
                os.close(task_read)
                os.close(answer_write)
                self.tasks.append(task_write)
                self.answers.append(answer_read)
        except BaseException:
            self.stop()
            raise

    def results(self, chunks: Iterator[Block]) -> Iterator[Any]:
        """Each block's result, in file order."""
        sent = received = 0
        for block in chunks:
            try:
                os.write(self.tasks[sent % WORKERS], _TASK.pack(block.offset, block.length, block.first_line))
            except BrokenPipeError:
                break  # that worker has ended: its last result, read in turn below, says why
            sent += 1
            if sent - received > AHEAD * WORKERS:
                yield self._receive(received % WORKERS)
                received += 1
        for fd in self.tasks:  # no more blocks: each worker ends after its last one
            os.close(fd)
        self.tasks = []
        while received < sent:
            yield self._receive(received % WORKERS)
            received += 1

    def _receive(self, worker: int) -> Any:
        fd = self.answers[worker]
        size, kind = _RESULT.unpack(self._read(fd, _RESULT.size))
        value = pickle.loads(self._read(fd, size))
        if kind == _RAISED:
            raise value
        return value

    def _read(self, fd: int, size: int) -> bytes:
        data = read_exactly(fd, size)
        if data is None:
            raise UsageError(f"{self.path}: cannot read: a worker process preparing its lines stopped "
                             "before its part was done")
        return data

    def stop(self) -> None:
        """Close the pipes and end every worker.

        A worker holds nothing but its view of the file: it is killed rather
        than asked, so that ending never waits on one (it may be busy with a
        block, or blocked on a full pipe).
        """
        for fd in (*self.tasks, *self.answers):
            os.close(fd)
        self.tasks, self.answers = [], []
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
        self.pids = []


def _serve(tasks: int, answers: int, inherited: list[int], path: str, defaults: Defaults,
           work: Callable[[Block, Defaults], Any]) -> None:
    """A worker: prepare each block it is given and send the result back, until the tasks end.

    It runs at a lower priority than the inserting process, the one that
    cannot be parallelised, rather than share the CPU with it; and never
    rescans the inherited heap.
    """
    for fd in inherited:  # the parent's ends: a pipe ends when the parent closes its end
        os.close(fd)
    os.nice(WORKER_NICENESS)
    freeze_inherited()
    while (task := read_exactly(tasks, _TASK.size)) is not None:  # None: the parent closed its end
        offset, length, first_line = _TASK.unpack(task)
        kind = _DONE
        try:
            value: Any = work(Block(path, offset, length, first_line), defaults)
        except Exception as exc:
            kind, value = _RAISED, exc
        try:
            data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an exception that does not pickle
            kind = _RAISED
            data = pickle.dumps(UsageError(f"{path}: cannot prepare its lines: {type(value).__name__}: {exc}"))
        write_all(answers, _RESULT.pack(len(data), kind) + data)
        if kind == _RAISED:
            return
