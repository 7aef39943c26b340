"""Whether this process may fork workers, and the part of their start both kinds share."""

from __future__ import annotations

import gc
import threading


def can_fork() -> bool:
    """Fork is available, and safe: this process runs no other thread.

    Forking is the only start method that does not re-run the caller's main
    module; a thread holding a lock at the instant of the fork would leave
    it held forever in the child.
    """
    import multiprocessing  # here, not at the top: only big imports and exports fork

    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


def freeze_inherited() -> None:
    """Never rescan, nor free, the heap a forked worker inherits.

    A forked worker inherits the parent's tens of thousands of objects (the
    loaded modules): frozen, the garbage collector's full passes, set off by
    the objects the worker makes, skip them -- and never finalise one of the
    parent's, such as a database connection the child must not close.
    """
    gc.freeze()
