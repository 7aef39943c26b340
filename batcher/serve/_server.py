"""Running the server: the token, the socket, uvicorn, a clean stop.

Ctrl-C or SIGTERM stops taking connections, stops every batch (requests in
flight get the grace period, unsent jobs go back to pending) and exits 0;
the batches resume when the server starts again. A second one stops at once:
requests in flight are given up, and sent again at the next start.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable

import uvicorn

from batcher.client import check_api_key, check_base_url, is_loopback
from batcher import Store
from batcher.db import display_name, resolve_url
from batcher.errors import OutputError, UsageError
from batcher.fleet import Fleet
from batcher.runconfig import RunConfig

from ._app import create_app

READY_PREFIX = "batcher serve: listening on "


@dataclass
class ServeOptions:
    """What ``batcher serve`` was told."""

    host: str = "127.0.0.1"
    port: int = 8787
    db: str | None = None
    rpm: float = 500.0
    base_url: str = "https://api.poe.com"
    token: str | None = None
    concurrency: int | None = None
    expire_after_s: float = 24 * 3600.0
    grace_s: float = 10.0


def log_event(batch_id: str | None, what: str) -> None:
    """One line on stderr per batch event (or server event, without a batch)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    subject = f"batch {batch_id} " if batch_id else ""
    print(f"{stamp} {subject}{what}", file=sys.stderr, flush=True)


def choose_token(options: ServeOptions) -> tuple[str, bool]:
    """The clients' token and whether it was made up here; refuses an open bind without one."""
    # Stripped as the clients' headers are, wherever it comes from.
    token = (options.token or "").strip() or os.environ.get("BATCHER_SERVE_TOKEN", "").strip() or None
    if token is not None:
        return token, False
    if not is_loopback(options.host):
        raise UsageError(f"--host {options.host} is not a loopback address: give clients' token with --token "
                         "(or BATCHER_SERVE_TOKEN) to listen there")
    return "bsk-" + secrets.token_urlsafe(24), True


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named so that asyncio sets TCP_NODELAY on every connection:
    # without it small answers wait for delayed ACKs (~40 ms each).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    return sock


class _Server(uvicorn.Server):
    """uvicorn, announcing itself once listening and stopping the batches first on a signal."""

    def __init__(self, config: uvicorn.Config, fleet: Fleet, on_ready: Callable[[], None], grace_s: float) -> None:
        super().__init__(config)
        self._fleet, self._on_ready, self._grace_s = fleet, on_ready, grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[None]] = set()  # kept referenced until they run
        #: Why announcing failed (stdout closed or full, its reader gone), raised once the server has stopped.
        self.announce_failed: OSError | OutputError | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started:
            try:
                self._on_ready()
            except (OSError, OutputError) as exc:
                # Raised through uvicorn, it printed a traceback and ended the resumed batches without grace:
                # stop as on Ctrl-C instead, and report it once stopped.
                self.announce_failed = exc
                self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first signal stops gracefully, saying for how long; the next one at once, as ``run``'s does."""
        first = not self.should_exit
        super().handle_exit(sig, frame)
        if first:
            print(f"batcher serve: stopping: requests in flight get up to {self._grace_s:g} s "
                  "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
            return
        # Not uvicorn's forced exit: it skips the app's shutdown, which ends the batches' runs
        # (and is quick once they stop at once); cut short, it leaves a traceback.
        self.force_exit = False
        print("batcher serve: stopping at once; requests in flight are sent again at the next start",
              file=sys.stderr, flush=True)
        if self._loop is not None:  # from a signal handler: hand the stop to a task of the loop
            self._loop.call_soon_threadsafe(self._start_stopping_now)

    def _start_stopping_now(self) -> None:
        task = asyncio.ensure_future(self._stop_now())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop_now(self) -> None:
        self._fleet.stop(0.0)  # in a task: the runners' deadlines need the loop's clock

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Batches stop claiming now, while open connections drain.
        self._fleet.stop()
        await super().shutdown(sockets=sockets)


def serve(options: ServeOptions, out: Any = None) -> None:
    """Run until Ctrl-C/SIGTERM. Raises UsageError (exit 2) for what the user can fix.

    Failing to print its address on ``out`` (stdout closed or full, its
    reader gone) stops the server as a Ctrl-C does, then raises that error.
    """
    out = out or sys.stdout
    if not os.environ.get("POE_API_KEY", "").strip():
        raise UsageError("no API key: set POE_API_KEY (the server's upstream key; clients use the server's token)")
    key = check_api_key(os.environ["POE_API_KEY"])
    base_url = check_base_url(options.base_url)
    token, generated = choose_token(options)
    engine = Store(options.db).engine
    config = RunConfig(rpm=options.rpm, concurrency=options.concurrency, base_url=base_url,
                       grace_s=options.grace_s, handle_signals=False)
    fleet = Fleet(engine, key, config, on_event=log_event)
    app = create_app(engine, fleet, token, options.expire_after_s, log_event)
    sock = _listen(options.host, options.port)
    host = f"[{options.host}]" if ":" in options.host else options.host
    url = f"http://{host}:{sock.getsockname()[1]}"

    def announce() -> None:
        store = display_name(resolve_url(options.db))
        print(f"{READY_PREFIX}{url} (store {store}, upstream {base_url}, {options.rpm:g} rpm)", file=out)
        print(f"ANTHROPIC_BASE_URL={url}", file=out)
        if generated:
            print(f"ANTHROPIC_API_KEY={token}", file=out)
        out.flush()

    uv_config = uvicorn.Config(app, lifespan="on", access_log=False, log_level="warning", server_header=False,
                               proxy_headers=False, timeout_graceful_shutdown=int(options.grace_s) + 1, backlog=2048)
    # uvicorn re-raises the signal that stopped it once done: both arrive as
    # KeyboardInterrupt and end here, quietly.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, signal.default_int_handler)
    server = _Server(uv_config, fleet, announce, options.grace_s)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if server.announce_failed is not None:
        raise server.announce_failed
