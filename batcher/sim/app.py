"""The simulator as a bare ASGI app: an imitation of Poe's Anthropic-compatible Messages API.

Bare ASGI rather than a framework keeps per-request work small (the rate
tests need thousands of requests per second) and gives direct control over
half-sent bodies and dropped connections. Needs nothing beyond orjson;
only ``server.py`` needs uvicorn.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import sys
import time
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

import orjson

from batcher.sim.answers import RequestError, build_message, last_user_text, request_digest, stream_events, validate
from batcher.sim.faults import HTML_502, Fault, directives, error_message, error_type
from batcher.sim.config import SimConfig
from batcher.sim.limits import SlidingWindow, Stats, format_seconds, rfc3339_after

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

MAX_BODY = 32 * 1024 * 1024


def _mask(key: str) -> str:
    if not key:
        return "-"
    return key[:4] + "..." + key[-4:] if len(key) > 12 else "***"


class SimApp:
    """ASGI app answering ``POST /v1/messages``, ``GET /stats`` and ``POST /stats/reset``."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.limiter = SlidingWindow(self.config.rpm, self.config.window)
        self.stats = Stats(self.config.window)
        self.faults = self.config.fault_plan()
        self._rng = random.Random(self.config.seed)
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(6).hex()
        self._points_used: dict[str, int] = {}
        self._points_held: dict[str, int] = {}

    def reset(self) -> None:
        """Zero counters, the rate window, seen-body counts and points."""
        self.stats.reset()
        self.limiter.clear()
        self.faults.reset()
        self._points_used.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._route(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/v1/messages":
            if method == "POST":
                await self._messages(scope, receive, send)
            else:
                await self._json(send, 405, self._error_body(405, "Method not allowed", self._rid()))
        elif path == "/stats" and method == "GET":
            query = parse_qs(scope.get("query_string", b"").decode())
            times = query.get("times", ["0"])[-1].lower() in ("1", "true", "yes")
            await self._json(send, 200, self.stats.snapshot(times=times))
        elif path == "/stats/reset" and method == "POST":
            self.reset()
            await self._json(send, 200, {"ok": True})
        elif path in ("/", "/health") and method == "GET":
            await self._json(send, 200, {"ok": True, "service": "batcher simulator"})
        else:
            await self._json(send, 404, self._error_body(404, f"Not found: {method} {path}", self._rid()))

    # -- plumbing ---------------------------------------------------------

    def _rid(self) -> str:
        return f"req_{self._id_prefix}{next(self._ids):012x}"

    @staticmethod
    def _error_body(status: int, message: str, rid: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": error_type(status), "message": message}, "request_id": rid}

    async def _json(self, send: Send, status: int, data: Any) -> None:
        body = orjson.dumps(data)
        rid = data.get("request_id") if isinstance(data, dict) else None
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"request-id", (rid or self._rid()).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _headers(self, key: str, rid: str, retry_after: float | None = None) -> Headers:
        """request-id and rate-limit headers, read from the window as it is now."""
        headers = [(b"request-id", rid.encode())]
        style = self.config.rate_headers
        if style != "none":
            verdict = self.limiter.peek(key)
            if style == "anthropic":
                prefix, reset = b"anthropic-ratelimit-requests-", rfc3339_after(verdict.reset)
            else:
                prefix, reset = b"x-ratelimit-", format_seconds(verdict.reset)
            suffix = b"-requests" if style == "poe" else b""
            headers += [
                (prefix + b"limit" + suffix, str(self.limiter.limit).encode()),
                (prefix + b"remaining" + suffix, str(verdict.remaining).encode()),
                (prefix + b"reset" + suffix, reset.encode()),
            ]
        if retry_after is not None and self.config.retry_after:
            retry_after = max(retry_after, 0.001)
            headers.append((b"retry-after", format_seconds(retry_after).encode()))
            headers.append((b"retry-after-ms", str(math.ceil(retry_after * 1000)).encode()))
        return headers

    async def _start(self, send: Send, status: int, headers: Headers) -> None:
        self.stats.answered(status)
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def _fail(
        self, send: Send, status: int, message: str, req: _Request, retry_after: float | None = None
    ) -> int:
        """Answer with an Anthropic-format error; returns the status for the log."""
        body = orjson.dumps(self._error_body(status, message, req.rid))
        headers = self._headers(req.key, req.rid, retry_after)
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self._start(send, status, headers)
        await send({"type": "http.response.body", "body": body})
        return status

    # -- POST /v1/messages ------------------------------------------------

    async def _messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        req = _Request(self._rid())
        self.stats.arrive(started)
        try:
            req.status = await self._answer(scope, receive, send, req, started)
        finally:
            self.stats.depart()
            if req.holds_point:
                self._points_held[req.key] -= 1
            if self.config.verbose:
                elapsed = time.monotonic() - started
                line = f"POST /v1/messages {req.status} {elapsed:.3f}s key={_mask(req.key)} {req.rid}\n"
                sys.stderr.write(line)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, req: _Request, now: float) -> int:
        api_key = bearer = version = None
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                api_key = value.decode("latin-1").strip()
            elif name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    bearer = token.strip()
            elif name == b"anthropic-version":
                version = value
        raw = await _read_body(receive)
        key = req.key = api_key or bearer or ""
        cfg = self.config

        if not key:
            msg = "Missing API key: send x-api-key or Authorization: Bearer"
            return await self._fail(send, 401, msg, req)
        if cfg.key is not None and key != cfg.key:
            return await self._fail(send, 401, "Invalid API key", req)
        if not version:
            return await self._fail(send, 400, "anthropic-version: header is required", req)
        if len(raw) > MAX_BODY:
            return await self._fail(send, 413, error_message(413), req)
        if cfg.points is not None:
            if self._points_used.get(key, 0) + self._points_held.get(key, 0) >= cfg.points:
                return await self._fail(send, 402, error_message(402), req)
            self._points_held[key] = self._points_held.get(key, 0) + 1
            req.holds_point = True

        verdict = self.limiter.acquire(key, now)
        if not verdict.allowed:
            self.stats.rate_limited += 1
            msg = f"Rate limit exceeded: {cfg.rpm} requests per {cfg.window:g}s"
            return await self._fail(send, 429, msg, req, retry_after=verdict.reset)
        self.stats.admit(now)

        try:
            body = validate(orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            return await self._fail(send, 400, f"Request body is not valid JSON: {exc}", req)
        except RequestError as exc:
            return await self._fail(send, 400, str(exc), req)

        stream = body.get("stream") is True
        forced, extra_sleep = directives(last_user_text(body))
        lo, hi = cfg.latency
        delay = (lo if lo == hi else self._rng.uniform(lo, hi)) + extra_sleep
        if forced is not None:
            if delay:
                await asyncio.sleep(delay)
            retry = cfg.window / cfg.rpm if forced == 429 else None
            return await self._fail(send, forced, error_message(forced), req, retry)

        fault = self.faults.decide(raw, stream)
        if fault is not None:
            self.stats.faults[fault.kind] += 1
            if fault.kind == "stall":
                await asyncio.sleep(cfg.stall_seconds)
                fault = None
            elif fault.status >= 400:
                if delay:
                    await asyncio.sleep(delay)
                if fault.kind == "html":
                    headers = self._headers(key, req.rid)
                    headers += [(b"content-type", b"text/html"), (b"content-length", str(len(HTML_502)).encode())]
                    await self._start(send, 502, headers)
                    await send({"type": "http.response.body", "body": HTML_502})
                    return 502
                retry = cfg.window / cfg.rpm if fault.status == 429 else None
                return await self._fail(send, fault.status, error_message(fault.status), req, retry)

        message = build_message(body, request_digest(body))
        sender = self._send_stream if stream else self._send_message
        if await sender(send, message, req, delay, fault):
            self.stats.succeeded += 1
            self.stats.input_tokens += message["usage"]["input_tokens"]
            self.stats.output_tokens += message["usage"]["output_tokens"]
            if cfg.points is not None:
                self._points_used[key] = self._points_used.get(key, 0) + 1
        return 200

    async def _send_message(
        self, send: Send, message: dict[str, Any], req: _Request, delay: float, fault: Fault | None
    ) -> bool:
        """Send the answer; True if it was delivered whole (not cut or garbled)."""
        kind, frac = (fault.kind, fault.fraction) if fault else (None, 0.0)
        payload = orjson.dumps(message)
        if delay:
            await asyncio.sleep(delay)
        cut = 1 + int(frac * (len(payload) - 2))
        headers = self._headers(req.key, req.rid)
        headers.append((b"content-type", b"application/json"))
        if kind == "bad_json":
            payload = payload[:cut]
        headers.append((b"content-length", str(len(payload)).encode()))
        await self._start(send, 200, headers)
        if kind == "cut":
            # Promise the whole body, deliver part, then return: the server drops the connection.
            await send({"type": "http.response.body", "body": payload[:cut], "more_body": True})
            return False
        await send({"type": "http.response.body", "body": payload})
        return kind is None

    async def _send_stream(
        self, send: Send, message: dict[str, Any], req: _Request, delay: float, fault: Fault | None
    ) -> bool:
        """Stream the answer as SSE, the latency spread over the events; True if delivered whole."""
        kind, frac = (fault.kind, fault.fraction) if fault else (None, 0.0)
        events = stream_events(message)
        if kind == "bad_json":
            events = [b'event: message_start\ndata: {"type": "message_start", "message": {"id": "\n\n']
        elif kind in ("cut", "stream_error"):
            # Keep message_start, never reach message_stop.
            events = events[: 1 + int(frac * (len(events) - 2))]
            if kind == "stream_error":
                error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                events.append(b"event: error\ndata: " + orjson.dumps(error) + b"\n\n")
        if delay:
            await asyncio.sleep(delay * 0.25)
        headers = self._headers(req.key, req.rid)
        headers += [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        await self._start(send, 200, headers)
        if delay:
            gap = delay * 0.75 / max(1, len(events) - 1)
            for i, event in enumerate(events):
                if i:
                    await asyncio.sleep(gap)
                await send({"type": "http.response.body", "body": event, "more_body": True})
        else:
            await send({"type": "http.response.body", "body": b"".join(events), "more_body": True})
        if kind == "cut":
            return False  # returning mid-body makes the server drop the connection
        await send({"type": "http.response.body", "body": b""})
        return kind is None


class _Request:
    """Per-request facts the cleanup and the log line need."""

    __slots__ = ("rid", "key", "status", "holds_point")

    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.key = ""
        self.status = 0
        self.holds_point = False


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def create_app(config: SimConfig | None = None, **options: Any) -> SimApp:
    """A simulator app from a config or keyword options (``rpm=5, latency=0, ...``)."""
    return SimApp(config if config is not None else SimConfig(**options))
