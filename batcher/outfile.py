"""Writing an export's lines to where the user asked, and nowhere else.

A regular file (or a new one) is written beside its destination under a
temporary name and renamed into place when complete, so an interrupted
write never leaves half a file where a whole one is expected. Anything that
is not a regular file -- a FIFO, ``/dev/null``, ``/dev/stdout``, a ``>(cmd)``
pipe -- is written into directly: renaming over it would replace it, not
feed it. Failures are the output's (:class:`~batcher.errors.OutputError`,
exit 2), never the store's.
"""

from __future__ import annotations

import errno
import glob
import io
import os
import stat
import tempfile
import threading
from typing import IO, Any, Callable, Iterator, cast

from ._forking import read_exactly
from .errors import OutputError, StoreError
from .interrupts import CommitPoint
from .liveness import process_exists


class Piped:
    """``size`` bytes of whole lines still in the pipe ``fd``: a chunk not yet read.

    What a forked export worker sends. The writer of a regular file moves
    them from the pipe into the file (``os.splice``), sparing this process
    the copy in and the copy out: most of its work in a big export. Read or
    written before the next chunk is asked for; ``broken`` is what went wrong
    if the pipe ends before ``size`` bytes.
    """

    def __init__(self, fd: int, size: int, broken: str) -> None:
        self.fd, self.size, self.broken = fd, size, broken
        self.done = False

    def read(self) -> bytes:
        """The bytes, read into this process."""
        data = read_exactly(self.fd, self.size)
        if data is None:
            raise StoreError(self.broken)
        self.done = True
        return data

    def move_into(self, out: IO[bytes]) -> bool:
        """Move the bytes into ``out``'s file; False (nothing moved) where the system cannot."""
        out.flush()
        left = self.size
        while left:
            try:
                n = os.splice(self.fd, out.fileno(), left)
            except OSError as exc:
                if left == self.size and exc.errno in _NO_SPLICE:
                    return False
                raise
            if n == 0:
                raise StoreError(self.broken)
            left -= n
        self.done = True
        return True


#: What splice says where a file system or a system does not take it.
_NO_SPLICE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}

#: A chunk of what is written: whole lines (or where they wait), and how many.
Chunk = tuple[bytes | Piped, int]
Chunks = Iterator[Chunk]


def write_failure(where: str, exc: OSError) -> OutputError:
    """The one-line error for a failed write to the user's output."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"{where}: cannot write: disk full")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{where}: cannot write here: {exc.strerror}")
    return OutputError(f"{where}: cannot write: {exc.strerror or exc}")


def _write_all(chunks: Chunks, out: IO[bytes], wrote: Callable[[int], None] | None = None,
               splice: bool = False) -> int:
    """Write every chunk; on any failure, end the read transaction at once.

    With ``splice`` (a regular file, removed if the export fails) piped
    chunks are moved into ``out`` where the system can. Streams read them
    instead: a worker dying mid-chunk must not leave half a line there.
    """
    written = 0
    splice = splice and hasattr(os, "splice")
    try:
        for data, lines in chunks:
            if isinstance(data, Piped):
                size = data.size
                if not (splice and data.move_into(out)):
                    splice = False
                    out.write(data.read())
            else:
                size = len(data)
                out.write(data)
            written += lines
            if wrote is not None:
                wrote(size)
    finally:
        _close(chunks)
    return written


#: Bytes written between two background flushes of a file to disk.
SYNC_EVERY = 64 << 20


class _BackgroundSync:
    """Flushes a file to disk in a thread while the rest of it is being written.

    A file must be on disk before it is renamed into place, and an export of
    a million lines is about a gigabyte: flushed only at the end, the disk
    would sit idle while lines are rendered, then the export would wait for
    it. ``fsync`` runs without the GIL, so this thread costs the rendering
    nothing. A failure is kept and raised in the writing thread: once one
    ``fsync`` has reported an error, the next may not.
    """

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.fd = out, out.fileno()
        self.unsynced = 0
        self.thread: threading.Thread | None = None
        self.error: OSError | None = None

    def wrote(self, size: int) -> None:
        self.unsynced += size
        if self.unsynced < SYNC_EVERY or (self.thread is not None and self.thread.is_alive()):
            return
        self.raise_error()
        self.unsynced = 0
        self.out.flush()
        self.thread = threading.Thread(target=self._sync, name="batcher-export-sync", daemon=True)
        self.thread.start()

    def _sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            self.error = exc

    def wait(self) -> None:
        """Wait for the flush in progress (before the file is closed)."""
        if self.thread is not None:
            self.thread.join()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


PART = ".part"


def _part_prefix(path: str) -> str:
    return f".{os.path.basename(path)}."


def remove_stale_parts(path: str) -> None:
    """Remove temporary files a killed export to ``path`` left behind.

    They are named ``.NAME.PID.RANDOM.part``; one whose process is gone is
    stale. (Files of an export still running are left alone.)
    """
    prefix = _part_prefix(path)
    for part in glob.glob(os.path.join(glob.escape(os.path.dirname(path)), glob.escape(prefix) + "*" + PART)):
        pid = os.path.basename(part)[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_exists(int(pid)):
            try:
                os.unlink(part)
            except OSError:
                pass


def write_atomically(path: str, chunks: Chunks, shown: str | None = None) -> int:
    """Write ``chunks`` to a temporary file beside ``path``, then rename it over ``path``.

    ``path`` is the real destination (symlinks resolved). A new file is
    created 0600; a replaced one keeps its mode.
    """
    shown = shown or path
    remove_stale_parts(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f"{_part_prefix(path)}{os.getpid()}.",
                                   suffix=PART)
    except OSError as exc:
        raise write_failure(shown, exc) from None
    try:
        with CommitPoint() as commit:
            with os.fdopen(fd, "wb", buffering=1 << 20) as out:
                background = _BackgroundSync(out)
                try:
                    written = _write_all(chunks, out, background.wrote, splice=True)
                    out.flush()
                finally:
                    background.wait()
                background.raise_error()
                os.fsync(out.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
            commit.reached()
            os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise write_failure(shown, exc) from None
        raise
    return written


def stream_destination(path: str) -> bool:
    """Whether ``path`` is written into directly rather than replaced.

    Anything that exists and is not a regular file (FIFO, device, socket),
    and names of an open descriptor (``/dev/stdout``, ``/dev/fd/N``,
    ``/proc/self/fd/N``), whatever it points at.
    """
    absolute = os.path.abspath(path)
    if absolute.startswith(("/dev/", "/proc/")):
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode) and not os.path.isdir(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise write_failure(path, exc) from None


def write_into(path: str, chunks: Chunks) -> int:
    """Write into what ``path`` names as it is (no temporary file, no rename)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        _close(chunks)
        raise write_failure(path, exc) from None
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            try:
                return write_stream(chunks, out, path)
            except BaseException:
                _drop_unwritten(out)
                raise
    except BrokenPipeError:
        raise
    except OSError as exc:  # the last bytes, written on close
        raise write_failure(path, exc) from None


def _drop_unwritten(out: IO[bytes]) -> None:
    """Point ``out`` at /dev/null, so that closing it does not wait to flush.

    The write failed or was interrupted: the output is incomplete anyway,
    and a FIFO whose reader stopped reading would hold the command forever
    in the flush on close.
    """
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, out.fileno())
        os.close(null)
    except OSError:
        pass


def _close(chunks: Chunks) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def takes_text(stream: Any) -> bool:
    """Whether ``stream`` is written with ``str`` (``io.StringIO``, ``sys.stdout``, a notebook's output).

    A text stream of :mod:`io`, or a stream of another kind that has an
    ``encoding`` (as text streams do) and is none of :mod:`io`'s binary ones.
    """
    if isinstance(stream, io.TextIOBase):
        return True
    binary = isinstance(stream, (io.RawIOBase, io.BufferedIOBase))
    return not binary and isinstance(getattr(stream, "encoding", None), str)


def binary_writer(stream: Any) -> IO[bytes]:
    """Where the export's bytes go into ``stream``: itself, its binary buffer, or a writer of text.

    The lines are UTF-8 JSONL. A binary stream takes them as they are; a
    text stream over a binary buffer (``sys.stdout`` in a terminal, a file
    opened with ``"w"``) has them written to the buffer, as fast as a file,
    once the text written before is flushed ahead of them; one without a
    buffer (``io.StringIO``, stdout in Jupyter) is given them as text.
    """
    if not takes_text(stream):
        return cast(IO[bytes], stream)
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        stream.flush()
        return cast(IO[bytes], buffer)
    return cast(IO[bytes], _TextWriter(stream))


class _TextWriter:
    """A text stream written with the export's bytes: chunks hold whole lines, so each decodes on its own."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, data: bytes) -> int:
        self.stream.write(data.decode())
        return len(data)

    def flush(self) -> None:
        self.stream.flush()


def write_stream(chunks: Chunks, out: IO[bytes], shown: str) -> int:
    """Write to a stream; its failures are the output's (a closed pipe stays BrokenPipeError).

    Once the last line is flushed the export is done: a signal landing then
    waits (see :mod:`batcher.interrupts`), as after a file's rename.
    """
    try:
        with CommitPoint() as done:
            written = _write_all(chunks, out)
            out.flush()
            done.reached()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise write_failure(shown, exc) from None
    return written
