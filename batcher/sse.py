"""Read a streamed Messages API response into the final message.

The HTTP half of streaming: decode server-sent events off an open httpx
response and hand them to ``MessageAccumulator``. Network errors (httpx
exceptions, including ``ReadTimeout`` between chunks) propagate unchanged so
the caller can classify them; everything wrong with the stream's content
becomes a ``StreamFailure``.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any, Callable

import httpx
import orjson
from httpx_sse import EventSource, SSEError

from batcher.accumulate import MALFORMED_EVENT, MessageAccumulator, StreamFailure

__all__ = ["read_stream"]


async def read_stream(
    response: httpx.Response, on_first_token: Callable[[], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Consume ``response`` (a 200 with ``stream: true``) and return the finished message.

    ``on_first_token`` is called once, at the first ``content_block_delta``:
    time to first token is the useful latency figure for a streamed request.
    ``on_event`` is called with each event's name once it has been taken in:
    the caller keeps its idle deadline with it (a ``ping`` is not progress).
    Returns as soon as ``message_stop`` arrives; anything after it is not read.
    Deadlines are the caller's: this only reads.

    Raises ``StreamFailure`` for an ``error`` event, a malformed event, or a
    stream that ends before ``message_stop``; httpx exceptions pass through.
    """
    accumulator = MessageAccumulator()
    first_token = on_first_token
    try:
        async with aclosing(EventSource(response).aiter_sse()) as events:
            async for sse in events:
                accumulator.feed(sse.event, _parse(sse.event, sse.data))
                if on_event is not None:
                    on_event(sse.event)
                if first_token is not None and accumulator.delta_count:
                    first_token, notify = None, first_token
                    notify()
                if accumulator.done:
                    return accumulator.message()
    except SSEError as exc:
        # Raised only for a Content-Type that is not text/event-stream: the
        # body is not a stream at all, which is a content problem, not a
        # network one (SSEError merely subclasses httpx.TransportError).
        raise StreamFailure(MALFORMED_EVENT, str(exc)) from None
    return accumulator.message()  # raises StreamFailure(incomplete_stream)


def _parse(event: str, data: str) -> Any:
    """Event data as JSON; an event with no data (e.g. a bare ``event: ping``) is ``{}``."""
    if not data.strip():
        return {}
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        snippet = data if len(data) <= 200 else data[:200] + "..."
        raise StreamFailure(MALFORMED_EVENT, f"event {event!r} data is not JSON: {snippet!r}") from None
