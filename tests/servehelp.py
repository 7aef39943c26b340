"""A real ``batcher serve`` in a subprocess, for tests and benchmarks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

READY = re.compile(r"listening on (http://\S+)")
KEY = "poe-serve-test-key"
TOKEN = "serve-test-token"


def clean_env(key: str | None = KEY, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POE_", "BATCHER_", "ANTHROPIC_"))}
    if key is not None:
        env["POE_API_KEY"] = key
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


class Served:
    """``python -m batcher serve`` against ``upstream``; ``base_url`` once it listens."""

    def __init__(self, db: Path, upstream: str, *args: str, token: str | None = TOKEN,
                 env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "batcher", "serve", "--port", "0", "--db", str(db), "--base-url", upstream, *args]
        if token is not None:
            argv += ["--token", token]
        self.token = token
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env if env is not None else clean_env(), bufsize=1)
        self.out: deque[str] = deque(maxlen=2000)
        self.err: deque[str] = deque(maxlen=2000)
        self.base_url = ""
        self.ready_after_s: float | None = None
        self._ready = threading.Event()
        self._drains = [threading.Thread(target=self._drain, args=(self.proc.stdout, self.out), daemon=True),
                        threading.Thread(target=self._drain, args=(self.proc.stderr, self.err), daemon=True)]
        for t in self._drains:
            t.start()

    def _drain(self, stream: Any, lines: deque[str]) -> None:
        for line in stream:
            lines.append(line)
            match = READY.search(line)
            if match and not self._ready.is_set():
                self.base_url = match.group(1)
                self.ready_after_s = time.monotonic() - self.started
                self._ready.set()

    def wait_ready(self, timeout: float = 30) -> Served:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.02):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("batcher serve did not start: " + self.stderr[-2000:])
        return self

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        for t in self._drains:
            t.join(5)
        return code

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.wait()

    def kill(self) -> None:
        """kill -9: no clean-up of any kind."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def sdk(self, token: str | None = None, **options: Any) -> Any:
        import anthropic

        return anthropic.Anthropic(api_key=token or self.token, base_url=self.base_url,
                                   **{"max_retries": 0, **options})
