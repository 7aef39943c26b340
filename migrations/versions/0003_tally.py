"""The tally: a batch's figures kept as its rows change; partial indexes by status.

Counts by status, tokens by model, failures by kind and HTTP attempt figures
live in small tables updated in the same transactions as the jobs, so status
answers at once on a batch of millions. Existing stores get their tally
counted from the rows here, once. Partial indexes on pending, running and
failed jobs let a run find its next job or a dead run's jobs without reading
the whole batch. Imports remember their defaults, so a job's request body can
be rebuilt from its input line instead of being stored twice.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STATUSES = ("pending", "running", "succeeded", "failed", "canceled")
TOKENS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _batch_fk() -> sa.Column:
    return sa.Column("batch_id", sa.Integer, sa.ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)


def _count(name: str) -> sa.Column:
    return sa.Column(name, sa.Integer, nullable=False, server_default="0")


def upgrade() -> None:
    op.create_table(
        "batch_tallies",
        _batch_fk(),
        *(_count(s) for s in STATUSES),
        _count("attempts"),
        _count("requests"),
        _count("streamed_ok"),
        sa.Column("first_request_at", sa.Float),
        sa.Column("last_request_end", sa.Float),
        sa.Column("last_finished_at", sa.Float),
    )
    op.create_table(
        "model_tallies",
        _batch_fk(),
        sa.Column("model", sa.String(100), primary_key=True),
        _count("succeeded"),
        *(_count(k) for k in TOKENS),
    )
    op.create_table(
        "failure_tallies",
        _batch_fk(),
        sa.Column("error_type", sa.String(64), primary_key=True),
        sa.Column("status_code", sa.Integer, primary_key=True),
        _count("count"),
    )
    op.create_table(
        "timing_tallies",
        _batch_fk(),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("ms", sa.Integer, primary_key=True),
        _count("count"),
    )
    for status, columns in (("pending", ["batch_id", "line"]), ("running", ["batch_id", "run_id"]),
                            ("failed", ["batch_id", "error_type", "status_code"])):
        where = sa.text(f"status = '{status}'")
        op.create_index(f"ix_jobs_{status}", "jobs", columns, sqlite_where=where, postgresql_where=where)
    op.create_index("ix_attempts_started", "attempts", ["started_at"])
    op.add_column("imports", sa.Column("defaults", sa.Text))
    _count_existing()


def _count_existing() -> None:
    """Fill the tally from the rows a store already holds."""
    by_status = ", ".join(f"COALESCE(SUM(CASE WHEN j.status = '{s}' THEN 1 ELSE 0 END), 0)" for s in STATUSES)
    op.execute(
        f"INSERT INTO batch_tallies (batch_id, {', '.join(STATUSES)}, attempts, last_finished_at) "
        f"SELECT b.id, {by_status}, COALESCE(SUM(j.attempts), 0), MAX(j.finished_at) "
        "FROM batches b LEFT JOIN jobs j ON j.batch_id = b.id GROUP BY b.id")
    ok = "a.streamed = TRUE AND a.error_type IS NULL"
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT j.batch_id, COUNT(*), MIN(a.started_at), "
        "MAX(a.started_at + COALESCE(a.latency_ms, 0) / 1000.0), "
        f"COALESCE(SUM(CASE WHEN {ok} THEN 1 ELSE 0 END), 0) "
        "FROM attempts a JOIN jobs j ON j.id = a.job_id GROUP BY j.batch_id")).all()
    for batch_id, requests, first, last, streamed_ok in rows:
        conn.execute(sa.text("UPDATE batch_tallies SET requests = :r, first_request_at = :f, "
                             "last_request_end = :l, streamed_ok = :s WHERE batch_id = :b"),
                     {"r": requests, "f": first, "l": last, "s": streamed_ok, "b": batch_id})
    sums = ", ".join(f"COALESCE(SUM({k}), 0)" for k in TOKENS)
    op.execute(
        f"INSERT INTO model_tallies (batch_id, model, succeeded, {', '.join(TOKENS)}) "
        f"SELECT batch_id, COALESCE(model, ''), COUNT(*), {sums} FROM jobs WHERE status = 'succeeded' "
        "GROUP BY batch_id, COALESCE(model, '')")
    op.execute(
        "INSERT INTO failure_tallies (batch_id, error_type, status_code, count) "
        "SELECT batch_id, COALESCE(error_type, ''), COALESCE(status_code, 0), COUNT(*) FROM jobs "
        "WHERE status = 'failed' GROUP BY batch_id, COALESCE(error_type, ''), COALESCE(status_code, 0)")
    for kind, column in (("ttft", "ttft_ms"), ("duration", "latency_ms")):
        op.execute(
            f"INSERT INTO timing_tallies (batch_id, kind, ms, count) "
            f"SELECT j.batch_id, '{kind}', a.{column}, COUNT(*) FROM attempts a JOIN jobs j ON j.id = a.job_id "
            f"WHERE {ok} AND a.{column} IS NOT NULL GROUP BY j.batch_id, a.{column}")


def downgrade() -> None:
    op.drop_column("imports", "defaults")
    op.drop_index("ix_attempts_started", "attempts")
    for status in ("pending", "running", "failed"):
        op.drop_index(f"ix_jobs_{status}", "jobs")
    for table in ("timing_tallies", "failure_tallies", "model_tallies", "batch_tallies"):
        op.drop_table(table)
