"""When two jobs ask the same thing: the canonical form of a request.

``run --reuse`` gives a job the answer of an identical request already
answered in the store, so identical must mean "the API would be asked the
same question": the body is compared in a canonical form, and keys that do
not change the answer are left out:

- ``metadata`` (``user_id`` for the API's abuse tracking),
- ``service_tier`` (which capacity serves the request, not what it says),
- ``stream`` (the runner's choice; a streamed answer is stored as the same message),
- ``cache_control`` on any block (prompt caching changes the bill, not the answer).

Everything else counts: model (as spelled), ``max_tokens``, ``system``,
``messages``, sampling parameters, ``stop_sequences``, tools, ``thinking``…
A string ``content`` or ``system`` equals the same text as one text block, as
the API treats them. Object keys are sorted; nothing else is normalised, so
``"temperature": 1`` and an absent temperature are different requests (a
missed reuse costs a request; a wrong one would return a wrong answer).

Within one run, :class:`Twins` sends identical requests once.
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Any, Iterable

import anyio
import orjson

#: Top-level body keys that do not change the answer.
IGNORED_KEYS = frozenset({"metadata", "service_tier", "stream"})
#: Keys dropped wherever they appear inside system, messages and tools.
IGNORED_NESTED = frozenset({"cache_control"})


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in IGNORED_NESTED}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _blocks(content: Any) -> Any:
    """A string content as the one text block it stands for."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return _strip(content)


def canonical(body: dict[str, Any]) -> dict[str, Any]:
    """The request as compared for reuse (see the module's docstring)."""
    out = {k: _strip(v) for k, v in body.items() if k not in IGNORED_KEYS}
    if "system" in out:
        out["system"] = _blocks(body["system"])
    messages = body.get("messages")
    if isinstance(messages, list):
        out["messages"] = [
            {**_strip(m), "content": _blocks(m.get("content"))} if isinstance(m, dict) else m for m in messages
        ]
    return out


def request_key(body: dict[str, Any]) -> str:
    """A 32-hex-digit digest of the canonical request: equal keys, same question."""
    data = orjson.dumps(canonical(body), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class _Lead:
    """The first of identical requests, and its answer once known."""

    __slots__ = ("job_id", "answer", "done", "stored")

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.answer: dict[str, Any] | None = None
        self.done = anyio.Event()
        self.stored = False  # its answer is committed


class Twins:
    """Identical requests of one run are sent once; the others take that answer.

    A worker calls :meth:`follow` with a job's key: None means it leads and
    must send, then call :meth:`finish` whatever happened (None for no
    answer, and the next waiting twin leads in turn).

    An answer is kept after its request is over, for the twins that looked
    for it in the store before it was committed there (jobs are claimed,
    and looked up, a little before they are sent): until the writer has
    committed it (:meth:`stored`) and every job claimed by then has been
    taken up (:meth:`release`). Jobs are numbered in the order they are
    taken up; ``horizon`` is the number of the last one claimed so far.
    """

    def __init__(self) -> None:
        self._leads: dict[str, _Lead] = {}
        self._kept: list[tuple[int, str]] = []  # (horizon, key): a heap of answers to let go

    async def follow(self, key: str, job_id: int) -> tuple[int, dict[str, Any]] | None:
        """``(answering job id, answer)`` from a twin (in flight or answered), or None: send it yourself."""
        while (lead := self._leads.get(key)) is not None:
            await lead.done.wait()
            if lead.answer is not None:
                return lead.job_id, lead.answer
        self._leads[key] = _Lead(job_id)
        return None

    def answered(self, key: str) -> tuple[int, dict[str, Any]] | None:
        """``(answering job id, answer)`` if a twin has the answer already."""
        lead = self._leads.get(key)
        return (lead.job_id, lead.answer) if lead is not None and lead.answer is not None else None

    def __contains__(self, key: str) -> bool:
        """A request of ``key`` is being sent now."""
        lead = self._leads.get(key)
        return lead is not None and not lead.done.is_set()

    def finish(self, key: str, answer: dict[str, Any] | None, horizon: int) -> None:
        """The leading request of ``key`` is over: hand its answer (or None) to its twins."""
        lead = self._leads.get(key)
        if lead is None:
            return
        if answer is None:
            del self._leads[key]
        else:
            lead.answer = answer
            if lead.stored:  # the writer was quicker
                heapq.heappush(self._kept, (horizon, key))
        lead.done.set()

    def stored(self, keys: Iterable[str], horizon: int) -> None:
        """The answers of ``keys`` are committed: jobs claimed from now on find them in the store."""
        for key in keys:
            lead = self._leads.get(key)
            if lead is not None and not lead.stored:
                lead.stored = True
                if lead.answer is not None:
                    heapq.heappush(self._kept, (horizon, key))

    def release(self, taken: int) -> None:
        """The jobs numbered below ``taken`` have been taken up: the answers none of the others can miss go."""
        while self._kept and self._kept[0][0] < taken:
            self._leads.pop(heapq.heappop(self._kept)[1], None)
