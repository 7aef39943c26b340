"""What an import's added jobs cost, by model: jobs, input estimate, max_tokens.

`batcher estimate BATCH` costed every unfinished job, rebuilding and
reading its request: 15 s for a million with workers, 27 s in one process
(a notebook cannot fork). An import now keeps the sums of the jobs it
added, as it keeps their worst case. A job belongs to the import that
added it and its request never changes, so a batch none of whose jobs has
finished is estimated from its imports' sums, reading no job. An import
that met jobs already stored (a changed file read again) keeps none (NULL),
and so do imports recorded before this revision: their batches are costed
job by job, as before.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("imports", sa.Column("costs", sa.Text))


def downgrade() -> None:
    # In place, as 0009 does: the jobs refer to this table.
    op.drop_column("imports", "costs")
