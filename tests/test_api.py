"""The Python API (``import batcher``) against the simulator over real HTTP and a real SQLite file.

What a script or a notebook relies on: results in input order, a repeated
call that sends nothing, async and inside-a-loop use, Ctrl-C then resume with
every row answered exactly once, invalid rows refused whole, pandas in and
out, and the key kept out of every error.
"""

from __future__ import annotations

import _thread
import importlib.util
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import batcher

SECRET = "sk-poe-SECRET-5d1e0b-DO-NOT-LEAK"


@pytest.fixture
def env(api_env: Any) -> Any:
    """A fresh folder as cwd, the key and the simulator's URL in the environment."""
    return api_env


def requests(sim: Any) -> int:
    return int(sim.stats()["requests"])


def db_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


def test_strings_and_dicts_come_back_in_input_order(env: Any) -> None:
    rows: list[Any] = ["first prompt", {"custom_id": "zz-late", "prompt": "second prompt", "tag": 7},
                      {"custom_id": "aa-early", "params": {"messages": [{"role": "user", "content": "third"}]}},
                      "fourth prompt"]
    results = batcher.run(rows, max_tokens=32, progress=False, rpm=6000)
    assert [r.custom_id for r in results] == ["line-1", "zz-late", "aa-early", "line-4"]
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert all(r.status == "succeeded" and r.ok for r in results)
    for result, prompt in zip(results, ["first prompt", "second prompt", "third", "fourth prompt"]):
        assert prompt in (result.text or "")  # the simulator answers about the prompt it was sent
        assert result.message is not None and result.usage == result.message["usage"]
        assert result.error is None
    assert results[0].row == {"prompt": "first prompt"}
    assert results[1].row == {"custom_id": "zz-late", "prompt": "second prompt", "tag": 7}


def test_the_same_call_twice_sends_nothing_the_second_time(env: Any) -> None:
    rows = [f"question {i}" for i in range(12)]
    first = batcher.run(rows, max_tokens=16, progress=False, rpm=6000)
    sent = requests(env)
    assert sent == 12
    again = batcher.run(rows, max_tokens=16, progress=False, rpm=6000)
    assert requests(env) == sent
    assert [(r.custom_id, r.text) for r in again] == [(r.custom_id, r.text) for r in first]
    # Other options make other requests: another batch.
    batcher.run(rows, max_tokens=17, progress=False, rpm=6000)
    assert requests(env) == 24
    with batcher.Store() as store:
        assert len(store.batches()) == 2


def test_arun(env: Any) -> None:
    async def main() -> list[batcher.Result]:
        return await batcher.arun(["alpha", "beta"], max_tokens=16, progress=False, rpm=6000)

    results = asyncio.run(main())
    assert [(r.custom_id, r.status) for r in results] == [("line-1", "succeeded"), ("line-2", "succeeded")]


def test_sync_run_inside_a_running_loop(env: Any) -> None:
    async def cell() -> list[batcher.Result]:
        # What a notebook cell does: a plain call while the kernel's loop runs.
        return batcher.run(["inside a loop"], max_tokens=16, progress=False, rpm=6000)

    results = asyncio.run(cell())
    assert [r.status for r in results] == ["succeeded"]


def _interrupt_once_answers_arrive(sim: Any, after: int) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + 30
        while requests(sim) < after and time.monotonic() < deadline:
            time.sleep(0.02)
        _thread.interrupt_main()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("in_loop", [False, True], ids=["script", "notebook"])
def test_interrupt_then_the_same_call_finishes_every_row_exactly_once(
        env: Any, simulator: Any, monkeypatch: pytest.MonkeyPatch, in_loop: bool) -> None:
    sim = simulator(latency=0.15)
    monkeypatch.setenv("POE_BASE_URL", sim.base_url)
    rows = [f"row {i}" for i in range(60)]
    call = dict(max_tokens=16, progress=False, rpm=6000, concurrency=4)

    async def cell() -> list[batcher.Result]:
        return batcher.run(rows, **call)

    watcher = _interrupt_once_answers_arrive(sim, after=8)
    with pytest.raises(batcher.Interrupted) as caught:
        if in_loop:
            loop = asyncio.new_event_loop()  # like a kernel's: no SIGINT handler of asyncio's own
            try:
                loop.run_until_complete(cell())
            finally:
                loop.close()
        else:
            batcher.run(rows, **call)
    watcher.join()
    assert isinstance(caught.value, KeyboardInterrupt)
    assert "run the same call again" in str(caught.value)
    summary = caught.value.summary
    assert summary is not None and summary.left > 0
    # In-flight answers got their grace: everything sent so far is stored.
    assert summary.succeeded == requests(sim)

    results = batcher.run(rows, **call)
    assert [r.custom_id for r in results] == [f"line-{i + 1}" for i in range(60)]
    assert all(r.status == "succeeded" for r in results)
    stats = sim.stats()
    assert stats["requests"] == stats["succeeded"] == 60  # every row exactly once


def test_invalid_rows_raise_naming_each_and_store_nothing(env: Any, tmp_path: Path) -> None:
    rows = ["fine", "", {"prompt": "ok", "max_tokens": 0}, 42, {"custom_id": "bad id!", "prompt": "x"}, "fine too"]
    with pytest.raises(batcher.InvalidRows) as caught:
        batcher.run(rows, progress=False)
    error = caught.value
    assert [pos for pos, _ in error.errors] == [1, 2, 3, 4]
    message = str(error)
    assert message.startswith("4 bad row(s), nothing imported: row 1: `prompt` must be a non-empty string")
    assert "row 2: `max_tokens` must be a positive integer" in message
    assert "row 3: must be a prompt (a string) or a dict, not 42 (int)" in message
    assert "row 4: `custom_id` must be" in message
    assert isinstance(error, batcher.UsageError) and error.exit_code == 2
    assert db_rows(tmp_path / "batcher.db", "SELECT count(*) FROM jobs") == [(0,)]
    assert requests(env) == 0
    # skip_invalid imports the rest, like --skip-invalid.
    with batcher.Store() as store:
        b = store.add("kept", rows, skip_invalid=True)
        assert (b.report.added, b.report.rejected) == (2, 4)
        # The rows it skipped are counted from 0, as InvalidRows counts them (they were lines, from 1).
        assert b.report.errors == error.errors


def test_pandas_in_and_out(env: Any) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"custom_id": ["a", "b", "c"], "prompt": ["one", "two", "three"],
                          "max_tokens": [16, None, 24], "topic": ["x", "y", None]})
    results = batcher.run(frame, max_tokens=20, progress=False, rpm=6000)
    out = pd.DataFrame(results)
    assert list(out["custom_id"]) == ["a", "b", "c"]
    assert list(out["status"]) == ["succeeded"] * 3
    assert {"text", "usage", "error", "row", "index"} <= set(out.columns)
    # An empty cell is left out of the row, so the default applies.
    assert [r.message["usage"]["output_tokens"] <= r.row.get("max_tokens", 20) for r in results] == [True] * 3
    assert results[1].row == {"custom_id": "b", "prompt": "two", "topic": "y"}
    series = pd.Series(["from a series", "another"])
    assert [r.status for r in batcher.run(series, max_tokens=16, progress=False, rpm=6000)] == ["succeeded"] * 2


def test_a_refused_key_raises_without_the_key(env: Any, simulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = simulator(key="the-right-key")
    with pytest.raises(batcher.APIStopped) as caught:
        batcher.run(["hi"], api_key=SECRET, base_url=sim.base_url, progress=False)
    error = caught.value
    assert error.exit_code == 3 and "refused the key" in str(error)
    assert error.summary is not None and error.summary.failed == 0
    for text in (str(error), repr(error), repr(error.summary)):
        assert SECRET not in text
    with batcher.Store() as store:
        assert store.batches()[0].status()["pending"] == 1  # nothing marked failed
        assert SECRET not in repr(store) + repr(store.batches())
    monkeypatch.delenv("POE_API_KEY")
    with pytest.raises(batcher.UsageError, match="no API key: set POE_API_KEY"):
        batcher.run(["hi"], progress=False)


def test_handles_on_a_store(env: Any) -> None:
    with batcher.Store("handles.db") as store:
        with pytest.raises(batcher.UsageError, match=r"^the database holds no batch yet: add one first \(Store.add\)$"):
            store.batch()
        b = store.add("greet", ["hello", "bonjour", "hola"], max_tokens=16)
        assert (b.report.added, b.report.unchanged) == (3, 0)
        again = store.add("greet", ["hello", "bonjour", "hola"], max_tokens=16)
        assert (again.report.added, again.report.unchanged) == (0, 3)
        assert b.cancel() == 3
        assert [r.status for r in b.results()] == ["canceled"] * 3
        assert b.retry(canceled=True) == 3
        assert [r.status for r in b.results(only="pending")] == ["pending"] * 3
        summary = b.run(progress=False, rpm=6000)
        assert (summary.succeeded, summary.left, summary.exit_code) == (3, 0, 0)
        assert store.batch().name == "greet"  # the only batch
        with pytest.raises(batcher.UsageError, match="no batch named 'nope'"):
            store.batch("nope")
        with pytest.raises(batcher.UsageError, match="^only takes"):
            b.results(only="done")
        with pytest.raises(batcher.UsageError, match="rpm: .0. is not in"):
            b.run(rpm=0)


def test_rows_added_by_a_second_call_follow_the_first(env: Any) -> None:
    """Each call's rows are numbered from 1: by that number alone two calls interleaved (k1, m1, k2, m2)."""
    first = [{"custom_id": "k1", "prompt": "1"}, {"custom_id": "k2", "prompt": "2"}]
    second = [{"custom_id": "m1", "prompt": "3"}, {"custom_id": "m2", "prompt": "4"}, {"custom_id": "m3", "prompt": "5"}]
    with batcher.Store("order.db") as store:
        store.add("b", first, max_tokens=16)
        b = store.add("b", second, max_tokens=16)
        assert [r.custom_id for r in b.results()] == ["k1", "k2", "m1", "m2", "m3"]
        assert [(r.custom_id, r.index) for r in b._added_results()] == [("m1", 0), ("m2", 1), ("m3", 2)]
        again = store.add("b", first, max_tokens=16)  # the first call made again (a resume) keeps its place
        assert [r.custom_id for r in again.results()] == ["k1", "k2", "m1", "m2", "m3"]
        assert [r.custom_id for r in again._added_results()] == ["k1", "k2"]


def test_docstring_examples_run(env: Any) -> None:
    """Every public name's example runs as written (against the simulator)."""
    import doctest

    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    with_examples = set()
    for name in batcher.__all__:
        if name == "__version__":
            continue
        for test in finder.find(getattr(batcher, name), f"batcher.{name}", module=False, globs={}):
            if test.examples:
                with_examples.add(name)
                runner.run(test)
    outcome = runner.summarize(verbose=False)
    assert outcome.failed == 0
    # The error subclasses are shown through the others' examples.
    assert {"run", "arun", "Store", "Batch", "Result", "RunSummary", "BatcherError", "InvalidRows",
            "Estimate"} <= with_examples


def test_public_names() -> None:
    for name in batcher.__all__:
        value = getattr(batcher, name)
        if name != "__version__":
            assert value.__doc__, name
    assert issubclass(batcher.InvalidRows, batcher.UsageError)
    assert issubclass(batcher.StoreError, batcher.BatcherError)
    assert [batcher.UsageError.exit_code, batcher.APIStopped.exit_code, batcher.StoreError.exit_code,
            batcher.Interrupted.exit_code] == [2, 3, 4, 130]


def test_type_checkers_and_dir_see_the_public_names() -> None:
    """mypy --strict saw no public name: it cannot read ``__all__ = [..., *_WHERE]``, and takes a plain
    ``from ._api import run`` as private. And dir() listed the module's own imports (Any, TYPE_CHECKING)."""
    import ast

    tree = ast.parse(Path(batcher.__file__).read_text())
    (listed,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
                 and [getattr(t, "id", None) for t in node.targets] == ["__all__"]]
    public = ast.literal_eval(listed)  # what a type checker reads
    assert public == batcher.__all__ and set(public) == {"__version__", *batcher._WHERE}
    (checking,) = [node for node in tree.body
                   if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"]
    imported = [(alias.name, alias.asname) for node in checking.body if isinstance(node, ast.ImportFrom)
                for alias in node.names]
    assert all(name == alias for name, alias in imported) and {name for name, _ in imported} == set(batcher._WHERE)
    assert dir(batcher) == sorted(batcher.__all__)


# -- one store, two faces: the handles and the command line ---------------------------------------


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batcher", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=timeout)


def test_handles_agree_with_the_cli(env: Any, simulator: Any, tmp_path: Path) -> None:
    sim = simulator(fail_500=0.4, seed=7)
    jobs = tmp_path / "mixed.jsonl"
    jobs.write_text("".join(json.dumps({"custom_id": f"j{i:02d}", "prompt": f"question {i}"}) + "\n"
                            for i in range(20)))
    db = str(tmp_path / "shared.db")
    assert cli("import", str(jobs), "--db", db, "--model", "claude-haiku-4.5", "--max-tokens", "16").returncode == 0

    with batcher.Store(db) as store:
        b = store.batch("mixed")  # made by the CLI
        summary = b.run(base_url=sim.base_url, max_attempts=1, rpm=6000, progress=False)
        failed = summary.failed
        assert 0 < failed < 20 and summary.exit_code == 1

        shown = json.loads(cli("status", "mixed", "--db", db, "--json").stdout)
        mine = b.status()
        for key in ("total", "pending", "succeeded", "failed", "canceled", "attempts", "input_tokens",
                    "output_tokens", "failures", "models", "attempts_made"):
            assert mine[key] == shown[key], key

        assert cli("export", "mixed", "--db", db, "--format", "text", "-o", "cli.jsonl").returncode == 0
        assert b.export("py.jsonl", format="text") == 20
        assert Path("py.jsonl").read_bytes() == Path("cli.jsonl").read_bytes()
        lines = [json.loads(line) for line in Path("cli.jsonl").read_text().splitlines()]
        assert [(r.custom_id, r.status, r.text) for r in b.results()] == [
            (line["custom_id"], line["status"], line["text"]) for line in lines]
        for result in b.results(only="failed"):
            assert result.status_code == 500 and result.error["error"]["type"] == "api_error"

        assert b.retry(status_code=500) == failed  # the CLI's cancel then finds them pending
        assert cli("cancel", "mixed", "--db", db).stdout.strip() == f"batch mixed: {failed} pending job(s) canceled"
        assert b.status()["canceled"] == failed
        assert b.retry(canceled=True) == failed

        made = store.add("from-python", ["visible to the CLI"], max_tokens=16)
        assert made.name in cli("batches", "--db", db).stdout


def test_a_python_run_and_a_cli_run_refuse_each_other(env: Any, simulator: Any, tmp_path: Path) -> None:
    sim = simulator(latency=0.2)
    db = str(tmp_path / "busy.db")
    jobs = tmp_path / "busy.jsonl"
    jobs.write_text("".join(json.dumps({"prompt": f"slow {i}"}) + "\n" for i in range(24)))
    assert cli("import", str(jobs), "--db", db, "--model", "claude-haiku-4.5", "--max-tokens", "16").returncode == 0

    # The CLI runs; a Python run on the batch is refused.
    proc = subprocess.Popen([sys.executable, "-m", "batcher", "run", "busy", "--db", db, "--base-url", sim.base_url,
                             "--rpm", "6000", "--concurrency", "2", "-q"], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while requests(sim) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with batcher.Store(db) as store, pytest.raises(batcher.BatchBusy, match=f"process {proc.pid}"):
            store.batch("busy").run(base_url=sim.base_url, progress=False)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)

    # A Python run goes; the CLI is refused.
    with batcher.Store(db) as store:
        b = store.add("busy", [{"custom_id": f"more-{i}", "prompt": f"more {i}"} for i in range(16)], max_tokens=16)
        outcome: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: outcome.update(
            summary=b.run(base_url=sim.base_url, rpm=6000, concurrency=2, progress=False)))
        worker.start()
        try:
            deadline = time.monotonic() + 20
            while b.status()["run"] is None and time.monotonic() < deadline:
                time.sleep(0.05)
            done = cli("run", "busy", "--db", db, "--base-url", sim.base_url)
            assert done.returncode == 2
            assert done.stderr.strip().startswith(f"batcher: error: batch 'busy' is already being run by process "
                                                  f"{os.getpid()}")
        finally:
            worker.join(timeout=60)
        assert outcome["summary"].left == 0
        assert b.status()["succeeded"] == 40


def test_the_readme_python_section_runs(env: Any) -> None:
    """Every code block of the README's Python section, in order, as a notebook would run them."""
    import ast
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 3
    namespace: dict[str, Any] = {}
    for block in blocks:
        if "import pandas" in block and importlib.util.find_spec("pandas") is None:
            continue
        code = compile(block, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        outcome = eval(code, namespace)  # a coroutine when the block awaits, as in a notebook cell
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
    assert all(r.status == "succeeded" for r in namespace["results"])
    with batcher.Store() as store:
        assert store.batch("reviews").status()["succeeded"] == 20


def test_a_second_interrupt_stops_at_once_and_the_call_still_resumes(
        env: Any, simulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = simulator(latency=5)
    monkeypatch.setenv("POE_BASE_URL", sim.base_url)
    rows = [f"slow {i}" for i in range(4)]

    def interrupt_twice() -> None:
        deadline = time.monotonic() + 30
        while sim.stats()["concurrency"] < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        _thread.interrupt_main()  # graceful: would wait up to the 60 s grace for the answers
        time.sleep(0.5)
        _thread.interrupt_main()  # at once

    watcher = threading.Thread(target=interrupt_twice, daemon=True)
    watcher.start()
    with pytest.raises(batcher.Interrupted, match="stopped at once"):
        batcher.run(rows, max_tokens=16, progress=False, rpm=6000, grace=60)
    assert sim.stats()["succeeded"] == 0  # back before any 5 s answer came: it did not wait for them
    watcher.join()
    with batcher.Store() as store:
        assert store.batches()[0].status()["pending"] == 4  # nothing half-recorded; all go back to the queue

    fast = simulator()
    results = batcher.run(rows, max_tokens=16, progress=False, rpm=6000, base_url=fast.base_url)
    assert [r.status for r in results] == ["succeeded"] * 4


def test_a_job_file_path_runs_like_the_cli(env: Any, tmp_path: Path) -> None:
    path = tmp_path / "questions.jsonl"
    path.write_text('{"custom_id": "q1", "prompt": "one"}\n\n{"custom_id": "q2", "prompt": "two"}\n')
    results = batcher.run(path, max_tokens=16, progress=False, rpm=6000)
    assert [(r.custom_id, r.index, r.status) for r in results] == [("q1", 0, "succeeded"), ("q2", 2, "succeeded")]
    with batcher.Store() as store:
        assert [b.name for b in store.batches()] == ["questions"]
        generated = (f"row {i}" for i in range(3))  # a one-shot iterator: named from its rows all the same
        assert store.add(None, generated).name == store.add(None, ["row 0", "row 1", "row 2"]).name
