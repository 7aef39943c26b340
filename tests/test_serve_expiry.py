"""A Message Batches API batch reaching its deadline in a real ``batcher serve``: what it sent still counts."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from misbehaving import Misbehaving
from servehelp import Served
from starlette.requests import Request
from starlette.responses import Response

PARAMS = {"model": "claude-haiku-4.5", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}


class Held(Misbehaving):
    """Answers every request, but only once :attr:`release` is set; :attr:`arrived` counts them as they come."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.arrived = 0

    async def _messages(self, request: Request) -> Response:
        self.arrived += 1
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        return await super()._messages(request)


def test_requests_in_flight_at_the_deadline_finish_and_count(tmp_path: Path) -> None:
    # Only unsent requests expire, as with a cancel. Cut off after --grace, a request sent (and paid for)
    # lost its answer and ended "expired".
    with Held() as upstream:
        served = Served(tmp_path / "s.db", upstream.url("ok"), "--rpm", "6000", "--expire-after", "0.5s",
                        "--grace", "0.05").wait_ready()
        try:
            client = served.sdk()
            made = client.messages.batches.create(requests=[{"custom_id": f"r{i}", "params": PARAMS}
                                                            for i in range(2)])
            time.sleep(max(0.0, made.expires_at.timestamp() - time.time()) + 0.2)  # past the deadline and grace
            sent = upstream.arrived  # both, unless the machine was too busy to send one in time
            upstream.release.set()
            assert sent >= 1
            deadline = time.monotonic() + 10
            while (batch := client.messages.batches.retrieve(made.id)).processing_status != "ended":
                assert time.monotonic() < deadline, batch.request_counts
                time.sleep(0.02)
            assert batch.request_counts.succeeded == sent and batch.request_counts.expired == 2 - sent
            kinds = [r.result.type for r in client.messages.batches.results(made.id)]
            assert kinds.count("succeeded") == sent and kinds.count("expired") == 2 - sent
        finally:
            upstream.release.set()
            served.stop()
