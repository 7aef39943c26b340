"""Turns at one pacer: interactive requests first, then batches in rotation.

Several runs and interactive requests share one key, so they share one
:class:`~batcher.pacer.Pacer`. :class:`Turns` stands in front of its
``wait()``: one dispatcher takes each start the pacer allows and hands it to

* the oldest waiting interactive request, if any (a person is waiting);
* else the next lane in rotation that has a caller waiting: each batch gets
  its own lane, so a 100-job batch gets every other start beside a
  100,000-job one instead of queueing behind it.

An interactive request that finds no other interactive request ahead of it
starts at once and pays afterwards: the dispatcher gives the pacer's next
start to no one. The pace over any window is unchanged (at most one start
early), and a person at a prompt does not wait up to a whole interval of
the pace. Like the pacer, it knows nothing of jobs or HTTP.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Hashable

import anyio

from .pacer import Pacer, Stopped

#: Starts interactive requests may take ahead of the pacer, to be paid back.
BORROW = 1


class _Ticket:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class Turns:
    """Hands out a shared pacer's starts: interactive first, lanes in turn.

    Run :meth:`run` in a task for as long as anyone may wait.
    """

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self._interactive: deque[_Ticket] = deque()
        self._lanes: dict[Hashable, deque[_Ticket]] = {}
        self._rotation: deque[Hashable] = deque()
        self._debt = 0
        self._wake = anyio.Event()
        self._stopped = False

    # --- the dispatcher ------------------------------------------------------
    async def run(self) -> None:
        """Hand out starts until :meth:`stop` (or the pacer is stopped)."""
        try:
            while not self._stopped:
                if not self._debt and not self._waiting():
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    continue
                await self.pacer.wait()
                if self._debt:
                    self._debt -= 1
                    continue
                ticket = self._next()
                if ticket is not None:
                    ticket.granted = True
                    ticket.event.set()
        except Stopped:
            pass
        finally:
            self._stopped = True
            for queue in (self._interactive, *self._lanes.values()):
                for ticket in queue:
                    ticket.event.set()

    def stop(self) -> None:
        """No start is handed out after this; every waiter raises Stopped."""
        self._stopped = True
        self.pacer.stop()
        self._wake.set()

    def _waiting(self) -> bool:
        return bool(self._interactive) or any(self._lanes.values())

    def _next(self) -> _Ticket | None:
        if self._interactive:
            return self._interactive.popleft()
        for _ in range(len(self._rotation)):
            key = self._rotation[0]
            self._rotation.rotate(-1)
            queue = self._lanes.get(key)
            if queue:
                return queue.popleft()
        return None

    # --- waiting ---------------------------------------------------------------
    async def interactive(self) -> None:
        """Return when an interactive request may start: at once if it can borrow."""
        if self._stopped:
            raise Stopped
        if self._debt < BORROW and not self._interactive and self.pacer.paused_for <= 0:
            self._debt += 1
            self._wake.set()
            return
        await self._take(self._interactive)

    async def _take(self, queue: deque[_Ticket]) -> None:
        ticket = _Ticket()
        queue.append(ticket)
        self._wake.set()
        try:
            await ticket.event.wait()
        finally:
            if not ticket.granted:
                try:
                    queue.remove(ticket)
                except ValueError:
                    pass
        if not ticket.granted:
            raise Stopped

    def lane(self, key: Hashable) -> Lane:
        """A pacer-like view for one batch's run: its own queue and stop."""
        if key not in self._lanes:
            self._lanes[key] = deque()
            self._rotation.append(key)
        return Lane(self, key, self._lanes[key])

    def _close(self, key: Hashable, queue: deque[_Ticket]) -> None:
        if self._lanes.get(key) is not queue:
            return  # closed already, or reopened for a later run
        del self._lanes[key]
        self._rotation.remove(key)
        for ticket in queue:
            ticket.event.set()


class Lane:
    """What a runner takes for its pacer: waits in its lane, reports to the shared pacer.

    ``stop()`` stops this lane only; everything else (what the server said,
    the current pace) goes to the shared pacer.
    """

    def __init__(self, turns: Turns, key: Hashable, queue: deque[_Ticket]) -> None:
        self._turns = turns
        self._key = key
        self._queue = queue
        self._stopped = False

    async def wait(self) -> None:
        """Return when this lane's caller may start; raise Stopped after stop()."""
        if self._stopped or self._turns._stopped:
            raise Stopped
        await self._turns._take(self._queue)

    def stop(self) -> None:
        """No request of this lane starts after this; its waiters raise Stopped."""
        self._stopped = True
        self._turns._close(self._key, self._queue)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._turns.pacer, name)
