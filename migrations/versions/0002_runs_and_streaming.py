"""Runs (who is sending a batch) and per-attempt streaming figures.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("batch_id", sa.Integer, sa.ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float),
        sa.Column("outcome", sa.String(20)),
        sa.Column("rpm", sa.Float),
        sa.Column("base_url", sa.Text),
    )
    op.create_index("ix_runs_batch_ended", "runs", ["batch_id", "ended_at"])
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("streamed", sa.Boolean))
        jobs.add_column(sa.Column("ttft_ms", sa.Integer))
    with op.batch_alter_table("attempts") as attempts:
        attempts.add_column(sa.Column("streamed", sa.Boolean, nullable=False, server_default=sa.false()))
        attempts.add_column(sa.Column("ttft_ms", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as attempts:
        attempts.drop_column("ttft_ms")
        attempts.drop_column("streamed")
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("ttft_ms")
        jobs.drop_column("streamed")
    op.drop_index("ix_runs_batch_ended", "runs")
    op.drop_table("runs")
