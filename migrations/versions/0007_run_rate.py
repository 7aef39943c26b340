"""The request rate a live run holds, for ``status`` to read instead of counting attempts.

Counting the last minute's attempts costs a row per request sent in that
minute; a run refreshes this figure with its heartbeat, so ``status`` reads
one row whatever the rate and the batch size.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        # Requests per minute the run sent over the last minute; refreshed with the heartbeat.
        runs.add_column(sa.Column("recent_rpm", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("recent_rpm")
