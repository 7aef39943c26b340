"""A batch's order: the part of the batch a job belongs to, then its line.

Ordering by line alone interleaved a batch made of two files (line 1 of
each, then line 2...), and of two sets of rows given in Python. Each job
now carries its ``part``: the jobs an import adds go into the part of the
jobs it finds already stored (a file read again keeps its place), or into
a new part after the others. Jobs stored before this revision are all in
part 0, in the order they had.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("part", sa.Integer, nullable=False, server_default="0"))
    op.drop_index("ix_jobs_batch_line", "jobs")
    op.drop_index("ix_jobs_pending", "jobs")
    op.create_index("ix_jobs_batch_order", "jobs", ["batch_id", "part", "line"])
    op.create_index("ix_jobs_pending", "jobs", ["batch_id", "part", "line"], sqlite_where=PENDING,
                    postgresql_where=PENDING)


def downgrade() -> None:
    op.drop_index("ix_jobs_pending", "jobs")
    op.drop_index("ix_jobs_batch_order", "jobs")
    op.create_index("ix_jobs_batch_line", "jobs", ["batch_id", "line"])
    op.create_index("ix_jobs_pending", "jobs", ["batch_id", "line"], sqlite_where=PENDING, postgresql_where=PENDING)
    op.drop_column("jobs", "part")
