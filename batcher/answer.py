"""Is this a Messages API answer? The shape batcher relies on, checked once.

A 200 is only a result if the store, the exports and the token tallies can
use it: a message from the assistant whose content is a list of typed
blocks, with a stop reason and token counts that are whole, non-negative
numbers. Anything else (a proxy's page, a truncated or reshaped body) is
not recorded as a success: the client turns it into an ``invalid_response``
attempt, which is retried like a cut answer. Unknown keys and unknown block
types are normal and kept.
"""

from __future__ import annotations

from typing import Any

__all__ = ["INVALID_RESPONSE", "answer_problem"]

INVALID_RESPONSE = "invalid_response"

#: Token counts above this are not counts (and would not fit an SQLite integer).
MAX_COUNT = 2**53
_REQUIRED_COUNTS = ("input_tokens", "output_tokens")
_OPTIONAL_COUNTS = ("cache_creation_input_tokens", "cache_read_input_tokens")


def answer_problem(message: Any) -> str | None:
    """What is wrong with ``message`` as a finished answer, or None if nothing."""
    if not isinstance(message, dict):
        return f"the body is {_kind(message)}, not a JSON object"
    if message.get("type") != "message":
        return f"type is {_shown(message.get('type'))}, not 'message'"
    if message.get("role") != "assistant":
        return f"role is {_shown(message.get('role'))}, not 'assistant'"
    for key in ("id", "model"):
        if key in message and not isinstance(message[key], str):
            return f"{key} is {_kind(message[key])}, not a string"
    content = message.get("content")
    if not isinstance(content, list):
        return f"content is {_kind(content)}, not a list of blocks"
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return f"content[{i}] is not a block with a type"
        if block["type"] == "text" and not isinstance(block.get("text"), str):
            return f"content[{i}] is a text block without text"
    if not isinstance(message.get("stop_reason"), str):
        return f"stop_reason is {_kind(message.get('stop_reason'))}, not a string"
    return _usage_problem(message.get("usage"))


def _usage_problem(usage: Any) -> str | None:
    if not isinstance(usage, dict):
        return f"usage is {_kind(usage)}, not an object"
    for key in _REQUIRED_COUNTS + _OPTIONAL_COUNTS:
        value = usage.get(key)
        if value is None and key in _OPTIONAL_COUNTS:
            continue
        if not _count(value):
            return f"usage.{key} is {_shown(value)}, not a token count"
    return None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _kind(value: Any) -> str:
    if value is None:
        return "missing or null"
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number"}
    return names.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    if value is None:
        return "missing or null"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
