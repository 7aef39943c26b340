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


def numbered_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """``(line number, stripped bytes)`` for every non-blank line."""
    with _open(path) as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            raw = raw.strip()
            if raw:
                yield number, raw


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
