"""Every Message Batches API batch of a store, run at once under one key.

A :class:`Fleet` owns one pacer shared by every batch it runs and by the
interactive requests it passes through, interactive ones first and batches
in rotation (:mod:`batcher.lanes`). Each unfinished batch has a driver task:
it runs the batch (a :class:`~batcher.runner.Runner` in the batch's lane),
applies a cancel or the batch's expiry, and records its end once no job is
left. Jobs are claimed, recorded and released by the runner as in ``batcher
run``, so a fleet stopped (or killed) mid-way resumes every unfinished batch
the next time it starts, each request answered once.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import anyio
import httpx
from anyio.abc import ObjectSendStream, TaskGroup
from sqlalchemy import Engine

from . import apibatches, manage
from .apibatches import ApiBatch
from ._keymask import mask_key
from .client import Attempt, MessagesClient, rate_info
from .errors import BatcherError
from .guard import LIMIT, ConfigGuard
from .jobqueue import START, AttemptRow, ClaimedJob, Outcome
from .lanes import Lane, Turns
from .pacer import Pacer
from .retry import backoff, server_delay
from .runconfig import RunConfig
from .runner import Runner, tell_pacer
from .store import Batch

#: After a run the API stopped (key refused, out of points) or a store
#: failure, wait this long before trying the batch again.
RETRY_RUN_AFTER_S = 60.0

#: ``on_event(batch_id, what)``: one call per batch event.
EventSink = Callable[[str, str], None]


class NoStartInTime(Exception):
    """The pace gave an interactive request no start before its client's deadline."""


class Fleet:
    """Runs a store's API batches and interactive requests under one pacer.

    Start :meth:`run` in a task; :meth:`submit` a batch once created,
    :meth:`cancel` one, :meth:`forward` an interactive request, and
    :meth:`stop` to end (requests in flight get the configured grace).
    """

    def __init__(self, engine: Engine, api_key: str, config: RunConfig,
                 on_event: EventSink | None = None) -> None:
        self.engine = engine
        self.config = replace(config, handle_signals=False)
        self.pacer = Pacer(config.rpm)
        self.turns = Turns(self.pacer)
        self.client = MessagesClient(api_key, config.base_url, concurrency=self.config.workers,
                                     timeout_s=config.timeout_s, auth=config.auth)
        self._api_key = api_key
        self._on_event = on_event or (lambda batch_id, what: None)
        self._runners: dict[int, _BatchRun] = {}
        self._wakes: dict[int, anyio.Event] = {}
        self._drives: TaskGroup | None = None
        self._stopping = False
        self._stop = anyio.Event()

    def __repr__(self) -> str:
        return f"Fleet(rpm={self.config.rpm}, base_url={self.config.base_url!r}, batches={len(self._runners)})"

    # --- life ------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Resume every unfinished batch, then run what is submitted until stop()."""
        async with self.client, anyio.create_task_group() as outer:
            outer.start_soon(self.turns.run)
            async with anyio.create_task_group() as drives:
                self._drives = drives
                for batch in await anyio.to_thread.run_sync(apibatches.unfinished, self.engine):
                    drives.start_soon(self._drive, batch, "resumed")
                task_status.started()
                await self._stop.wait()
            self.turns.stop()

    def stop(self, grace_s: float | None = None) -> None:
        """Start no more requests; those in flight get ``grace_s`` (default: the config's)."""
        self._stopping = True
        for runner in list(self._runners.values()):
            runner.request_stop(grace_s)
        for wake in list(self._wakes.values()):
            wake.set()
        self._stop.set()

    # --- batches ---------------------------------------------------------------
    def submit(self, batch: Batch) -> None:
        """Start running a batch just created (a stopping fleet leaves it for the next start)."""
        if self._drives is not None and not self._stopping:
            self._drives.start_soon(self._drive, batch, "started")

    async def cancel(self, batch: Batch) -> None:
        """Cancel what is not yet sent, at once; requests in flight finish and count as they end."""
        runner = self._runners.get(batch.id)
        if runner is not None:
            runner.request_stop(self.config.timeout_s)
        n = await anyio.to_thread.run_sync(manage.cancel, self.engine, batch)
        n += await self._drop_unsent(batch, runner, None)
        self._on_event(batch.name, f"canceling: {n} request(s) canceled, requests in flight finish")
        self._wake(batch)

    async def _drop_unsent(self, batch: Batch, runner: _BatchRun | None, why: str | None) -> int:
        """Cancel (or expire) the jobs a stopped run claimed ahead and never sent."""
        if runner is None or not runner.run_id:
            return 0
        return await anyio.to_thread.run_sync(apibatches.cancel_unsent, self.engine, batch, runner.run_id,
                                              runner.last_taken, why)

    def _wake(self, batch: Batch) -> None:
        """End a paused batch's wait: something (a cancel, its deadline) changed what is left to do."""
        wake = self._wakes.get(batch.id)
        if wake is not None:
            wake.set()

    async def _drive(self, batch: Batch, how: str) -> None:
        while True:
            try:
                state = await anyio.to_thread.run_sync(apibatches.get, self.engine, batch.name)
                break
            except BatcherError as exc:
                if not await self._paused(batch, exc):
                    return
        if state is None or state.ended_at is not None:
            return
        async with anyio.create_task_group() as timers:
            timers.start_soon(self._expire_at, batch, state.expires_at)
            await self._send_all(batch, how)
            timers.cancel_scope.cancel()

    async def _paused(self, batch: Batch, why: object) -> bool:
        """Say why the batch waits, wait (less, if it is canceled or expires); False if the fleet stopped."""
        if self._stopping:
            return False
        self._on_event(batch.name, f"paused: {why}; trying again in {RETRY_RUN_AFTER_S:g} s")
        wake = self._wakes[batch.id] = anyio.Event()
        try:
            with anyio.move_on_after(RETRY_RUN_AFTER_S):
                await wake.wait()
        finally:
            self._wakes.pop(batch.id, None)
        return not self._stopping

    async def _send_all(self, batch: Batch, how: str) -> None:
        while not self._stopping:
            try:
                state = await anyio.to_thread.run_sync(self._settle, batch)
            except BatcherError as exc:
                await self._paused(batch, exc)
                continue
            if state is None or state.ended_at is not None:
                if state is not None:
                    c = state.counts
                    self._on_event(batch.name, f"ended: {c.succeeded} succeeded, {c.errored} errored, "
                                               f"{c.canceled} canceled, {c.expired} expired")
                return
            lane = self.turns.lane(batch.id)
            runner = _BatchRun(self.engine, batch, self._api_key, self.config, pacer=lane, betas=state.betas)
            self._runners[batch.id] = runner
            self._on_event(batch.name, f"{how}: {state.counts.processing} request(s) to send")
            how = "running again"
            try:
                summary = await runner.run()
            except BatcherError as exc:
                await self._paused(batch, exc)
                continue
            except Exception as exc:  # one batch's bug must not take the others down
                await self._paused(batch, f"{type(exc).__name__}: {exc}")
                continue
            finally:
                self._runners.pop(batch.id, None)
                lane.stop()
            if summary.outcome in ("stopped", "misconfigured"):
                await self._paused(batch, summary.message)

    def _settle(self, batch: Batch) -> ApiBatch | None:
        """Apply a cancel or the expiry to what is left; end the batch if nothing is; its state now.

        Between runs, so a dead run's claimed jobs are left too: a batch
        canceled or past its deadline sends none of them (only a request in
        flight when a server was killed may have gone out twice).
        """
        state = apibatches.get(self.engine, batch.name)
        if state is None or state.ended_at is not None:
            return state
        why = self._closing(state)
        if why is not None:
            expired = why == apibatches.EXPIRED
            n = apibatches.close(self.engine, batch, expired, self.config.rpm, self.config.base_url)
            if n:
                self._ended_unanswered(batch, why, n)
        apibatches.end(self.engine, batch)
        return apibatches.get(self.engine, batch.name)

    @staticmethod
    def _closing(state: ApiBatch) -> str | None:
        """Why nothing more of the batch may be sent (``canceled``, ``expired``); None if it may."""
        if state.cancel_requested_at is not None:
            return "canceled"
        if time.time() >= state.expires_at:
            return apibatches.EXPIRED
        return None

    async def _expire_at(self, batch: Batch, at: float) -> None:
        while (left := at - time.time()) > 0:  # by the wall clock, as _settle judges it
            await anyio.sleep(left)
        runner = self._runners.get(batch.id)
        if runner is not None:  # only unsent requests expire: those in flight finish, as after a cancel
            runner.request_stop(self.config.timeout_s)
        n = await anyio.to_thread.run_sync(apibatches.expire, self.engine, batch)
        n += await self._drop_unsent(batch, runner, apibatches.EXPIRED)
        self._ended_unanswered(batch, apibatches.EXPIRED, n)
        self._wake(batch)

    def _ended_unanswered(self, batch: Batch, why: str, n: int) -> None:
        """Say how many requests a cancel or the expiry ended. Unanswered, not unsent: after a
        restart, those a killed server had in flight are among them, whichever path ends them."""
        self._on_event(batch.name, f"{why}: {n} request(s) ended unanswered")

    # --- interactive requests ----------------------------------------------------
    def mask(self, data: bytes) -> bytes:
        """``data`` with every spelling of the server's key masked; the same bytes if it holds none.

        What the upstream says goes on to clients, who must never see the
        key even when the upstream quotes it (:func:`batcher._keymask.mask_key`).
        """
        text = data.decode("utf-8", "surrogateescape")
        masked = mask_key(text, self._api_key)
        return data if masked == text else masked.encode("utf-8", "surrogateescape")

    async def forward(self, path: str, body: bytes, headers: dict[str, str], deadline: float) -> httpx.Response:
        """Send an interactive request upstream ahead of batch jobs; the answer unread.

        A 429 is the pacer's business: it is told, and the request is sent
        again after the wait the server asked for, until that wait would end
        after ``deadline`` (``time.monotonic()``): then the 429 is the
        answer. Raises :class:`batcher.pacer.Stopped` once the fleet stops,
        :class:`NoStartInTime` if the pace gives it no start before
        ``deadline`` (the client has given up by then: sent, it would be paid
        for and never read), and httpx errors when the upstream cannot be reached.
        """
        tries = 0
        while True:
            with anyio.move_on_after(deadline - time.monotonic()) as waiting:
                await self.turns.interactive()
            if waiting.cancelled_caught:
                raise NoStartInTime
            sent_at = time.monotonic()
            response = await self.client.forward(path, body, headers)
            attempt = Attempt(response.status_code, time.monotonic() - sent_at, rate=rate_info(response.headers))
            tell_pacer(self.pacer, attempt, sent_at)
            if response.status_code != 429:
                return response
            delay = server_delay(attempt)
            delay = delay if delay is not None else backoff(tries)
            tries += 1
            if time.monotonic() + delay >= deadline:
                return response
            await response.aclose()
            await anyio.sleep(delay)


class _BatchRun(Runner):
    """A batch's run: waits out an unreachable upstream, knows the last job it took up to send.

    Its guard stops the run (the batch pauses) before any job could use up
    its attempts on an upstream never reached, whatever the batch's size.
    Workers take claimed jobs up one by one in claim order and take none up
    once the run is stopping: after a stop, every job the run holds past
    :attr:`last_taken` was never sent (:func:`batcher.apibatches.cancel_unsent`).
    """

    def __init__(self, engine: Engine, batch: Batch, api_key: str, config: RunConfig, pacer: Lane,
                 betas: str | None = None) -> None:
        super().__init__(engine, batch, api_key, config, pacer=pacer, betas=betas)
        self.guard = ConfigGuard(config.base_url, limit=min(LIMIT, config.max_attempts), hold_timeouts=True)
        self.last_taken = START

    async def _see_through(self, job: ClaimedJob, records: ObjectSendStream[AttemptRow | Outcome],
                           admitted: bool = True) -> None:
        self.last_taken = max(self.last_taken, job.place)
        await super()._see_through(job, records, admitted)
