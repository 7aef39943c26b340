"""Reading a JSONL job file as a stream of numbered lines.

Streams: memory stays flat whatever the file size. Blank lines are skipped,
a UTF-8 byte-order mark is accepted, and a line that cannot be parsed becomes
a :class:`LineError` naming its line instead of an exception.

A regular file is read in blocks (by worker processes when it is large).
Standard input (``-``), a pipe, a FIFO or ``<(cmd)`` can be read only once:
:func:`readable_copy` copies it to a private temporary file first, in one
pass, then it is imported like any file -- same validation, same
all-or-nothing, and the store is not locked while the input trickles in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

import orjson

from ._text import as_text
from .errors import UsageError

BOM = b"\xef\xbb\xbf"
#: The job file argument that means standard input.
STDIN = "-"
#: How rows given in Python are named as an import's source.
ROWS_SOURCE = "<python rows>"
#: How compressed files start: a job file must be plain text.
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
              b"PK\x03\x04": "zip"}


@dataclass(frozen=True, slots=True)
class LineError:
    """A line that cannot become a job, and why."""

    line: int
    message: str


def _open(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder, not a job file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None


def is_regular(path: str) -> bool:
    """A regular file (symlinks followed): one that can be read again and in blocks."""
    try:
        return path != STDIN and stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def fingerprint(path: str) -> str | None:
    """A regular file as ``stat`` sees it (None for stdin, a pipe, a missing file).

    Its size, modification and change times (ns), device and inode. Any write
    changes the change time, which no tool sets back (``touch -d`` and
    ``cp -p`` set only the other two), so an equal fingerprint stands for the
    same bytes without reading them. Taken before an import reads the file:
    a write during the import makes the next one read it again.
    """
    if path == STDIN:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_dev}:{st.st_ino}"


def is_job_input(arg: str) -> bool:
    """Whether ``run ARG`` names job input (a file, a FIFO, ``-``) rather than a batch."""
    return arg == STDIN or (os.path.exists(arg) and not os.path.isdir(arg))


@contextmanager
def naming_a_batch(arg: str, imported_from: Callable[[str], str | None] | None = None) -> Iterator[None]:
    """Around opening the store and finding the batch that ``run``/``estimate ARG`` names.

    Job input (see :func:`is_job_input`) passes through: it names no batch.
    A missing ``x.jsonl`` gets the error the file would, not "no such batch",
    and the batch that was imported from it, which ``imported_from(path)``
    finds in the store: running it by name goes on without the file.
    A folder is never a job file, so it names a batch like any other word:
    ``prompts/`` beside ``prompts.jsonl`` must not stop ``batcher run
    prompts`` from resuming its batch. Only when that batch cannot be found
    does the error say the folder is there too.
    """
    if is_job_input(arg):
        yield
        return
    if not os.path.isdir(arg) and arg.endswith((".jsonl", ".json")):
        try:
            ensure_readable(arg)
        except UsageError as exc:
            batch = imported_from(arg) if imported_from is not None and not os.path.lexists(arg) else None
            if batch is None:
                raise
            raise UsageError(f"{exc}; batch {as_text(batch)!r} was imported from it: name the batch instead to go on "
                             "with its jobs") from None
        raise UsageError(f"{arg}: not a readable job file")
    try:
        yield
    except UsageError as exc:
        if not os.path.isdir(arg):
            raise
        raise UsageError(f"{arg}: is a folder, not a job file; {exc}") from None


def needs_batch_name(path: str) -> bool:
    """Input whose name says nothing of its content: ``-``, ``/dev/stdin``, ``<(cmd)``."""
    return path == STDIN or os.path.abspath(path).startswith(("/dev/", "/proc/"))


def ensure_readable(path: str) -> None:
    """Raise a one-line UsageError now if ``path`` cannot be read.

    Only a regular file is opened to find out: opening a FIFO would take its
    writer's data (or wait for one), so it is only checked for permission.
    """
    if path == STDIN:
        if sys.stdin is None:
            raise UsageError("stdin is closed: nothing to import from -")
        return
    if is_regular(path):
        _open(path).close()
    elif not os.path.exists(path):
        _open(path)  # the usual one-line error
    elif os.path.isdir(path):
        raise UsageError(f"{path}: is a folder, not a job file")
    elif not os.access(path, os.R_OK):
        raise UsageError(f"{path}: cannot read: permission denied")


def _refuse_compressed(shown: str, head: bytes) -> None:
    """Refuse input that is not UTF-8 text at all, naming what it is, rather than list every line as bad."""
    for magic, kind in COMPRESSED.items():
        if head.startswith(magic):
            raise UsageError(f"{shown}: looks {kind}-compressed, not JSONL text; decompress it first "
                             f"(e.g. {'gzip -dc' if kind == 'gzip' else kind + ' -dc'} FILE | batcher import - --batch NAME)")
    encoding = _wide_encoding(head)
    if encoding is not None:
        raise UsageError(f"{shown}: looks {encoding}-encoded; job files are UTF-8: convert it first "
                         f"(e.g. iconv -f {encoding} -t UTF-8 FILE > FILE.utf8.jsonl)")


def _wide_encoding(head: bytes) -> str | None:
    """UTF-16 or UTF-32, by a byte-order mark or by the NUL bytes beside a first ``{``."""
    for mark, name in ((b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE"),
                       (b"\xff\xfe", "UTF-16LE"), (b"\xfe\xff", "UTF-16BE")):
        if head.startswith(mark):
            return name
    for wide, name in ((b"{\x00\x00\x00", "UTF-32LE"), (b"\x00\x00\x00{", "UTF-32BE"), (b"{\x00", "UTF-16LE"),
                       (b"\x00{", "UTF-16BE")):
        if head.startswith(wide):
            return name
    return None


@contextmanager
def readable_copy(path: str) -> Iterator[str]:
    """A regular file with the job input of ``path``: itself, or a one-pass private copy.

    The copy (mode 0600, in the temporary folder) is removed on the way out.
    Compressed input is refused here, before a line is read.
    """
    shown = describe(path)
    if is_regular(path):
        with _open(path) as handle:
            _refuse_compressed(shown, handle.read(8))
        yield path
        return
    fd, copy = tempfile.mkstemp(prefix="batcher-input-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                if path == STDIN:
                    if sys.stdin is None:
                        raise UsageError("stdin is closed: nothing to import from -")
                    shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
                else:
                    with _open(path) as source:
                        shutil.copyfileobj(source, out, 1 << 20)
            except OSError as exc:
                raise UsageError(f"{shown}: cannot read it into a temporary file in {tempfile.gettempdir()}: "
                                 f"{exc.strerror or exc}") from None
        with open(copy, "rb") as handle:
            _refuse_compressed(shown, handle.read(8))
        yield copy
    finally:
        try:
            os.unlink(copy)
        except OSError:
            pass


@dataclass(frozen=True, slots=True)
class Head:
    """The first whole lines of a file: their bytes, how many lines, and the SHA-256 of those bytes.

    What an import read of a file that ended at a line end; a later import
    of the same file that still starts with these very bytes (checked by
    hashing them, 0.2 s per 300 MB) reads only what follows.
    """

    size: int
    lines: int
    digest: str


class Reading:
    """The bytes a file's blocks are read from, in order, hashed as they go by.

    Started at a :class:`Head` (with the hash of its bytes), it goes on from
    there. :attr:`head` is then what was read in all, if it ended at a line
    end (or nothing was read): a last line without its newline may yet grow.
    """

    def __init__(self, start: Head | None = None, hashed: Any = None) -> None:
        self.start = start or Head(0, 0, "")
        self._hash = hashed if hashed is not None else hashlib.sha256()
        self._size, self._lines = self.start.size, self.start.lines
        self._whole = True

    def take(self, data: bytes) -> int:
        """Hash ``data``, the next bytes of the file; return how many lines it ends."""
        self._hash.update(data)
        self._size += len(data)
        ended = data.count(b"\n")
        self._lines += ended
        self._whole = data.endswith(b"\n")
        return ended

    @property
    def head(self) -> Head | None:
        """What was read, as a head the next import can skip (None if it ended inside a line)."""
        return self.so_far if self._whole else None

    @property
    def so_far(self) -> Head:
        """Every byte read so far, as a head, whether or not it ends at a line end."""
        return Head(self._size, self._lines, self._hash.hexdigest())


def starts_with(path: str, head: Head, block_size: int = 1 << 20) -> Reading | None:
    """A :class:`Reading` going on after ``head`` if the file at ``path`` starts with it, else None."""
    hashed = hashlib.sha256()
    left = head.size
    with _open(path) as handle:
        while left > 0 and (data := handle.read(min(block_size, left))):
            hashed.update(data)
            left -= len(data)
    if left or hashed.hexdigest() != head.digest:
        return None
    return Reading(head, hashed)


def check_read_from_one_file(path: str, before: str, reading: Reading) -> None:
    """Raise a UsageError if the file at ``path`` is no longer the one its blocks were read from.

    Each block is opened again by name (by worker processes too), so a file
    replaced while it was read (an editor's save, ``sed -i``, ``mv``) or
    rewritten would give lines of one version and lines of the other, with
    no bad line to show it. ``before`` is its fingerprint taken before the
    reading; lines appended meanwhile are fine: the bytes read are still
    its first bytes.
    """
    shown = describe(path)
    if not os.path.exists(path):
        raise UsageError(f"{shown}: removed while it was being read; nothing imported")
    if fingerprint(path) != before and starts_with(path, reading.so_far) is None:
        raise UsageError(f"{shown}: replaced or rewritten while it was being read; nothing imported: "
                         "import it again once it is written")


@dataclass(frozen=True, slots=True)
class Block:
    """Whole lines of a file: where they start, how many bytes, first line's number.

    A block is small to send to another process, which reads its lines itself.
    """

    path: str
    offset: int
    length: int
    first_line: int


def blocks(path: str, size: int, reading: Reading | None = None) -> Iterator[Block]:
    """Cut the file into blocks of about ``size`` bytes, ending at line ends.

    With a ``reading``, from where it starts, and every byte goes through it.
    """
    with _open(path) as handle:
        offset, line = (reading.start.size, reading.start.lines + 1) if reading else (0, 1)
        handle.seek(offset)
        while data := handle.read(size):
            if not data.endswith(b"\n"):
                data += handle.readline()  # finish the last line (or reach the end)
            yield Block(path, offset, len(data), line)
            offset += len(data)
            line += reading.take(data) if reading else data.count(b"\n")


def block_lines(block: Block) -> Iterator[tuple[int, bytes]]:
    """``(line number, stripped bytes)`` for every non-blank line of a block."""
    with _open(block.path) as handle:
        handle.seek(block.offset)
        data = handle.read(block.length)
    if block.offset == 0 and data.startswith(BOM):
        data = data[len(BOM):]
    for number, raw in enumerate(data.split(b"\n"), start=block.first_line):
        raw = raw.strip()
        if raw:
            yield number, raw


def numbered_lines(path: str, block_size: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
    """``(line number, stripped bytes)`` for every non-blank line of the file."""
    for block in blocks(path, block_size):
        yield from block_lines(block)


#: A file this size at most is parsed whole to see whether it is one JSON document (see :func:`one_document`).
ONE_DOCUMENT_MAX = 64 << 20


def one_document(path: str) -> str | None:
    """What the file is, if it is one JSON document rather than JSONL: a JSON array, or an object over lines.

    For a file none of whose lines is a job: a pretty-printed ``.json`` file
    would otherwise be reported line by line (``{``, ``"prompt": ...``),
    none of which names the mistake. None when it is not one such document.
    """
    try:
        if os.path.getsize(path) > ONE_DOCUMENT_MAX:
            return None
        with _open(path) as handle:
            data = handle.read()
        value = orjson.loads(data[len(BOM):] if data.startswith(BOM) else data)
    except (OSError, UsageError, orjson.JSONDecodeError):
        return None
    lines = data.strip().count(b"\n") + 1
    if isinstance(value, list):
        over = f" over {lines:,} lines" if lines > 1 else ""
        return (f"one JSON array{over} ({len(value):,} items), not JSONL (one job object per line): convert it "
                "first (e.g. jq -c '.[]' FILE > FILE.jsonl)")
    if isinstance(value, dict) and lines > 1:
        return (f"one JSON object over {lines:,} lines, not JSONL (one job object per line): put each job on one "
                "line (e.g. jq -c . FILE > FILE.jsonl)")
    return None


def parse_line(number: int, raw: bytes) -> Any:
    """The JSON value of one line, or a LineError saying what is wrong."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "UTF-8" in exc.msg:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return LineError(number, f"invalid UTF-8 at byte {err.start + 1}")
        if "end of data" in exc.msg:
            return LineError(number, "truncated JSON (the line ends before the object does)")
        if "infinity" in exc.msg:
            return LineError(number, f"number too large at column {exc.colno} (beyond what JSON readers "
                                     "hold as a number; write it as a string)")
        return LineError(number, f"not valid JSON: {exc.msg} at column {exc.colno}")


def describe(path: str) -> str:
    """How a job file is named in messages: as the user typed it (``-`` is stdin), as text (see :func:`as_text`)."""
    return "stdin" if path == STDIN else as_text(os.path.normpath(path))
