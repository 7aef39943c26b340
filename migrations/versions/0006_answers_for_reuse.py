"""Answered requests by canonical key (for ``run --reuse``), jobs.reused_from and its tally.

The answers of a store made before this revision are keyed here too, so a
``--reuse`` run finds them. No job was reused before, so the tally starts at 0.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

CHUNK = 5000


def upgrade() -> None:
    from batcher.prepare import request_body
    from batcher.reuse import request_key

    # Plain ALTERs: a batch copy of ``jobs`` would cascade-delete its attempts.
    op.add_column("jobs", sa.Column("reused_from", sa.Integer))
    op.add_column("batch_tallies", sa.Column("reused", sa.Integer, nullable=False, server_default="0"))
    answers = op.create_table(
        "answers",
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("request_key", sa.String(32), nullable=False),
    )
    op.create_index("ix_answers_request_key", "answers", ["request_key"])
    conn = op.get_bind()
    after = 0
    while True:
        rows = conn.execute(sa.text(
            "SELECT jobs.id, jobs.body, jobs.source, jobs.line, imports.defaults FROM jobs"
            " JOIN imports ON imports.id = jobs.import_id"
            " WHERE jobs.status = 'succeeded' AND jobs.id > :after ORDER BY jobs.id LIMIT :n"),
            {"after": after, "n": CHUNK}).all()
        if not rows:
            break
        keyed = []
        for r in rows:
            try:  # a body not stored is rebuilt from the input line, as the claim does
                body = r.body or request_body(r.source, r.line, r.defaults)
            except (ValueError, TypeError):
                continue  # not reusable; nothing else depends on it
            keyed.append({"job_id": r.id, "request_key": request_key(orjson.loads(body))})
        if keyed:
            conn.execute(answers.insert(), keyed)
        after = rows[-1].id


def downgrade() -> None:
    op.drop_index("ix_answers_request_key", "answers")
    op.drop_table("answers")
    op.drop_column("batch_tallies", "reused")
    op.drop_column("jobs", "reused_from")
