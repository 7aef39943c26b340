"""Turning a job file's lines into rows for the jobs table, chunk by chunk.

Parsing and validating costs more than SQLite's insert, so for large files
the chunks are prepared in worker processes while the importer inserts the
previous ones: the import then uses both cores. Chunks come back in file
order and only a few are in flight, so memory stays flat.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import orjson

from ._forking import can_fork, freeze_inherited
from .jobfile import Block, LineError, block_lines, blocks, parse_line
from .validate import KNOWN_MODELS, Defaults, InvalidJob, to_job

#: Bytes of the file per unit of work: ~4,000 typical lines.
BLOCK_BYTES = 1 << 20
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
    #: With a list here, each valid row's request body (a dict) is kept too,
    #: for readers that look into requests (the estimate); import keeps none.
    bodies: list[dict[str, Any]] | None = None


def prepare_chunk(lines: list[tuple[int, bytes]], defaults: Defaults,
                  out: PreparedChunk | None = None) -> PreparedChunk:
    """Parse and validate lines into ``ROW_FIELDS`` tuples (added to ``out``, if given)."""
    out = PreparedChunk() if out is None else out
    for number, raw in lines:
        obj = parse_line(number, raw)
        if isinstance(obj, LineError):
            out.errors.append(obj)
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
    return prepare_chunk(list(block_lines(block)), defaults)


def _parallel_worthwhile(path: str) -> bool:
    """A big file, and a process that can fork safely."""
    try:
        return can_fork() and os.path.getsize(path) >= PARALLEL_FROM_BYTES
    except OSError:
        return False


def _worker_start() -> None:
    """Yield the CPU to the inserting process; never rescan the inherited heap.

    The inserting process is the one that cannot be parallelised, so the
    workers run at a lower priority rather than share the CPU with it.
    """
    os.nice(WORKER_NICENESS)
    freeze_inherited()


T = TypeVar("T")


def prepared_chunks(path: str, defaults: Defaults,
                    work: Callable[[Block, Defaults], T] = prepare_block) -> Iterator[T]:  # type: ignore[assignment]
    """``work(block, defaults)`` for every block of ``path``, in file order.

    By default a :func:`prepare_block` chunk per block; other readers of job
    files (the estimate) pass a ``work`` that validates through it and
    returns a smaller summary, so only that crosses the process boundary.
    """
    chunks = blocks(path, BLOCK_BYTES)
    if not _parallel_worthwhile(path):
        for block in chunks:
            yield work(block, defaults)
        return
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor

    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(WORKERS, mp_context=context, initializer=_worker_start) as pool:
        pending: deque[Future[T]] = deque()
        try:
            for block in chunks:
                pending.append(pool.submit(work, block, defaults))
                if len(pending) > 2 * WORKERS:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
