"""Deterministic answers, request validation and token estimates for the simulator.

An answer is a pure function of the request body (minus the ``stream`` flag),
so a streamed and a non-streamed call for the same body yield the same
message, id included, and a test can tell which request an answer belongs to
from its ``Answer to: ...`` prefix.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

# Poe names and Anthropic IDs of the Claude models Poe serves.
MODELS: frozenset[str] = frozenset(
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

PREFIX_CHARS = 60

_SENTENCES = (
    "The short version is that it depends on the details.",
    "Here is a careful look at the main points.",
    "Several factors matter, and the first is scale.",
    "A simple example makes the idea concrete.",
    "Most people find the second approach easier to follow.",
    "There are trade-offs worth weighing before deciding.",
    "In practice the difference is small but measurable.",
    "This matches what the usual references describe.",
    "It helps to check the assumptions one at a time.",
    "The numbers line up once the units agree.",
    "A quick sanity check confirms the result.",
    "Edge cases deserve a second look.",
    "History offers a few useful parallels here.",
    "The answer holds under the stated conditions.",
    "Further reading can fill in the finer points.",
    "That covers the essentials of the question.",
)

_WORD = re.compile(r"\S+")
_PIECE = re.compile(r"(?<=\s)(?=\S)")


class RequestError(Exception):
    """A request the real API would refuse with 400 invalid_request_error."""


def _text_of(content: Any) -> str:
    """The plain text of a content value (string or list of blocks)."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                text = block.get("text")
                if isinstance(text, str):
                    parts.append(text)
                elif block.get("type") == "tool_result":
                    parts.append(_text_of(block.get("content")))
    return " ".join(p for p in parts if p)


def last_user_text(body: dict[str, Any]) -> str:
    """Text of the last user message: the prompt the answer refers to."""
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """Roughly chars/4 over all text, system prompt included (never below 1)."""
    chars = len(_text_of(body.get("system")))
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            chars += len(_text_of(message.get("content")))
    return max(1, (chars + 3) // 4)


def count_output_tokens(text: str) -> int:
    """Output tokens are approximated by words (at least 1, as a real model bills)."""
    return max(1, len(text.split()))


def _field(msg: str, name: str) -> RequestError:
    return RequestError(f"{name}: {msg}")


def validate(body: Any) -> dict[str, Any]:
    """Check the body the way the Messages API does; raise RequestError naming the field."""
    if not isinstance(body, dict):
        raise RequestError("Request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise _field("Field required", "model")
    if not isinstance(model, str):
        raise _field("Input should be a valid string", "model")
    if model not in MODELS:
        raise _field(f"unknown model '{model}'; use a Claude model served by Poe", "model")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _field("Field required", "max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise _field("Input should be a valid integer", "max_tokens")
    if max_tokens < 1:
        raise _field("Input should be greater than or equal to 1", "max_tokens")
    messages = body.get("messages")
    if messages is None:
        raise _field("Field required", "messages")
    if not isinstance(messages, list):
        raise _field("Input should be a valid list", "messages")
    if not messages:
        raise _field("List should have at least 1 item", "messages")
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise _field("Input should be a valid dictionary", where)
        if message.get("role") not in ("user", "assistant"):
            raise _field("Input should be 'user' or 'assistant'", f"{where}.role")
        content = message.get("content")
        if content is None:
            raise _field("Field required", f"{where}.content")
        if isinstance(content, list):
            for j, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise _field("Field required", f"{where}.content.{j}.type")
                if block["type"] == "text" and not isinstance(block.get("text"), str):
                    raise _field("Input should be a valid string", f"{where}.content.{j}.text")
        elif not isinstance(content, str):
            raise _field("Input should be a valid string or list of content blocks", f"{where}.content")
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise _field("Input should be a valid string or list of text blocks", "system")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise _field("Input should be a valid list of strings", "stop_sequences")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _field("Input should be a valid boolean", "stream")
    return body


def request_digest(body: dict[str, Any]) -> bytes:
    """Digest of the request without ``stream``, so both modes answer alike."""
    canon = {k: v for k, v in body.items() if k != "stream"}
    data = orjson.dumps(canon, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=16).digest()


def _compose(prompt: str, digest: bytes) -> str:
    prompt = " ".join(prompt.split())
    head = prompt[:PREFIX_CHARS]
    if len(prompt) > PREFIX_CHARS:
        head += "..."
    count = 2 + digest[0] % 4
    picks = [_SENTENCES[digest[1 + i] % len(_SENTENCES)] for i in range(count)]
    return f"Answer to: {head}\n\n" + " ".join(picks)


def _cut_words(text: str, limit: int) -> str:
    """The text up to the end of its ``limit``-th word."""
    for n, match in enumerate(_WORD.finditer(text), 1):
        if n == limit:
            return text[: match.end()]
    return text


def build_message(body: dict[str, Any], digest: bytes | None = None) -> dict[str, Any]:
    """The complete, non-streamed Message for a validated request."""
    digest = digest or request_digest(body)
    text = _compose(last_user_text(body), digest)
    stop_reason, stop_sequence = "end_turn", None
    best = -1
    for seq in body.get("stop_sequences") or ():
        if seq:
            at = text.find(seq)
            if at >= 0 and (best < 0 or at < best):
                best, stop_sequence = at, seq
    if best >= 0:
        text, stop_reason = text[:best], "stop_sequence"
    max_tokens = body["max_tokens"]
    if len(text.split()) > max_tokens:
        text, stop_reason, stop_sequence = _cut_words(text, max_tokens), "max_tokens", None
    return {
        "id": "msg_" + digest.hex()[:24],
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": estimate_input_tokens(body),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": count_output_tokens(text),
        },
    }


def split_chunks(text: str, minimum: int = 3) -> list[str]:
    """Split text into at least ``minimum`` pieces (when it has the characters) that join back exactly."""
    pieces = [p for p in _PIECE.split(text) if p]
    if len(pieces) < minimum:
        if len(text) < minimum:
            return [text] if text else []
        step = -(-len(text) // minimum)
        return [text[i : i + step] for i in range(0, len(text), step)]
    n = max(minimum, min(12, len(pieces) // 3))
    cuts = [len(pieces) * i // n for i in range(n + 1)]
    return ["".join(pieces[a:b]) for a, b in zip(cuts, cuts[1:])]


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event in the Messages API framing."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def stream_events(message: dict[str, Any]) -> list[bytes]:
    """The SSE events that accumulate to exactly ``message``."""
    usage = message["usage"]
    start = dict(message, content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = dict(usage, output_tokens=1)
    text = message["content"][0]["text"]
    events = [
        sse("message_start", {"type": "message_start", "message": start}),
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        sse("ping", {"type": "ping"}),
    ]
    for chunk in split_chunks(text):
        events.append(
            sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": chunk}},
            )
        )
    events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events
