"""The largest worst case of one job of an import: input estimate and max_tokens.

A run under --max-input-tokens or --max-output-tokens first makes sure no
job exceeds a cap on its own, so that it stops before sending anything
rather than part way. That meant costing every unfinished job: about 27 s
before the first request on a million jobs. An import now keeps the largest
figures of its jobs; when the batch's imports all stand under the caps, no
job is read. Imports recorded before this revision have none (NULL): a
capped run of their batch reads its jobs, as before.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("imports", sa.Column("worst_input_tokens", sa.BigInteger))
    op.add_column("imports", sa.Column("worst_output_tokens", sa.BigInteger))


def downgrade() -> None:
    # In place, as 0009 does: the jobs refer to this table.
    for column in ("worst_output_tokens", "worst_input_tokens"):
        op.drop_column("imports", column)
