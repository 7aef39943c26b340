"""The progress line: what it says, and how often it is written when not on a terminal."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import time
from pathlib import Path
from typing import Any

import pytest

import batcher
from batcher import _rows, estimator, prepare, progress
from batcher.errors import StoreBusy, StoreFull, StoreStalled
from batcher.estimator import estimate
from batcher.manage import cancel_jobs
from batcher.runner import RunSummary, Snapshot
from batcher.schema import jobs
from batcher.store import find_batch
from batcher.validate import Defaults


def snapshot(**changes: Any) -> Snapshot:
    values = dict(total=1000, done=250, succeeded=240, failed=10, retrying=3, in_flight=12, rate_rpm=497.4,
                  target_rpm=500.0, eta_s=95.0, input_tokens=12_345, output_tokens=2_345_678, paused_s=0.0,
                  stopping=False)
    return Snapshot(**{**values, **changes})


def test_the_line_names_every_figure() -> None:
    line = progress.describe(snapshot())
    assert line == ("250/1,000 (25%) | ok 240 | failed 10 | retrying 3 | in flight 12 | 497/500 rpm | ETA 1m35s"
                    " | tokens 12.3k in / 2.3M out")
    assert progress.describe(snapshot(paused_s=12.0, stopping=True)).endswith(
        " | paused 12s by the rate limit | stopping")


def test_plain_output_is_one_line_every_ten_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    display = progress.ProgressDisplay(stream=out)
    assert display.live is None  # not a terminal
    for step in range(25):  # 25 s of half-second updates
        display(snapshot(done=step))
        clock[0] += 1.0 if step % 2 else 0.0
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("20/1,000")
    quiet = io.StringIO()
    progress.ProgressDisplay(stream=quiet, quiet=True)(snapshot())
    assert quiet.getvalue() == ""


def test_interrupted_summary_says_how_to_resume() -> None:
    summary = RunSummary("b", "interrupted", 130, succeeded=7, failed=1, left=42, attempts=9, rate_limited=0,
                         elapsed_s=61.0, input_tokens=1, output_tokens=2)
    lines = progress.summary_lines(summary)
    assert lines[-1] == "8 done, 42 left: run the same command again to resume"
    assert lines[0].startswith("batch b: 7 succeeded, 1 failed this run, 42 left; 9 requests in 1m01s")


def test_the_summary_rate_of_a_short_run_does_not_read_above_its_pace() -> None:
    """Three requests at 500/min start 0.24 s apart: three over 0.33 s would read 545/min."""
    summary = RunSummary("b", "finished", 0, succeeded=3, failed=0, left=0, attempts=3, rate_limited=0,
                         elapsed_s=0.33, input_tokens=1, output_tokens=2)
    assert "3 requests in 0s (364/min, 0 rate-limited)" in progress.summary_lines(summary)[0]


@pytest.mark.parametrize("attempts, said", [(1, "1 request in 0s (0 rate-limited)"),
                                             (0, "0 requests in 0s (0 rate-limited)")])
def test_a_run_of_one_request_or_none_shows_no_rate(attempts: int, said: str) -> None:
    """One request spans no interval: '1 requests in 0s (0/min' read as a run that did not move."""
    summary = RunSummary("b", "stopped", 3, succeeded=0, failed=0, left=2, attempts=attempts, rate_limited=0,
                         elapsed_s=0.2, input_tokens=0, output_tokens=0)
    assert f"2 left; {said}; tokens 0 in / 0 out" in progress.summary_lines(summary)[0]


@pytest.mark.parametrize("error, said", [
    (StoreFull("x"), "store full: paused, 7 outcome(s) held until there is room"),
    (StoreBusy("x"), "store locked: paused, 7 outcome(s) held until it is free")])
def test_a_stalled_store_is_named_on_the_line_instead_of_a_rate_limit_pause(error: StoreStalled, said: str) -> None:
    line = progress.describe(snapshot(paused_s=1.5, held=7, stall=error.pause_note(7)))
    assert line.endswith(f" | {said}")
    assert "by the rate limit" not in line


def test_jobs_put_back_as_a_run_ended_are_named_with_what_sends_them() -> None:
    summary = RunSummary("b", "finished", 1, succeeded=94, failed=6, left=6, attempts=100, rate_limited=0,
                         elapsed_s=5.0, input_tokens=1, output_tokens=2)
    assert progress.summary_lines(summary)[-1] == "6 job(s) of the batch are pending again; send them with: batcher run b"


def test_a_limit_stop_after_failures_does_not_say_nothing_failed() -> None:
    """Jobs that failed on their own before the stop were said to be none ('nothing was marked failed')."""
    summary = RunSummary("b", "limit", 5, succeeded=0, failed=4, left=1, attempts=4, rate_limited=0,
                         elapsed_s=1.0, input_tokens=0, output_tokens=0, message="stopped at --limit 4")
    first, stop = progress.summary_lines(summary)
    assert "4 failed this run, 1 left" in first
    assert stop.startswith("batcher: stopped at --limit 4; this run spent 0 input and 0 output tokens in 4 requests; "
                           "1 job(s) left, not sent and not failed: run the same command again")
    assert "nothing" not in stop


# --- reading a long import ---------------------------------------------------------------


def test_a_long_import_says_how_far_it_has_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Through Store.add, the path of `batcher import` and `batcher run FILE`: rows and a job file tell the
    lines read and their part of all; not on a terminal, only when asked (a line every 10 s then)."""
    monkeypatch.setattr(progress, "COUNT_SHOWN_AFTER_S", 0.0)
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    monkeypatch.setattr(_rows, "ROWS_PER_CHUNK", 10)
    monkeypatch.setattr(prepare, "BLOCK_BYTES", 200)
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps({"custom_id": f"j{i}", "prompt": f"question {i}?"}) + "\n" for i in range(25)))
    with batcher.Store(str(tmp_path / "s.db")) as store:
        store.add("r", [f"q{i}" for i in range(25)], progress=True)
        assert capsys.readouterr().err.splitlines() == ["reading rows: 10 line(s) (40%)",
                                                        "reading rows: 20 line(s) (80%)"]
        store.add("f", path, progress=True)
        said = capsys.readouterr().err.splitlines()
        assert len(said) >= 3 and said[-1] == f"reading {path}: 25 line(s) (100%)", said
        assert all(re.fullmatch(rf"reading {re.escape(str(path))}: \d+ line\(s\) \(\d+%\)", line) for line in said)
        store.add("quiet", [f"q{i}" for i in range(25)])  # not a terminal: nothing unless asked
        store.add("i", (f"q{i}" for i in range(25)), progress=True)  # an iterator: no part of all
    assert capsys.readouterr().err.splitlines() == ["reading rows: 10 line(s)", "reading rows: 20 line(s)"]


def test_a_long_export_says_how_far_it_has_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(progress, "COUNT_SHOWN_AFTER_S", 0.0)
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    out = tmp_path / "out.jsonl"
    with batcher.Store(str(tmp_path / "s.db")) as store:
        batch = store.add("x", [f"q{i}" for i in range(1200)], progress=False)
        assert batch.export(str(out), include_pending=True, progress=True) == 1200  # written 500 lines at a time
        assert capsys.readouterr().err.splitlines() == [f"writing {out}: 500 line(s) (42%)",
                                                        f"writing {out}: 1,000 line(s) (83%)",
                                                        f"writing {out}: 1,200 line(s) (100%)"]
        assert batch.export(str(out), include_pending=True) == 1200  # not a terminal: nothing unless asked
    assert capsys.readouterr().err == "" and len(out.read_bytes().splitlines()) == 1200


def test_an_estimate_of_a_file_says_how_far_it_has_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare, "BLOCK_BYTES", 200)
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps({"custom_id": f"j{i}", "prompt": f"question {i}?"}) + "\n" for i in range(25)))
    heard: list[tuple[int, float | None]] = []
    found = estimate(str(path), defaults=Defaults("claude-haiku-4.5", 16), progress=lambda *told: heard.append(told))
    assert found.jobs == 25 and len(heard) >= 3 and heard[-1] == (25, 1.0)
    assert heard == sorted(heard) and all(0 < part <= 1 for _, part in heard if part is not None)

    monkeypatch.setattr(estimator, "TOLD_EVERY", 10)  # a batch with a job finished: the others are costed one by one
    with batcher.Store(str(tmp_path / "s.db")) as store:
        store.add("e", path, progress=False)
        assert cancel_jobs(store.engine, find_batch(store.engine, "e"), "pending", jobs.c.custom_id == "j24") == 1
    heard.clear()
    assert estimate("e", str(tmp_path / "s.db"), progress=lambda *told: heard.append(told)).jobs == 24
    assert heard == [(10, 10 / 24), (20, 20 / 24)]


def test_on_a_terminal_the_reading_line_is_taken_away_before_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "COUNT_SHOWN_AFTER_S", 0.0)
    main, side = pty.openpty()
    with os.fdopen(side, "w") as terminal:
        display = progress.CountDisplay("reading big.jsonl", stream=terminal)
        display(500_000, 0.5)
        display.close()
    shown = b""
    while chunk := _read_some(main):
        shown += chunk
    os.close(main)
    text = re.sub(rb"\x1b\[[0-9;?]*[a-zA-Z]", b"", shown).decode()
    assert "reading big.jsonl: 500,000 line(s) (50%)" in text
    assert shown.rstrip(b"\r\n").endswith(b"\x1b[2K")  # erased: the report prints where it stood


def test_a_step_that_cannot_count_shows_a_spinner_once_it_takes_long_and_takes_it_away(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "COUNT_SHOWN_AFTER_S", 0.0)
    main, side = pty.openpty()
    with os.fdopen(side, "w") as terminal:
        display = progress.WaitDisplay("deleting batch big", stream=terminal)
        time.sleep(0.3)  # the step going on; rich draws from its own thread
        display.close()
        monkeypatch.setattr(progress, "COUNT_SHOWN_AFTER_S", 0.1)
        quick = progress.WaitDisplay("canceling", stream=terminal)
        quick.close()  # done before its time came: it never shows, even once that time passes
        time.sleep(0.3)
    shown = b""
    while chunk := _read_some(main):
        shown += chunk
    os.close(main)
    text = re.sub(rb"\x1b\[[0-9;?]*[a-zA-Z]", b"", shown).decode()
    assert "deleting batch big" in text and "canceling" not in text
    assert shown.rstrip(b"\r\n").endswith(b"\x1b[2K")  # erased: the report prints where it stood


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 4096) if select.select([fd], [], [], 0.5)[0] else b""
    except OSError:  # the other side closed
        return b""
