"""Batches made through the Message Batches API: their deadline, cancel and end.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_batches",
        sa.Column("batch_id", sa.Integer, sa.ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("cancel_requested_at", sa.Float),
        sa.Column("ended_at", sa.Float),
    )


def downgrade() -> None:
    op.drop_table("api_batches")
