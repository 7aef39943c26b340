"""Keeping Ctrl-C truthful around a commit.

An import or export that has committed is done: a Ctrl-C (or SIGTERM)
landing in the instant between the commit and the report must not turn it
into "interrupted" with exit 130, and one landing before the commit must
leave nothing behind. So the library holds the two signals from just before
its commit point (:class:`CommitPoint`); on its own it lets them through
right after, and when a caller waits to report (:func:`until_reported`, the
CLI) they stay held until the report is out and are then dropped: the
command ends as what it did, a success.
"""

from __future__ import annotations

import atexit
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})

_reporting = 0


def _can_hold() -> bool:
    return hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()


def _release(previous: set[signal.Signals], drop: bool) -> None:
    if drop:
        for signum in SIGNALS & signal.sigpending():
            signal.sigtimedwait([signum], 0)
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class CommitPoint:
    """``with CommitPoint() as point: ...work...; point.reached(); <commit>``.

    Before :meth:`reached`, a signal interrupts the work as usual (the
    caller rolls back). From then until the block ends, it waits; it is
    delivered after the block, unless :func:`until_reported` is waiting.
    """

    def __init__(self) -> None:
        self._previous: set[signal.Signals] | None = None

    def reached(self) -> None:
        if self._previous is None and _can_hold():
            self._previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)

    def __enter__(self) -> CommitPoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None and not _reporting:
            previous, self._previous = self._previous, None
            _release(previous, drop=False)


@contextmanager
def until_reported() -> Iterator[None]:
    """Hold signals that arrive after a commit point until this block ends, then drop them."""
    global _reporting
    _reporting += 1
    try:
        yield
    finally:
        _reporting -= 1
        if not _reporting and _can_hold():
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
            if SIGNALS & blocked:
                _release(blocked - SIGNALS, drop=True)


def hold(signums: Iterable[signal.Signals] = SIGNALS) -> Callable[[], None]:
    """Block ``signums`` in this (main) thread and the threads it starts; the call returned lets them in, once.

    One sent meanwhile is delivered as they are let in. Off the main thread,
    or where signals cannot be blocked, nothing is held.
    """
    if not _can_hold():
        return lambda: None
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    return release


_held_from_start: Callable[[], None] | None = None


def hold_while_starting() -> None:
    """Hold Ctrl-C and SIGTERM while the command starts, until :func:`answer_from_now` lets them in.

    Loading the modules takes a good part of a short command's time; a
    signal landing then would end the process without a word (SIGTERM) or
    with an import's traceback (Ctrl-C). Held, it is answered as soon as the
    command's entry can say "interrupted".
    """
    global _held_from_start
    if _held_from_start is None:
        _held_from_start = hold()
        atexit.register(_ignored_in_teardown)  # the first registered: the last to run


def _ignored_in_teardown() -> None:
    """The last thing the process does at exit: Ctrl-C and SIGTERM are ignored from here.

    What follows is the interpreter's own teardown, which puts the default
    handlers back in place of Python's: a SIGTERM landing there would end a
    finished command "killed by SIGTERM" instead of with the exit status it
    settled and reported. Until here the command's entry answers them (see
    ``batcher._clikit.end_at_once_with``).
    """
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def answer_from_now() -> None:
    """Let in the signals :func:`hold_while_starting` held; one already sent is delivered now."""
    global _held_from_start
    if _held_from_start is not None:
        release, _held_from_start = _held_from_start, None
        release()


REDELIVER_AFTER_S = 0.02


def redeliver_lost_interrupts() -> None:
    """A Ctrl-C or SIGTERM that lands in a finalizer or a weakref callback is raised again, outside it.

    Python runs signal handlers between any two bytecodes, a garbage
    collector's callbacks included; a KeyboardInterrupt raised there cannot
    propagate, so Python prints "Exception ignored ... KeyboardInterrupt"
    and the interruption is lost. The process's entry installs this once:
    such an interruption is delivered again as a fresh Ctrl-C to the main
    thread, which then meets it where it is (a wait included).
    """
    previous = sys.unraisablehook
    main = threading.main_thread().ident  # a real signal to it: a wait there wakes up

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # A moment later, from another thread: raised now, it would land in this
            # hook and be lost again. (Lost again in another callback, it comes back here.)
            later = threading.Timer(REDELIVER_AFTER_S, signal.pthread_kill, (main, signal.SIGINT))
            later.daemon = True
            later.start()
            return
        previous(unraisable)

    sys.unraisablehook = hook


@contextmanager
def letting_go_after_interrupt() -> Iterator[None]:
    """Let go at once of what the frames a Ctrl-C cuts short still hold (a statement SQLite was running).

    A KeyboardInterrupt landing inside a statement leaves it unfinished in
    the traceback's frames, and SQLite keeps its connection, with the write
    transaction's lock, until they are collected: in a notebook, which keeps
    the last traceback, not at all, and the next write (of this process or
    another) waited 30 s to be told another process held the store. The
    frames' locals are cleared; their lines stay for the traceback.
    """
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, Exception):
            import traceback  # here: rarely needed, and not among what a command loads to start

            traceback.clear_frames(exc.__traceback__)
        raise
