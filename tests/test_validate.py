"""One job line: JSON parsing (parse_line) and turning an object into a request body (to_job)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from batcher.jobfile import LineError, parse_line
from batcher.options import MAX_TOKENS
from batcher.prepare import prepare_chunk
from batcher.validate import Defaults, InvalidJob, Job, to_job

MSG = [{"role": "user", "content": "Hi?"}]
FULL = Defaults(model="claude-haiku-4.5", max_tokens=64)
CUSTOM_ID_RULE = "`custom_id` must be 1-64 characters of A-Z, a-z, 0-9, _ and -"
STREAM_WARNING = "`stream` dropped: the runner decides whether to stream"


def invalid(obj: Any, line: int = 1, defaults: Defaults = FULL) -> str:
    with pytest.raises(InvalidJob) as caught:
        to_job(obj, line, defaults)
    return str(caught.value)


# --- parse_line -------------------------------------------------------------

def test_parse_line_returns_the_json_value() -> None:
    assert parse_line(1, b'{"prompt": "caf\xc3\xa9", "n": [1, 2.5, null, true]}') == {
        "prompt": "café", "n": [1, 2.5, None, True]}
    # Not an object: parse_line still returns it; to_job refuses it.
    assert parse_line(2, b"[1, 2]") == [1, 2]
    assert parse_line(3, b'"text"') == "text"


@pytest.mark.parametrize("raw", [b'{"prompt": "abc"', b'{"prompt": "ab', b'{"a": 1,', b'{', b'[{"a": 1}'])
def test_truncated_line(raw: bytes) -> None:
    assert parse_line(7, raw) == LineError(7, "truncated JSON (the line ends before the object does)")


def test_invalid_utf8_names_the_byte() -> None:
    raw = b'{"prompt": "caf\xe9"}'
    assert raw.index(0xE9) == 15
    assert parse_line(4, raw) == LineError(4, "invalid UTF-8 at byte 16")
    assert parse_line(9, b"\xff\xfe{}") == LineError(9, "invalid UTF-8 at byte 1")


@pytest.mark.parametrize("raw", [b'{"t": 1e400}', b'{"prompt": "x", "n": ' + b"9" * 5000 + b"}", b"1" * 5000])
def test_number_too_large_is_named_as_such(raw: bytes) -> None:
    error = parse_line(3, raw)
    assert isinstance(error, LineError) and error.line == 3
    assert error.message.startswith("number too large at column ")
    assert "infinity" not in error.message and "double" not in error.message


@pytest.mark.parametrize("raw, detail", [
    (b"nope", "invalid literal"),
    (b'{"a": 1}}', "unexpected content after document"),
    (b"{'a': 1}", ""),
    (b'{"a": NaN}', ""),
])
def test_not_json(raw: bytes, detail: str) -> None:
    error = parse_line(12, raw)
    assert isinstance(error, LineError) and error.line == 12
    assert error.message.startswith("not valid JSON: ")
    assert detail in error.message
    assert " at column " in error.message


def test_lone_surrogate_escape_is_an_error_not_a_string() -> None:
    # A str holding a lone surrogate could not be encoded again for the wire.
    error = parse_line(3, rb'{"prompt": "\ud800"}')
    assert isinstance(error, LineError) and error.message.startswith("not valid JSON: ")


# --- to_job: the two input formats ------------------------------------------

def test_batch_format_params_become_the_body() -> None:
    params = {"model": "claude-sonnet-4.5", "max_tokens": 300, "messages": MSG, "temperature": 0.3,
              "future_param": {"x": 1}}
    job = to_job({"custom_id": "req-1", "params": params}, 5)
    assert job == Job("req-1", params, None, [])
    assert job.body is not params  # a copy: defaults must not leak into the caller's object


def test_batch_format_other_top_level_keys_are_metadata() -> None:
    job = to_job({"custom_id": "a", "params": {"messages": MSG}, "topic": "x", "row": 7}, 1, FULL)
    assert job.extra == {"topic": "x", "row": 7}
    assert job.body == {"messages": MSG, "model": "claude-haiku-4.5", "max_tokens": 64}


def test_shorthand_prompt_becomes_one_user_message() -> None:
    job = to_job({"custom_id": "q1", "prompt": "What is 2+2?", "model": "claude-opus-4.5", "max_tokens": 10}, 1)
    assert job.body == {"model": "claude-opus-4.5", "max_tokens": 10,
                        "messages": [{"role": "user", "content": "What is 2+2?"}]}
    assert job.extra is None and job.warnings == []


def test_shorthand_api_params_sent_unknown_keys_kept_aside() -> None:
    obj = {"prompt": "p", "temperature": 0.2, "top_p": 0.9, "top_k": 5, "stop_sequences": ["END"],
           "metadata": {"user_id": "u1"}, "system": "Be brief.", "thinking": {"type": "disabled"},
           "topic": "geo", "expected": "Paris", "row": {"id": 3}}
    job = to_job(obj, 2, FULL)
    assert job.body == {"temperature": 0.2, "top_p": 0.9, "top_k": 5, "stop_sequences": ["END"],
                        "metadata": {"user_id": "u1"}, "system": "Be brief.", "thinking": {"type": "disabled"},
                        "messages": [{"role": "user", "content": "p"}],
                        "model": "claude-haiku-4.5", "max_tokens": 64}
    assert job.extra == {"topic": "geo", "expected": "Paris", "row": {"id": 3}}
    assert not set(job.extra) & set(job.body)


def test_shorthand_messages_kept_as_given() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}]},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x/y.png"}},
                                             {"type": "text", "text": "c", "cache_control": {"type": "ephemeral"}}]}]
    job = to_job({"custom_id": "m", "messages": messages, "id": 17}, 1, FULL)
    assert job.body["messages"] == messages
    assert job.extra == {"id": 17}


def test_to_job_leaves_the_input_untouched() -> None:
    obj = {"custom_id": "a", "params": {"messages": MSG, "stream": True}, "k": [1]}
    before = copy.deepcopy(obj)
    to_job(obj, 1, Defaults("claude-haiku-4.5", 10, "sys"))
    assert obj == before


# --- defaults ---------------------------------------------------------------

def test_defaults_fill_only_what_is_missing() -> None:
    defaults = Defaults(model="claude-haiku-4.5", max_tokens=100, system="Answer in French.")
    bare = to_job({"prompt": "x"}, 1, defaults)
    assert bare.body == {"messages": [{"role": "user", "content": "x"}], "model": "claude-haiku-4.5",
                         "max_tokens": 100, "system": "Answer in French."}
    own = to_job({"prompt": "x", "model": "claude-opus-4.5", "max_tokens": 7, "system": "Mine."}, 1, defaults)
    assert (own.body["model"], own.body["max_tokens"], own.body["system"]) == ("claude-opus-4.5", 7, "Mine.")
    batch = to_job({"params": {"messages": MSG, "max_tokens": 9}}, 1, defaults)
    assert batch.body == {"messages": MSG, "max_tokens": 9, "model": "claude-haiku-4.5",
                          "system": "Answer in French."}


def test_no_system_added_without_a_default() -> None:
    assert "system" not in to_job({"prompt": "x"}, 1, FULL).body


@pytest.mark.parametrize("obj, defaults, message", [
    ({"prompt": "x"}, Defaults(), "no `model` (give one in the line or with model)"),
    ({"prompt": "x", "max_tokens": 5}, Defaults(), "no `model` (give one in the line or with model)"),
    ({"prompt": "x"}, Defaults(max_tokens=5), "no `model` (give one in the line or with model)"),
    ({"prompt": "x"}, Defaults(model="claude-haiku-4.5"),
     "no `max_tokens` (give one in the line or with max_tokens)"),
    ({"params": {"messages": MSG, "model": "claude-haiku-4.5"}}, Defaults(),
     "no `max_tokens` (give one in the line or with max_tokens)"),
])
def test_job_still_lacking_model_or_max_tokens_is_invalid(obj: Any, defaults: Defaults, message: str) -> None:
    assert invalid(obj, 1, defaults) == message


# --- custom_id --------------------------------------------------------------

def test_custom_id_defaults_to_the_line_number() -> None:
    assert to_job({"prompt": "x"}, 1, FULL).custom_id == "line-1"
    assert to_job({"params": {"messages": MSG}}, 4711, FULL).custom_id == "line-4711"


@pytest.mark.parametrize("custom_id", ["a", "A-z_0-9", "x" * 64, "0", "-", "_"])
def test_custom_id_accepted(custom_id: str) -> None:
    assert to_job({"custom_id": custom_id, "prompt": "x"}, 3, FULL).custom_id == custom_id


@pytest.mark.parametrize("custom_id", ["", "x" * 65, "a b", "a.b", "a/b", "é", "a\n", "a\u200b", 5, None, True,
                                       ["a"]])
def test_custom_id_refused(custom_id: Any) -> None:
    assert invalid({"custom_id": custom_id, "prompt": "x"}) == CUSTOM_ID_RULE
    assert invalid({"custom_id": custom_id, "params": {"messages": MSG}}) == CUSTOM_ID_RULE


# --- stream -----------------------------------------------------------------

@pytest.mark.parametrize("obj", [
    {"prompt": "x", "stream": True},
    {"prompt": "x", "stream": False},
    {"params": {"messages": MSG, "stream": True}},
])
def test_stream_dropped_with_a_warning(obj: dict[str, Any]) -> None:
    job = to_job(obj, 1, FULL)
    assert "stream" not in job.body
    assert job.extra is None
    assert job.warnings == [STREAM_WARNING]


# --- field checks -----------------------------------------------------------

@pytest.mark.parametrize("obj, found", [([], "[] (list)"), ("x", "'x' (str)"), (3, "3 (int)"),
                                        (None, "None: an empty cell?"), (1.5, "1.5 (float)"),
                                        (True, "True (bool)")])
def test_a_row_must_be_an_object(obj: Any, found: str) -> None:
    """Only a row given in Python reaches to_job as no object (a line is refused before, in JSON's words)."""
    assert invalid(obj) == f"must be a prompt (a string) or a dict, not {found}"


@pytest.mark.parametrize("messages, message", [
    ([], "`messages` must be a non-empty list"),
    ("hello", "`messages` must be a non-empty list"),
    ({"role": "user", "content": "x"}, "`messages` must be a non-empty list"),
    (None, "`messages` must be a non-empty list"),
    (["hello"], "`messages[0]` must be an object"),
    ([{"content": "x"}], '`messages[0].role` must be "user" or "assistant"'),
    ([{"role": "system", "content": "x"}], '`messages[0].role` must be "user" or "assistant"'),
    ([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}],
     '`messages[1].role` must be "user" or "assistant"'),
    ([{"role": "user"}], "`messages[0].content` must be a string or a list of content blocks"),
    ([{"role": "user", "content": 3}], "`messages[0].content` must be a string or a list of content blocks"),
    ([{"role": "user", "content": {"type": "text", "text": "x"}}],
     "`messages[0].content` must be a string or a list of content blocks"),
    ([{"role": "user", "content": ["x"]}], "`messages[0].content` must be a string or a list of content blocks"),
    ([{"role": "user", "content": [{"text": "x"}]}],
     "`messages[0].content` must be a string or a list of content blocks"),
])
def test_messages_checked(messages: Any, message: str) -> None:
    assert invalid({"messages": messages}) == message
    assert invalid({"params": {"messages": messages}}) == message


def test_missing_messages() -> None:
    assert invalid({"params": {"model": "claude-haiku-4.5", "max_tokens": 5}}) == "`messages` must be a non-empty list"
    assert invalid({"model": "claude-haiku-4.5", "max_tokens": 5}) == (
        "no `prompt`, `messages` or `params`: nothing to send")


@pytest.mark.parametrize("max_tokens", [0, -1, True, False, 1.0, 2.5, "100", None, [5]])
def test_max_tokens_must_be_a_positive_int(max_tokens: Any) -> None:
    message = "`max_tokens` must be a positive integer"
    assert invalid({"prompt": "x", "max_tokens": max_tokens}) == message
    assert invalid({"params": {"messages": MSG, "model": "claude-haiku-4.5", "max_tokens": max_tokens}}) == message


def test_max_tokens_one_is_fine() -> None:
    assert to_job({"prompt": "x", "max_tokens": 1}, 1, FULL).body["max_tokens"] == 1


@pytest.mark.parametrize("model", ["", 5, None, ["claude-haiku-4.5"], True])
def test_model_must_be_a_non_empty_string(model: Any) -> None:
    assert invalid({"prompt": "x", "model": model}) == "`model` must be a non-empty string"


def test_unknown_model_is_not_an_error() -> None:
    job = to_job({"prompt": "x", "model": "claude-future-9"}, 1, FULL)
    assert job.body["model"] == "claude-future-9"
    assert job.warnings == []  # the import counts unknown models and warns once per model


@pytest.mark.parametrize("system", ["plain", [{"type": "text", "text": "blocks"}]])
def test_system_string_or_blocks(system: Any) -> None:
    assert to_job({"prompt": "x", "system": system}, 1, FULL).body["system"] == system


def test_system_of_another_type_is_refused() -> None:
    assert invalid({"prompt": "x", "system": 5}) == "`system` must be a string or a list of text blocks"
    assert invalid({"prompt": "x", "system": {"text": "a"}}) == "`system` must be a string or a list of text blocks"


@pytest.mark.parametrize("obj, message", [
    ({"prompt": "x", "messages": MSG}, "give `prompt` or `messages`, not both"),
    ({"prompt": ""}, "`prompt` must be a non-empty string"),
    ({"prompt": None}, "`prompt` must be a non-empty string"),
    ({"prompt": ["a"]}, "`prompt` must be a non-empty string"),
    ({"params": "x"}, "`params` must be an object"),
    ({"params": [MSG]}, "`params` must be an object"),
    ({"custom_id": "a"}, "no `prompt`, `messages` or `params`: nothing to send"),
    ({}, "no `prompt`, `messages` or `params`: nothing to send"),
])
def test_shape_errors(obj: Any, message: str) -> None:
    assert invalid(obj) == message


@pytest.mark.parametrize("content", ["", []])
def test_empty_message_content_is_refused_on_import(content: object) -> None:
    with pytest.raises(InvalidJob) as caught:
        to_job({"messages": [{"role": "user", "content": content}]}, 3, Defaults("claude-haiku-4.5", 10))
    assert str(caught.value) == "`messages[0].content` is empty (the API refuses empty messages)"


def test_a_line_that_is_not_an_object_is_named_in_jsons_words() -> None:
    lines = [b"null", b"[1, 2]", b'"text"', b"3", b"1.5", b"true", b"false", b'{"prompt": "x"}']
    chunk = prepare_chunk(list(enumerate(lines, start=1)), FULL)
    assert [(e.line, e.message) for e in chunk.errors] == [
        (1, "expected a JSON object, found null"),
        (2, "expected a JSON object, found an array"),
        (3, "expected a JSON object, found a string"),
        (4, "expected a JSON object, found a number"),
        (5, "expected a JSON object, found a number"),
        (6, "expected a JSON object, found true"),
        (7, "expected a JSON object, found false"),
    ]
    assert len(chunk.rows) == 1


@pytest.mark.parametrize("max_tokens", [MAX_TOKENS.high + 1, 2**63, 10**30])
def test_max_tokens_above_the_option_cap_is_refused(max_tokens: int) -> None:
    message = f"`max_tokens` must be at most 10,000,000 (as for max_tokens), not {max_tokens}"
    assert invalid({"prompt": "x", "max_tokens": max_tokens}) == message
    assert invalid({"params": {"messages": MSG, "model": "claude-haiku-4.5", "max_tokens": max_tokens}}) == message
    assert to_job({"prompt": "x", "max_tokens": MAX_TOKENS.high}, 1, FULL).body["max_tokens"] == MAX_TOKENS.high



def test_a_line_with_max_tokens_of_2_to_the_63_is_refused_not_counted() -> None:
    line = b'{"prompt": "x", "max_tokens": 9223372036854775808}'
    chunk = prepare_chunk([(1, line)], FULL)
    assert [e.message for e in chunk.errors] == [
        "`max_tokens` must be at most 10,000,000 (as for max_tokens), not 9223372036854775808"]
    assert chunk.rows == []


def test_a_line_with_max_tokens_past_what_json_readers_hold_as_integers_is_said_too_large() -> None:
    """Twenty nines parse as a float: still a number too large, not "must be a positive integer"."""
    chunk = prepare_chunk([(1, b'{"prompt": "x", "max_tokens": 99999999999999999999}')], FULL)
    assert [e.message for e in chunk.errors] == ["`max_tokens` must be at most 10,000,000 (as for max_tokens)"]


@pytest.mark.parametrize("beside", [{"prompt": "PROMPT-TEXT"}, {"temperature": 0.5}, {"system": "Be brief."}])
def test_a_request_field_beside_params_is_refused_not_kept_as_metadata(beside: dict[str, Any]) -> None:
    # It would never be sent: the job would quietly ask something else than the line says.
    (field,) = beside
    line = {"custom_id": "p4", **beside, "params": {"messages": [{"role": "user", "content": "hi"}]}}
    with pytest.raises(InvalidJob, match=f"`{field}` beside `params` would not be sent: put it inside `params`"):
        to_job(line, 1, FULL)
    kept = to_job({"custom_id": "p5", "source_row": 7, "params": line["params"]}, 1, FULL)
    assert kept.extra == {"source_row": 7}  # other keys are metadata, as documented
