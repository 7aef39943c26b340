"""The Python API with what data code really passes it: odd values, odd options, odd places to run.

numpy numbers and timestamps, strings for numbers, a single dict for rows,
a batch shared by several calls, a cap that stops a run, Ctrl-C under
``asyncio.run``: each either works as the same value would from a job file,
or is one clear ``batcher.UsageError`` before anything is stored or sent.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

import batcher



@pytest.fixture
def env(api_env: Any) -> Any:
    """A fresh folder as cwd, the key and the simulator's URL in the environment."""
    return api_env


def requests(sim: Any) -> int:
    return int(sim.stats()["requests"])


FAST = dict(progress=False, rpm=6000, max_tokens=16)


def test_a_named_batch_gives_one_result_per_row_of_this_call(env: Any) -> None:
    batcher.run(["x-prompt", "y-prompt", "z-prompt"], batch="shared", **FAST)
    results = batcher.run(["x-prompt"], batch="shared", **FAST)
    assert [(r.custom_id, r.row, r.index) for r in results] == [("line-1", {"prompt": "x-prompt"}, 0)]
    # Rows stored by an earlier call come back in this call's order, with new rows among them.
    first = batcher.run([{"custom_id": c, "prompt": f"about {c}"} for c in "abc"], batch="ids", **FAST)
    again = batcher.run([{"custom_id": c, "prompt": f"about {c}"} for c in "cda"], batch="ids", **FAST)
    assert [(r.custom_id, r.index) for r in again] == [("c", 0), ("d", 1), ("a", 2)]
    assert (again[0].text, again[2].text) == (first[2].text, first[0].text)
    assert requests(env) == 3 + 3 + 1  # x, y, z, then a, b, c, then d alone


def test_the_same_call_again_reads_none_of_its_rows(env: Any) -> None:
    """A call made again (a resume) finds its rows stored by its last import: it reads and writes none of them."""
    rows = [{"custom_id": f"r{i}", "prompt": f"again {i}", "topic": i} for i in range(6)]
    first = batcher.run(rows, **FAST)
    again = batcher.run([dict(reversed(row.items())) for row in rows], **FAST)  # keys in another order: the same rows
    assert [(r.custom_id, r.text, r.index) for r in again] == [(r.custom_id, r.text, r.index) for r in first]
    assert requests(env) == 6
    with batcher.Store() as store:
        (batch,) = store.batches()
        again_added = store.add(None, rows, max_tokens=16)
        assert (again_added.name, again_added.report.unread, again_added.report.unchanged) == (batch.name, True, 6)
        # Under a name of one's own too, as long as no other rows were added to it since.
        for _ in range(2):
            mine = store.add("mine", rows, max_tokens=16)
        assert (mine.report.unread, mine.report.unchanged) == (True, 6)
        store.add("mine", rows[:2], max_tokens=16)
        assert store.add("mine", rows, max_tokens=16).report.unread is False
        assert store.add("mine", iter(rows), max_tokens=16).report.unread is False  # an iterator is read once only
        # A changed row is read, and refused as a changed request, as it always was.
        changed = [*rows[:5], {**rows[5], "prompt": "changed"}]
        with pytest.raises(batcher.InvalidRows, match="row 5: custom_id 'r5' is already in the batch"):
            store.add("mine", changed, max_tokens=16)


def test_a_run_stopped_by_a_limit_or_a_cap_warns_and_leaves_pending_results(env: Any) -> None:
    rows = [f"capped {i}" for i in range(5)]
    with pytest.warns(UserWarning, match=r"stopped at limit 2; 3 job\(s\) not sent"):
        results = batcher.run(rows, limit=2, **FAST)
    assert [r.status for r in results] == ["succeeded"] * 2 + ["pending"] * 3
    with pytest.warns(UserWarning, match="more than max_output_tokens 8 allows"):
        results = batcher.run([f"over the cap {i}" for i in range(3)], max_output_tokens=8, **FAST)
    assert [r.status for r in results] == ["pending"] * 3
    assert requests(env) == 2


def test_numpy_numbers_and_timestamps_are_taken_as_plain_values(env: Any) -> None:
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    frame = pd.DataFrame({"prompt": ["one", "two"], "when": pd.to_datetime(["2026-01-02", "2026-03-04"]),
                          "max_tokens": [12, 14]})
    rows = [{"prompt": "three", "score": np.int64(3), "weight": np.float32(0.5), "flags": np.array([1, 2])}]
    results = batcher.run(frame, **{**FAST, "max_tokens": np.int64(16), "rpm": np.int64(6000)})
    assert [r.row["when"] for r in results] == ["2026-01-02T00:00:00", "2026-03-04T00:00:00"]
    assert [r.status for r in results] == ["succeeded"] * 2
    [result] = batcher.run(rows, **{**FAST, "limit": np.int64(1)})
    assert result.ok and result.row == {"prompt": "three", "score": 3, "weight": 0.5, "flags": [1, 2]}
    assert batcher.estimate(rows, max_tokens=np.int64(7)).max_output_tokens == 7


@pytest.mark.parametrize("options, message", [
    (dict(rpm="fast"), "rpm: 'fast' is not a number"),
    (dict(limit=0), "limit: '0' is not at least 1"),
    (dict(auth="Basic"), "auth must be one of x-api-key, bearer, not 'Basic'"),
    (dict(stream="no"), "stream must be True or False (or None), not 'no'"),
    (dict(reuse="yes"), "reuse must be True or False, not 'yes'"),
    (dict(handle_signals=True), "unknown run option(s): handle_signals (the run options are "),
    (dict(max_tokens=0), "max_tokens: '0' is not in [1, 10000000]"),
    (dict(max_tokens=16.5), "max_tokens: '16.5' is not a whole number"),
    (dict(system=5), "system must be a string or a list of text blocks, not 5"),
    (dict(model=""), "model must be a model's name (a non-empty string), not ''"),
    (dict(model="claude-\udce9"), "model 'claude-\\xe9' is not valid UTF-8"),
])
def test_a_bad_option_is_one_usage_error_before_anything_is_stored(
        env: Any, tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(batcher.UsageError) as caught:
        batcher.run(["never sent"], **{**FAST, **options})
    assert str(caught.value).startswith(message)
    assert not (tmp_path / "batcher.db").exists()
    assert requests(env) == 0


def test_rows_named_by_position_that_clash_in_a_named_batch_say_why(env: Any) -> None:
    with batcher.Store("p.db") as store:
        store.add("acc", ["x", "y"], max_tokens=16)
        with pytest.raises(batcher.InvalidRows) as caught:
            store.add("acc", ["z"], max_tokens=16)
        assert str(caught.value).endswith("rows without a custom_id are named by their position (line-1, line-2, "
                                          "...), so other rows cannot be added to a named batch that way: give "
                                          "each row a custom_id, or pass the batch's earlier rows first")
        assert [r.custom_id for r in store.add("acc", ["x", "y", "z"], max_tokens=16).results()] == [
            "line-1", "line-2", "line-3"]


def test_rows_refused_for_their_options_are_told_the_options_of_the_earlier_rows(env: Any) -> None:
    """Rows given again without the max_tokens they were stored with: the hint spoke of "this file"."""
    rows = [{"custom_id": "a", "prompt": "one"}, {"custom_id": "b", "prompt": "two"}]
    with batcher.Store() as store:
        store.add("named", rows, max_tokens=16)
        with pytest.raises(batcher.InvalidRows) as refused:
            store.add("named", rows)
    assert str(refused.value).endswith("batch 'named' was given its earlier rows with model='claude-haiku-4.5', "
                                       "max_tokens=16: give those options again"), str(refused.value)


def test_a_row_that_is_no_row_is_named_in_python_words(env: Any) -> None:
    """An empty cell said "expected a JSON object, found float" (a NaN) or "found NoneType"."""
    with pytest.raises(batcher.InvalidRows) as refused:
        batcher.run(["fine", None, float("nan"), ["a", "b"]], **FAST)
    assert refused.value.errors == [(1, "must be a prompt (a string) or a dict, not None: an empty cell?"),
                                    (2, "must be a prompt (a string) or a dict, not nan: an empty cell?"),
                                    (3, "must be a prompt (a string) or a dict, not ['a', 'b'] (list)")]


def test_a_bad_row_default_is_named_once_as_an_option_not_as_every_row(env: Any) -> None:
    """max_tokens=0 was refused as "InvalidRows: 2 bad row(s)", once per row, and a
    max_tokens given as text ("16") as well, where every run option given as text is taken."""
    with batcher.Store("d.db") as store:
        for call in (lambda: store.add("d", ["a", "b"], max_tokens=0), lambda: batcher.estimate(["a", "b"], system=5)):
            with pytest.raises(batcher.UsageError) as caught:
                call()
            assert not isinstance(caught.value, batcher.InvalidRows) and "row" not in str(caught.value)
        assert store.batches() == []
        as_number = store.add(None, ["a"], max_tokens=16)
        assert store.add(None, ["a"], max_tokens="16").name == store.add(None, ["a"], max_tokens=16.0).name \
            == as_number.name
    assert batcher.estimate(["a"], max_tokens="16").max_output_tokens == 16


@pytest.mark.parametrize("given, message", [
    ("sk-SECRET key\n", "api_key is malformed (it has whitespace or a line break inside)"),
    ("sk-SECRET-é", "api_key is malformed (it has characters that are not ASCII)"),
    ("sk-SECRET\x7f", "api_key is malformed (it has control characters)"),
    ("   ", "api_key is blank; give the key, or leave api_key out to read POE_API_KEY"),
    # os.environ.get("MY_KEY", "") with MY_KEY unset: another key (POE_API_KEY) would be paid with.
    ("", "api_key is blank; give the key, or leave api_key out to read POE_API_KEY"),
    (b"sk-SECRET", "api_key must be a string, not bytes"),
])
def test_a_bad_key_given_as_api_key_is_named_so_and_never_shown(
        env: Any, monkeypatch: pytest.MonkeyPatch, given: Any, message: str) -> None:
    """A malformed api_key= was reported as "POE_API_KEY is malformed", which the caller had not set."""
    with pytest.raises(batcher.UsageError) as caught:
        batcher.run(["never sent"], **FAST, api_key=given)
    assert str(caught.value).startswith(message) and "SECRET" not in str(caught.value)
    monkeypatch.setenv("POE_API_KEY", "sk-SECRET key")
    with pytest.raises(batcher.UsageError, match="^POE_API_KEY is malformed") as caught:
        batcher.run(["never sent"], **FAST)
    assert "SECRET" not in str(caught.value)


def test_options_given_as_text_work_like_numbers(env: Any) -> None:
    results = batcher.run(["spelled out"], **{**FAST, "rpm": "6000", "max_attempts": "2", "auth": "Bearer"})
    assert [r.status for r in results] == ["succeeded"]


@pytest.mark.parametrize("rows, message", [
    (None, "rows must be prompts, dicts, a DataFrame or a job file's path, not NoneType"),
    (5, "rows must be prompts, dicts, a DataFrame or a job file's path, not int"),
    ({"prompt": "one row"}, "rows must be a collection of rows; for one row, pass [row]"),
    # A set's order changes from one process to the next: the same call made again was another batch, paid again.
    ({"Name a colour.", "Name a fruit."}, "rows must come in an order, and a set has none"),
])
def test_rows_that_are_no_collection_are_refused(env: Any, rows: Any, message: str) -> None:
    with pytest.raises(batcher.UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        batcher.run(rows, **FAST)
    with pytest.raises(batcher.UsageError):
        batcher.estimate(rows)


def test_a_prompt_given_alone_is_told_how_to_be_sent(env: Any, tmp_path: Path) -> None:
    """run("Name a colour.") said only "Name a colour.: no such file", after making a store."""
    from batcher.errors import command_line_words

    hint = "'Name a colour.': no such file (for one prompt, pass a list: [prompt])"
    with pytest.raises(batcher.UsageError) as caught:
        batcher.run("Name a colour.", **FAST)
    assert str(caught.value) == hint
    assert not (tmp_path / "batcher.db").exists()
    with batcher.Store("h.db") as store:
        with pytest.raises(batcher.UsageError, match=r"^'line one\\nline two': no such file \(for one prompt"):
            store.add("h", "line one\nline two")
        with command_line_words(), pytest.raises(batcher.UsageError) as caught:
            store.add("h", "prompts.jsonl")  # a shell's user meant a path: the plain message
        assert str(caught.value) == "prompts.jsonl: no such file"
        store.add("h", ["one"], max_tokens=16)
    # For an estimate a string may name a batch too: the hint follows what was looked for.
    with pytest.raises(batcher.UsageError) as caught:
        batcher.estimate("Name a colour.", db="h.db")
    assert str(caught.value) == ("no batch named 'Name a colour.' (batches here: h); for one prompt, pass a list: "
                                 "[prompt]")


def test_no_rows_make_no_batch(env: Any, tmp_path: Path) -> None:
    """run([]) made an empty rows-<hash> batch, listed by `batcher batches` ever after."""
    import anyio

    assert batcher.run([], **FAST) == [] and batcher.run(iter([]), **FAST) == []
    assert anyio.run(lambda: batcher.arun((row for row in ()), **FAST)) == []
    assert not (tmp_path / "batcher.db").exists()
    assert batcher.estimate([]).jobs == 0
    with batcher.Store("e.db") as store:
        with pytest.raises(batcher.UsageError, match=r"^no rows given: a batch named after its rows needs some"):
            store.add(None, [])
        assert store.batches() == []
        assert store.add("named", []).status()["total"] == 0  # as `batcher import` of an empty file
    [result] = batcher.run(iter(["one, read ahead"]), **FAST)  # an iterator's first row is not lost
    assert result.row == {"prompt": "one, read ahead"} and result.ok


def test_handles_refuse_what_they_cannot_mean(env: Any) -> None:
    with batcher.Store("handles.db") as store:
        with pytest.raises(batcher.UsageError, match="a batch name must be a non-empty string"):
            store.add("  ", ["a"])
        b = store.add("h", ["a"], max_tokens=16)
        with pytest.raises(batcher.UsageError, match="^only takes"):
            list(b.results(only=5))  # type: ignore[arg-type]
        with pytest.raises(batcher.UsageError, match="status_code: 'soon' is not a whole number"):
            b.retry(status_code="soon")
        with pytest.raises(batcher.UsageError, match=r"rpm: '0' is not in \[0.001, 1000000\]"):
            b.estimate(rpm=0)
        assert [x.name for x in store.batches()] == ["h"]
    with pytest.raises(batcher.UsageError, match="rpm: '-5' is not in"):
        batcher.estimate(["ok"], rpm=-5)
    assert batcher.estimate(["ok", "fine"]).requests == 2


def test_retry_takes_a_status_code_given_as_text(env: Any, simulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = simulator(fail_status={"400": 1.0})
    monkeypatch.setenv("POE_BASE_URL", failing.base_url)
    with batcher.Store("retry.db") as store:
        b = store.add("r", ["refused"], max_tokens=16)
        b.run(progress=False, rpm=6000)
        assert b.failure_kinds() and [r.status_code for r in b.results()] == [400]
        assert b.retry(status_code="401") == 0
        assert b.retry(status_code="400") == 1


def test_retry_names_the_option_given_a_value_it_cannot_match(env: Any) -> None:
    """error_type=5 was "expected one value or a list of them", naming no option; error_type=[5]
    matched nothing, silently; a numpy status code was refused though numpy numbers are taken elsewhere."""
    numpy = pytest.importorskip("numpy")
    with batcher.Store("retry.db") as store:
        b = store.add("r", ["not sent"], max_tokens=16)
        for given in (5, [5], ["api_error", None]):
            with pytest.raises(batcher.UsageError, match=r"^error_type must be an error type \(a string\) or a list"):
                b.retry(error_type=given)
        with pytest.raises(batcher.UsageError, match=r"^status_code must be an HTTP status code or a list"):
            b.retry(status_code=5.5)
        assert b.retry(status_code=numpy.int64(529)) == b.retry(status_code=[numpy.int64(529), 500]) == 0


def test_duplicate_rows_are_named_by_row(env: Any) -> None:
    with pytest.raises(batcher.InvalidRows, match=r"row 2: duplicate custom_id 'a' \(first in row 0\)"):
        batcher.run([{"custom_id": "a", "prompt": "x"}, "other", {"custom_id": "a", "prompt": "y"}], **FAST)


def test_merged_export_from_python_warns_about_replaced_columns(env: Any, tmp_path: Path) -> None:
    with batcher.Store("m.db") as store:
        b = store.add("m", [{"prompt": "has a response column", "response": "old"}], max_tokens=16)
        b.run(progress=False, rpm=6000)
        with pytest.warns(UserWarning, match="1 input line"):
            assert b.export(str(tmp_path / "m.jsonl"), format="merged") == 1
    line = orjson.loads((tmp_path / "m.jsonl").read_bytes())
    assert line["response"] != "old"


SIGINT_UNDER_ASYNCIO_RUN = """
import asyncio, json, os, signal, sys, threading, time, urllib.request
import batcher

def interrupt():
    while json.load(urllib.request.urlopen(os.environ["POE_BASE_URL"] + "/stats"))["requests"] < 3:
        time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGINT)

async def main():
    threading.Thread(target=interrupt, daemon=True).start()
    try:
        batcher.run([f"row {i}" for i in range(200)], max_tokens=16, rpm=600, concurrency=2, progress=False)
    except Exception as exc:
        print("swallowed", type(exc).__name__)
    except batcher.Interrupted as exc:
        print("interrupted", exc.summary.left > 0)
    print("handler is asyncio's again", signal.getsignal(signal.SIGINT) is not signal.default_int_handler)

asyncio.run(main())
"""


def test_ctrl_c_under_asyncio_run_stops_a_plain_run(env: Any, tmp_path: Path) -> None:
    # asyncio.run's own handler would only cancel its main task, the one waiting for the run:
    # the 200 rows (20 s at 600 rpm) would all be sent first.
    done = subprocess.run([sys.executable, "-c", SIGINT_UNDER_ASYNCIO_RUN], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["interrupted True", "handler is asyncio's again True"], done.stdout
    assert requests(env) < 100


def test_ctrl_c_while_the_run_starts_its_loop_is_a_stop_not_a_hang(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C landing inside the start of the run's event-loop thread stopped nothing and
    left the call waiting for that thread forever; it is now held until the run is under way."""
    import signal
    import threading
    from contextlib import contextmanager

    import batcher._sync as sync

    real = sync.start_blocking_portal

    @contextmanager
    def interrupted_while_starting() -> Any:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # type: ignore[arg-type]
        for _ in range(100):  # where a Ctrl-C not held is raised
            pass
        with real() as portal:
            yield portal

    monkeypatch.setattr(sync, "start_blocking_portal", interrupted_while_starting)
    with batcher.Store("s.db") as store:
        b = store.add("s", [f"row {i}" for i in range(50)], max_tokens=16)
        with pytest.raises(batcher.Interrupted) as caught:
            b.run(progress=False, rpm=600, concurrency=2)
        assert caught.value.summary.left > 0  # a graceful stop: not every row was sent


def test_ctrl_c_inside_an_import_leaves_the_store_free_to_write(env: Any) -> None:
    """A Ctrl-C landing just as an import's statement ran left it held by the traceback, and SQLite held
    the write lock with it: a notebook keeps the last traceback, and the same call made again waited 30 s
    to be told another process was writing to the store."""
    import _thread
    import sqlite3

    from sqlalchemy import event

    rows = [f"row {i}" for i in range(10)]
    with batcher.Store("s.db") as store:
        @event.listens_for(store.engine, "after_cursor_execute")
        def ctrl_c_now(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            if statement.startswith("INSERT INTO jobs"):
                event.remove(store.engine, "after_cursor_execute", ctrl_c_now)
                _thread.interrupt_main()  # as a Ctrl-C: raised in the main thread at its next step

        with pytest.raises(KeyboardInterrupt) as caught:
            store.add("s", rows, max_tokens=16)
        other = sqlite3.connect("s.db", timeout=0.2)
        other.execute("BEGIN IMMEDIATE")  # "database is locked" while the interrupted statement was held
        other.rollback()
        other.close()
        assert store.add("s", rows, max_tokens=16).report.added == 10
        assert caught.value is not None  # kept, as a notebook keeps the last traceback


def test_ctrl_c_while_rows_are_read_is_batcher_interrupted(env: Any) -> None:
    """A Ctrl-C during the import was a bare KeyboardInterrupt: ``except batcher.Interrupted`` missed it."""
    import _thread

    def rows() -> Any:
        for i in range(10):
            if i == 5:
                _thread.interrupt_main()  # as a Ctrl-C: raised in the main thread at its next step
            yield f"row {i}"

    with pytest.raises(batcher.Interrupted, match="import interrupted .* run the same call again"):
        batcher.run(rows(), batch="read", **FAST)
    with batcher.Store() as store:
        assert store.batches() == []  # whole or not at all


def test_every_public_error_survives_pickling(env: Any) -> None:
    """An error raised in a process pool's worker is pickled to reach the caller: InvalidRows,
    whose __init__ takes a report, could not be rebuilt, and the caller got BrokenProcessPool."""
    import pickle

    from batcher.errors import OutputError, StoreFull

    with batcher.Store("p.db") as store, pytest.raises(batcher.InvalidRows) as caught:
        store.add("p", ["fine", "", {"prompt": "hi", "max_tokens": 0}])
    errors: list[BaseException] = [caught.value, batcher.BatcherError("stopped", exit_code=5),
                                   batcher.UsageError("u"), batcher.StoreError("s"), batcher.APIStopped("a"),
                                   batcher.BatchBusy("b"), batcher.Interrupted("i"), StoreFull("f"), OutputError("o")]
    for error in errors:
        again = pickle.loads(pickle.dumps(error))
        assert (type(again), str(again), again.__dict__) == (type(error), str(error), error.__dict__)
    rows = pickle.loads(pickle.dumps(caught.value))
    assert rows.errors == [(1, "`prompt` must be a non-empty string"), (2, "`max_tokens` must be a positive integer")]
    assert rows.exit_code == 2
