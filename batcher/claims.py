"""The claimer: jobs handed to workers just as the pacer lets them send.

Between the store (which marks jobs running, :func:`batcher.jobqueue.claim`)
and the workers: it keeps a tenth of a second of jobs claimed ahead, in
input order, so a worker admitted by the pacer never waits on a
transaction, and a job is ``running`` only while it is being sent.
"""

from __future__ import annotations

from collections import deque
from typing import Awaitable, Callable

import anyio
from sqlalchemy import Engine

from .errors import StoreStalled
from .jobqueue import CLAIM_CHUNK, FULL_RETRY_S, START, ClaimedJob, claim


class Claims:
    """Jobs for workers the pacer has admitted, claimed in input order (then any put back meanwhile).

    A worker asks only once the pacer lets it send, so a job is ``running``
    only while it is sent, retried or written, plus the few claimed ahead:
    :meth:`feed` keeps ``ahead`` jobs ready (about a tenth of a second of
    sends), so an admitted worker never waits for a claim transaction and
    the pacer's spacing holds on the wire. A ``cancel`` misses at most
    those. Once no pending job is left, workers still waiting for the pacer
    are let go at once (:meth:`admit`). With a ``limit`` (``--limit``), no
    more than that many jobs are claimed in all.
    """

    def __init__(self, engine: Engine, batch_id: int, run_id: int, ahead: int = 2, limit: int | None = None,
                 on_stall: Callable[[StoreStalled | None], object] | None = None) -> None:
        """``on_stall`` hears of a claim that found the store full or locked (tried again until it
        goes through), and with None of the first that went through after it."""
        self.engine, self.batch_id, self.run_id, self.ahead, self.limit = engine, batch_id, run_id, ahead, limit
        self.on_stall = on_stall
        self._stalled = False
        self.taken = 0  # jobs claimed in all, against the limit
        # Jobs handed to workers are numbered from 1 in the order they are handed out:
        # ``handed`` is the last one handed out, ``horizon`` the last one a claim made so far may get.
        self.handed = 0
        self._queued = 0
        self._incoming = 0
        self.after = START
        self.ready: deque[ClaimedJob] = deque()
        self.waiting = 0
        self.exhausted = False
        self._wanted = anyio.Event()
        self._claimed = anyio.Event()
        self._admitting: set[anyio.CancelScope] = set()

    async def admit(self, wait: Callable[[], Awaitable[None]]) -> bool:
        """Await ``wait`` (the pacer) unless the jobs run out first; True if admitted."""
        if self._drained():
            return False
        scope = anyio.CancelScope()
        self._admitting.add(scope)
        try:
            with scope:
                await wait()
        finally:
            self._admitting.discard(scope)
        return not scope.cancelled_caught

    async def feed(self, screen: Callable[[list[ClaimedJob]], Awaitable[list[ClaimedJob]]] | None = None) -> None:
        """Claim whenever fewer than ``ahead`` jobs (plus one per waiting worker) are ready.

        ``screen`` sees each claimed chunk first and returns the jobs still
        to send (``--reuse`` answers the others from the store). Runs beside
        the workers until the jobs run out; cancel it when they are done.
        """
        while not self.exhausted:
            need = self.waiting + self.ahead - len(self.ready)
            if need <= 0:
                self._wanted = anyio.Event()
                await self._wanted.wait()
                continue
            size = min(need, CLAIM_CHUNK)
            if self.limit is not None:
                size = min(size, self.limit - self.taken)
            self._incoming = size
            try:
                chunk = await anyio.to_thread.run_sync(
                    claim, self.engine, self.batch_id, self.run_id, size, self.after) if size > 0 else []
            except StoreStalled as exc:
                self._incoming = 0
                if self.on_stall is None:
                    raise
                self._stalled = True
                self.on_stall(exc)
                await anyio.sleep(FULL_RETRY_S)
                continue
            if self._stalled and self.on_stall is not None:
                self._stalled = False
                self.on_stall(None)
            if chunk:
                self.after = chunk[-1].place
                self.taken += len(chunk)
                ready = await screen(chunk) if screen is not None else chunk
                self.ready.extend(ready)
                self._queued += len(ready)
            self._incoming = 0
            if not chunk:
                if self.after != START:
                    # One more pass from the top (the pending-jobs index finds them without a scan):
                    # jobs put back behind the cursor while the run went on (a `batcher retry`) are sent too.
                    self.after = START
                    continue
                self.exhausted = True
                self._let_go()
            self._claimed.set()
            self._claimed = anyio.Event()

    async def next(self) -> ClaimedJob | None:
        """The next job to send, or None once no pending job is left."""
        self.waiting += 1
        try:
            while not self.ready and not self.exhausted:
                self._wanted.set()
                await self._claimed.wait()
        finally:
            self.waiting -= 1
        job = None
        if self.ready:
            job = self.ready.popleft()
            self.handed += 1
        if len(self.ready) < self.ahead:
            self._wanted.set()
        self._let_go()
        return job

    @property
    def horizon(self) -> int:
        """The number the last job claimed so far will have when handed out (see :attr:`handed`).

        A job handed out after that one was claimed, and looked up for
        ``--reuse``, after now (see :class:`batcher.reuse.Twins`).
        """
        return self._queued + self._incoming

    def stop(self) -> None:
        """Hand out no more jobs: workers waiting for one are let go at once.

        While the store takes no write, a claim cannot come: without this, a
        stop would keep them waiting until its grace ran out.
        """
        self.exhausted = True
        self._claimed.set()
        self._let_go()

    def _drained(self) -> bool:
        return self.exhausted and not self.ready

    def _let_go(self) -> None:
        """Nothing left to hand out: workers waiting for the pacer stop waiting."""
        if self._drained():
            for scope in self._admitting:
                scope.cancel()
