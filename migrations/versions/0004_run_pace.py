"""The pace a live run holds, for ``status`` to show from another process.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        # Requests per minute the run paces at now (what the server allows, at most --rpm),
        # and why it is under --rpm (NULL when it is not); refreshed with the heartbeat.
        runs.add_column(sa.Column("pace_rpm", sa.Float))
        runs.add_column(sa.Column("pace_reason", sa.String(40)))


def downgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("pace_reason")
        runs.drop_column("pace_rpm")
