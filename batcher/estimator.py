"""What a run will cost before it starts: jobs, tokens in and out, time.

Nothing is sent and nothing is stored. A job file is read and validated
exactly as ``import`` reads it (the same workers, the same messages for bad
lines); a batch already in the store is estimated from its unfinished jobs.

Output tokens are the sum of ``max_tokens``, input tokens a local estimate:
see :mod:`batcher.cost` for how each is counted and how close it comes.
"""

from __future__ import annotations

import functools
import heapq
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import orjson
from sqlalchemy import Engine

from ._export_workers import forked_chunks
from ._told import Progress
from .cost import BYTES_PER_TOKEN, Cost, CostSums, add_cost, request_cost
from .db import open_store
from .errors import UsageError, option
from .importer import ImportRejected, ImportReport, file_warnings
from .jobfile import (Block, LineError, block_lines, describe, ensure_readable, is_job_input, naming_a_batch,
                      one_document, readable_copy)
from .jobqueue import batch_counts, body_cost, import_costs, row_body, unfinished_costs, unfinished_jobs
from .pacer import HEADROOM
from .prepare import ROW_FIELDS, PreparedChunk, prepare_chunk, prepared_chunks, told_reading
from .store import Batch, batch_from_file, find_batch
from .validate import Defaults

_LINE, _CUSTOM_ID = (ROW_FIELDS.index(k) for k in ("line", "custom_id"))
#: Jobs of a batch costed between two words to ``progress``.
TOLD_EVERY = 10_000


@dataclass
class ModelFigures:
    """Jobs and tokens of one model."""

    jobs: int = 0
    input_tokens_estimate: int = 0
    max_output_tokens: int = 0

    def add(self, cost: Cost, jobs: int = 1) -> None:
        self.jobs += jobs
        self.input_tokens_estimate += cost.input_tokens
        self.max_output_tokens += cost.output_tokens


@dataclass
class Estimate:
    """What sending the unfinished jobs of a file or batch would take.

    ``requests`` counts one request per job: retries and rate-limited
    attempts come on top, answers reused with ``run --reuse`` come off.
    Its repr is the figures a notebook wants at a glance.

    >>> import batcher
    >>> batcher.estimate(["Name a colour.", "Name a fruit."], model="claude-haiku-4.5", max_tokens=100)
    Estimate(rows: 2 jobs, ~8 input tokens, at most 200 output tokens, 0 min at 500 rpm)
    """

    source: str
    rpm: float
    by_model: dict[str, ModelFigures] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add(self, model: str, cost: Cost, jobs: int = 1) -> None:
        """Count ``jobs`` more of ``model``, costing ``cost`` together."""
        figures = self.by_model.get(model)
        if figures is None:
            figures = self.by_model[model] = ModelFigures()
        figures.add(cost, jobs)

    @property
    def jobs(self) -> int:
        return sum(m.jobs for m in self.by_model.values())

    @property
    def requests(self) -> int:
        """Requests the jobs take at the least: one each (as ``to_dict()["requests"]``)."""
        return self.jobs

    @property
    def input_tokens_estimate(self) -> int:
        return sum(m.input_tokens_estimate for m in self.by_model.values())

    @property
    def max_output_tokens(self) -> int:
        return sum(m.max_output_tokens for m in self.by_model.values())

    def minutes(self, requests: int) -> float:
        """Minutes ``requests`` take at the run's pace (just under ``rpm``)."""
        return round(requests / (self.rpm * HEADROOM), 2)

    def __repr__(self) -> str:
        return (f"Estimate({self.source}: {self.jobs:,} jobs, ~{self.input_tokens_estimate:,} input tokens, "
                f"at most {self.max_output_tokens:,} output tokens, "
                f"{self.minutes(self.jobs):g} min at {self.rpm:g} rpm)")

    def to_dict(self) -> dict[str, Any]:
        """The ``estimate --json`` object."""
        return {
            "source": self.source,
            "jobs": self.jobs,
            "requests": self.requests,
            "input_tokens_estimate": self.input_tokens_estimate,
            "max_output_tokens": self.max_output_tokens,
            "rpm": self.rpm,
            "minutes_at_rpm": self.minutes(self.jobs),
            "by_model": {
                model: {"jobs": m.jobs, "requests": m.jobs, "input_tokens_estimate": m.input_tokens_estimate,
                        "max_output_tokens": m.max_output_tokens, "minutes_at_rpm": self.minutes(m.jobs)}
                for model, m in sorted(self.by_model.items(), key=lambda kv: (-kv[1].jobs, kv[0]))
            },
        }


# -- a job file ------------------------------------------------------------------


@dataclass
class _BlockFigures:
    """What a worker sends back for one block: small, whatever the block."""

    errors: list[LineError]
    unknown_models: Counter[str]
    streams_dropped: int
    by_model: dict[str, ModelFigures]
    id_hashes: array[int]  # of the block's custom_ids, sorted
    lines: int = 0
    read_to: int = 0  # see PreparedChunk.read_to


def _block_figures(block: Block, defaults: Defaults) -> _BlockFigures:
    """Validate a block as import does; keep only its figures (runs in a worker)."""
    chunk = prepare_chunk(list(block_lines(block)), defaults, PreparedChunk(bodies=[]))
    figures = _chunk_figures(chunk)
    figures.lines, figures.read_to = chunk.lines, block.offset + block.length
    return figures


def _chunk_figures(chunk: PreparedChunk) -> _BlockFigures:
    """The figures of a prepared chunk's valid rows, its errors and warnings."""
    by_model: dict[str, ModelFigures] = {}
    ids: array[int] = array("q")
    assert chunk.bodies is not None, "prepared without keeping bodies"
    for row, body in zip(chunk.rows, chunk.bodies):
        model = body["model"]
        figures = by_model.get(model)
        if figures is None:
            figures = by_model[model] = ModelFigures()
        figures.add(request_cost(body))
        ids.append(hash(row[_CUSTOM_ID]))
    return _BlockFigures(chunk.errors, chunk.unknown_models, chunk.streams_dropped, by_model,
                         array("q", sorted(ids)))


def estimate_file(path: str, defaults: Defaults = Defaults(), rpm: float = 500.0,
                  shown: str | None = None, progress: Progress | None = None) -> Estimate:
    """Estimate a job file as a new batch would be run; store nothing.

    Raises :class:`ImportRejected` with the same report (the same
    ``FILE:LINE: reason`` lines) an import of the file would give. Memory
    stays flat but for 8 bytes a line: a hash of each custom_id, sorted by
    block and merged at the end to find repeated ones (only then is the file
    read a second time, to name them as import does). ``progress`` hears
    how far the reading is as it goes.
    """
    shown = shown or describe(path)  # the input's name, when ``path`` is a copy of stdin or a pipe
    report = ImportReport(batch="", file=shown)
    estimate = Estimate(shown, rpm)
    parts = prepared_chunks(path, defaults, _block_figures)
    repeated = _add_up(parts if progress is None else told_reading(parts, progress, path), estimate, report)
    if repeated:
        _reject_duplicates(prepared_chunks(path, defaults), repeated, report)
    if report.rejected:
        report.whole = one_document(path) if report.none_valid else None
        raise ImportRejected(report)
    return estimate


def estimate_rows(rows: Iterable[Any], defaults: Defaults = Defaults(), rpm: float = 500.0,
                  report: ImportReport | None = None) -> Estimate:
    """Estimate rows given in Python (prompts or job-line dicts) as ``Store.add`` would take them.

    Raises :class:`ImportRejected` (every bad row in ``report``) if a row is invalid.
    """
    from ._rows import prepared_rows

    given = rows if isinstance(rows, Sequence) else list(rows)
    report = report or ImportReport(batch="", file="rows", keep=None)
    estimate = Estimate("rows", rpm)
    repeated = _add_up((_chunk_figures(c) for c in prepared_rows(given, defaults, keep_bodies=True)), estimate,
                       report)
    if repeated:
        _reject_duplicates(prepared_rows(given, defaults), repeated, report)
    if report.rejected:
        raise ImportRejected(report)
    return estimate


def _add_up(parts: Iterable[_BlockFigures], estimate: Estimate, report: ImportReport) -> set[int]:
    """Add each part's figures to ``estimate`` and its bad lines to ``report``; return repeated id hashes."""
    models: Counter[str] = Counter()
    streams = 0
    id_runs: list[array[int]] = []
    for figures in parts:
        for error in figures.errors:
            report.reject(error)
        models.update(figures.unknown_models)
        streams += figures.streams_dropped
        for model, part in figures.by_model.items():
            estimate.by_model.setdefault(model, ModelFigures()).add(
                Cost(part.input_tokens_estimate, part.max_output_tokens), part.jobs)
        id_runs.append(figures.id_hashes)
    estimate.warnings = file_warnings(models, streams)
    return _repeated(id_runs)


def _repeated(sorted_runs: list[array[int]]) -> set[int]:
    """Values found more than once across sorted runs: a merge, no set of every value."""
    repeated: set[int] = set()
    previous = None
    for value in heapq.merge(*sorted_runs):
        if value == previous:
            repeated.add(value)
        previous = value
    return repeated


def _reject_duplicates(chunks: Iterable[PreparedChunk], suspects: set[int], report: ImportReport) -> None:
    """Second pass, only for input with repeated custom_ids: name them as import does."""
    first: dict[str, int] = {}
    for chunk in chunks:
        for row in chunk.rows:
            custom_id, line = row[_CUSTOM_ID], row[_LINE]
            if hash(custom_id) not in suspects:
                continue
            if custom_id in first:
                report.reject(LineError(line, f"duplicate custom_id {custom_id!r} (first on line {first[custom_id]})"))
            else:
                first[custom_id] = line


# -- a batch in the store -----------------------------------------------------------


def estimate_batch(engine: Engine, batch: Batch, rpm: float = 500.0, progress: Progress | None = None) -> Estimate:
    """Estimate the jobs of ``batch`` not yet done (pending, or in flight in a live run).

    A batch none of whose jobs has finished is estimated from what its
    imports recorded (see :func:`batcher.jobqueue.import_costs`), reading no
    job. Otherwise each job's request is costed (by forked workers for a big
    batch: about 16 s for a million on 2 cores, against 27 s alone);
    ``progress`` hears how many so far, and their part of all, every
    :data:`TOLD_EVERY` or so.
    """
    estimate = Estimate(batch.name, rpm)
    counts = batch_counts(engine, batch.id)
    total = sum(counts.values())
    if counts["pending"] + counts["running"] == total:  # nothing finished yet: every job counts
        sums = import_costs(engine, batch.id)
        if sums is not None and sum(n for n, _, _ in sums.values()) == total:
            for model, (n, input_tokens, output_tokens) in sums.items():
                estimate.add(model, Cost(input_tokens, output_tokens), n)
            return estimate
    unfinished = max(1, counts["pending"] + counts["running"])
    n = told = 0
    for model, cost, jobs in _unfinished_costs(engine, batch.id):
        estimate.add(model, cost, jobs)
        n += jobs
        if progress is not None and n - told >= TOLD_EVERY:
            told = n
            progress(n, min(1.0, n / unfinished))
    return estimate


def _unfinished_costs(engine: Engine, batch_id: int) -> Iterator[tuple[str, Cost, int]]:
    """``(model, cost, jobs)`` of the batch's unfinished jobs: one by one, or summed by forked workers if it is big.

    Costing a job means rebuilding and reading its request (about 25 µs); the
    workers share that out, as an export's lines, from one snapshot.
    """
    chunks = forked_chunks(engine, batch_id, unfinished_jobs(batch_id), _range_costs, None)
    if chunks is None:
        for _, _, model, cost in unfinished_costs(engine, batch_id):
            yield model, cost, 1
        return
    for data, _ in chunks:
        assert isinstance(data, bytes)
        for model, jobs, input_tokens, output_tokens in orjson.loads(data):
            yield model, Cost(input_tokens, output_tokens), jobs


def _range_costs(rows: list[Any]) -> bytes:
    """The jobs and worst case of a range of rows, by model (in a worker)."""
    sums: CostSums = {}
    for row in rows:
        model, cost = body_cost(row_body(row))
        add_cost(sums, model, cost.input_tokens, cost.output_tokens)
    return orjson.dumps([[model, *figures] for model, figures in sums.items()])


def estimate(file_or_batch: str, db: str | None = None, defaults: Defaults = Defaults(),
             rpm: float = 500.0, progress: Progress | None = None) -> Estimate:
    """Estimate a job file (validated as import would, nothing stored) or a stored batch.

    A path to an existing file is read as a job file; anything else names a
    batch in the store ``db`` (see :func:`batcher.db.open_store`), whose
    unfinished jobs are estimated. ``defaults`` fill in a file's lines as on
    import, and ``progress`` hears how far the reading (or costing) is. Raises
    :class:`ImportRejected` for a file with bad lines and
    :class:`UsageError` for an unknown batch or a bad ``rpm``.
    """
    if not rpm > 0:
        raise UsageError(f"{option('rpm')} must be above 0, not {rpm}")
    if is_job_input(file_or_batch):  # a file, a FIFO or - (stdin), as import takes them
        ensure_readable(file_or_batch)
        with readable_copy(file_or_batch) as path:
            return estimate_file(path, defaults, rpm, describe(file_or_batch), progress)
    engine = None
    try:
        with naming_a_batch(file_or_batch, imported_from=functools.partial(batch_from_file, db)):
            engine = open_store(db, create=False, readonly=True)  # stores nothing: works where the store is read-only
            found = find_batch(engine, file_or_batch)
        return estimate_batch(engine, found, rpm, progress)
    finally:
        if engine is not None:
            engine.dispose()


def estimate_lines(e: Estimate) -> list[str]:
    """The estimate as a few aligned lines for a terminal."""
    figures = e.to_dict()
    label = "  {:<15}".format
    lines = [f"{e.source}: {figures['jobs']:,} job(s) to send, {figures['requests']:,} request(s) "
             "(retries not counted); nothing sent"]
    lines.append(label("input tokens") + f"~{figures['input_tokens_estimate']:,} (estimated: UTF-8 bytes of the "
                 f"text / {BYTES_PER_TOKEN})")
    lines.append(label("output tokens") + f"at most {figures['max_output_tokens']:,} (the sum of max_tokens)")
    lines.append(label("time") + f"{_minutes(figures['minutes_at_rpm'])} at {e.rpm:,.10g} requests/min")
    for i, (model, m) in enumerate(figures["by_model"].items()):
        lines.append(label("by model" if i == 0 else "") + f"{model}: {m['jobs']:,} job(s), ~{m['input_tokens_estimate']:,} in, "
                     f"at most {m['max_output_tokens']:,} out, {_minutes(m['minutes_at_rpm'])}")
    return lines


def _minutes(minutes: float) -> str:
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    if minutes < 120:
        return f"{minutes:.1f} min"
    return f"{minutes / 60:.1f} h"
