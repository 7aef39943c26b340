"""What an import read of its job file: bytes, lines and their SHA-256; its part of the batch.

A job file that grew (prompts appended to it) was read again in full: on a
million lines, about 40 s before the first request of the run that follows.
An import now keeps how far it read and the hash of those bytes; the next
import of the same file, if the file still starts with them, reads only
what follows, into the same part of the batch (kept too). Imports recorded
before this revision have none: their file is read in full once more,
which records it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("imports", sa.Column("read_bytes", sa.BigInteger))
    op.add_column("imports", sa.Column("read_lines", sa.Integer))
    op.add_column("imports", sa.Column("digest", sa.String(64)))
    op.add_column("imports", sa.Column("part", sa.Integer))


def downgrade() -> None:
    # In place, as 0009 does: the jobs refer to this table.
    for column in ("part", "digest", "read_lines", "read_bytes"):
        op.drop_column("imports", column)
