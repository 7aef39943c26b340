"""The runner: every pending job of a batch through the API, under the limit.

One pipeline, one way: workers (pacer → claim → HTTP client → retry
policy) → writer. A worker takes a job only once the pacer lets it send,
from the few claimed ahead (:func:`claim_ahead`), so a job is ``running``
only while it is being sent, retried or written: a job not yet claimed
can still be cancelled, and ``status`` shows no queue as running. Each worker
sees a job through to an outcome or hands it back by leaving it claimed,
and :func:`batcher.jobqueue.finish_run` returns every unfinished job to
``pending`` at the end. Answers count as done only once the writer has
committed them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any, Callable

import anyio
import orjson
from anyio.abc import ObjectSendStream
from sqlalchemy import Engine

from ._records import abandoned_row, attempt_row, failed, refusal, succeeded
from ._voice import Voice
from .claims import Claims
from .client import Attempt, MessagesClient
from .errors import EXIT_INTERRUPTED, StoreError, StoreStalled, first_user_error, option
from .cost import request_cost
from .gauge import Gauge, RunState
from .guard import ConfigGuard
from .jobqueue import (FULL_RETRY_S, RUN_WAIT_S, AttemptRow, ClaimedJob, Outcome, batch_counts, close_later,
                       finish_run, start_run)
from .pacer import Pacer, Stopped
from .retry import Decision, Verdict, backoff, decide, server_delay
from .reuse import Twins, request_key
from .runconfig import STREAM_ABOVE_MAX_TOKENS, RunConfig, RunSummary, Snapshot, claim_ahead, exit_code_for
from .spend import CapReached, Spend, reused_outcome
from .store import Batch
from .writer import Tally, run_writer

#: A worker that waited longer than this (or the pacer's interval) for its
#: claimed job waits for the pacer again before sending.
MIN_STALE_S = 0.05


class Runner:
    """One run of one batch; use :func:`run_batch` unless embedding."""

    def __init__(self, engine: Engine, batch: Batch, api_key: str, config: RunConfig,
                 pacer: Pacer | None = None, betas: str | None = None) -> None:
        """``pacer``: one shared with other runs (a :class:`batcher.lanes.Lane`), else a new one.

        ``betas``: an ``anthropic-beta`` header for every request (a Message Batches API batch's).
        """
        self.engine, self.batch, self.config = engine, batch, config
        self.client = MessagesClient(api_key, config.base_url, concurrency=config.workers,
                                     timeout_s=config.timeout_s, stream_limit_s=config.stream_limit_s,
                                     auth=config.auth, betas=betas)
        self.pacer = pacer if pacer is not None else Pacer(config.rpm)
        self.guard = ConfigGuard(config.base_url)
        self.tally = Tally()
        self.state = RunState()
        self.gauge = Gauge(self.pacer, self.tally, self.state)
        self.stop_event = anyio.Event()
        self.work_scope: anyio.CancelScope | None = None
        self.claims: Claims | None = None
        self.run_id = 0
        # --- spend control ---
        self.spend = Spend(engine, batch, config.limit, config.caps)
        self.taken = 0  # jobs this run claimed, against --limit
        self.twins = Twins() if config.reuse else None
        self.voice = Voice(on_lost=self.request_stop)  # stderr gone: stop as on Ctrl-C
        self.signals: Any = None  # Ctrl-C and SIGTERM, once run() receives them
        self.asked_to_stop = False  # by one of them: the next quits at once

    # --- the pipeline ---------------------------------------------------------
    async def run(self, on_progress: Callable[[Snapshot], None] | None = None) -> RunSummary:
        # Ctrl-C and SIGTERM are the run's from its first step: raised as KeyboardInterrupt
        # inside its tasks, one ended in a traceback. (Until the pipeline is up, they wait here.)
        signals = (anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) if self.config.handle_signals
                   else contextlib.nullcontext())
        with signals as self.signals:
            return await self._run(on_progress)

    async def _run(self, on_progress: Callable[[Snapshot], None] | None) -> RunSummary:
        started = time.monotonic()
        self.run_id = await self._starting(start_run, self.engine, self.batch.id, self.batch.name,
                                           self.config.rpm, self.config.base_url)
        counts = await anyio.to_thread.run_sync(batch_counts, self.engine, self.batch.id)
        self.gauge.left_at_start, self.gauge.total = counts["pending"] + counts["running"], sum(counts.values())
        outcome = "failed"
        try:
            # With --reuse, a job over a cap may never be sent: reserve() judges jobs as they come.
            too_big = None if self.config.reuse else await self.spend.cap_below_one_job()
            if too_big is not None:
                outcome = "budget"
                self.state.fatal = (outcome, too_big)
            else:
                async with self.client:
                    outcome = await self._pipeline(self.voice.guarded(on_progress))
        except BaseExceptionGroup as group:
            raise first_user_error(group) from None
        finally:
            # A run stopped or failing waits little to close its row: it is closed later (see close_later).
            quick = outcome == "failed" or self.state.stopping
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(finish_run, self.engine, self.run_id, outcome,
                                                   RUN_WAIT_S if quick else None)
                except StoreStalled:
                    if not quick:
                        raise
                    close_later(self.engine, self.run_id, outcome)
                except StoreError:
                    if not quick or outcome != "failed":  # else the first error is the one to report
                        raise
        if self.voice.lost is not None:
            raise self.voice.lost
        return self._summary(outcome, batch_counts(self.engine, self.batch.id), time.monotonic() - started)

    async def _pipeline(self, on_progress: Callable[[Snapshot], None] | None) -> str:
        self.claims = claims = Claims(
            self.engine, self.batch.id, self.run_id, claim_ahead(self.config.rpm, self.config.workers),
            limit=self.config.limit, on_stall=lambda exc: self._stalled(exc, self.state.held))
        try:
            return await self._flow(claims, on_progress)
        finally:
            self.taken = claims.taken

    async def _flow(self, claims: Claims, on_progress: Callable[[Snapshot], None] | None) -> str:
        records_send, records_recv = anyio.create_memory_object_stream[AttemptRow | Outcome](10_000)
        async with anyio.create_task_group() as outer:
            outer.start_soon(run_writer, self.engine, self.run_id, records_recv, self.tally,
                             self._stored if self.twins is not None else None, self.gauge.pace, self._stalled)
            async with anyio.create_task_group() as watchers:
                if self.config.handle_signals:
                    watchers.start_soon(self._watch_signals)
                if on_progress is not None:
                    watchers.start_soon(self.gauge.report, on_progress)
                async with records_send:
                    with anyio.CancelScope() as self.work_scope:
                        async with anyio.create_task_group() as work:
                            work.start_soon(self._feed, claims, records_send.clone())
                            async with anyio.create_task_group() as workers:
                                for _ in range(self.config.workers):
                                    workers.start_soon(self._worker, claims, records_send.clone())
                            work.cancel_scope.cancel()  # the feed: nobody asks any more
                watchers.cancel_scope.cancel()
        if on_progress is not None:
            on_progress(self.gauge.snapshot())
        if self.state.fatal is not None:
            return self.state.fatal[0]
        return "interrupted" if self.state.stopping else "finished"

    async def _feed(self, claims: Claims, records: ObjectSendStream[AttemptRow | Outcome]) -> None:
        """Keep jobs claimed ahead of the workers; with ``--reuse``, answer stored twins at once."""
        async def stored_answers(chunk: list[ClaimedJob]) -> list[ClaimedJob]:
            assert self.twins is not None
            return await self.spend.reuse_stored(chunk, records, self.twins.answered)

        async with records:
            await claims.feed(stored_answers if self.config.reuse else None)

    async def _worker(self, claims: Claims, records: ObjectSendStream[AttemptRow | Outcome]) -> None:
        async with records:
            while not self.state.stopping:
                try:
                    if not await claims.admit(self.pacer.wait):
                        return  # no job left to claim
                except Stopped:
                    return
                asked = time.monotonic()
                job = await claims.next()
                if job is None or self.state.stopping:
                    return  # a job claimed now goes back to pending at finish_run
                # Jobs are claimed ahead, so a job is ready at once, unless the store
                # was busy (another process holding its lock): the admission is then
                # stale, and every worker admitted meanwhile would send at the same moment.
                fresh = time.monotonic() - asked <= max(MIN_STALE_S, 60.0 / self.config.rpm)
                await self._see_through(job, records, fresh)

    async def _see_through(self, job: ClaimedJob, records: ObjectSendStream[AttemptRow | Outcome],
                           admitted: bool = True) -> None:
        """The job's outcome, from a twin in flight (``--reuse``) or its own attempts.

        The pacer has admitted the job's first attempt already (it was
        claimed for it), unless the admission went stale (``admitted``
        False) or it waited for a twin that brought no answer.
        """
        payload = orjson.loads(job.body)
        key = request_key(payload)
        if self.twins is None:
            await self._attempts(job, payload, key, records, admitted)
            return
        assert self.claims is not None
        self.twins.release(self.claims.handed)
        admitted = admitted and key not in self.twins  # else the admission is stale by the time it leads
        twin = await self.twins.follow(key, job.id)
        if twin is not None:
            await records.send(reused_outcome(job.id, *twin, key))
            return
        answer = None
        try:
            if not self.state.stopping:
                answer = await self._attempts(job, payload, key, records, admitted)
        finally:
            self.twins.finish(key, answer, self.claims.horizon)

    def _stored(self, outcomes: list[Outcome]) -> None:
        """Answers just committed: jobs claimed from now on find them in the store (``--reuse``)."""
        if self.twins is not None and self.claims is not None:
            self.twins.stored((o.request_key for o in outcomes if o.request_key and o.status == "succeeded"),
                              self.claims.horizon)

    async def _attempts(self, job: ClaimedJob, payload: dict[str, Any], key: str,
                        records: ObjectSendStream[AttemptRow | Outcome], admitted: bool) -> dict[str, Any] | None:
        """Attempts until the job has an outcome, or the run stops; the answer if one came.

        Each attempt first reserves its worst case under the caps, then
        waits for the pacer (the first one only if not ``admitted`` already).
        """
        stream = self._should_stream(payload)
        wire: bytes | dict[str, Any] = payload if stream else job.body.encode()
        cost = request_cost(payload)
        used = job.attempts
        while True:
            try:
                if not await self.spend.reserve(job.custom_id, cost, lambda: self.state.stopping):
                    return None
            except CapReached as reached:
                self._stop("budget", str(reached))
                return None
            if not admitted:
                try:
                    await self.pacer.wait()
                except Stopped:
                    self.spend.settle(cost, None)
                    return None
            admitted = False
            started, sent_at = time.time(), time.monotonic()
            self.state.in_flight += 1
            attempt: Attempt | None = None
            try:
                attempt = await self.client.send(wire, stream=stream)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True), contextlib.suppress(anyio.BrokenResourceError):
                    await records.send(abandoned_row(job.id, started, stream))  # sent, perhaps paid for
                raise
            finally:
                self.state.in_flight -= 1
                self.spend.settle(cost, attempt.message if attempt is not None and attempt.ok else None)
            tell_pacer(self.pacer, attempt, sent_at)
            problem = self.guard.problem(attempt)
            counts = attempt.status_code != 429
            decision = decide(attempt, used + counts, self.config.max_attempts)
            if problem is not None:
                decision = Decision(Verdict.STOP_RUN, counts=False)
            elif decision.verdict in (Verdict.FAILED, Verdict.RETRY) and self.guard.holds(attempt):
                # Not yet the job's fault: it keeps its attempts and its first back-off.
                decision = Decision(Verdict.RETRY, backoff(used), counts=False)
            used += decision.counts
            outcome = (succeeded(job.id, attempt, key) if decision.verdict is Verdict.SUCCEEDED
                       else failed(job.id, attempt) if decision.verdict is Verdict.FAILED else None)
            with anyio.CancelScope(shield=True):
                # The attempt and the job's outcome reach the writer together, even in a
                # run being cancelled: an answer paid for is never left with its attempt
                # recorded and its job pending, to be sent again.
                await records.send(attempt_row(job.id, started, attempt, decision.counts))
                if outcome is not None:
                    await records.send(outcome)
            if outcome is not None:
                return outcome.values if outcome.status == "succeeded" else None
            if decision.verdict is Verdict.STOP_RUN:
                if problem is not None:
                    self._stop("misconfigured", problem)
                else:
                    self._stop("stopped", refusal(attempt))
                return
            self.state.retrying += 1
            try:
                with anyio.move_on_after(decision.delay_s):
                    await self.stop_event.wait()
            finally:
                self.state.retrying -= 1
            if self.state.stopping:
                return

    def _should_stream(self, payload: Any) -> bool:
        if self.config.stream is not None:
            return self.config.stream
        # A body stored unchecked (the Message Batches API) may hold anything:
        # the API, not this guess, says what is wrong with it.
        max_tokens = payload.get("max_tokens") if isinstance(payload, dict) else None
        return isinstance(max_tokens, int) and max_tokens > STREAM_ABOVE_MAX_TOKENS

    def _stalled(self, error: StoreStalled | None, held: int) -> bool:
        """The store takes no write (``error``: it is full, or another process keeps it locked), or does again (None).

        No request starts meanwhile, and the outcomes of those in flight wait
        in memory: freeing space, or the other writer's end, lets the run
        store them and go on, with nothing paid for twice. Once the run is
        stopping, they are given up when the last arrives (the next run
        sends those jobs again): True while they are worth holding.
        """
        was, self.state.stalled, self.state.held = self.state.stalled, error, held
        if error is not None:
            self.pacer.pause(2 * FULL_RETRY_S)
        if was is not None and error is None:
            self.voice.tell(f"batcher: the store {was.again}; sending resumes")
        elif was is None and error is not None:
            self.voice.tell(f"batcher: {error}: no request starts {error.until}; the answers of those in "
                            "flight wait in memory (Ctrl-C gives them up)")
        return not self.state.stopping

    # --- stopping ------------------------------------------------------------
    def _stop(self, outcome: str, message: str) -> None:
        """The run cannot go on (key refused, misconfigured): fail nothing."""
        if self.state.fatal is None:
            self.state.fatal = (outcome, message)
        # Requests already in flight may have been admitted and charged:
        # let them finish (within the grace period) so their answers are kept.
        self.request_stop()

    def request_stop(self, grace_s: float | None = None) -> None:
        """Stop claiming, let in-flight requests finish within the grace period.

        ``grace_s`` overrides the configured grace (a cancel lets requests in
        flight finish however long they take).
        """
        if not self.state.stopping:
            self.state.stopping = True
            self.pacer.stop()
            self.stop_event.set()
            if self.claims is not None:
                self.claims.stop()
        if self.work_scope is not None:  # else the workers see ``stopping`` and send nothing
            # A later, shorter grace (a shutdown during a cancel) wins.
            deadline = anyio.current_time() + (self.config.grace_s if grace_s is None else grace_s)
            self.work_scope.deadline = min(self.work_scope.deadline, deadline)

    async def _starting(self, step: Callable[..., int], *args: Any) -> int:
        """A start-up step in a thread, Ctrl-C answered meanwhile: another process may hold the store for a while."""
        if self.signals is None:
            return await anyio.to_thread.run_sync(step, *args)
        done: list[int | Exception] = []
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch_signals)
            try:
                done.append(await anyio.to_thread.run_sync(step, *args))
            except Exception as exc:  # raised as itself, not in the group's ExceptionGroup
                done.append(exc)
            group.cancel_scope.cancel()
        if isinstance(done[0], Exception):
            raise done[0]
        return done[0]

    async def _watch_signals(self) -> None:
        async for _ in self.signals:
            if self.asked_to_stop:  # not ``state.stopping``: the run may be stopping on its own
                done, held = self.tally.done, self.state.held if self.state.stalled else 0
                lost = f"; {held:,} held for the store are not, and are sent again" if held else ""
                self.voice.tell(f"batcher: stopped at once; {done:,} done are safely stored{lost}, "
                                "the rest resumes on the next run")
                os._exit(EXIT_INTERRUPTED)
            waiting = (f"waiting up to {self.config.grace_s:g} s for {self.state.in_flight} request(s) in flight"
                       if self.claims is not None else "nothing sent yet")
            self.voice.tell(f"batcher: stopping: {waiting} (Ctrl-C again to quit now)")
            self.asked_to_stop = True
            self.request_stop()

    def _summary(self, outcome: str, counts: dict[str, int], elapsed: float) -> RunSummary:
        left = counts["pending"] + counts["running"]
        message = self.state.fatal[1] if self.state.fatal else None
        if outcome == "finished" and self.spend.limit_reached(self.taken, left):
            outcome, message = "limit", f"stopped at {option('limit')} {self.config.limit:,}"
        code = exit_code_for(outcome, counts["failed"], left, counts["canceled"])
        return RunSummary(self.batch.name, outcome, code, self.tally.succeeded, self.tally.failed, left,
                          self.tally.attempts, self.pacer.rate_limited, elapsed, self.tally.input_tokens,
                          self.tally.output_tokens, message, failed_in_batch=counts["failed"],
                          canceled_in_batch=counts["canceled"], reused=self.tally.reused)


def tell_pacer(pacer: Pacer, attempt: Attempt, sent_at: float) -> None:
    """What the server said about the key's window, in the pacer's terms."""
    rate = attempt.rate
    if attempt.status_code == 429:
        pacer.refused(sent_at, rate.remaining, rate.reset_s, rate.limit, server_delay(attempt))
    elif attempt.status_code is not None:
        pacer.answered(sent_at, rate.remaining, rate.reset_s, rate.limit)


async def run_batch(engine: Engine, batch: Batch, api_key: str, config: RunConfig,
                    on_progress: Callable[[Snapshot], None] | None = None) -> RunSummary:
    """Send every pending job of ``batch``; see :class:`RunSummary`."""
    return await Runner(engine, batch, api_key, config).run(on_progress)
