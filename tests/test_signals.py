"""Ctrl-C and SIGTERM, however they are sent, through the real command.

A terminal's Ctrl-C, ``timeout`` and ``kill -- -PGID`` signal the whole
process group, worker processes included; ``kill PID`` signals the command
alone. Either way the command ends with one line, ``batcher: interrupted``,
exit 130, nothing stored and no process left behind -- or, when the signal
comes after the import committed, as what it did. Never a traceback, never a
hang.

Signals land wherever the command happens to be; so each test sends them
at several moments after a point it can see (the workers started, the
start-up holding its signals), and asserts only on outcomes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from batcher import prepare

HAIKU = "claude-haiku-4.5"
#: Enough lines that the file is prepared by worker processes, for a few seconds.
LINES = 125_000
INTERRUPTED = "batcher: interrupted\n"


def command() -> list[str]:
    """The installed command, as a user runs it (``python -m batcher`` if there is none)."""
    script = Path(sys.executable).with_name("batcher")
    return [str(script)] if script.exists() else [sys.executable, "-m", "batcher"]


def environment() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("POE_", "BATCHER_"))}
    return {**clean, "POE_API_KEY": "poe-test-key"}


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("signals") / "big.jsonl"
    with path.open("w") as out:
        out.writelines('{"custom_id": "r%d", "prompt": "Question number %d: say something."}\n' % (i, i)
                       for i in range(LINES))
    assert path.stat().st_size >= prepare.PARALLEL_FROM_BYTES
    return path


def processes() -> dict[int, tuple[int, int, str]]:
    """Every live process: pid -> (parent, process group, state)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[int(entry)] = (int(fields[1]), int(fields[2]), fields[0])
    return found


def children(pid: int) -> list[int]:
    return [p for p, (parent, _, state) in processes().items() if parent == pid and state != "Z"]


def group_gone(pgid: int, within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while any(group == pgid and state != "Z" for _, group, state in processes().values()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stored_jobs(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0] if "jobs" in tables else 0


class Started:
    """A command in its own process group; killed with its group however the test ends."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen([*command(), *args], cwd=cwd, env=environment(), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.pid = self.process.pid

    def wait_for(self, ready: Any, within: float = 60.0) -> bool:
        """Poll ``ready()`` until it holds (True) or the command ended first (False)."""
        deadline = time.monotonic() + within
        while not ready():
            if self.process.poll() is not None:
                return False
            assert time.monotonic() < deadline, "the command never got there"
            time.sleep(0.002)
        return True

    def finish(self) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=90)  # a hang fails here
        return self.process.returncode, out, err

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.communicate()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Any]:
    running: list[Started] = []

    def start(*args: str) -> Started:
        running.append(Started(list(args), tmp_path))
        return running[-1]

    yield start
    for each in running:
        each.kill()


def import_args(big_file: Path, db: Path, verb: str = "import") -> list[str]:
    args = [verb, str(big_file), "--db", str(db), "--model", HAIKU, "--max-tokens", "10"]
    if verb == "run":  # a port nothing listens on: the import is all that happens before the signal
        args += ["--base-url", "http://127.0.0.1:9"]
    return args


def interrupted_during_import(started: Any, big_file: Path, db: Path, signum: int, whole_group: bool,
                              delays: tuple[float, ...], verb: str = "import") -> int:
    """Signal an import at each delay after its workers start; how many times it was interrupted.

    Every outcome must be one of the two the README allows.
    """
    interrupted = 0
    for delay in delays:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        run = started(*import_args(big_file, db, verb))
        if run.wait_for(lambda: children(run.pid)):
            time.sleep(delay)
            (os.killpg if whole_group else os.kill)(run.pid, signum)
        code, out, err = run.finish()
        assert group_gone(run.pid), "a worker process outlived the command"
        assert "Traceback" not in err and "Exception ignored" not in err, err
        if stored_jobs(db) == 0:
            assert (code, out, err) == (130, "", INTERRUPTED)
            interrupted += 1
        else:  # the import committed before the signal landed: it stands
            assert stored_jobs(db) == LINES
            if verb == "import":
                assert (code, err) == (0, "")
    return interrupted


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_group_during_a_parallel_import(started: Any, big_file: Path, tmp_path: Path,
                                                              signum: int) -> None:
    """Ctrl-C at a terminal, `timeout`, `kill -- -PGID`: the workers leave it to the command."""
    interrupted = interrupted_during_import(started, big_file, tmp_path / "g.db", signum, whole_group=True,
                                            delays=(0.3, 1.0))
    assert interrupted >= 1


@pytest.mark.parametrize("signum, verb", [(signal.SIGTERM, "import"), (signal.SIGINT, "import"),
                                          (signal.SIGTERM, "run")])
def test_a_signal_to_the_command_alone_during_a_parallel_import(started: Any, big_file: Path, tmp_path: Path,
                                                                signum: int, verb: str) -> None:
    """`kill PID`: the command stops its workers itself, and says only that it was interrupted."""
    interrupted = interrupted_during_import(started, big_file, tmp_path / "a.db", signum, whole_group=False,
                                            delays=(0.5, 1.2), verb=verb)
    assert interrupted >= 1


def test_workers_ignore_stop_signals_sent_to_them(started: Any, big_file: Path, tmp_path: Path) -> None:
    """A worker is not the one to answer Ctrl-C or SIGTERM: signalled alone, the import goes on."""
    db = tmp_path / "w.db"
    run = started(*import_args(big_file, db))
    assert run.wait_for(lambda: len(children(run.pid)) >= 2)
    for worker in children(run.pid):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                os.kill(worker, signum)
            except ProcessLookupError:
                pass
    code, out, err = run.finish()
    assert (code, out, err) == (0, f"batch big: {LINES:,} added, 0 unchanged, 0 rejected\n", "")
    assert stored_jobs(db) == LINES


def threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def waiting_for_the_store(started: Any, tmp_path: Path) -> tuple[Any, Path, sqlite3.Connection]:
    """A run of a 5-job batch whose first step waits: another process holds the store."""
    db = tmp_path / "w.db"
    jobs = tmp_path / "few.jsonl"
    jobs.write_text("".join('{"prompt": "Say %d."}\n' % i for i in range(5)))
    imported = subprocess.run([*command(), "import", str(jobs), "--db", str(db), "--model", HAIKU,
                               "--max-tokens", "10"], env=environment(), capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    run = started("run", "few", "--db", str(db), "--base-url", "http://127.0.0.1:9")
    # The command alone has one thread; the run's first store write, another.
    assert run.wait_for(lambda: threads(run.pid) >= 2), "the run ended before waiting for the store"
    time.sleep(0.3)
    return run, db, other


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_run_is_under_way_stops_it_as_a_run(started: Any, tmp_path: Path, signum: int) -> None:
    """A signal while the run starts is the run's: it stops with its summary, having sent nothing.

    Raised inside the run's tasks instead, it ended in a traceback (exit 1), or in a hang.
    """
    run, db, other = waiting_for_the_store(started, tmp_path)
    try:
        os.kill(run.pid, signum)
        time.sleep(0.3)
    finally:
        other.execute("ROLLBACK")
        other.close()
    code, out, err = run.finish()
    assert code == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.startswith("batcher: stopping: nothing sent yet (Ctrl-C again to quit now)\n"), err
    assert err.endswith("0 done, 5 left: run the same command again to resume\n"), err
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT outcome FROM runs").fetchall() == [("interrupted",)]
        assert conn.execute("SELECT count(*) FROM attempts").fetchone() == (0,)


def test_a_second_ctrl_c_while_the_store_keeps_the_run_waiting_quits_at_once(started: Any, tmp_path: Path) -> None:
    run, db, other = waiting_for_the_store(started, tmp_path)
    try:
        os.kill(run.pid, signal.SIGINT)
        time.sleep(0.3)
        os.kill(run.pid, signal.SIGINT)
        code, out, err = run.finish()  # the store still held: the run never started
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert code == 130, err
    assert err == ("batcher: stopping: nothing sent yet (Ctrl-C again to quit now)\n"
                   "batcher: stopped at once; 0 done are safely stored, the rest resumes on the next run\n")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)


def holding_stop_signals(pid: int) -> bool:
    """Whether the process's main thread holds SIGINT and SIGTERM (its start-up does)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    blocked = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16)
    return all(blocked >> (signum - 1) & 1 for signum in (signal.SIGINT, signal.SIGTERM))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_command_starts_is_an_interruption(started: Any, tmp_path: Path, signum: int) -> None:
    """Modules loading, options parsing: not "Aborted!" and exit 1 (failed jobs), nor a silent death."""
    outcomes = []
    for delay in (0.0, 0.05, 0.15, 0.3):
        for _ in range(5):  # the hold lasts a fraction of a second: a busy machine may not see it
            run = started("status", "x", "--db", str(tmp_path / "none.db"))
            if run.wait_for(lambda: holding_stop_signals(run.pid)):
                break
            run.finish()
        else:
            pytest.fail("the start-up never held Ctrl-C and SIGTERM")
        time.sleep(delay)
        os.kill(run.pid, signum)
        code, out, err = run.finish()
        outcomes.append(code)
        if code == 130:
            assert (out, err) == ("", INTERRUPTED)
        else:  # the command was done first: its own answer, one line
            assert code == 2 and err.startswith("batcher: error: ") and err.count("\n") == 1, (code, err)
    assert 130 in outcomes


#: The command, and after its last exit callback one that reports how SIGTERM is handled then.
LAST_AT_EXIT = """
import atexit, signal, sys
def after_the_command():  # registered before the command's own callbacks: run after them
    print("ignored then:", signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, file=sys.stderr, flush=True)
atexit.register(after_the_command)
sys.argv = ["batcher", *sys.argv[1:]]
import batcher.__main__
"""


def test_stop_signals_are_ignored_in_the_interpreters_teardown(tmp_path: Path) -> None:
    """What follows the exit callbacks puts the default handlers back: a SIGTERM landing there ended a
    finished command "killed by SIGTERM" (-15) instead of with the status it reported (2)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POE_", "BATCHER_"))}
    done = subprocess.run([sys.executable, "-c", LAST_AT_EXIT, "status", "--db", str(tmp_path / "none.db")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    error, then = done.stderr.splitlines()
    assert error.startswith("batcher: error: ") and then == "ignored then: True", done.stderr


LOST_IN_A_CALLBACK = """
import time, weakref
from batcher.interrupts import redeliver_lost_interrupts

redeliver_lost_interrupts()

class Thing:
    pass

def callback(ref):
    raise KeyboardInterrupt  # what a Ctrl-C landing in a garbage collector's callback does

thing = Thing()
ref = weakref.ref(thing, callback)
start = time.monotonic()
try:
    del thing
    time.sleep(30)
    print("lost")
except KeyboardInterrupt:
    # Within the wait, not after it: a real signal, to the main thread.
    print("delivered again" if time.monotonic() - start < 20 else "delivered late")
"""


def test_an_interrupt_raised_in_a_callback_is_delivered_again_outside_it() -> None:
    """Else Python prints "Exception ignored ... KeyboardInterrupt" and the command goes on."""
    done = subprocess.run([sys.executable, "-c", LOST_IN_A_CALLBACK], capture_output=True, text=True, timeout=60)
    assert (done.stdout, done.stderr) == ("delivered again\n", "")
