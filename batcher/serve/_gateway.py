"""``POST /v1/messages`` and ``/v1/messages/count_tokens``, passed through upstream.

The client's body goes upstream as it is, with the server's key (never the
client's token) and the client's ``anthropic-version``/``anthropic-beta``;
the answer comes back as it arrives, a stream event by event. Pacing and
upstream 429s are the fleet's business (:meth:`batcher.fleet.Fleet.forward`).
"""

from __future__ import annotations

import time
from typing import AsyncIterator

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from batcher.client import ANTHROPIC_VERSION
from batcher.fleet import Fleet
from batcher.pacer import Stopped

from ._wire import ApiError, error_body

#: Client headers that go upstream; everything else (the token above all) stays here.
FORWARDED = ("anthropic-version", "anthropic-beta", "content-type", "accept")
#: Upstream headers that come back to the client.
RELAYED = ("content-type", "request-id", "retry-after", "retry-after-ms", "x-should-retry", "cache-control")
#: How long a client waits, when it does not say (the SDKs send x-stainless-timeout).
DEFAULT_CLIENT_TIMEOUT_S = 600.0


def client_deadline(request: Request) -> float:
    """When the client will give up (``time.monotonic()``), from its own timeout header."""
    try:
        timeout = float(request.headers.get("x-stainless-timeout", DEFAULT_CLIENT_TIMEOUT_S))
    except ValueError:
        timeout = DEFAULT_CLIENT_TIMEOUT_S
    return time.monotonic() + max(0.0, timeout)


async def forward(fleet: Fleet, request: Request, path: str) -> Response:
    body = await request.body()
    headers = {name: request.headers[name] for name in FORWARDED if name in request.headers}
    headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    try:
        upstream = await fleet.forward(path, body, headers, client_deadline(request))
    except Stopped:
        raise ApiError(503, "api_error", "the server is shutting down; try again when it is back") from None
    except httpx.TimeoutException:
        raise ApiError(504, "timeout_error", "the upstream API did not answer in time") from None
    except httpx.HTTPError as exc:
        raise ApiError(502, "api_error", f"cannot reach the upstream API ({type(exc).__name__})") from None
    relayed = {name: upstream.headers[name] for name in RELAYED if name in upstream.headers}
    if upstream.headers.get("content-type", "").startswith("text/event-stream"):
        return StreamingResponse(_relay(upstream, request.state.request_id), status_code=upstream.status_code,
                                 headers=relayed)
    try:
        content = await upstream.aread()
    except httpx.HTTPError:
        raise ApiError(502, "api_error", "the upstream API broke off its answer") from None
    finally:
        await upstream.aclose()
    return Response(content, status_code=upstream.status_code, headers=relayed)


async def _relay(upstream: httpx.Response, request_id: str) -> AsyncIterator[bytes]:
    """The upstream stream as it arrives; a cut upstream ends with an SSE error event."""
    try:
        async for chunk in upstream.aiter_bytes():
            yield chunk
    except httpx.HTTPError:
        error = error_body("api_error", "the upstream API broke off the stream", request_id)
        yield b"\n\nevent: error\ndata: " + orjson.dumps(error) + b"\n\n"
    finally:
        await upstream.aclose()
