"""``POST /v1/messages`` and ``/v1/messages/count_tokens``, passed through upstream.

The client's body (at most :data:`MAX_MESSAGE_BODY`) goes upstream as it
is, with the server's key (never the client's token) and the client's
``anthropic-version``/``anthropic-beta``; the answer comes back as it
arrives, a stream event by event. An error comes back in Anthropic's shape
whatever the upstream said it in, and the upstream refusing the server's
key is the server's fault (502), not the client's key. Pacing and upstream
429s are the fleet's business (:meth:`batcher.fleet.Fleet.forward`).
"""

from __future__ import annotations

import time
from typing import AsyncIterator, Callable

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from batcher.apierror import parse_error
from batcher.client import ANTHROPIC_VERSION
from batcher.fleet import Fleet, NoStartInTime
from batcher.pacer import Stopped

from ._wire import MAX_MESSAGE_BODY, ApiError, error_body

#: Client headers that go upstream; everything else (the token above all) stays here.
FORWARDED = ("anthropic-version", "anthropic-beta", "content-type", "accept")
#: Upstream headers that come back to the client.
RELAYED = ("content-type", "request-id", "retry-after", "retry-after-ms", "x-should-retry", "cache-control")
#: How long a client waits, when it does not say (the SDKs do: see :func:`client_deadline`).
DEFAULT_CLIENT_TIMEOUT_S = 600.0


def client_deadline(request: Request) -> float:
    """When the client will give up (``time.monotonic()``), from its own timeout headers.

    The SDKs send a call's own timeout as ``x-stainless-timeout``; without
    one, that header says ``NOT_GIVEN`` and the client's timeout comes as
    ``x-stainless-read-timeout``.
    """
    for name in ("x-stainless-timeout", "x-stainless-read-timeout"):
        try:
            return time.monotonic() + max(0.0, float(request.headers[name]))
        except (KeyError, ValueError):
            continue
    return time.monotonic() + DEFAULT_CLIENT_TIMEOUT_S


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request's body, refused with 413 as soon as it is known to pass ``limit`` bytes.

    Read as it streams in, so a body too big (chunked, or lying in its
    content-length) never sits in memory whole.
    """
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large(limit, what)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, what)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int, what: str) -> ApiError:
    return ApiError(413, "request_too_large", f"{what} may hold at most {limit // 2**20} MB")


async def forward(fleet: Fleet, request: Request, path: str) -> Response:
    body = await read_body(request, MAX_MESSAGE_BODY, "a request")
    headers = {name: request.headers[name] for name in FORWARDED if name in request.headers}
    headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    try:
        upstream = await fleet.forward(path, body, headers, client_deadline(request))
    except Stopped:
        raise ApiError(503, "api_error", "the server is shutting down; try again when it is back") from None
    except NoStartInTime:
        raise ApiError(429, "rate_limit_error", "the key's rate limit left no room for this request before its "
                                                "timeout; it was not sent") from None
    except httpx.TimeoutException:
        raise ApiError(504, "timeout_error", "the upstream API did not answer in time") from None
    except httpx.HTTPError as exc:
        raise ApiError(502, "api_error", f"cannot reach the upstream API ({type(exc).__name__})") from None
    relayed = {name: fleet.mask(upstream.headers[name].encode()).decode()
               for name in RELAYED if name in upstream.headers}
    if upstream.headers.get("content-type", "").startswith("text/event-stream"):
        return StreamingResponse(_relay(upstream, request.state.request_id, fleet.mask),
                                 status_code=upstream.status_code, headers=relayed)
    try:
        content = fleet.mask(await upstream.aread())
    except httpx.HTTPError:
        raise ApiError(502, "api_error", "the upstream API broke off its answer") from None
    finally:
        await upstream.aclose()
    if upstream.status_code in _SERVER_KEY or (upstream.status_code >= 400 and not _anthropic_error(content)):
        return _refusal(upstream.status_code, content, relayed, request.state.request_id)
    if upstream.status_code < 300 and not isinstance(_json(content), dict):
        # A proxy's or portal's page under a 200: relayed, the SDK would fail to read it as a message.
        shown = upstream.headers.get("content-type") or "no content type"
        raise ApiError(502, "api_error", f"the upstream API answered HTTP {upstream.status_code} with something "
                                         f"that is not a JSON object ({shown})")
    return Response(content, status_code=upstream.status_code, headers=relayed)


def _json(content: bytes) -> object:
    """The JSON value of ``content``, or None if it is not JSON."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def _anthropic_error(content: bytes) -> bool:
    """Whether an error body is in Anthropic's shape already, ready to relay as it is."""
    data = _json(content)
    if not isinstance(data, dict):
        return False
    error = data.get("error")
    return (data.get("type") == "error" and isinstance(error, dict) and isinstance(error.get("type"), str)
            and isinstance(error.get("message"), str))


#: Upstream answers about the server's own key, not the client's request: what they say to whoever runs it.
_SERVER_KEY = {401: "refused the server's Poe key (HTTP 401); whoever runs the server must check its POE_API_KEY",
               402: "says the server's Poe key is out of points (HTTP 402); whoever runs the server must add "
                    "points to its account"}


def _refusal(status: int, content: bytes, relayed: dict[str, str], request_id: str) -> Response:
    """An upstream error in Anthropic's shape, whatever shape (an HTML page, say) it came in.

    A 401 or a 402 is about the server's own key (refused, out of points):
    the client's token and account are fine, so the client gets a 502
    that says whose key it was, not an error it would take for its own.
    """
    headers = {k: v for k, v in relayed.items() if k != "content-type"}
    if status in _SERVER_KEY:
        headers.pop("x-should-retry", None)
        body = error_body("api_error", f"the upstream API {_SERVER_KEY[status]}", request_id)
        return JSONResponse(body, status_code=502, headers=headers)
    return JSONResponse(parse_error(status, content, headers.get("request-id") or request_id), status_code=status,
                        headers=headers)


async def _relay(upstream: httpx.Response, request_id: str, mask: Callable[[bytes], bytes]) -> AsyncIterator[bytes]:
    """The upstream stream line by line as it arrives; a cut upstream ends with an SSE error event.

    Whole lines only, each ``mask`` ed: a key quoted by the upstream cannot
    slip through split across two chunks (it holds no line break), and an
    SSE event's lines all end with one, so no event waits.
    """
    held = b""
    try:
        async for chunk in upstream.aiter_bytes():
            held += chunk
            cut = held.rfind(b"\n") + 1
            if cut:
                yield mask(held[:cut])
                held = held[cut:]
        if held:
            yield mask(held)
    except httpx.HTTPError:
        error = error_body("api_error", "the upstream API broke off the stream", request_id)
        yield b"\n\nevent: error\ndata: " + orjson.dumps(error) + b"\n\n"
    finally:
        await upstream.aclose()
