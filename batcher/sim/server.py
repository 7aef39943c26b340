"""Running the simulator under uvicorn: in the foreground, in a thread, or as a subprocess.

The thread handle is what tests use (fast to start, same process); the
subprocess handle exercises the real command line, signals included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from typing import Any, Callable, Sequence

import uvicorn

from batcher.sim.app import SimApp
from batcher.sim.config import SimConfig

READY_PREFIX = "batcher simulator listening on "
_READY = re.compile(r"listening on (http://\S+)")

# Messages uvicorn logs for what the simulator does on purpose (dropping a
# connection mid-body, requests cancelled at shutdown).
_EXPECTED = (
    "ASGI callable returned without completing response",
    "ASGI callable returned without starting response",
    "Cancel %s running task(s)",
)


class _QuietFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_EXPECTED):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


def _quiet_uvicorn() -> None:
    log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietFilter) for f in log.filters):
        log.addFilter(_QuietFilter())


def ready_line(base_url: str, config: SimConfig) -> str:
    """The line printed once the server accepts connections (subprocess users parse it)."""
    return f"{READY_PREFIX}{base_url} (rpm {config.rpm}/{config.window:g}s)"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say
    # so, and without it small responses wait ~40 ms for delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn.Server that reports readiness and can be woken to stop without polling."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await super().startup(sockets=sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()

    async def main_loop(self) -> None:
        # uvicorn polls should_exit every 0.1 s; waking on an event makes stops immediate.
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            try:
                await asyncio.wait_for(self._wake.wait(), 0.1)
            except asyncio.TimeoutError:
                pass

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if not self.force_exit:
            await super().shutdown(sockets=sockets)
            return
        # Forced stop (tests): no grace period, in-flight requests are cancelled.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        for task in list(self.server_state.tasks):
            task.cancel()
        await asyncio.sleep(0)

    def wake(self) -> None:
        """Ask the server to stop now, from any thread."""
        self.should_exit = True
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # loop already closed
                pass


def _uvicorn_config(app: SimApp, graceful: float) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=graceful,
        backlog=2048,
    )


def serve(config: SimConfig, *, out: Any = None) -> None:
    """Run in the foreground until SIGINT or SIGTERM; returns cleanly on either."""
    out = out or sys.stdout
    _quiet_uvicorn()
    # uvicorn re-raises the signal that stopped it once it is done; make both
    # signals arrive as KeyboardInterrupt (even if inherited as ignored) so
    # either ends here, quietly.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, signal.default_int_handler)
    try:
        sock = _bind(config.host, config.port)
        url = _url(config.host, sock.getsockname()[1])
        app = SimApp(config)

        def announce() -> None:
            print(ready_line(url, config), file=out, flush=True)

        server = _Server(_uvicorn_config(app, graceful=1.0), on_ready=announce)
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Client:
    """``stats()`` and ``reset()`` over HTTP, shared by both handles."""

    base_url: str

    def _call(self, method: str, path: str) -> Any:
        req = urllib.request.Request(self.base_url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self, times: bool = False) -> dict[str, Any]:
        """The server's ``GET /stats`` (with arrival times when ``times``)."""
        return self._call("GET", "/stats?times=1" if times else "/stats")

    def reset(self) -> None:
        """``POST /stats/reset``: zero counters, the rate window and seen-body counts."""
        self._call("POST", "/stats/reset")


class SimulatorThread(_Client):
    """The simulator on a background thread of this process (port 0 picks a free port)."""

    def __init__(self, config: SimConfig | None = None, **options: Any) -> None:
        options.setdefault("port", 0)
        self.config = config if config is not None else SimConfig(**options)
        self.app = SimApp(self.config)
        self.port = 0
        self.base_url = ""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> SimulatorThread:
        _quiet_uvicorn()
        sock = _bind(self.config.host, self.config.port)
        self.port = sock.getsockname()[1]
        self.base_url = _url(self.config.host, self.port)
        ready = threading.Event()
        self._server = _Server(_uvicorn_config(self.app, graceful=0.2), on_ready=ready.set)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"batcher-sim-{self.port}", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError("simulator did not start in time")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving; requests still in flight are cut off."""
        if self._server is not None:
            self._server.force_exit = True
            self._server.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> SimulatorThread:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(config: SimConfig | None = None, **options: Any) -> SimulatorThread:
    """Start a simulator on a background thread and return its running handle."""
    return SimulatorThread(config, **options).start()


class SimulatorProcess(_Client):
    """``python -m batcher.sim --port 0 ...`` as a child process; the port comes from its ready line."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        **options: Any,
    ) -> None:
        flags = SimConfig(**{"port": 0, **options}).to_args() if options else []
        if "--port" not in args and "--port" not in flags:
            flags += ["--port", "0"]
        self.argv = [python, "-m", "batcher.sim", *flags, *args]
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.port = 0
        self.stdout: deque[str] = deque(maxlen=1000)
        self.stderr: deque[str] = deque(maxlen=1000)
        self._ready = threading.Event()
        self._drains: list[threading.Thread] = []

    def start(self, timeout: float = 20.0) -> SimulatorProcess:
        env = dict(os.environ if self.env is None else self.env, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, bufsize=1
        )
        self._drains = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr, False), daemon=True),
        ]
        for t in self._drains:
            t.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.02):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("simulator process did not start: " + "".join(self.stderr)[-2000:])
        return self

    def _drain(self, stream: Any, lines: deque[str], watch: bool) -> None:
        with stream:  # read to its end (the process's), then closed: no pipe left to the collector
            for line in stream:
                lines.append(line)
                if watch and not self._ready.is_set():
                    m = _READY.search(line)
                    if m:
                        self.base_url = m.group(1)
                        self.port = int(self.base_url.rsplit(":", 1)[1])
                        self._ready.set()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> int | None:
        """Send ``sig`` (SIGINT by default), wait, kill if needed; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for t in self._drains:
            t.join(timeout)  # the pipes close with the process: collect the last lines
        return proc.returncode

    @property
    def output(self) -> str:
        return "".join(self.stdout)

    @property
    def errors(self) -> str:
        return "".join(self.stderr)

    def __enter__(self) -> SimulatorProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
