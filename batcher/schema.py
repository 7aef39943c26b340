"""The job store's tables, as SQLAlchemy Core objects.

Alembic revisions under ``migrations/`` create and evolve these tables; this
module only describes them so queries can be written against names, not SQL
strings. Timestamps are Unix seconds (floats): cheap to write and compare.
"""

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)

metadata = MetaData()

#: One batch per imported file (or per ``--batch`` name).
batches = Table(
    "batches",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("source", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

#: Each import of a file into a batch, with its counts.
imports = Table(
    "imports",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("source", Text, nullable=False),
    Column("at", Float, nullable=False),
    Column("added", Integer, nullable=False, default=0),
    Column("unchanged", Integer, nullable=False, default=0),
    Column("rejected", Integer, nullable=False, default=0),
    # The --model/--max-tokens/--system given: with a job's input line they
    # rebuild its request body, which is then not stored a second time.
    Column("defaults", Text),
    # The job file as stat saw it before it was read (see jobfile.fingerprint);
    # None for input read once (stdin, a pipe) and for rows given in Python.
    Column("fingerprint", Text),
    # What the import read of the file, if it ended at a line end: bytes,
    # lines and their SHA-256 (see jobfile.Head). An import of the file grown
    # since, that still starts with those bytes, reads only what follows.
    Column("read_bytes", BigInteger),
    Column("read_lines", Integer),
    Column("digest", String(64)),
    # The part of the batch the import's jobs are in (see jobs.part), where
    # lines read later from the same file go too.
    Column("part", Integer),
    # The largest input estimate and max_tokens of one of its jobs (see
    # batcher.cost): a run under token caps whose batch's imports all stand
    # under them reads no job to know that none exceeds a cap on its own.
    # None when not known (imports recorded before revision 0012).
    Column("worst_input_tokens", BigInteger),
    Column("worst_output_tokens", BigInteger),
    # The jobs it added and what they cost, by model, as JSON {model: [jobs,
    # input estimate, max_tokens]}: a batch with no job finished is estimated
    # from them without reading a job. None when not known (an import that
    # met jobs already stored; imports recorded before revision 0013).
    Column("costs", Text),
)

#: Runs of a batch: who is sending (pid, host), since when, at what pace, how it ended.
#: A live row with a fresh heartbeat is what refuses a second run.
runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("host", String(255), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("outcome", String(20)),
    Column("rpm", Float),
    Column("base_url", Text),
    # The pace now and why it is under ``rpm``, and the requests sent over
    # the last minute, refreshed with the heartbeat.
    Column("pace_rpm", Float),
    Column("pace_reason", String(40)),
    Column("recent_rpm", Float),
    Index("ix_runs_batch_ended", "batch_id", "ended_at"),
)

#: One row per request to send. ``source`` is the input line as given (for
#: the merged export); ``body`` the exact JSON that goes on the wire, or empty
#: when it is rebuilt from ``source`` and the import's defaults (see
#: :func:`batcher.jobqueue.claim`), which halves what an import writes.
jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("import_id", Integer, ForeignKey("imports.id"), nullable=False),
    # A batch's order is (part, line): a part holds the jobs of one file or
    # call (see batcher.importer), in their lines' order, and parts follow
    # one another in the order they were made.
    Column("part", Integer, nullable=False, default=0, server_default="0"),
    Column("line", Integer, nullable=False),
    Column("custom_id", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Column("body_hash", String(32), nullable=False),
    Column("source", Text, nullable=False),
    Column("extra", Text),
    Column("status", String(10), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("run_id", Integer),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float),
    # The last failure, in Anthropic's error format, plus its type and HTTP
    # status denormalised so failures can be grouped and retried by them.
    Column("error", Text),
    Column("error_type", String(64)),
    Column("status_code", Integer),
    # The answer and what it cost.
    Column("response", Text),
    Column("model", String(100)),
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
    Column("cache_creation_input_tokens", Integer),
    Column("cache_read_input_tokens", Integer),
    Column("latency_ms", Integer),
    Column("streamed", Boolean),
    Column("ttft_ms", Integer),
    # Set when the answer was reused (``run --reuse``) from the job it names:
    # no request was sent for this one.
    Column("reused_from", Integer),
    # Every index costs import speed. (batch, part, line) serves the export's
    # input order; the partial indexes hold only jobs in one status, so the claim
    # finds the next pending job, a new run the jobs a dead one left running,
    # and status a failure's example, without reading the jobs in between.
    # Queries must spell the status as a literal (``in_status``) for SQLite
    # to use them. The migrations create them on every database; only the
    # SQLite spelling is repeated here, since naming another dialect's
    # options loads that dialect on every start (~50 ms for `status`).
    UniqueConstraint("batch_id", "custom_id", name="uq_jobs_batch_custom_id"),
    Index("ix_jobs_batch_order", "batch_id", "part", "line"),
    Index("ix_jobs_pending", "batch_id", "part", "line", sqlite_where=text("status = 'pending'")),
    Index("ix_jobs_running", "batch_id", "run_id", sqlite_where=text("status = 'running'")),
    Index("ix_jobs_failed", "batch_id", "error_type", "status_code", sqlite_where=text("status = 'failed'")),
)

#: Every HTTP attempt, successful or not: the raw material for retries,
#: failure statistics and latency figures.
attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("run_id", Integer),
    Column("started_at", Float, nullable=False),
    Column("latency_ms", Integer),
    Column("status_code", Integer),
    Column("error_type", String(64)),
    Column("streamed", Boolean, nullable=False, default=False),
    Column("ttft_ms", Integer),
    Index("ix_attempts_job", "job_id"),
    Index("ix_attempts_started", "started_at"),
)

# -- the tally (see batcher.tally): a batch's figures kept as rows change ------

#: Jobs by status, the attempt budget used, HTTP attempts and their span.
batch_tallies = Table(
    "batch_tallies",
    metadata,
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    *(Column(status, Integer, nullable=False, server_default="0")
      for status in ("pending", "running", "succeeded", "failed", "canceled")),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("requests", Integer, nullable=False, server_default="0"),
    # Succeeded jobs answered with an identical request's answer (``run --reuse``).
    Column("reused", Integer, nullable=False, server_default="0"),
    Column("streamed_ok", Integer, nullable=False, server_default="0"),
    Column("first_request_at", Float),
    Column("last_request_end", Float),
    Column("last_finished_at", Float),
)

#: Answers and tokens by model ("" for answers that name no model).
model_tallies = Table(
    "model_tallies",
    metadata,
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("model", String(100), primary_key=True),
    *(Column(k, Integer, nullable=False, server_default="0")
      for k in ("succeeded", "input_tokens", "output_tokens", "cache_creation_input_tokens",
                "cache_read_input_tokens")),
)

#: Failed jobs by error type ("" for none) and HTTP status (0 for none).
failure_tallies = Table(
    "failure_tallies",
    metadata,
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("error_type", String(64), primary_key=True),
    Column("status_code", Integer, primary_key=True),
    Column("count", Integer, nullable=False, server_default="0"),
)

#: Successful streamed attempts by time to first token / duration, to the
#: millisecond: exact medians from a few thousand rows at most.
timing_tallies = Table(
    "timing_tallies",
    metadata,
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("kind", String(8), primary_key=True),
    Column("ms", Integer, primary_key=True),
    Column("count", Integer, nullable=False, server_default="0"),
)

#: Batches made through the Message Batches API (``batcher serve``): when
#: they expire, when a cancel was asked for, when they ended. Other batches
#: have no row here.
api_batches = Table(
    "api_batches",
    metadata,
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("expires_at", Float, nullable=False),
    Column("cancel_requested_at", Float),
    Column("ended_at", Float),
    # The anthropic-beta header given at creation: sent with each of its requests.
    Column("betas", Text),
)

#: Answered requests by canonical request key (:mod:`batcher.reuse`), written
#: with each success, so that ``run --reuse`` finds an earlier answer without
#: the import path paying for an index on ``jobs``.
answers = Table(
    "answers",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("request_key", String(32), nullable=False),
    Index("ix_answers_request_key", "request_key"),
)

STATUSES = ("pending", "running", "succeeded", "failed", "canceled")

#: A batch's input order, read off its (batch, part, line) indexes: order by
#: it, or compare ``tuple_(*ORDER)`` with a cursor, to walk a batch in order.
ORDER = (jobs.c.part, jobs.c.line, jobs.c.id)


def in_status(status: str) -> Any:
    """``jobs.status = 'STATUS'`` with the status written into the SQL.

    A bound parameter would hide the value from SQLite's planner, which then
    cannot use the partial indexes on pending, running and failed jobs.
    """
    if status not in STATUSES:
        raise ValueError(f"not a job status: {status!r}")
    return jobs.c.status == literal_column(f"'{status}'")
