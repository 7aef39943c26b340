"""Fold a streamed Messages API answer back into the message a non-streamed call returns.

Streaming is how long generations survive proxies and timeouts, but the rest of
batcher (storage, export in Message Batches format) wants the one finished
message. This module is pure and I/O-free so it can be checked event by event
against recorded streams; the HTTP side lives in ``batcher.sse``.

A stream only counts as an answer once ``message_stop`` has arrived: partial
text is never handed out as if it were a result.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

__all__ = ["INCOMPLETE_STREAM", "MALFORMED_EVENT", "MessageAccumulator", "StreamFailure"]

INCOMPLETE_STREAM = "incomplete_stream"
MALFORMED_EVENT = "malformed_event"

# Deltas whose payload is appended to a string field of the block.
_APPENDED = {"text_delta": "text", "thinking_delta": "thinking"}


class StreamFailure(Exception):
    """A streamed answer that did not yield a complete message.

    ``error_type`` is the Anthropic error type when the server sent an ``error``
    event (``overloaded_error``, ``api_error``, ...), or ``incomplete_stream`` /
    ``malformed_event`` when the stream itself was at fault; callers map it to
    retry-or-fail exactly like an HTTP error body.
    """

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


def _malformed(message: str) -> StreamFailure:
    return StreamFailure(MALFORMED_EVENT, message)


class _Block:
    """One content block under construction.

    Appended strings are kept as lists of parts and joined once at the end, so
    a long answer made of thousands of small deltas costs linear time.
    """

    __slots__ = ("data", "parts", "json_parts", "stopped")

    def __init__(self, data: dict[str, Any], stopped: bool = False) -> None:
        self.data = data
        self.parts: dict[str, list[str]] = {}
        self.json_parts: list[str] | None = None
        self.stopped = stopped

    def append(self, field: str, text: str) -> None:
        parts = self.parts.get(field)
        if parts is None:
            prev = self.data.get(field)
            parts = self.parts[field] = [prev] if isinstance(prev, str) and prev else []
        parts.append(text)

    def finish(self, index: int) -> None:
        for field, parts in self.parts.items():
            self.data[field] = "".join(parts)
        self.parts = {}
        buffer = "".join(self.json_parts) if self.json_parts is not None else ""
        self.json_parts = None
        # An empty buffer counts as "no deltas": the API often opens a tool
        # block with partial_json "" and, for a tool without arguments, sends
        # nothing else.
        if buffer.strip():
            try:
                self.data["input"] = orjson.loads(buffer)
            except orjson.JSONDecodeError as exc:
                raise _malformed(f"tool input of block {index} is not valid JSON: {exc}") from None
        elif str(self.data.get("type", "")).endswith("tool_use") and not isinstance(
            self.data.get("input"), dict
        ):
            self.data["input"] = {}
        self.stopped = True


class MessageAccumulator:
    """Rebuild the final message from a Messages API event stream.

    Feed every SSE event in order; once ``done`` is true, ``message()`` returns
    a dict shaped exactly like a non-streamed answer. Any protocol violation or
    server ``error`` event raises ``StreamFailure`` from ``feed``.
    """

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, _Block] = {}
        self.done: bool = False
        # content_block_delta events accepted so far: lets a reader notice the first token.
        self.delta_count: int = 0

    def feed(self, event: str, data: dict[str, Any]) -> None:
        """Apply one SSE event: ``event`` is its name, ``data`` its parsed JSON.

        The event kind is taken from ``data["type"]`` when present (as the
        Anthropic SDK does) and from the SSE name otherwise, so servers that
        omit ``event:`` lines still work.
        """
        if not isinstance(data, dict):
            raise _malformed(f"event {event!r} carries {type(data).__name__} data, not an object")
        kind = data.get("type")
        if not isinstance(kind, str) or not kind:
            kind = event
        if kind == "error" or event == "error":
            raise _error_from(data)
        if self.done:
            raise _malformed(f"{kind!r} event after message_stop")
        handler = _HANDLERS.get(kind)
        if handler is None:  # ping, and newer event types
            return
        if kind != "message_start" and self._message is None:
            raise _malformed(f"{kind!r} event before message_start")
        handler(self, data)

    def message(self) -> dict[str, Any]:
        """The finished message; ``StreamFailure(incomplete_stream)`` before ``message_stop``."""
        if not self.done or self._message is None:
            if self._message is None:
                detail = "stream ended before message_start"
            else:
                detail = f"stream ended before message_stop, after {len(self._blocks)} content block(s)"
            raise StreamFailure(INCOMPLETE_STREAM, detail)
        result = dict(self._message)
        result["content"] = [self._blocks[i].data for i in sorted(self._blocks)]
        return copy.deepcopy(result)

    # -- event handlers -------------------------------------------------------

    def _on_message_start(self, data: dict[str, Any]) -> None:
        if self._message is not None:
            raise _malformed("second message_start")
        message = data.get("message")
        if not isinstance(message, dict):
            raise _malformed("message_start without a message object")
        message = copy.deepcopy(message)
        content = message.get("content") or []
        if not isinstance(content, list):
            raise _malformed("message_start content is not a list")
        # Blocks already present (never seen in practice) count as finished.
        self._blocks = {i: _Block(block, stopped=True) for i, block in enumerate(content)}
        if not isinstance(message.get("usage"), dict):
            message["usage"] = {}
        self._message = message

    def _on_block_start(self, data: dict[str, Any]) -> None:
        index = _index(data)
        block = data.get("content_block")
        if not isinstance(block, dict):
            raise _malformed(f"content_block_start {index} without a content_block object")
        if index in self._blocks:
            raise _malformed(f"content block {index} started twice")
        self._blocks[index] = _Block(copy.deepcopy(block))

    def _open_block(self, data: dict[str, Any], kind: str) -> tuple[int, _Block]:
        index = _index(data)
        block = self._blocks.get(index)
        if block is None:
            raise _malformed(f"{kind} for content block {index}, which was never started")
        if block.stopped:
            raise _malformed(f"{kind} for content block {index}, which was already stopped")
        return index, block

    def _on_block_delta(self, data: dict[str, Any]) -> None:
        index, block = self._open_block(data, "content_block_delta")
        delta = data.get("delta")
        if not isinstance(delta, dict):
            raise _malformed(f"content_block_delta {index} without a delta object")
        self.delta_count += 1
        dtype = delta.get("type")
        if dtype in _APPENDED:
            field = _APPENDED[dtype]
            block.append(field, _string(delta, field, index))
        elif dtype == "input_json_delta":
            if block.json_parts is None:
                block.json_parts = []
            block.json_parts.append(_string(delta, "partial_json", index))
        elif dtype == "signature_delta":
            block.data["signature"] = _string(delta, "signature", index)
        elif dtype == "citations_delta":
            if "citation" not in delta:
                raise _malformed(f"citations_delta for block {index} without a citation")
            citations = block.data.get("citations")
            if not isinstance(citations, list):
                citations = block.data["citations"] = []
            citations.append(delta["citation"])
        # Any other delta kind is one this code does not know: skip it, keep the block.

    def _on_block_stop(self, data: dict[str, Any]) -> None:
        index, block = self._open_block(data, "content_block_stop")
        block.finish(index)

    def _on_message_delta(self, data: dict[str, Any]) -> None:
        assert self._message is not None
        delta = data.get("delta", {})
        usage = data.get("usage", {})
        if not isinstance(delta, dict) or not isinstance(usage, dict):
            raise _malformed("message_delta with a delta or usage that is not an object")
        for key, value in delta.items():
            # stop_reason/stop_sequence are authoritative as sent; for anything
            # else a null only fills a gap and never erases a known value.
            if key in ("stop_reason", "stop_sequence") or value is not None or key not in self._message:
                self._message[key] = value
        # Figures are cumulative totals: overwrite, never add; a null or absent
        # figure leaves the message_start value standing.
        target = self._message["usage"]
        for key, value in usage.items():
            if value is not None:
                target[key] = value

    def _on_message_stop(self, data: dict[str, Any]) -> None:
        # A block left open is closed here rather than failing the whole answer.
        for index in sorted(self._blocks):
            if not self._blocks[index].stopped:
                self._blocks[index].finish(index)
        self.done = True


_HANDLERS = {
    "message_start": MessageAccumulator._on_message_start,
    "content_block_start": MessageAccumulator._on_block_start,
    "content_block_delta": MessageAccumulator._on_block_delta,
    "content_block_stop": MessageAccumulator._on_block_stop,
    "message_delta": MessageAccumulator._on_message_delta,
    "message_stop": MessageAccumulator._on_message_stop,
}


def _index(data: dict[str, Any]) -> int:
    index = data.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise _malformed(f"{data.get('type', 'event')!s} with invalid block index {index!r}")
    return index


def _string(delta: dict[str, Any], key: str, index: int) -> str:
    value = delta.get(key)
    if not isinstance(value, str):
        raise _malformed(f"{delta.get('type')} for block {index} without a string {key!r}")
    return value


def _error_from(data: dict[str, Any]) -> StreamFailure:
    """The failure an ``error`` event reports; ``api_error`` when it does not say which."""
    error = data.get("error")
    if isinstance(error, dict):
        etype = error.get("type")
        message = error.get("message")
        return StreamFailure(
            etype if isinstance(etype, str) and etype else "api_error",
            message if isinstance(message, str) else _describe(error),
        )
    if isinstance(error, str) and error:
        return StreamFailure("api_error", error)
    return StreamFailure("api_error", f"error event without details: {_describe(data)}")


def _describe(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)
