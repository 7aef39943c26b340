"""Reading a JSONL job file as a stream of numbered lines.

Streams: memory stays flat whatever the file size. Blank lines are skipped,
a UTF-8 byte-order mark is accepted, and a line that cannot be parsed becomes
a :class:`LineError` naming its line instead of an exception.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

import orjson

from .errors import UsageError

BOM = b"\xef\xbb\xbf"


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


def ensure_readable(path: str) -> None:
    """Raise a one-line UsageError now if ``path`` cannot be read."""
    _open(path).close()


@dataclass(frozen=True, slots=True)
class Block:
    """Whole lines of a file: where they start, how many bytes, first line's number.

    A block is small to send to another process, which reads its lines itself.
    """

    path: str
    offset: int
    length: int
    first_line: int


def blocks(path: str, size: int) -> Iterator[Block]:
    """Cut the file into blocks of about ``size`` bytes, ending at line ends."""
    with _open(path) as handle:
        offset, line = 0, 1
        while data := handle.read(size):
            if not data.endswith(b"\n"):
                data += handle.readline()  # finish the last line (or reach the end)
            yield Block(path, offset, len(data), line)
            offset += len(data)
            line += data.count(b"\n")


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
        return LineError(number, f"not valid JSON: {exc.msg} at column {exc.colno}")


def describe(path: str) -> str:
    """How a job file is named in messages: as the user typed it."""
    return os.path.normpath(path)
