"""Pacing when the server pushes back: headers first, 429s as evidence, AIMD without headers.

Runs go over real HTTP against the simulator, on real SQLite files. The
bounds are loose on purpose (a loaded machine); ``bench/rate_bench.py``
holds the strict figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from batcher import writer
from batcher.client import Attempt, MessagesClient, RateInfo, rate_info
from batcher.db import open_store
from batcher.importer import import_file
from batcher.pacer import Pacer
from batcher.progress import describe
from batcher.retry import Verdict, decide
from batcher.runner import RunConfig, Runner, Snapshot
from batcher.status import batch_status, status_lines
from batcher.store import find_batch
from batcher.validate import Defaults

KEY = "sk-test-pacing-0123456789"


def runner(tmp_path: Path, sim: Any, n: int, name: str = "jobs", **config: Any) -> Runner:
    """A runner for a fresh store of ``n`` jobs (its own store per name)."""
    engine = open_store(str(tmp_path / f"{name}.db"))
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"custom_id": f"j{i}", "prompt": f"{name} question {i}"}) + b"\n"
                              for i in range(n)))
    import_file(engine, str(path), defaults=Defaults("claude-haiku-4.5", 32))
    options = {"rpm": 6000, "base_url": sim.base_url, "handle_signals": False, **config}
    return Runner(engine, find_batch(engine, name), KEY, RunConfig(**options))


def accepted_rate(stats: dict[str, Any]) -> float:
    """Requests accepted per second after the first tenth (a start-up burst is not the steady pace)."""
    times = sorted(stats["accepted"])[len(stats["accepted"]) // 10:]
    return (len(times) - 1) / (times[-1] - times[0])


def refused_share(stats: dict[str, Any]) -> float:
    return stats.get("status_429", 0) / stats["requests"]


# --- reading the window ---------------------------------------------------------


def test_both_header_spellings_give_the_window() -> None:
    poe = rate_info(httpx.Headers({"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "42",
                                   "x-ratelimit-reset-requests": "1.5"}))
    assert (poe.limit, poe.remaining, poe.reset_s) == (500, 42, 1.5)
    anthropic = rate_info(httpx.Headers({"anthropic-ratelimit-requests-limit": "50",
                                         "anthropic-ratelimit-requests-remaining": "7",
                                         "anthropic-ratelimit-requests-reset": "2000-01-01T00:00:00Z"}))
    assert (anthropic.limit, anthropic.remaining, anthropic.reset_s) == (50, 7, 0.0)  # past: no wait
    assert rate_info(httpx.Headers({"anthropic-ratelimit-requests-reset": "soon"})).reset_s is None


@pytest.mark.parametrize("style", ["poe", "anthropic", "none"])
def test_the_simulator_announces_its_window_as_told(simulator: Any, style: str) -> None:
    sim = simulator(rpm=10, window=4, rate_headers=style)

    async def one() -> Any:
        async with MessagesClient(KEY, sim.base_url) as client:
            body = {"model": "claude-haiku-4.5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
            return await client.send(body)

    attempt = anyio.run(one)
    assert attempt.ok
    if style == "none":
        assert (attempt.rate.limit, attempt.rate.remaining, attempt.rate.reset_s) == (None, None, None)
    else:
        assert (attempt.rate.limit, attempt.rate.remaining) == (10, 9)
        assert 3.0 < attempt.rate.reset_s <= 4.01


def test_an_upstream_429_without_retry_after_backs_off_rather_than_waiting_for_the_reset() -> None:
    def refusal(remaining: int) -> Attempt:
        error = {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit exceeded"}}
        return Attempt(429, 0.1, error=error, error_type="rate_limit_error",
                       rate=RateInfo(limit=500, remaining=remaining, reset_s=40.0))

    assert decide(refusal(0), 0, 6).delay_s == 40.0  # the window is spent: its reset
    upstream = decide(refusal(300), 0, 6)
    assert upstream.verdict is Verdict.RETRY and upstream.delay_s <= 0.25 and not upstream.counts


# --- the pacer's reading of evidence (its own clock: pure decisions) -------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_429_with_room_neither_pauses_nor_slows() -> None:
    clock = Clock()
    pacer = Pacer(3000, clock=clock)
    for i in range(40):
        clock.now += 0.02
        pacer.answered(clock.now - 0.1, 250, 5.0, 300)
    clock.now += 0.02
    pacer.refused(clock.now - 0.1, 250, 5.0, 300, wait_s=1.0)
    assert pacer.paused_for == 0 and pacer.rpm == 3000 and pacer.reason is None
    assert pacer.rate_limited == 1


def test_a_window_with_plenty_left_does_not_hold_the_pace_and_a_low_one_spreads_it() -> None:
    clock = Clock()
    pacer = Pacer(500, clock=clock)
    pacer.answered(clock.now, 400, 59.0, 500)  # a reset that means "all back" must not hold a run back
    assert pacer.rpm == 500
    pacer.answered(clock.now, 10, 6.0, 500)  # 10 left for 6 s: 100 per minute
    assert pacer.rpm == pytest.approx(100)
    assert pacer.reason == "key shared"  # 490 used, none of them by this pacer


def test_an_answer_read_late_does_not_take_the_key_for_shared() -> None:
    """The server counted this run's own starts up to the request; read half a second later
    (a loaded machine), the starts since then must not be missing from this run's side."""
    clock = Clock()
    pacer = Pacer(6000, clock=clock)
    for _ in range(20):  # this run alone fills a 20-per-second window
        clock.now += 0.05
        pacer.starts.append(clock.now)
    sent_at = clock.now
    clock.now += 0.5
    pacer.answered(sent_at, 0, 0.4, 20)
    assert pacer.reason == "server limit"
    pacer.answered(sent_at, 0, 0.4, 40)  # 40 counted, 20 of them this run's: another program's
    assert pacer.reason == "key shared"


def test_a_spent_shared_window_pauses_everyone_and_cuts_once_per_event() -> None:
    clock = Clock()
    pacer = Pacer(3000, clock=clock)
    for _ in range(100):  # a second at 100 answers per second, on a key another program uses too
        clock.now += 0.01
        pacer.starts.append(clock.now)
        pacer.answered(clock.now - 0.1, 100, 5.0, 300)
    pacer.refused(clock.now - 0.1, 0, 0.8, 300, wait_s=0.8)
    assert pacer.paused_for == pytest.approx(0.8)
    first_cut = pacer.rpm
    assert first_cut < 3000 and pacer.reason == "window spent"
    pacer.refused(clock.now - 0.2, 0, 0.8, 300, wait_s=0.8)  # sent before the cut: same event
    assert pacer.rpm == first_cut


def test_without_headers_only_a_share_of_refusals_cuts_and_seconds_win_it_back() -> None:
    clock = Clock()
    pacer = Pacer(3000, clock=clock)
    for i in range(100):
        clock.now += 0.01
        pacer.starts.append(clock.now)
        pacer.answered(clock.now - 0.1, None, None, None)
    pacer.refused(clock.now - 0.1, None, None, None, wait_s=None)  # 1%: a stray refusal
    assert pacer.rpm == 3000
    for i in range(10):  # 10%, all sent before the first cut: one cut
        clock.now += 0.01
        pacer.refused(clock.now - 0.1, None, None, None, wait_s=None)
    assert pacer.rpm == pytest.approx(3000 * 0.85, rel=0.05) and pacer.reason == "429s, no rate headers" and pacer.paused_for == 0
    for i in range(400):  # four seconds of answers
        clock.now += 0.01
        pacer.answered(clock.now - 0.1, None, None, None)
    assert pacer.rpm == 3000
    clock.now += 2.1
    assert pacer.reason is None and pacer.shown_rpm == 3000


def test_a_pace_under_one_request_a_minute_is_kept_after_answers_and_refusals() -> None:
    clock = Clock()
    pacer = Pacer(0.5, clock=clock)
    pacer.answered(clock.now, None, None, None)
    assert pacer.rpm == 0.5
    clock.now += 130.0
    pacer.refused(clock.now - 1.0, 0, 60.0, 500, wait_s=None)
    assert pacer.rpm <= 0.5


# --- whole runs -------------------------------------------------------------------


def test_random_upstream_429s_with_room_do_not_slow_the_run(tmp_path: Path, simulator: Any) -> None:
    # The window allows twice the pace; 10% of requests are refused upstream all the same.
    sim = simulator(rpm=400, window=2, fail_429=0.1, seed=5, latency=(0, 0.02))
    run = runner(tmp_path, sim, 120, rpm=6000)
    summary = anyio.run(run.run)
    assert (summary.exit_code, summary.succeeded) == (0, 120)
    assert summary.rate_limited > 0
    assert run.pacer.ceiling == run.pacer.max_rpm, "upstream refusals must not cut the pace"
    assert sim.stats()["status_429"] > 0


@pytest.mark.parametrize("style", ["poe", "anthropic"])
def test_a_lower_limit_announced_in_headers_is_held_with_few_refusals(tmp_path: Path, simulator: Any,
                                                                      style: str) -> None:
    sim = simulator(rpm=40, window=1, latency=(0, 0.02), rate_headers=style)  # 2,400/min against --rpm 6,000
    seen: list[Snapshot] = []
    summary = anyio.run(runner(tmp_path, sim, 100).run, seen.append)
    assert summary.exit_code == 0
    stats = sim.stats(times=True)
    assert refused_share(stats) < 0.15, stats["by_status"]
    assert accepted_rate(stats) > 0.6 * 40
    assert any(s.pace_reason == "server limit" and s.target_rpm < 6000 for s in seen)
    assert "server limit: " in describe(next(s for s in seen if s.pace_reason == "server limit"))


def test_without_headers_nor_retry_after_most_of_the_limit_is_used(tmp_path: Path, simulator: Any) -> None:
    sim = simulator(rpm=40, window=1, latency=(0, 0.02), rate_headers="none", retry_after=False)
    summary = anyio.run(runner(tmp_path, sim, 100).run)
    assert (summary.exit_code, summary.succeeded) == (0, 100)
    stats = sim.stats(times=True)
    assert refused_share(stats) < 0.25, stats["by_status"]
    assert accepted_rate(stats) > 0.5 * 40


def test_two_runs_on_one_key_share_it(tmp_path: Path, simulator: Any) -> None:
    sim = simulator(rpm=50, window=1, latency=(0, 0.02))  # 3,000/min for both, each told 6,000
    runs = [runner(tmp_path, sim, 80, name=name) for name in ("first", "second")]
    summaries = []

    async def both() -> None:
        async with anyio.create_task_group() as group:
            for one in runs:
                group.start_soon(lambda r: _collect(r, summaries), one)

    anyio.run(both)
    assert [s.exit_code for s in summaries] == [0, 0]
    stats = sim.stats(times=True)
    assert refused_share(stats) < 0.15, stats["by_status"]
    # A safe bound for a loaded machine; bench/rate_bench.py holds the strict figure.
    assert accepted_rate(stats) > 0.4 * 50


async def _collect(run: Runner, into: list[Any]) -> None:
    into.append(await run.run())


def test_status_shows_the_pace_and_why_it_is_lower(tmp_path: Path, simulator: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "HEARTBEAT_S", 0.3)
    sim = simulator(rpm=20, window=1, latency=(0, 0.02))  # 1,200/min against --rpm 6,000
    run = runner(tmp_path, sim, 60)
    shown: list[dict[str, Any]] = []

    async def watch() -> None:
        await anyio.sleep(1.5)
        shown.append(await anyio.to_thread.run_sync(batch_status, run.engine, run.batch))

    async def both() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(run.run)
            group.start_soon(watch)

    anyio.run(both)
    live = shown[0]["run"]
    assert live["rpm_limit"] == 6000 and live["pace_reason"] == "server limit"
    assert 600 < live["pace_rpm"] < 3000  # the server allows 1,200
    assert 100 < live["current_rpm"] < 3000  # the requests of the last minute, as the run last wrote them
    line = next(x for x in status_lines(shown[0]) if x.strip().startswith("pace"))
    assert line.strip().startswith("pace") and "server limit: " in line and "/6,000 rpm" in line
