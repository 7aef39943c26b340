"""Running async code from synchronous code, whether or not a loop is already running.

``asyncio.run`` refuses to start inside a running loop (a notebook's), so the
work always goes to an event loop on a worker thread (anyio's blocking
portal) while the calling thread waits. The calling thread keeps receiving
KeyboardInterrupt (Ctrl-C, a notebook's stop button): the first one asks the
work to stop gracefully, the next ones to stop at once, and the call returns
(or raises) only once the work has wound down.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Awaitable, Callable, TypeVar

from anyio.from_thread import start_blocking_portal

T = TypeVar("T")
POLL_S = 0.2


def call_sync(work: Callable[[], Awaitable[T]], stop: Callable[[], Any], cancel: Callable[[], Any]) -> T:
    """Run ``work()`` to its end on a worker thread's loop; relay interrupts to ``stop``, then ``cancel``.

    ``stop`` and ``cancel`` run on the worker's loop. Whatever ``work``
    returns or raises is returned or raised here.
    """
    with start_blocking_portal() as portal:
        future = portal.start_task_soon(work)
        interrupts = 0
        while not future.done():
            try:
                # A timed wait: an interrupt that is no real signal (a
                # notebook's, interrupt_main) is noticed at the next wake-up.
                concurrent.futures.wait([future], timeout=POLL_S)
            except KeyboardInterrupt:
                interrupts += 1
                if not future.done():
                    portal.call(stop if interrupts == 1 else cancel)
        return future.result()
