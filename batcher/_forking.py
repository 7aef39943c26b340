"""Whether this process may fork workers, and the part of their start both kinds share."""

from __future__ import annotations

import fcntl
import gc
import os
import signal
import threading
from typing import Callable

#: Ctrl-C and SIGTERM: what a terminal, ``timeout`` or ``kill -- -PGID`` sends to a whole process group.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def can_fork() -> bool:
    """Fork is available, and safe: this process runs no other thread.

    Forking is the only start method that does not re-run the caller's main
    module; a thread holding a lock at the instant of the fork would leave
    it held forever in the child.
    """
    import multiprocessing  # here, not at the top: only big imports and exports fork

    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


def fork_worker(work: Callable[[], None]) -> int:
    """Fork a child that runs ``work()`` and exits (0, or 1 if it raised); return its pid.

    Ctrl-C and SIGTERM reach every process of the group. A worker that acted
    on them would stop in the middle of a message, leaving its reader a
    garbled one to wait on, and print a traceback of its own; so workers
    ignore both, and the parent alone decides, then stops them. The two are
    held while forking, so that none lands in the child before it ignores
    them. The child ends with ``os._exit``: nothing inherited (buffered
    output, atexit handlers, finalizers) runs twice.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for signum in STOP_SIGNALS:
                    signal.signal(signum, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
                work()
                code = 0
            finally:
                os._exit(code)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return pid


def widen(fd: int) -> None:
    """A pipe that holds a whole answer (Linux): a worker rarely waits on its reader."""
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass


def read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from a pipe, or None if its writer closed it first (a worker that stopped)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            return None
        got += n
    return bytes(buffer)


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` into a pipe, however many writes it takes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def freeze_inherited() -> None:
    """Never rescan, nor free, the heap a forked worker inherits.

    A forked worker inherits the parent's tens of thousands of objects (the
    loaded modules): frozen, the garbage collector's full passes, set off by
    the objects the worker makes, skip them -- and never finalise one of the
    parent's, such as a database connection the child must not close.
    """
    gc.freeze()
