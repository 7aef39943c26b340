"""What a job file was, as ``stat`` saw it, when an import read it.

Running the same command again re-imports its job file, and checking a
million unchanged lines one by one took a minute before the first request.
An import of the very file the batch's last import read, unchanged since,
now reads nothing. Imports recorded before this revision have none and are
read once more, which records it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("imports", sa.Column("fingerprint", sa.Text))


def downgrade() -> None:
    # In place (SQLite's own DROP COLUMN): a copy of the table could not replace
    # it while the jobs refer to it.
    op.drop_column("imports", "fingerprint")
