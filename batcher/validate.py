"""Turning one parsed job line into the request body that will be sent.

Two input shapes are accepted: Anthropic's Message Batches lines
(``{"custom_id", "params": {...}}``) and a dataset shorthand (``prompt`` or
``messages`` with Messages API parameters at the top level, anything else kept
as metadata). Checks follow the Messages API so that a bad line is caught on
import, not after points were spent.
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass, field
from typing import Any

from .errors import option

#: The most ``max_tokens`` a job (or ``--max-tokens``) may ask for: far above
#: any model's output, and within what the store and the estimate count in
#: (a 64-bit integer).
MAX_TOKENS_CAP = 10_000_000

#: Claude models Poe serves, by Poe name and Anthropic ID. Others only warn:
#: new models appear over time.
KNOWN_MODELS = frozenset(
    {
        "claude-sonnet-4.5", "claude-sonnet-4-5-20250929",
        "claude-opus-4.5", "claude-opus-4-5-20251101",
        "claude-haiku-4.5", "claude-haiku-4-5-20251001",
        "claude-opus-4.1", "claude-opus-4-1-20250805",
        "claude-sonnet-4", "claude-sonnet-4-20250514",
        "claude-opus-4", "claude-opus-4-20250514",
        "claude-sonnet-3.7", "claude-3-7-sonnet-20250219",
        "claude-haiku-3.5", "claude-3-5-haiku-20241022",
        "claude-haiku-3", "claude-3-haiku-20240307",
    }
)

#: Top-level keys of the shorthand that go into the request body.
API_PARAMS = frozenset(
    {
        "model", "max_tokens", "messages", "system", "temperature", "top_p", "top_k",
        "stop_sequences", "metadata", "tools", "tool_choice", "thinking", "service_tier",
        "container", "mcp_servers", "context_management",
    }
)

#: Shorthand keys that are neither sent as they are nor kept as metadata.
SHORTHAND_KEYS = frozenset({"custom_id", "prompt", "stream"})
#: The keys of a Message Batches line that are not metadata.
_LINE_KEYS = frozenset({"custom_id", "params"})

_MISSING = object()

CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
ROLES = ("user", "assistant")


class InvalidJob(ValueError):
    """The line's object is not a valid job; the message says why."""


@dataclass(frozen=True, slots=True)
class Defaults:
    """Values for ``model``, ``max_tokens`` and ``system`` a job leaves out."""

    model: str | None = None
    max_tokens: int | None = None
    #: A string or a list of text blocks, as a job's ``system`` may be.
    system: str | list[Any] | None = None


@dataclass(slots=True)
class Job:
    """A validated job: its id, the body to send, metadata kept aside."""

    custom_id: str
    body: dict[str, Any]
    extra: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidJob("`messages` must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidJob(f"`messages[{i}]` must be an object")
        if message.get("role") not in ROLES:
            raise InvalidJob(f"`messages[{i}].role` must be \"user\" or \"assistant\"")
        content = message.get("content")
        if content == "" or content == []:
            raise InvalidJob(f"`messages[{i}].content` is empty (the API refuses empty messages)")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not all(
            isinstance(block, dict) and isinstance(block.get("type"), str) for block in content
        ):
            raise InvalidJob(f"`messages[{i}].content` must be a string or a list of content blocks")


def _check_body(body: dict[str, Any], defaults: Defaults, warnings: list[str]) -> None:
    if "stream" in body:
        del body["stream"]
        warnings.append("`stream` dropped: the runner decides whether to stream")
    # Spelled out rather than looped: this runs once per line of the file.
    model = body.get("model", _MISSING)
    if model is _MISSING:
        if defaults.model is None:
            raise InvalidJob(f"no `model` (give one in the line or with {option('model')})")
        model = body["model"] = defaults.model
    max_tokens = body.get("max_tokens", _MISSING)
    if max_tokens is _MISSING:
        if defaults.max_tokens is None:
            raise InvalidJob(f"no `max_tokens` (give one in the line or with {option('max_tokens')})")
        max_tokens = body["max_tokens"] = defaults.max_tokens
    if defaults.system is not None and "system" not in body:
        body["system"] = defaults.system
    _check_messages(body.get("messages"))
    if not isinstance(model, str) or not model:
        raise InvalidJob("`model` must be a non-empty string")
    if isinstance(max_tokens, float) and max_tokens > MAX_TOKENS_CAP:  # a whole number past 2**64 parses as one
        raise InvalidJob(f"`max_tokens` must be at most {MAX_TOKENS_CAP:,} (as for {option('max_tokens')})")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidJob("`max_tokens` must be a positive integer")
    if max_tokens > MAX_TOKENS_CAP:
        raise InvalidJob(f"`max_tokens` must be at most {MAX_TOKENS_CAP:,} (as for {option('max_tokens')}), "
                         f"not {max_tokens}")
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise InvalidJob("`system` must be a string or a list of text blocks")


def _custom_id(obj: dict[str, Any], line: int) -> str:
    if "custom_id" not in obj:
        return f"line-{line}"
    custom_id = obj["custom_id"]
    if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
        raise InvalidJob("`custom_id` must be 1-64 characters of A-Z, a-z, 0-9, _ and -")
    return custom_id


def not_an_object(value: Any) -> str:
    """Why a job line holding ``value`` is refused, in JSON's words (``null``, not ``NoneType``).

    For lines; a row given in Python is refused by :func:`to_job` in Python's words.
    """
    if value is None:
        kind = "null"
    elif isinstance(value, bool):
        kind = "true" if value else "false"
    elif isinstance(value, (int, float)):
        kind = "a number"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, list):
        kind = "an array"
    else:
        kind = type(value).__name__
    return f"expected a JSON object, found {kind}"


def not_a_row(value: Any) -> str:
    """Why a row given in Python holding ``value`` is refused, in Python's words.

    "expected a JSON object, found float" left a notebook's user guessing;
    a None or NaN is most often a DataFrame's or a list's empty cell.

    >>> not_a_row(float("nan"))
    'must be a prompt (a string) or a dict, not nan: an empty cell?'
    >>> not_a_row(42)
    'must be a prompt (a string) or a dict, not 42 (int)'
    """
    if value is None or (isinstance(value, float) and value != value):
        return f"must be a prompt (a string) or a dict, not {value!r}: an empty cell?"
    return f"must be a prompt (a string) or a dict, not {reprlib.repr(value)} ({type(value).__name__})"


def to_job(obj: Any, line: int, defaults: Defaults = Defaults()) -> Job:
    """Validate one line's object and build its request body.

    Raises :class:`InvalidJob` with a message naming the offending field.
    """
    if not isinstance(obj, dict):  # a row given in Python: a line that is no object is refused before
        raise InvalidJob(not_a_row(obj))
    custom_id = _custom_id(obj, line)
    warnings: list[str] = []
    if "params" in obj:
        params = obj["params"]
        if not isinstance(params, dict):
            raise InvalidJob("`params` must be an object")
        extra = None
        if obj.keys() - _LINE_KEYS:  # most lines hold those two keys alone
            misplaced = sorted(k for k in obj if k in API_PARAMS or k == "prompt")
            if misplaced:
                # Kept as metadata it would never be sent, and the job would ask something else.
                raise InvalidJob(f"`{misplaced[0]}` beside `params` would not be sent: put it inside `params`, "
                                 "or give the job without `params`")
            extra = {k: v for k, v in obj.items() if k not in _LINE_KEYS}
        body = dict(params)
    else:
        body, extra = {}, {}
        for key, value in obj.items():
            if key in API_PARAMS:
                body[key] = value
            elif key not in SHORTHAND_KEYS:
                extra[key] = value
        if "stream" in obj:
            body["stream"] = obj["stream"]
        if "prompt" in obj:
            if "messages" in obj:
                raise InvalidJob("give `prompt` or `messages`, not both")
            prompt = obj["prompt"]
            if not isinstance(prompt, str) or not prompt:
                raise InvalidJob("`prompt` must be a non-empty string")
            body["messages"] = [{"role": "user", "content": prompt}]
        elif "messages" not in obj:
            raise InvalidJob("no `prompt`, `messages` or `params`: nothing to send")
        extra = extra or None
    _check_body(body, defaults, warnings)
    return Job(custom_id, body, extra, warnings)
