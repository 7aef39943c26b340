"""Property tests: any bytes, any JSON as job lines.

Whatever a line holds, preparing it gives either a row or a reported line
error (never an exception), and a line is accepted exactly when it follows
the rules the README documents (checked here by an independent oracle).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from hypothesis import event, example, given
from hypothesis import strategies as st

from batcher.jobfile import LineError
from batcher.prepare import ROW_FIELDS, defaults_text, prepare_chunk, request_body
from batcher.validate import Defaults


NONE = Defaults()
FULL = Defaults(model="claude-haiku-4.5", max_tokens=64)
ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# JSON text cannot hold lone surrogates.
text = st.text(st.characters(exclude_categories=("Cs",)))
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False,
                                                                                   allow_infinity=False) | text
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8).filter(str.isprintable), inner, max_size=4), max_leaves=12)


_ANY = object()


def near(good: Any, *bad: Any) -> st.SearchStrategy[Any]:
    """Mostly the documented good value; sometimes a known bad one or any JSON at all."""
    return st.sampled_from([good] * 6 + list(bad) + [_ANY]).flatmap(
        lambda v: json_values if v is _ANY else st.just(v))


content = near("Hi", "", [], [{"text": 1}], [{"type": "text", "text": "Hi"}])
message = near(None).flatmap(lambda _: st.fixed_dictionaries(
    {"role": near("user", "assistant", "system"), "content": content}))
messages = near(None, _ANY).flatmap(lambda v: json_values if v is _ANY else st.lists(message, min_size=1, max_size=3))
fields = {
    "custom_id": near("q-1", "", "a" * 65, "a b", "é").flatmap(st.just) | st.from_regex(ID, fullmatch=True),
    "model": near("claude-haiku-4.5", ""),
    "max_tokens": near(64, 0, -1, True, 64.0, "64"),
    "system": near("Be brief.", [{"type": "text", "text": "x"}], None),
    "stream": st.booleans(),
    "temperature": json_values,
    "note": json_values,
}
shorthand = (st.fixed_dictionaries({"prompt": near("Hello", "")}, optional=fields)
             | st.fixed_dictionaries({"messages": messages}, optional=fields)
             | st.fixed_dictionaries({}, optional={**fields, "prompt": json_values, "messages": messages}))
params = near(None, _ANY).flatmap(lambda v: json_values if v is _ANY else st.fixed_dictionaries(
    {"messages": messages}, optional={k: v for k, v in fields.items() if k != "custom_id"}))
batch_line = st.fixed_dictionaries({"params": params}, optional={"custom_id": fields["custom_id"], "note": json_values})
lines = shorthand | batch_line | json_values


def _messages_ok(value: Any) -> bool:
    if not isinstance(value, list) or not value:
        return False
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            return False
        c = m.get("content")
        if isinstance(c, str):
            if not c:
                return False
        elif not (isinstance(c, list) and c and all(isinstance(b, dict) and isinstance(b.get("type"), str)
                                                    for b in c)):
            return False
    return True


def documented_ok(obj: Any, defaults: Defaults) -> bool:
    """The README's rules for a job line, written out independently of batcher.validate."""
    if not isinstance(obj, dict):
        return False
    if "custom_id" in obj and not (isinstance(obj["custom_id"], str) and ID.fullmatch(obj["custom_id"])):
        return False
    if "params" in obj:
        body = obj["params"]
        if not isinstance(body, dict):
            return False
    else:
        if "prompt" in obj and "messages" in obj:
            return False
        if "prompt" in obj:
            if not (isinstance(obj["prompt"], str) and obj["prompt"]):
                return False
            body = {**obj, "messages": [{"role": "user", "content": obj["prompt"]}]}
        elif "messages" in obj:
            body = obj
        else:
            return False
    model = body.get("model", defaults.model)
    max_tokens = body.get("max_tokens", defaults.max_tokens)
    system = body.get("system", defaults.system)
    return (_messages_ok(body.get("messages")) and isinstance(model, str) and model != ""
            and isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1
            and (system is None or isinstance(system, (str, list))))


def one_line(raw: bytes, defaults: Defaults) -> tuple[list[Any], list[LineError]]:
    chunk = prepare_chunk([(1, raw)], defaults)
    assert len(chunk.rows) + len(chunk.errors) == 1
    for error in chunk.errors:
        assert isinstance(error.message, str) and error.message and "\n" not in error.message
        assert error.line == 1
    return chunk.rows, chunk.errors


@given(st.binary(max_size=200))
@example(b"\x1f\x8b\x08\x00\x00\x00\x00\x00")
@example(b"1" * 5000)
@example(b'{"prompt": "x", "n": ' + b"9" * 5000 + b"}")
@example(b"[" * 300 + b"]" * 300)
@example(b'{"prompt": "\xed\xa0\x80"}')
def test_any_bytes_give_a_row_or_one_line_error(raw: bytes) -> None:
    raw = raw.replace(b"\n", b" ").strip() or b"x"  # a line as the reader hands it over
    one_line(raw, FULL)


@given(lines, st.sampled_from([NONE, FULL, Defaults(system="S", model="m", max_tokens=5)]))
def test_a_line_is_accepted_exactly_when_documented(obj: Any, defaults: Defaults) -> None:
    rows, errors = one_line(orjson.dumps(obj), defaults)
    event("accepted" if rows else "refused")
    assert bool(rows) == documented_ok(obj, defaults), errors
    if rows:
        row = dict(zip(ROW_FIELDS, rows[0]))
        body = orjson.loads(request_body(row["source"], row["line"], defaults_text(defaults)))
        assert "stream" not in body
        assert body["messages"] and body["model"] and body["max_tokens"] >= 1
