"""The ``anthropic-beta`` header a Message Batches API batch was created with.

Anthropic applies the betas given when a batch is created to every request
of the batch; the server keeps them with the batch and sends them with each
request, as long as it runs the batch (a restart included).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_batches") as api_batches:
        api_batches.add_column(sa.Column("betas", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("api_batches") as api_batches:
        api_batches.drop_column("betas")
