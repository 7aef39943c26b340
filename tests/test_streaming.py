"""``batcher run --stream``: streamed answers are recorded exactly as non-streamed ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from batcher.schema import attempts
from test_runner import PROMPTS, assert_all_answered, attempt_rows, run, stored


def responses(engine: Any) -> dict[str, dict]:
    return {cid: orjson.loads(row.response) for cid, row in stored(engine).items()}


def test_streamed_answers_equal_non_streamed_ones(tmp_path: Path, simulator: Any) -> None:
    sim = simulator()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, plain = run(tmp_path / "a", sim, PROMPTS[:15], stream=False)
    _, streamed = run(tmp_path / "b", sim, PROMPTS[:15], stream=True)
    assert responses(plain) == responses(streamed)
    assert all(row.streamed for row in stored(streamed).values())
    assert not any(row.streamed for row in stored(plain).values())
    ttfts = [row.ttft_ms for row in stored(streamed).values()]
    assert all(t is not None and t >= 0 for t in ttfts)


@pytest.mark.parametrize("faults", [{"fail_stream_error": 0.3}, {"fail_cut": 0.3}])
def test_stream_faults_are_retried_and_never_recorded_partially(tmp_path: Path, simulator: Any,
                                                                 faults: dict) -> None:
    (tmp_path / "ref").mkdir()
    (tmp_path / "faulty").mkdir()
    _, reference = run(tmp_path / "ref", simulator(), PROMPTS[:20], stream=False)
    sim = simulator(seed=5, **faults)
    summary, engine = run(tmp_path / "faulty", sim, PROMPTS[:20], stream=True, max_attempts=10)
    assert summary.exit_code == 0
    assert_all_answered(engine, PROMPTS[:20])
    assert responses(engine) == responses(reference)
    failures = [a for a in attempt_rows(engine) if a.error_type is not None]
    assert failures and all(a.streamed for a in failures)
    expected = {"overloaded_error", "api_error", "incomplete_stream", "connection_error"}
    assert {a.error_type for a in failures} <= expected


def test_long_max_tokens_stream_by_default(tmp_path: Path, simulator: Any) -> None:
    sim = simulator()
    engine_path = tmp_path / "run.db"
    from batcher.db import open_store
    from batcher.importer import import_file
    from batcher.runner import RunConfig, run_batch
    from batcher.store import find_batch
    from batcher.validate import Defaults
    import anyio

    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text(
        '{"custom_id": "short", "prompt": "short one", "max_tokens": 100}\n'
        '{"custom_id": "long", "prompt": "long one", "max_tokens": 20000}\n')
    engine = open_store(str(engine_path))
    import_file(engine, str(jobs_file), defaults=Defaults("claude-haiku-4.5"))
    anyio.run(run_batch, engine, find_batch(engine, "jobs"), "k",
              RunConfig(rpm=6000, base_url=sim.base_url, handle_signals=False))
    rows = stored(engine)
    assert (rows["short"].streamed, rows["long"].streamed) == (False, True)
    with engine.connect() as conn:
        assert conn.execute(select(attempts.c.streamed).order_by(attempts.c.job_id)).scalars().all() == [False, True]
