"""Alembic revisions of the job store; shipped in the wheel as ``batcher.migrations``."""
