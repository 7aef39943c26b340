"""Turns: a lock the writers of one process take in the order they came.

SQLite's own wait for its write lock polls, sleeping up to 100 ms a try:
a score of threads each writing ten times a second (the batches ``batcher
serve`` runs, each with its claimer and writer) left some of them out past
a run's 2 s while the others went in and out. Queued here first, each gets
its turn; and a wait gives up only when the turns stop moving, so a queue
of short writes is never taken for a store held by someone else.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class Turns:
    """A first-come, first-served lock whose waiters give up when no turn is handed over for a while.

    >>> turns = Turns()
    >>> turns.acquire(stall_s=0.1, most_s=1.0)
    True
    >>> turns.acquire(stall_s=0.1, most_s=1.0)  # held, and nobody hands it over
    False
    >>> turns.release()
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held = False
        self._queue: deque[threading.Lock] = deque()
        self._handovers = 0
        #: Set by the holder once it has the store's write lock; until then it may be
        #: waiting for another process itself, which is then what a waiter waits for.
        self.writing = False

    def acquire(self, stall_s: float, most_s: float) -> bool:
        """Wait for the turn; False once none was handed over for ``stall_s``, or after ``most_s`` in all.

        ``threading.Lock`` would let a thread that has just released it take
        it again ahead of those waiting, and one writing in a loop could keep
        them out: here the releaser hands it to the first in line.
        """
        with self._guard:
            if not self._held:
                self._held = True
                return True
            turn = threading.Lock()
            turn.acquire()
            self._queue.append(turn)
        deadline = time.monotonic() + most_s
        while True:
            seen = self._handovers
            if turn.acquire(timeout=max(0.0, min(stall_s, deadline - time.monotonic()))):
                return True  # handed over by release()
            if self._handovers == seen or time.monotonic() >= deadline:
                break
        with self._guard:
            if turn in self._queue:
                self._queue.remove(turn)
                return False
        return True  # handed over just as the wait ran out

    def release(self) -> None:
        with self._guard:
            self._handovers += 1
            if self._queue:
                self._queue.popleft().release()  # still held: by the next in line
            else:
                self._held = False
