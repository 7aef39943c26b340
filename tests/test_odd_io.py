"""Odd files and odd outputs, through the real CLI: FIFOs, symlinks, devices, closed
and full stdout, stdin as a job file, damaged stores, read-only folders.

Each failure must be one line on stderr with its documented exit code; a
closed pipe ends quietly (killed by SIGPIPE, as other filters are).
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from batcher.db import open_store
from batcher.errors import BatcherError, OutputError, StoreError, UsageError, command_line_words
from batcher.export import ExportNotes, export_batch
from batcher.importer import ImportRejected, import_file
from batcher.interrupts import CommitPoint, until_reported
from batcher.store import find_batch

from batchdata import DEFAULTS, mixed_batch

MODEL_ARGS = ["--model", "claude-haiku-4.5", "--max-tokens", "64"]


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("POE_", "BATCHER_"))}
    return {**clean, "POE_API_KEY": "poe-test-key"}


def cli(*args: str, cwd: Path | None = None, input: bytes | None = None,
        **popen: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "batcher", *args], input=input, capture_output=True, cwd=cwd,
                          env=env(), timeout=60, **popen)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def shell(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``script`` in bash, with ``batcher`` meaning this checkout's command."""
    prelude = f'batcher() {{ "{sys.executable}" -m batcher "$@"; }}\n'
    return subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True, cwd=cwd, env=env(),
                          timeout=60)


def one_error_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batcher: error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def job_lines(n: int, start: int = 1) -> str:
    return "".join(json.dumps({"custom_id": f"j{i}", "prompt": f"p{i}"}) + "\n" for i in range(start, start + n))


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, str]:
    """A store with batch ``b`` (ten jobs, some finished); returns (folder, db path)."""
    _, _, db = mixed_batch(tmp_path)
    return tmp_path, db


# -- export destinations ---------------------------------------------------------------


def export(db: str, out: str, **options: Any) -> int:
    engine = open_store(db)
    try:
        return export_batch(engine, find_batch(engine, "b"), out, **options)
    finally:
        engine.dispose()


def test_export_follows_a_symlink_and_creates_private_files(store: tuple[Path, str]) -> None:
    folder, db = store
    (folder / "link.jsonl").symlink_to("real.jsonl")  # dangling: the target is created
    assert export(db, str(folder / "link.jsonl")) == 8
    assert (folder / "link.jsonl").is_symlink()
    assert len((folder / "real.jsonl").read_text().splitlines()) == 8
    assert stat.S_IMODE((folder / "real.jsonl").stat().st_mode) == 0o600
    # An existing file keeps the mode its owner gave it, through the link too.
    (folder / "real.jsonl").chmod(0o640)
    export(db, str(folder / "link.jsonl"), fmt="text")
    assert (folder / "link.jsonl").is_symlink()
    assert stat.S_IMODE((folder / "real.jsonl").stat().st_mode) == 0o640
    assert json.loads((folder / "real.jsonl").read_text().splitlines()[0])["status"] == "succeeded"


def test_export_writes_into_a_fifo(store: tuple[Path, str]) -> None:
    folder, db = store
    fifo = folder / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert export(db, str(fifo)) == 8
    reader.join(30)
    assert len(got[0].splitlines()) == 8
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_export_to_devices_and_descriptors(store: tuple[Path, str]) -> None:
    folder, db = store
    assert export(db, "/dev/null") == 8
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    done = cli("export", "b", "--db", db, "-o", "/dev/stdout", "--format", "text")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 8  # the report went to stderr
    assert "written to /dev/stdout" in done.stderr
    # >(cmd): a pipe under /dev/fd.
    done = shell(f'batcher export b --db "{db}" -o >(wc -l > counted); wait $!; sleep 0.2; cat counted', folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "8"


def test_a_killed_exports_temporary_file_is_removed_by_the_next(store: tuple[Path, str]) -> None:
    folder, db = store
    ended = subprocess.Popen(["true"])
    ended.wait()  # its process id no longer runs: as after a kill -9
    dead = folder / f".x.jsonl.{ended.pid}.abcd1234.part"
    dead.write_text("half")
    live = folder / f".x.jsonl.{os.getpid()}.abcd1234.part"  # a live process's export: left alone
    live.write_text("in progress")
    export(db, str(folder / "x.jsonl"))
    assert not dead.exists() and live.exists()
    assert [p.name for p in folder.glob(".x.jsonl.*")] == [live.name]


def test_export_refuses_to_overwrite_the_batchs_own_job_file(tmp_path: Path) -> None:
    (tmp_path / "jobs.jsonl").write_text(job_lines(3))
    engine = open_store(str(tmp_path / "s.db"))
    batch = find_batch(engine, import_file(engine, str(tmp_path / "jobs.jsonl"), defaults=DEFAULTS).batch)
    os.symlink("jobs.jsonl", tmp_path / "alias.jsonl")
    for target in ("jobs.jsonl", "alias.jsonl"):
        with pytest.raises(UsageError, match=r"imported from.*\(or force=True to overwrite it\)"):
            export_batch(engine, batch, str(tmp_path / target), include_pending=True)
    assert (tmp_path / "jobs.jsonl").read_text() == job_lines(3)
    assert export_batch(engine, batch, str(tmp_path / "jobs.jsonl"), include_pending=True, force=True) == 3
    assert '"pending"' in (tmp_path / "jobs.jsonl").read_text()
    # Another batch's job file in the same store is as precious.
    (tmp_path / "other.jsonl").write_text(job_lines(2, start=10))
    import_file(engine, str(tmp_path / "other.jsonl"), defaults=DEFAULTS)
    with pytest.raises(UsageError, match="other.jsonl: that is the job file batch 'other' was imported from"):
        export_batch(engine, batch, str(tmp_path / "other.jsonl"), include_pending=True)
    assert (tmp_path / "other.jsonl").read_text() == job_lines(2, start=10)
    # A folder meant, and none there: named as such, not "Not a directory".
    with pytest.raises(UsageError, match="newdir/: folder .*/newdir/ does not exist"):
        export_batch(engine, batch, str(tmp_path / "newdir") + "/", include_pending=True)


def test_merged_export_warns_about_replaced_keys(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text('{"prompt": "a", "response": "mine"}\n{"prompt": "b"}\n'
                                      '{"prompt": "c", "usage": 1}\n')
    engine = open_store(str(tmp_path / "s.db"))
    batch = find_batch(engine, import_file(engine, str(tmp_path / "m.jsonl"), defaults=DEFAULTS).batch)
    notes = ExportNotes()
    out = io.BytesIO()
    export_batch(engine, batch, out, fmt="merged", include_pending=True, notes=notes)
    assert notes.warnings() == ["2 input line(s) had their own response, error, usage key(s): replaced in the "
                                "merged export (the text or results format keeps them apart)"]
    assert [json.loads(line)["response"] for line in out.getvalue().splitlines()] == [None, None, None]


def test_batch_names_with_control_characters_are_refused(tmp_path: Path) -> None:
    (tmp_path / "j.jsonl").write_text(job_lines(1))
    engine = open_store(str(tmp_path / "s.db"))
    for name in ("a\x1b[2Jb", "x\ny", "\x85"):
        with pytest.raises(UsageError, match="control characters; choose another$"):
            import_file(engine, str(tmp_path / "j.jsonl"), name, DEFAULTS)
        with command_line_words(), pytest.raises(UsageError, match="control characters; choose another with --batch"):
            import_file(engine, str(tmp_path / "j.jsonl"), name, DEFAULTS)


# -- job input that is not a regular file ----------------------------------------------


#: Latin-1 words, as a shell in that encoding passes them: bytes that are not UTF-8.
CAFE, LATIN = os.fsdecode(b"caf\xe9.jsonl"), os.fsdecode(b"x\xe9")


#: What each command says of a word that is not UTF-8: the option it was given to, or the file's name.
NOT_UTF8 = [
    (["import", CAFE, "--db", "s.db", *MODEL_ARGS],
     "caf\\xe9.jsonl: the file's name is not valid UTF-8; give the batch a name with --batch NAME"),
    (["import", CAFE, "--batch", LATIN, "--db", "s.db", *MODEL_ARGS], "--batch 'x\\xe9' is not valid UTF-8"),
    (["import", CAFE, "--batch", "c", "--db", "s.db", "--model", LATIN, "--max-tokens", "5"], "--model 'x\\xe9'"),
    (["run", CAFE, "--batch", "c", "--db", "s.db", *MODEL_ARGS, "--system", LATIN], "--system 'x\\xe9'"),
    (["import", CAFE, "--batch", "c", "--db", LATIN, *MODEL_ARGS], "--db 'x\\xe9' is not valid UTF-8"),
    (["status", LATIN, "--db", "s.db"], "BATCH 'x\\xe9' is not valid UTF-8"),
    (["run", LATIN, "--db", "s.db"], "batch name 'x\\xe9' is not valid UTF-8"),
]


def test_words_that_are_not_utf8_are_one_line_naming_them(tmp_path: Path) -> None:
    (tmp_path / CAFE).write_text(job_lines(2))
    cli("import", CAFE, "--batch", "c", "--db", "s.db", *MODEL_ARGS, cwd=tmp_path)  # a store to look in
    for args, says in NOT_UTF8:
        one_error_line(cli(*args, cwd=tmp_path), 2, says)
    assert sqlite3.connect(tmp_path / "s.db").execute("SELECT name FROM batches").fetchall() == [("c",)]


def test_a_file_whose_name_is_not_utf8_imports_runs_and_estimates(tmp_path: Path, simulator: Any) -> None:
    (tmp_path / CAFE).write_text(job_lines(2))
    args = [CAFE, "--batch", "cafe", "--db", "s.db", *MODEL_ARGS]
    assert cli("import", *args, cwd=tmp_path).stdout == "batch cafe: 2 added, 0 unchanged, 0 rejected\n"
    again = cli("import", *args, cwd=tmp_path)  # its name is kept as the same text each time: known again
    assert again.stdout.endswith("the file is as its last import read it: not read again\n"), again.stderr
    assert sqlite3.connect(tmp_path / "s.db").execute("SELECT DISTINCT source FROM imports").fetchall() == [
        (f"{tmp_path}/caf\\xe9.jsonl",)]
    ran = cli("run", *args, "--base-url", simulator.base_url, cwd=tmp_path)
    assert ran.returncode == 0 and ran.stdout.startswith("batch cafe: 2 succeeded"), ran.stderr
    estimated = cli("estimate", CAFE, *MODEL_ARGS, cwd=tmp_path)
    assert estimated.stdout.startswith("caf\\xe9.jsonl: 2 job(s) to send"), estimated.stderr
    # From Python too, a batch name that is not UTF-8 is a UsageError, not a database driver's crash.
    engine = open_store(str(tmp_path / "s.db"))
    for refused in (lambda: import_file(engine, str(tmp_path / CAFE), LATIN, DEFAULTS),
                    lambda: find_batch(engine, LATIN)):
        with pytest.raises(UsageError, match=r"^batch name 'x\\xe9' is not valid UTF-8$"):
            refused()
    engine.dispose()


def test_import_from_stdin_needs_a_name_and_is_all_or_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    with pytest.raises(UsageError, match="stdin: give the batch a name with --batch NAME"):
        import_file(open_store(db), "-", defaults=DEFAULTS)
    bad = job_lines(2) + "{nope\n"
    done = cli("import", "-", "--batch", "p", "--db", db, *MODEL_ARGS, input=bad.encode())
    assert done.returncode == 2 and "stdin:3: not valid JSON" in done.stderr
    done = cli("import", "-", "--batch", "p", "--db", db, *MODEL_ARGS, input=job_lines(3).encode())
    assert done.returncode == 0, done.stderr
    assert "batch p: 3 added" in done.stdout
    assert sqlite3.connect(db).execute("SELECT count(*) FROM jobs").fetchone() == (3,)


def test_import_from_a_fifo_dev_stdin_and_process_substitution(tmp_path: Path) -> None:
    fifo = tmp_path / "f.jsonl"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(job_lines(4)))
    writer.start()
    done = cli("import", str(fifo), "--db", str(tmp_path / "s.db"), *MODEL_ARGS)  # opened once: no hang
    writer.join(10)
    assert done.returncode == 0, done.stderr
    assert "batch f: 4 added" in done.stdout
    (tmp_path / "j.jsonl").write_text(job_lines(2))
    done = shell('batcher import /dev/stdin --batch s --db s.db --model m --max-tokens 5 < j.jsonl && '
                 'batcher import <(cat j.jsonl) --batch q --db s.db --model m --max-tokens 5', tmp_path)
    assert done.returncode == 0, done.stderr
    assert "batch s: 2 added" in done.stdout and "batch q: 2 added" in done.stdout


def test_run_reads_its_job_file_from_stdin(tmp_path: Path, simulator: Any) -> None:
    db = str(tmp_path / "s.db")
    done = cli("run", "-", "--batch", "piped", "--db", db, "--base-url", simulator.base_url, *MODEL_ARGS,
               "--quiet", input=job_lines(3).encode())
    assert done.returncode == 0, done.stderr
    rows = sqlite3.connect(db).execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
    assert rows == [("succeeded", 3)]


def test_import_messages_for_compressed_files_and_huge_numbers(tmp_path: Path) -> None:
    import gzip

    engine = open_store(str(tmp_path / "s.db"))
    (tmp_path / "j.jsonl.gz").write_bytes(gzip.compress(job_lines(3).encode()))
    with pytest.raises(UsageError, match="j.jsonl.gz: looks gzip-compressed, not JSONL text; decompress it first"):
        import_file(engine, str(tmp_path / "j.jsonl.gz"), defaults=DEFAULTS)
    (tmp_path / "n.jsonl").write_text('{"prompt": "x", "row": ' + "7" * 5000 + "}\n")
    with pytest.raises(ImportRejected) as caught:
        import_file(engine, str(tmp_path / "n.jsonl"), defaults=DEFAULTS)
    assert caught.value.report.error_lines()[0].startswith(f"{tmp_path / 'n.jsonl'}:1: number too large at column 24")


@pytest.mark.parametrize("document, says", [
    ([{"prompt": "a"}, {"prompt": "b"}], "one JSON array over 8 lines (2 items), not JSONL (one job object per line): "
                                         "convert it first (e.g. jq -c '.[]' FILE > FILE.jsonl)"),
    ({"prompt": "a", "tags": ["x"]}, "one JSON object over 6 lines, not JSONL (one job object per line): "
                                     "put each job on one line (e.g. jq -c . FILE > FILE.jsonl)")])
def test_a_pretty_printed_json_file_is_named_as_such_not_listed_line_by_line(tmp_path: Path, document: Any,
                                                                             says: str) -> None:
    (tmp_path / "p.json").write_text(json.dumps(document, indent=2) + "\n")
    for command in ("import", "estimate"):
        done = cli(command, "p.json", "--db", "s.db", *MODEL_ARGS, cwd=tmp_path)
        assert done.returncode == 2
        assert done.stderr.splitlines()[0] == f"p.json: {says}", done.stderr
        assert len(done.stderr.splitlines()) == 2 and done.stderr.splitlines()[1].startswith("batcher: error: ")
    assert sqlite3.connect(tmp_path / "s.db").execute("SELECT count(*) FROM batches").fetchone() == (0,)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be"])
def test_a_utf16_or_utf32_file_is_named_as_such_in_one_line(tmp_path: Path, encoding: str) -> None:
    """Not a screenful of "invalid UTF-8" lines, one per line of the file and more."""
    (tmp_path / "w.jsonl").write_bytes(job_lines(3).encode(encoding))
    engine = open_store(str(tmp_path / "s.db"))
    name = encoding.upper().replace("-", "").replace("UTF", "UTF-")
    name = name if name[-2:] in ("LE", "BE") else name + "LE"  # Python writes its own byte order, with a mark
    with pytest.raises(UsageError, match=f"w.jsonl: looks {name}-encoded; job files are UTF-8: convert it first"):
        import_file(engine, str(tmp_path / "w.jsonl"), defaults=DEFAULTS)
    engine.dispose()


def test_same_stem_in_two_folders_does_not_merge_silently(tmp_path: Path) -> None:
    engine = open_store(str(tmp_path / "s.db"))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "u.jsonl").write_text(job_lines(2, start=1 if folder == "a" else 10))
    import_file(engine, str(tmp_path / "a" / "u.jsonl"), defaults=DEFAULTS)
    with pytest.raises(UsageError) as caught:
        import_file(engine, str(tmp_path / "b" / "u.jsonl"), defaults=DEFAULTS)
    assert str(caught.value) == (f"{tmp_path / 'b' / 'u.jsonl'}: batch 'u' already holds jobs from "
                                 f"{tmp_path / 'a' / 'u.jsonl'}; add this file to it with --batch u, "
                                 "or name a new batch with --batch NAME")
    # Naming the batch says the merge is meant; re-importing the first file needs no name.
    assert import_file(engine, str(tmp_path / "b" / "u.jsonl"), "u", DEFAULTS).added == 2
    assert import_file(engine, str(tmp_path / "a" / "u.jsonl"), defaults=DEFAULTS).unchanged == 2


def test_a_folder_named_like_a_batch_does_not_hide_the_batch(tmp_path: Path, simulator: Any) -> None:
    """``prompts/`` beside ``prompts.jsonl``: ``batcher run prompts`` still resumes batch ``prompts``."""
    for folder in ("a", "u", "v"):
        (tmp_path / folder).mkdir()
    (tmp_path / "a" / "u.jsonl").write_text(job_lines(2))
    assert cli("import", "a/u.jsonl", "--db", "i.db", *MODEL_ARGS, cwd=tmp_path).returncode == 0
    estimated = cli("estimate", "u", "--db", "i.db", "--json", cwd=tmp_path)
    assert (estimated.returncode, json.loads(estimated.stdout or "{}").get("jobs")) == (0, 2), estimated.stderr
    ran = cli("run", "u", "--db", "i.db", "--base-url", simulator.base_url, cwd=tmp_path)
    assert ran.returncode == 0 and ran.stdout.startswith("batch u: 2 succeeded"), ran.stderr
    # A folder that names no batch either: one line says both.
    for command in (["run", "v", "--base-url", simulator.base_url], ["estimate", "v"]):
        one_error_line(cli(*command, "--db", "i.db", cwd=tmp_path), 2,
                       "error: v: is a folder, not a job file; no batch named 'v' (batches here: u)")
    one_error_line(cli("estimate", "v", "--db", "none.db", cwd=tmp_path), 2, "v: is a folder, not a job file; ",
                   "none.db: no such database")


def test_a_job_file_gone_since_its_import_names_its_batch(tmp_path: Path) -> None:
    """The same command again after the file was moved: the batch can still be run by name."""
    (tmp_path / "j.jsonl").write_text(job_lines(2))
    assert cli("import", "j.jsonl", "--db", "s.db", *MODEL_ARGS, cwd=tmp_path).returncode == 0
    (tmp_path / "j.jsonl").unlink()
    for command in ("run", "estimate"):
        one_error_line(cli(command, "j.jsonl", "--db", "s.db", cwd=tmp_path), 2,
                       "j.jsonl: no such file; batch 'j' was imported from it: name the batch instead")
    one_error_line(cli("run", "k.jsonl", "--db", "s.db", cwd=tmp_path), 2, "k.jsonl: no such file")


def test_a_folder_given_as_the_job_file_is_one_line_for_import_as_for_run(tmp_path: Path) -> None:
    (tmp_path / "adir.jsonl").mkdir()
    (tmp_path / "j.jsonl").write_text(job_lines(1))
    assert cli("import", "j.jsonl", "--db", "s.db", *MODEL_ARGS, cwd=tmp_path).returncode == 0
    said = [one_error_line(cli(command, "adir.jsonl", "--db", "s.db", cwd=tmp_path), 2)
            for command in ("import", "run", "estimate")]
    assert said[0] == "batcher: error: adir.jsonl: is a folder, not a job file"
    assert said[1] == said[2] == said[0] + "; no batch named 'adir.jsonl' (batches here: j)"


# -- damaged and foreign stores ----------------------------------------------------------

COMMANDS = [["batches"], ["status", "b"], ["export", "b", "-o", "-"],
            ["import", "j.jsonl", "--batch", "b", *MODEL_ARGS]]


def damage(db: Path, how: str) -> None:
    if how == "dropped table":
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TABLE attempts")
    elif how == "other program":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE notes (x)")
    else:
        db.write_bytes(b"SQLite format 2\x00" + os.urandom(4096))


@pytest.mark.parametrize("how, says", [("dropped table", "damaged job store: table attempts missing"),
                                       ("other program", "not a batcher job store (it holds other tables: notes)"),
                                       ("not sqlite", "file is not a database")])
@pytest.mark.parametrize("readonly", [False, True])
def test_a_damaged_store_is_refused_in_one_line(tmp_path: Path, how: str, says: str, readonly: bool) -> None:
    db = Path(mixed_batch(tmp_path)[2]) if how == "dropped table" else tmp_path / "s.db"
    damage(db, how)
    before = db.read_bytes()
    with pytest.raises(StoreError) as caught:
        open_store(str(db), readonly=readonly)
    assert str(caught.value).startswith(f"{db}: ") and says in str(caught.value)
    assert db.read_bytes() == before  # nothing written into it, not even a journal mode


def test_a_damaged_store_is_exit_4_for_every_command(tmp_path: Path) -> None:
    (tmp_path / "j.jsonl").write_text(job_lines(1))
    db = Path(mixed_batch(tmp_path)[2])
    damage(db, "dropped table")
    for args in COMMANDS:
        done = cli(*args, "--db", str(db), cwd=tmp_path)
        one_error_line(done, 4, str(db), "table attempts missing")


def no_room_to_write() -> None:
    """In the child: no file may grow past 0 bytes, as on a full disk (a write fails, no signal kills)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_a_new_store_that_cannot_be_written_is_one_line_and_leaves_no_file(tmp_path: Path) -> None:
    (tmp_path / "j.jsonl").write_text(job_lines(2))
    done = cli("import", "j.jsonl", "--db", "s.db", *MODEL_ARGS, cwd=tmp_path, preexec_fn=no_room_to_write)
    one_error_line(done, 4, f"{tmp_path}/s.db: cannot open database")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.jsonl"]  # no empty store that would pass for one


# -- output errors -------------------------------------------------------------------------


def test_closed_stdout_is_one_line_exit_2(store: tuple[Path, str]) -> None:
    folder, db = store
    # Only export has -o: the others are told to redirect.
    for command, fix in ((f'batcher export b --db "{db}" -o - >&-', "give a file with -o FILE or redirect it"),
                         (f'batcher batches --db "{db}" >&-', "redirect it to a file")):
        one_error_line(shell(command, folder), 2, f"stdout is closed (started with >&-?); {fix}")


def test_full_stdout_is_an_output_error_not_a_store_error(store: tuple[Path, str]) -> None:
    folder, db = store
    for command in (f'batcher batches --db "{db}" > /dev/full', f'batcher export b --db "{db}" -o - > /dev/full'):
        one_error_line(shell(command, folder), 2, "stdout: cannot write: disk full")
    with pytest.raises(OutputError, match="/dev/full: cannot write: disk full"):
        export(db, "/dev/full")


def test_run_that_succeeded_into_a_full_stdout_exits_2(tmp_path: Path, simulator: Any) -> None:
    (tmp_path / "j.jsonl").write_text(job_lines(2))
    done = shell(f'batcher run j.jsonl --db s.db --base-url {simulator.base_url} {" ".join(MODEL_ARGS)} -q '
                 '> /dev/full', tmp_path)
    one_error_line(done, 2, "stdout", "disk full")
    assert sqlite3.connect(tmp_path / "s.db").execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'"
                                                      ).fetchone() == (2,)


def test_bad_output_names_are_output_errors(store: tuple[Path, str]) -> None:
    folder, db = store
    with pytest.raises(OutputError, match="File name too long") as caught:
        export(db, str(folder / ("x" * 300)))
    assert caught.value.exit_code == 2
    os.symlink("loop", folder / "loop")
    with pytest.raises(BatcherError, match="loop"):
        export(db, str(folder / "loop"))


@pytest.mark.parametrize("args", [["batches"], ["export", "b", "-o", "-"]])
def test_a_closed_pipe_ends_quietly_like_other_filters(store: tuple[Path, str], args: list[str]) -> None:
    _, db = store
    proc = subprocess.Popen([sys.executable, "-m", "batcher", *args, "--db", db], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env())
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read()
    assert proc.wait(60) == -signal.SIGPIPE
    assert err == b""


# -- read-only stores ------------------------------------------------------------------------


@pytest.fixture
def readonly_folder() -> Iterator[tuple[Path, list[str]]]:
    """A folder with a store that the command cannot write, nor its folder; the command prefix to use."""
    folder = Path(tempfile.mkdtemp(prefix="batcher-ro-"))
    try:
        os.chmod(folder, 0o755)
        (folder / "j.jsonl").write_text(job_lines(3))
        engine = open_store(str(folder / "s.db"))
        import_file(engine, str(folder / "j.jsonl"), defaults=DEFAULTS)
        engine.dispose()
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root without setpriv: cannot drop write access")
            os.chown(folder / "s.db", 65534, 65534)
            prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        else:
            os.chmod(folder / "s.db", 0o400)
            os.chmod(folder, 0o555)
            prefix = []
        yield folder, prefix
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(folder)


def test_reading_commands_work_on_a_read_only_store(readonly_folder: tuple[Path, list[str]]) -> None:
    folder, prefix = readonly_folder
    base = [*prefix, sys.executable, "-m", "batcher"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args, "--db", "s.db"], capture_output=True, text=True, cwd=folder,
                              env=env(), timeout=60)

    for args in (["batches"], ["status", "j", "--json"], ["export", "j", "--include-pending", "-o", "-"],
                 ["estimate", "j"]):
        done = run(*args)
        assert done.returncode == 0, (args, done.stderr)
        assert done.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["j.jsonl", "s.db"]  # nothing written beside it
    # Writing commands still say why they cannot: the folder, when the file could be written.
    one_error_line(run("cancel", "j"), 4, "s.db", f"folder {folder} cannot be written", "-wal")


# -- Ctrl-C around a commit ------------------------------------------------------------------


def interrupt_at_commit_point(monkeypatch: Any, signum: int = signal.SIGINT) -> None:
    """Send ``signum`` the moment any commit point is reached.

    To the main thread, as the signal reaches a command, which runs no other
    thread: sent to the process, one of the test runner's own threads could
    take it.
    """
    real = CommitPoint.reached

    def reached_then_interrupted(self: CommitPoint) -> None:
        real(self)
        signal.pthread_kill(threading.main_thread().ident, signum)

    monkeypatch.setattr(CommitPoint, "reached", reached_then_interrupted)


def test_a_signal_after_the_commit_point_waits_and_is_then_dropped_when_reporting(tmp_path: Path,
                                                                                   monkeypatch: Any) -> None:
    """The import completes and the command reports success: the signal came too late to stop it."""
    interrupt_at_commit_point(monkeypatch, signal.SIGINT)
    engine = open_store(str(tmp_path / "s.db"))
    (tmp_path / "j.jsonl").write_text(job_lines(3))
    with until_reported():
        report = import_file(engine, str(tmp_path / "j.jsonl"), defaults=DEFAULTS)
    assert report.added == 3
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (3,)
    # Without a caller waiting to report, the signal is delivered once the commit is done.
    (tmp_path / "k.jsonl").write_text(job_lines(2, start=7))
    with pytest.raises(KeyboardInterrupt):
        import_file(engine, str(tmp_path / "k.jsonl"), defaults=DEFAULTS)
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (5,)


def test_a_signal_before_the_commit_point_rolls_the_import_back(tmp_path: Path, monkeypatch: Any) -> None:
    import batcher.importer as importer

    real = importer._Importer.finish

    def finish_then_interrupted(self: Any) -> None:
        real(self)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    monkeypatch.setattr(importer._Importer, "finish", finish_then_interrupted)
    engine = open_store(str(tmp_path / "s.db"))
    (tmp_path / "j.jsonl").write_text(job_lines(3))
    with until_reported(), pytest.raises(KeyboardInterrupt):
        import_file(engine, str(tmp_path / "j.jsonl"), defaults=DEFAULTS)
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_export_committed_then_interrupted_keeps_the_file(store: tuple[Path, str], monkeypatch: Any) -> None:
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        interrupt_at_commit_point(monkeypatch, signal.SIGTERM)
        folder, db = store
        engine = open_store(db)
        with until_reported():
            assert export_batch(engine, find_batch(engine, "b"), str(folder / "x.jsonl")) == 8
        assert len((folder / "x.jsonl").read_text().splitlines()) == 8
        assert not list(folder.glob(".x.jsonl.*"))
    finally:
        signal.signal(signal.SIGTERM, previous)



def test_a_stream_export_written_then_interrupted_reports_its_lines(store: tuple[Path, str],
                                                                     monkeypatch: Any) -> None:
    interrupt_at_commit_point(monkeypatch, signal.SIGINT)
    _, db = store
    out = io.BytesIO()
    with until_reported():
        assert export(db, "/dev/null") == 8
        engine = open_store(db)
        assert export_batch(engine, find_batch(engine, "b"), out) == 8
    assert len(out.getvalue().splitlines()) == 8


#: How help names the command run as ``python -m batcher`` (the installed command is plain ``batcher``).
PROGRAM = "python -m batcher"


@pytest.mark.parametrize("args, says", [
    (["import", "x.jsonl", "--bogus"], f"no such option '--bogus' (see {PROGRAM} import --help)"),
    (["frobnicate"], f"no such command 'frobnicate' (see {PROGRAM} --help)"),
    (["--bogus"], f"no such option '--bogus' (see {PROGRAM} --help)"),
    (["status", "a", "b"], f"got unexpected extra argument (b) (see {PROGRAM} status --help)"),
    (["import", "x.jsonl", "--max-tokens"], "option '--max-tokens' requires an argument"),
    (["impor"], f"no such command 'impor'; did you mean 'import'? (see {PROGRAM} --help)"),
])
def test_command_line_mistakes_are_one_line_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    done = cli(*args, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"batcher: error: {says}\n")


def test_help_version_and_no_command_keep_their_exits(tmp_path: Path) -> None:
    assert cli("--version", cwd=tmp_path).stdout.startswith("batcher, version ")
    helped = cli("import", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and helped.stdout.startswith(f"Usage: {PROGRAM} import [OPTIONS] FILE")
    bare = cli(cwd=tmp_path)  # the help, as a usage error
    assert bare.returncode == 2 and "Commands:" in bare.stdout + bare.stderr
    bad_value = cli("export", "--format", "bogus", cwd=tmp_path)
    assert one_error_line(bad_value, 2, "'--format'", "'bogus'")


@pytest.mark.parametrize("name", ["", "  "])
def test_a_blank_batch_name_is_refused_on_every_path(tmp_path: Path, name: str) -> None:
    (tmp_path / "one.jsonl").write_text(job_lines(1))
    engine = open_store(str(tmp_path / "s.db"))
    with pytest.raises(UsageError, match="a batch name must be a non-empty string"):
        import_file(engine, str(tmp_path / "one.jsonl"), name, DEFAULTS)
    done = cli("import", "one.jsonl", "--batch", name, "--db", "c.db", *MODEL_ARGS, cwd=tmp_path)
    one_error_line(done, 2, "batch name")
    assert done.stdout == ""
    for db in ("s.db", "c.db"):
        if (tmp_path / db).exists():
            assert sqlite3.connect(tmp_path / db).execute("SELECT count(*) FROM jobs").fetchone() == (0,)
