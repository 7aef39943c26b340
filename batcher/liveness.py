"""Whether a run recorded in the store belongs to a process still running it.

A run writes a heartbeat every few seconds, so a run whose heartbeat stopped
is taken for dead and the next run takes its jobs back. But a run waiting
out a full store, or one another process keeps locked, can write nothing,
however long it waits. On the run's own host the process itself is asked
then: it is the run's if it started before the run did (a process id freed
and given to a later program is not). Linux tells when a process started
(``/proc``); elsewhere the heartbeat alone decides, as before.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

#: A run whose heartbeat is older than this is taken for dead, unless its process says otherwise.
STALE_AFTER_S = 30.0
#: How far a process's start, as /proc gives it, may fall after its run's (clock ticks, rounding).
_SLACK_S = 1.0


def run_is_alive(row: Any, now: float) -> bool:
    """A ``runs`` row (``pid``, ``host``, ``started_at``, ``heartbeat_at``) belongs to a live process.

    >>> import os, socket, time
    >>> from types import SimpleNamespace
    >>> now = time.time()
    >>> run_is_alive(SimpleNamespace(pid=os.getpid(), host=socket.gethostname(), started_at=now,
    ...                              heartbeat_at=now - 5), now)
    True
    """
    fresh = now - row.heartbeat_at <= STALE_AFTER_S
    if row.host != socket.gethostname():
        return fresh
    if fresh or row.pid == os.getpid():  # this process knows its own runs' ends
        return fresh and process_exists(row.pid)
    started = started_at(row.pid)
    return started is not None and started <= row.started_at + _SLACK_S


def silent_for(row: Any, now: float) -> float | None:
    """Seconds since a live run's heartbeat, when it is older than :data:`STALE_AFTER_S` (else None)."""
    age = now - row.heartbeat_at
    return age if age > STALE_AFTER_S else None


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user's counts too).

    >>> process_exists(os.getpid())
    True
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's (not ours to signal), or the system will not say: not taken for gone
        return True
    return True


def started_at(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch; None if it has ended or nothing tells.

    From its start in clock ticks since boot, against the time since boot
    now: a clock set since boot does not shift it.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read()
    except OSError:
        return None
    fields = fields[fields.rindex(b")") + 2:]  # after the name, which may hold spaces
    state, *rest = fields.split()
    if state in (b"Z", b"X"):  # it has ended; only its parent has not collected it
        return None
    ticks = int(rest[18])  # field 22 of stat(5), starttime
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
