"""A run's spend control: ``--limit``, the token caps and ``--reuse``.

The runner's claims feed and workers consult one :class:`Spend` per run:
whether a job's worst case fits the caps before it is sent (waiting while
answers in flight may free room), which claimed jobs already have a stored
answer, and whether the run ended at ``--limit`` (the limit itself bounds
what :class:`batcher.claims.Claims` takes). The accounting
itself is :class:`batcher.budget.Budget`; the SQL is in
:mod:`batcher.jobqueue`; nothing here speaks HTTP.
"""

from __future__ import annotations

from typing import Any, Callable

import anyio
import orjson
from anyio.abc import ObjectSendStream
from sqlalchemy import Engine

from .budget import Budget, Caps
from .cost import Cost
from .errors import UsageError, option, place
from .jobqueue import ANSWER_COLUMNS, AttemptRow, ClaimedJob, Outcome, find_answers, unfinished_costs, worst_job_cost
from .reuse import request_key
from .store import Batch

#: Input as the API bills it: fresh, written to the cache, read from it.
INPUT_USAGE = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


class CapReached(Exception):
    """The next job's worst case does not fit, and nothing in flight can free room."""


def check_limits(limit: int | None, max_input_tokens: int | None, max_output_tokens: int | None) -> None:
    """Zero, negative or non-integer limits and caps are usage errors."""
    for name, value in (("limit", limit), ("max_input_tokens", max_input_tokens),
                        ("max_output_tokens", max_output_tokens)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UsageError(f"{name} must be a whole number >= 1, not {value!r}")


def first_over_cap(engine: Engine, batch: Batch, caps: Caps, limit: int | None = None) -> str | None:
    """Why no run under ``caps`` can get past some job, or None.

    The first unfinished job (of the first ``limit``) whose worst case
    alone exceeds a cap, named with its ``max_tokens`` or input estimate.
    The jobs are read only if the figures the batch's imports kept do not
    already show that none does.
    """
    worst = worst_job_cost(engine, batch.id)
    if worst is not None and caps.exceeded_alone(worst) is None:
        return None
    for custom_id, line, _, cost in unfinished_costs(engine, batch.id, limit):
        side = caps.exceeded_alone(cost)
        if side == "output":
            return (f"job {custom_id!r} ({place(line)}) has max_tokens {cost.output_tokens:,}, more than "
                    f"{option('max_output_tokens')} {caps.max_output_tokens:,} allows; raise the cap "
                    "(or lower that job's max_tokens)")
        if side == "input":
            return (f"job {custom_id!r} ({place(line)}) is estimated at {cost.input_tokens:,} input tokens, "
                    f"more than {option('max_input_tokens')} {caps.max_input_tokens:,} allows; raise the cap "
                    "(or shorten that job's input)")
    return None


class Spend:
    """One run's limit, budget and stored-answer lookups.

    The limit itself is applied where jobs are claimed (:class:`batcher.claims.Claims`).
    """

    def __init__(self, engine: Engine, batch: Batch, limit: int | None, caps: Caps) -> None:
        self.engine, self.batch, self.limit, self.caps = engine, batch, limit, caps
        self.budget = Budget(caps)
        self.changed = anyio.Event()

    # --- --limit -------------------------------------------------------------
    def limit_reached(self, taken: int, left: int) -> bool:
        """The run ended because of ``--limit`` (``taken`` jobs claimed), with jobs still to send."""
        return self.limit is not None and taken >= self.limit and left > 0

    # --- caps ------------------------------------------------------------------
    async def cap_below_one_job(self) -> str | None:
        """Why no run under the caps could send some job (stop before sending anything), or None."""
        if not self.caps.any:
            return None
        why = await anyio.to_thread.run_sync(first_over_cap, self.engine, self.batch, self.caps, self.limit)
        return None if why is None else f"nothing sent: {why}"

    async def reserve(self, custom_id: str, cost: Cost, stopping: Callable[[], bool]) -> bool:
        """Wait until ``cost`` fits the caps and reserve it; False if the run stops meanwhile.

        Raises :class:`CapReached` when it cannot fit even with nothing in flight.
        """
        while not stopping():
            if self.budget.reserve(cost):
                return True
            if self.budget.in_flight == 0:
                raise CapReached(self._reached(custom_id, cost))
            with anyio.move_on_after(1.0):  # and notice a stop requested meanwhile
                await self.changed.wait()
        return False

    def settle(self, cost: Cost, message: dict[str, Any] | None) -> None:
        """An attempt is over: its reservation becomes the usage ``message`` reports (none: 0)."""
        usage = (message or {}).get("usage") or {}
        self.budget.settle(cost, sum(usage.get(k) or 0 for k in INPUT_USAGE), usage.get("output_tokens") or 0)
        self.changed.set()
        self.changed = anyio.Event()

    def _reached(self, custom_id: str, cost: Cost) -> str:
        budget, caps = self.budget, self.caps
        alone = caps.exceeded_alone(cost)
        if alone is not None:  # with --reuse, found only once the jobs answered from the store are past
            figure = (f"may use {cost.output_tokens:,} output tokens, more than {option('max_output_tokens')} "
                      f"{caps.max_output_tokens:,}" if alone == "output" else
                      f"is estimated at {cost.input_tokens:,} input tokens, more than {option('max_input_tokens')} "
                      f"{caps.max_input_tokens:,}")
            return f"stopped: the next job ({custom_id!r}) {figure} allows on its own; raise the cap"
        if budget.exhausted_side(cost) == "output" and caps.max_output_tokens is not None:
            return (f"stopped at {option('max_output_tokens')} {caps.max_output_tokens:,}: "
                    f"the next job ({custom_id!r}) may use {cost.output_tokens:,} and "
                    f"{caps.max_output_tokens - budget.used_output:,} are left")
        assert caps.max_input_tokens is not None
        return (f"stopped at {option('max_input_tokens')} {caps.max_input_tokens:,}: the next job ({custom_id!r}) is "
                f"estimated at {cost.input_tokens:,} and {caps.max_input_tokens - budget.used_input:,} are left")

    # --- --reuse ---------------------------------------------------------------
    async def reuse_stored(self, chunk: list[ClaimedJob], records: ObjectSendStream[AttemptRow | Outcome],
                           answered: Callable[[str], tuple[int, dict[str, Any]] | None]) -> list[ClaimedJob]:
        """Record the answers of claimed jobs' identical requests; return the jobs still to send.

        An answer is looked for in the store, then among those this run has
        (``answered``: not committed yet, perhaps), asked after the store so
        that an answer committed meanwhile is found in one or the other.
        """
        keys = {job.id: request_key(orjson.loads(job.body)) for job in chunk}
        found = await anyio.to_thread.run_sync(find_answers, self.engine, list(keys.values()))
        known = {key: (stored["reused_from"], stored) for key, stored in found.items()}
        known.update((key, twin) for key in keys.values() if key not in known and (twin := answered(key)))
        rest = []
        for job in chunk:
            answer = known.get(keys[job.id])
            if answer is None:
                rest.append(job)
            else:
                await records.send(reused_outcome(job.id, *answer, keys[job.id]))
        return rest


def reused_outcome(job_id: int, source_id: int, answer: dict[str, Any], key: str) -> Outcome:
    """A job answered with another job's answer: the same message, no request of its own.

    It is filed under the key too, so the answer stays reusable whatever
    becomes of the job it came from.
    """
    kept = {k: answer.get(k) for k in ANSWER_COLUMNS}
    return Outcome(job_id, "succeeded", {**kept, "reused_from": source_id, "latency_ms": None, "streamed": None,
                                         "ttft_ms": None}, key)
