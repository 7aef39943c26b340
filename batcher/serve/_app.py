"""The server's routes: Message Batches API, pass-through, token check, errors.

Every answer carries a ``request-id``; every error is in Anthropic's format
with that id. Handlers only translate: the store work is
:mod:`batcher.apibatches` (in a worker thread), the sending is the fleet's.
"""

from __future__ import annotations

import hmac
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batcher import apibatches
from batcher.apibatches import ApiBatch
from batcher.errors import BatcherError
from batcher.export import export_chunks
from batcher.fleet import Fleet
from batcher.manage import delete_batch

from . import _gateway
from ._wire import (MAX_BODY, ApiError, error_body, invalid, message_batch, new_request_id, not_found, page_body,
                    page_query, parse_create, processing_status)

#: ``log(batch_id, what)``: one line per batch event (``None``: a server event).
Log = Callable[[str | None, str], None]


def _error(status: int, error_type: str, message: str, request_id: str) -> JSONResponse:
    return JSONResponse(error_body(error_type, message, request_id), status_code=status)


class TokenGuard:
    """Refuses requests without the server's token; gives every answer a request-id.

    The token comes as ``x-api-key`` or ``Authorization: Bearer`` (what the
    official SDKs send); compared in constant time.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name == b"request-id" for name, _ in headers):
                    headers.append((b"request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        how, given = self._given(scope["headers"])
        if given is None or not hmac.compare_digest(given, self._token):
            why = "x-api-key header is required" if given is None else f"invalid {how}"
            await _error(401, "authentication_error", why, request_id)(scope, receive, send_with_id)
            return
        await self.app(scope, receive, send_with_id)

    @staticmethod
    def _given(headers: list[tuple[bytes, bytes]]) -> tuple[str, bytes | None]:
        """How the token came (for the refusal's wording) and the token; an empty header counts as none."""
        key = bearer = None
        for name, value in headers:
            if name == b"x-api-key" and value.strip():
                key = value.strip()
            elif name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer" and token.strip():
                    bearer = token.strip()
        return ("x-api-key", key) if key is not None or bearer is None else ("bearer token", bearer)


class ContainErrors:
    """Any other failure of a route: one log line and a 500 in Anthropic's shape, never a traceback.

    Starlette's own handler of ``Exception`` answers too, but then raises the
    error again for the server to print, which also drops the connection.
    """

    def __init__(self, app: ASGIApp, log: Log) -> None:
        self.app, self.log = app, log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            self.log(None, f"internal error on {scope.get('method')} {scope.get('path')}: {type(exc).__name__}: {exc}")
            if not started:
                await _error(500, "api_error", "internal server error", scope["state"]["request_id"])(
                    scope, receive, send)


class BatchesApi:
    """The Message Batches API over one store and one fleet."""

    def __init__(self, engine: Engine, fleet: Fleet, expire_after_s: float, log: Log) -> None:
        self.engine, self.fleet, self.expire_after_s, self.log = engine, fleet, expire_after_s, log

    async def _get(self, batch_id: str) -> ApiBatch:
        found = await anyio.to_thread.run_sync(apibatches.get, self.engine, batch_id)
        if found is None:
            raise not_found(batch_id)
        return found

    async def create(self, request: Request) -> Response:
        raw = await _gateway.read_body(request, MAX_BODY, "a batch")
        requests = await anyio.to_thread.run_sync(parse_create, raw)
        # The SDK's beta batches (``client.beta.messages.batches``) name their betas in this
        # header; Anthropic applies them to every request of the batch, and so does this server.
        betas = request.headers.get("anthropic-beta", "").strip() or None
        batch = await anyio.to_thread.run_sync(apibatches.create, self.engine, requests, self.expire_after_s, betas)
        self.log(batch.name, f"created: {len(requests)} request(s)")
        self.fleet.submit(batch)
        return JSONResponse(message_batch(await self._get(batch.name), _base(request)))

    async def retrieve(self, request: Request) -> Response:
        return JSONResponse(message_batch(await self._get(request.path_params["batch_id"]), _base(request)))

    async def list(self, request: Request) -> Response:
        limit, after_id, before_id = page_query(request.query_params)
        found = await anyio.to_thread.run_sync(apibatches.page, self.engine, limit, after_id, before_id)
        if found is None:
            raise not_found(after_id or before_id or "")
        return JSONResponse(page_body(*found, _base(request)))

    async def cancel(self, request: Request) -> Response:
        batch = await self._get(request.path_params["batch_id"])
        if batch.ended_at is None and batch.cancel_requested_at is None:
            await self.fleet.cancel(batch.batch)
            batch = await self._get(batch.id)
        return JSONResponse(message_batch(batch, _base(request)))

    async def delete(self, request: Request) -> Response:
        batch = await self._get(request.path_params["batch_id"])
        if batch.ended_at is None:
            raise invalid(f"message batch {batch.id} is {processing_status(batch)}: only ended batches can be "
                          "deleted (cancel it first)")
        await anyio.to_thread.run_sync(delete_batch, self.engine, batch.batch)
        self.log(batch.id, "deleted")
        return JSONResponse({"id": batch.id, "type": "message_batch_deleted"})

    async def results(self, request: Request) -> Response:
        batch = await self._get(request.path_params["batch_id"])
        if batch.ended_at is None:
            raise invalid(f"message batch {batch.id} has not ended yet: results are ready once processing_status "
                          "is \"ended\"")
        return StreamingResponse(self._lines(batch), media_type="application/x-jsonl")

    async def _lines(self, batch: ApiBatch) -> AsyncIterator[bytes]:
        """Result lines in chunks, read from one snapshot: memory stays flat."""
        chunks = export_chunks(self.engine, batch.batch, "results")
        try:
            while (chunk := await anyio.to_thread.run_sync(next, chunks, None)) is not None:
                yield chunk[0]
        finally:
            await anyio.to_thread.run_sync(chunks.close)


def _base(request: Request) -> str:
    """This server's address as the client reached it, for results URLs."""
    return str(request.base_url).rstrip("/")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc.status, exc.error_type, exc.message, request.state.request_id)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "api_error")
    message = f"{request.method} {request.url.path}: " + ("no such endpoint" if exc.status_code == 404 else exc.detail)
    response = _error(exc.status_code, kind, message, request.state.request_id)
    response.headers.update(exc.headers or {})  # a 405's Allow
    return response


def _by_method(**endpoints: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """One route for a path that several methods serve: another method's 405 then allows them all."""
    async def endpoint(request: Request) -> Response:
        return await endpoints["GET" if request.method == "HEAD" else request.method](request)

    return endpoint


def create_app(engine: Engine, fleet: Fleet, token: str, expire_after_s: float, log: Log) -> ASGIApp:
    """The whole server as an ASGI app; its lifespan runs the fleet."""
    api = BatchesApi(engine, fleet, expire_after_s, log)

    async def messages(request: Request) -> Response:
        return await _gateway.forward(fleet, request, "/v1/messages")

    async def count_tokens(request: Request) -> Response:
        return await _gateway.forward(fleet, request, "/v1/messages/count_tokens")

    async def store_error(request: Request, exc: Exception) -> Response:
        log(None, f"store error: {exc}")
        return _error(500, "api_error", str(exc), request.state.request_id)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            await tasks.start(fleet.run)
            yield
            fleet.stop()

    batches = "/v1/messages/batches"
    routes = [
        Route(batches, _by_method(POST=api.create, GET=api.list), methods=["GET", "POST"]),
        Route(batches + "/{batch_id}", _by_method(GET=api.retrieve, DELETE=api.delete), methods=["GET", "DELETE"]),
        Route(batches + "/{batch_id}/cancel", api.cancel, methods=["POST"]),
        Route(batches + "/{batch_id}/results", api.results, methods=["GET"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
    ]
    handlers: dict[Any, Any] = {ApiError: _api_error, HTTPException: _http_error, BatcherError: store_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan,
                    middleware=[Middleware(ContainErrors, log=log)])
    app.router.redirect_slashes = False  # a wrong path is a 404 in Anthropic's shape, never a redirect
    return TokenGuard(app, token)
