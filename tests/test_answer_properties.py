"""Property tests: any JSON as a 200 answer.

Whatever body a server returns with a 200, the client either hands back an
answer with the shape the store relies on, or an ``invalid_response``
attempt (retried, never recorded as a success); and whatever it hands back
as an answer is recorded by the writer and read back by status and export
without an exception. Answers built to the API's documented shape, with
unknown keys and block types added, are accepted; one broken field makes
them refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import httpx
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import update

from batcher.client import Attempt, _from_response
from batcher import tally
from batcher.db import write
from batcher.export import export_batch
from batcher.jobqueue import claim, record, start_run
from batcher._records import succeeded
from batcher.schema import jobs
from batcher.status import batch_status

from batchdata import make_batch
from misbehaving import MALFORMED, answer

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(text, inner, max_size=5), max_leaves=16)

counts = st.integers(0, 10**9)
blocks = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, text),
    st.builds(lambda n, i: {"type": "tool_use", "id": "toolu_1", "name": n, "input": i}, text,
              st.dictionaries(text, scalars, max_size=3)),
    st.builds(lambda t, extra: {"type": t, **extra}, text, st.dictionaries(text, scalars, max_size=3)),
)
valid_answers = st.builds(
    lambda content, stop, usage, extra: {**extra, "id": "msg_1", "type": "message", "role": "assistant",
                                         "model": "claude-haiku-4.5", "content": content, "stop_reason": stop,
                                         "stop_sequence": None, "usage": usage},
    st.lists(blocks, max_size=4),
    st.sampled_from(["end_turn", "max_tokens", "tool_use", "refusal", "something_new"]),
    st.fixed_dictionaries({"input_tokens": counts, "output_tokens": counts},
                          optional={"cache_creation_input_tokens": st.none() | counts,
                                    "cache_read_input_tokens": st.none() | counts}),
    st.dictionaries(st.sampled_from(["container", "extra", "service_tier"]), scalars, max_size=2),
)

#: One change each that leaves an answer unusable.
BREAKS = [
    lambda m: m.pop("content"),
    lambda m: m.update(content="a string"),
    lambda m: m.update(content=[{"text": "no type"}]),
    lambda m: m.update(content=[{"type": "text", "text": 5}]),
    lambda m: m.update(content=[7]),
    lambda m: m.pop("usage"),
    lambda m: m["usage"].update(input_tokens="lots"),
    lambda m: m["usage"].update(output_tokens=-1),
    lambda m: m["usage"].update(output_tokens=1.5),
    lambda m: m["usage"].update(input_tokens=True),
    lambda m: m["usage"].update(cache_read_input_tokens=2**64 - 1),
    lambda m: m["usage"].pop("output_tokens"),
    lambda m: m.pop("stop_reason"),
    lambda m: m.update(stop_reason=None),
    lambda m: m.update(role="user"),
    lambda m: m.update(type="error"),
    lambda m: m.update(model=["x"]),
]


def respond(body: bytes) -> Attempt:
    """What the client makes of ``body`` sent as a 200."""
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/messages")
    response = httpx.Response(200, content=body, headers={"content-type": "application/json"}, request=request)
    return _from_response(response, body, 0.0)


def usable(message: Any) -> bool:
    """An independent reading of the documented shape."""
    def count(v: Any) -> bool:
        return type(v) is int and 0 <= v < 2**63
    return (isinstance(message, dict) and message.get("type") == "message" and message.get("role") == "assistant"
            and isinstance(message.get("content"), list)
            and all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in message["content"])
            and isinstance(message.get("stop_reason"), str) and isinstance(message.get("usage"), dict)
            and count(message["usage"].get("input_tokens")) and count(message["usage"].get("output_tokens")))


class Store:
    """A one-job batch whose job is claimed again for every answer recorded."""

    def __init__(self, tmp: Path) -> None:
        self.engine, self.batch, _ = make_batch(tmp, n=1)
        self.run_id = start_run(self.engine, self.batch.id, self.batch.name, 500.0, "http://127.0.0.1:9")
        self.out = tmp / "out.jsonl"

    def write_and_read(self, attempt: Attempt) -> None:
        with write(self.engine) as conn:
            conn.execute(update(jobs).where(jobs.c.batch_id == self.batch.id).values(status="pending", run_id=None))
            tally.rebuild(conn, self.batch.id)
        (job,) = claim(self.engine, self.batch.id, self.run_id, 1)
        stored = record(self.engine, self.run_id, [], [succeeded(job.id, attempt, None)], False)
        assert stored == 1
        status = batch_status(self.engine, self.batch)
        assert status["succeeded"] == 1
        for fmt in ("results", "text", "merged"):
            assert export_batch(self.engine, self.batch, str(self.out), fmt, "all", False) == 1


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    yield Store(tmp_path_factory.mktemp("answers"))


@pytest.mark.timeout(900)  # the fuzz profile records thousands of answers
@given(json_values | valid_answers)
@example(MALFORMED[0])
@example(MALFORMED[1])
def test_any_json_body_is_an_answer_only_if_usable(store: Store, body: Any) -> None:
    attempt = respond(orjson.dumps(body))
    if attempt.ok:
        assert usable(attempt.message), body
        store.write_and_read(attempt)
    else:
        assert (attempt.error_type, attempt.status_code) == ("invalid_response", 200)
        assert attempt.error is not None and "not a Messages API answer" in attempt.error["error"]["message"]


@pytest.mark.timeout(900)
@given(valid_answers)
def test_documented_answers_are_accepted_and_stored(store: Store, message: dict[str, Any]) -> None:
    attempt = respond(orjson.dumps(message))
    assert attempt.ok, attempt.error
    store.write_and_read(attempt)


@given(valid_answers, st.sampled_from(range(len(BREAKS))))
def test_one_broken_field_is_refused(message: dict[str, Any], which: int) -> None:
    BREAKS[which](message)
    attempt = respond(orjson.dumps(message))
    assert not attempt.ok and attempt.error_type == "invalid_response", message


@given(st.binary(max_size=64))
def test_any_bytes_never_raise(body: bytes) -> None:
    attempt = respond(body)
    assert attempt.ok == usable(attempt.message)


def test_the_fixture_answer_is_usable() -> None:
    assert respond(orjson.dumps(answer())).ok
