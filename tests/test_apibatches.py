"""Message Batches API batches in a real SQLite store, without a server: what the rest of batcher may do to them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import batcher
from batcher import apibatches, manage
from batcher.db import open_store
from batcher.errors import UsageError

PARAMS = {"model": "claude-haiku-4.5", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}


def test_no_job_file_or_rows_add_to_an_api_batch(tmp_path: Path) -> None:
    # Its requests are those it was created with: a job added later would be "processing" in a batch the
    # API reports "ended" (or be sent as part of a batch whose client never asked for it).
    db = tmp_path / "s.db"
    engine = open_store(str(db))
    try:
        made = apibatches.create(engine, [("q1", PARAMS)], 3600.0)
    finally:
        engine.dispose()
    more = tmp_path / "more.jsonl"
    more.write_text('{"custom_id": "q2", "params": {"model": "claude-haiku-4.5", "max_tokens": 16, '
                    '"messages": [{"role": "user", "content": "More"}]}}\n')
    done = subprocess.run([sys.executable, "-m", "batcher", "import", str(more), "--batch", made.name,
                           "--db", str(db)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"batcher: error: batch {made.name} is a Message Batches API batch: its "
                                   "requests are those it was created with; import into a batch of another name")
    with batcher.Store(str(db)) as store:
        with pytest.raises(UsageError, match="is a Message Batches API batch"):
            store.add(made.name, ["More"], model="claude-haiku-4.5", max_tokens=16)
        engine = store.engine
        state = apibatches.get(engine, made.name)
        assert state is not None and state.counts == apibatches.Counts(processing=1)
        assert store.add("other", ["More"], model="claude-haiku-4.5", max_tokens=16).report.added == 1


def test_a_cancel_of_an_ended_api_batch_changes_nothing(tmp_path: Path) -> None:
    # As the API's own cancel: an ended batch never shows a cancel_initiated_at after its ended_at.
    engine = open_store(str(tmp_path / "s.db"))
    try:
        made = apibatches.create(engine, [("q1", PARAMS)], 3600.0)
        assert apibatches.expire(engine, made) == 1 and apibatches.end(engine, made)
        ended = apibatches.get(engine, made.name)
        assert manage.cancel(engine, made) == 0
        assert apibatches.get(engine, made.name) == ended
        assert ended is not None and ended.cancel_requested_at is None
    finally:
        engine.dispose()
