"""The job store's tables, as SQLAlchemy Core objects.

Alembic revisions under ``migrations/`` create and evolve these tables; this
module only describes them so queries can be written against names, not SQL
strings. Timestamps are Unix seconds (floats): cheap to write and compare.
"""

from sqlalchemy import (
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
)

#: Runs of a batch: who is sending (pid, host), since when, how it ended.
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
    Index("ix_runs_batch_ended", "batch_id", "ended_at"),
)

#: One row per request to send. ``body`` is the exact JSON that goes on the
#: wire; ``source`` is the input line as given (for the merged export).
jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("import_id", Integer, ForeignKey("imports.id"), nullable=False),
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
    # Two indexes only: every index costs import speed. (batch, line) serves
    # both the export's input order and the runner's claim cursor.
    UniqueConstraint("batch_id", "custom_id", name="uq_jobs_batch_custom_id"),
    Index("ix_jobs_batch_line", "batch_id", "line"),
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
)

STATUSES = ("pending", "running", "succeeded", "failed", "canceled")
