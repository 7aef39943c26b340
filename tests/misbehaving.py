"""A Messages API server that misbehaves on purpose, over real HTTP on 127.0.0.1.

The first path segment picks the misbehaviour, so one server serves every
case: point ``--base-url`` at ``{base_url}/{mode}`` and batcher posts to
``/{mode}/v1/messages``. ``hits[mode]`` counts the requests each mode got.

Modes: ``ok`` (a proper answer), ``trickle`` (a proper answer, one byte
every 0.2 s), ``pings`` (a stream that only pings, forever), ``drip`` (a
stream whose text never ends), ``malformed-N`` (the N-th of
:data:`MALFORMED` as a 200), ``redirect`` (301 to ``/ok``), ``json``
(a plain JSON answer even to a streamed request).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any, AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from batcher.sim.server import _bind, _Server, _uvicorn_config

#: 200 bodies that are not answers batcher can use.
MALFORMED: list[Any] = [
    {"type": "message", "id": "m"},  # no content at all
    {"type": "message", "id": "m", "role": "assistant", "content": "text", "stop_reason": "end_turn",
     "usage": {"input_tokens": "lots", "output_tokens": 1}},
    {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
     "usage": {"input_tokens": -1, "output_tokens": 1}},
    {"type": "message", "role": "assistant", "content": [{"text": "no type"}], "stop_reason": "end_turn",
     "usage": {"input_tokens": 1, "output_tokens": 1}},
    [1, 2, 3],
]


def answer(text: str = "fine") -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4.5",
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 1}}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


def _opening() -> bytes:
    start = {**answer(), "content": [], "stop_reason": None}
    return (_event("message_start", {"message": start})
            + _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}))


class Misbehaving:
    """The server on a background thread; ``with Misbehaving() as bad: bad.url("pings")``."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.app = Starlette(routes=[Route("/{mode}/v1/messages", self._messages, methods=["POST"])])
        self.base_url = ""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def url(self, mode: str) -> str:
        return f"{self.base_url}/{mode}"

    async def _messages(self, request: Request) -> Response:
        mode = request.path_params["mode"]
        self.hits[mode] += 1
        await request.body()
        if mode == "ok" or mode == "json":
            return Response(orjson.dumps(answer()), media_type="application/json")
        if mode == "trickle":
            return StreamingResponse(self._trickle(orjson.dumps(answer())), media_type="application/json")
        if mode == "pings":
            return StreamingResponse(self._forever(_opening(), _event("ping", {})), media_type="text/event-stream")
        if mode == "drip":
            delta = _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "la "}})
            return StreamingResponse(self._forever(_opening(), delta), media_type="text/event-stream")
        if mode == "portal":  # a captive portal's page, under a 200
            return Response("<html><body>Sign in to continue</body></html>", media_type="text/html")
        if mode == "redirect":
            return RedirectResponse(f"{self.base_url}/ok/v1/messages", status_code=301)
        if mode.startswith("malformed-"):
            return Response(orjson.dumps(MALFORMED[int(mode.split("-")[1])]), media_type="application/json")
        return Response(status_code=500)

    @staticmethod
    async def _trickle(body: bytes) -> AsyncIterator[bytes]:
        for i in range(len(body)):
            yield body[i:i + 1]
            await asyncio.sleep(0.2)

    @staticmethod
    async def _forever(first: bytes, again: bytes) -> AsyncIterator[bytes]:
        yield first
        while True:
            await asyncio.sleep(0.1)
            yield again

    def start(self) -> Misbehaving:
        sock = _bind("127.0.0.1", 0)
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        ready = threading.Event()
        self._server = _Server(_uvicorn_config(self.app, graceful=0.1), on_ready=ready.set)  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            self.stop()
            raise RuntimeError("the misbehaving server did not start")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.force_exit = True
            self._server.wake()
        if self._thread is not None:
            self._thread.join(10)
        self._server = self._thread = None

    def __enter__(self) -> Misbehaving:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
