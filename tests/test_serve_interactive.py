"""``POST /v1/messages`` through a real ``batcher serve`` while the key's window is spent."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from batcher.sim import SimulatorThread
from servehelp import TOKEN, Served

BODY = {"model": "claude-haiku-4.5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}


# What the SDK sends for a call's own timeout, and for the client's (anthropic.Anthropic(timeout=...)).
@pytest.mark.parametrize("timeout", [{"x-stainless-timeout": "0.3"},
                                     {"x-stainless-timeout": "NOT_GIVEN", "x-stainless-read-timeout": "0.3"}])
def test_a_request_whose_client_gave_up_waiting_for_the_pace_is_never_sent(tmp_path: Path,
                                                                           timeout: dict[str, str]) -> None:
    # The SDK gives up after its timeout (and sends its retry); the request still went upstream once the
    # pace let it, paid for an answer no one read: one more for each retry.
    with SimulatorThread(latency=0, rpm=2, window=30) as sim:
        served = Served(tmp_path / "s.db", sim.base_url, "--rpm", "600").wait_ready()
        try:
            client = served.sdk()
            for _ in range(2):  # the window's two requests: the pace now waits for it to reset
                client.messages.create(**BODY)
            headers = {"x-api-key": TOKEN, "anthropic-version": "2023-06-01", **timeout}
            started = time.monotonic()
            answer = httpx.post(served.base_url + "/v1/messages", json=BODY, headers=headers, timeout=10)
            assert time.monotonic() - started < 5
            assert answer.status_code == 429 and answer.json()["error"]["type"] == "rate_limit_error"
            assert sim.stats()["requests"] == 2
        finally:
            served.stop()
