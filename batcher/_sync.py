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
import signal
import threading
from contextlib import ExitStack, contextmanager
from typing import Any, Awaitable, Callable, Iterator, TypeVar

from anyio.from_thread import start_blocking_portal

from .interrupts import hold

T = TypeVar("T")
POLL_S = 0.2


def call_sync(work: Callable[[], Awaitable[T]], stop: Callable[[], Any], cancel: Callable[[], Any]) -> T:
    """Run ``work()`` to its end on a worker thread's loop; relay interrupts to ``stop``, then ``cancel``.

    ``stop`` and ``cancel`` run on the worker's loop. Whatever ``work``
    returns or raises is returned or raised here.
    """
    async def carried() -> tuple[T | None, KeyboardInterrupt | None]:
        # An interruption (batcher.Interrupted) is handed back as a value: raised
        # through the portal, it would also be reported as the portal's own failure.
        try:
            return await work(), None
        except KeyboardInterrupt as exc:
            return None, exc

    # Ctrl-C is held while the portal starts: raised inside its start, it left the
    # portal's thread running and this one waiting for it forever. Once the work is
    # under way, a Ctrl-C held meanwhile lands in the wait below, as a stop.
    with ExitStack() as stack:
        release = hold({signal.SIGINT})
        stack.callback(release)
        portal = stack.enter_context(start_blocking_portal())
        stack.enter_context(_ctrl_c_raises_here())
        future = portal.start_task_soon(carried)
        interrupts = 0
        while not future.done():
            try:
                release()
                # A timed wait: an interrupt that is no real signal (a
                # notebook's, interrupt_main) is noticed at the next wake-up.
                concurrent.futures.wait([future], timeout=POLL_S)
            except KeyboardInterrupt:
                interrupts += 1
                if not future.done():
                    portal.call(stop if interrupts == 1 else cancel)
    result, interrupted = future.result()
    if interrupted is not None:
        raise interrupted
    return result  # type: ignore[return-value]


@contextmanager
def _ctrl_c_raises_here() -> Iterator[None]:
    """While the call waits, Ctrl-C raises KeyboardInterrupt in it, even under ``asyncio.run``.

    ``asyncio.run`` answers the first Ctrl-C by cancelling its main task,
    and only a second one raises. That task is the one waiting here, so
    the cancellation would wait for the whole run. Its handler is put back
    once the call returns.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    owner = getattr(getattr(previous, "func", previous), "__module__", "") or ""
    if not owner.startswith("asyncio"):
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
