"""`batcher serve` end to end: the official SDK, unmodified, against a real server subprocess
that sends to a real simulator over HTTP, with a real SQLite store."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import anthropic
import httpx
import pytest

from batcher.db import open_store
from batcher.errors import UsageError
from batcher.serve import ServeOptions, serve
from batcher.sim import SimulatorThread
from batcher.status import verify
from batcher.store import find_batch
from misbehaving import Misbehaving
from servehelp import KEY, Served, clean_env
from starlette.requests import Request
from starlette.responses import Response

MODEL = "claude-haiku-4.5"


def request(custom_id: str, prompt: str | None = None, **params: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "params": {"model": MODEL, "max_tokens": 32,
                                               "messages": [{"role": "user", "content": prompt or custom_id}],
                                               **params}}


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.processing_status}: {batch.request_counts}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(latency=0, rpm=100_000) as handle:
        yield handle


@pytest.fixture(scope="module")
def server(sim: SimulatorThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("serve") / "store.db", sim.base_url, "--rpm", "6000").wait_ready()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def client(server: Served) -> anthropic.Anthropic:
    return server.sdk()


# --- Message Batches ---------------------------------------------------------------------------


def test_create_retrieve_results(server: Served, client: anthropic.Anthropic) -> None:
    requests = [request(f"q{i}") for i in range(8)]
    requests.append(request("bad-model", model="no-such-model"))  # the API refuses it: errored, not a 400
    requests.append({"custom_id": "no-tokens", "params": {"model": MODEL,
                                                          "messages": [{"role": "user", "content": "hi"}]}})
    # Sent as given, whatever their fields hold (the run costs them for its budget without refusing them).
    requests.append(request("text-tokens", max_tokens="many"))
    requests.append(request("text-messages", messages="hi"))
    created = client.messages.batches.create(requests=requests)
    assert created.id.startswith("msgbatch_") and created.type == "message_batch"
    assert created.processing_status == "in_progress" and created.results_url is None
    assert created.request_counts.processing + created.request_counts.succeeded + created.request_counts.errored == 12
    assert created.expires_at.timestamp() - created.created_at.timestamp() == pytest.approx(24 * 3600, abs=1)

    ended = wait_ended(client, created.id)
    counts = ended.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.canceled, counts.expired) == (0, 8, 4, 0, 0)
    assert ended.ended_at is not None and ended.ended_at >= ended.created_at and ended.cancel_initiated_at is None
    assert ended.archived_at is None
    assert ended.results_url == f"{server.base_url}/v1/messages/batches/{created.id}/results"

    results = {r.custom_id: r for r in client.messages.batches.results(created.id)}
    assert set(results) == {r["custom_id"] for r in requests}
    for i in range(8):
        result = results[f"q{i}"].result
        assert isinstance(result, anthropic.types.messages.MessageBatchSucceededResult)
        assert result.message.content[0].text.startswith(f"Answer to: q{i}")
    bad = results["bad-model"].result
    assert isinstance(bad, anthropic.types.messages.MessageBatchErroredResult)
    assert bad.error.error.type == "invalid_request_error" and "model" in bad.error.error.message
    assert results["no-tokens"].result.type == "errored"
    for custom_id, field in (("text-tokens", "max_tokens"), ("text-messages", "messages")):
        refused = results[custom_id].result
        assert refused.type == "errored" and refused.error.error.message.startswith(field), refused

    # The batch is a batcher batch: the CLI sees it in the same store.
    db = server.proc.args[server.proc.args.index("--db") + 1]
    status = subprocess.run([sys.executable, "-m", "batcher", "status", created.id, "--db", db, "--json"],
                            capture_output=True, text=True, env=clean_env(), timeout=60)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["succeeded"] == 8
    # Each request is stored once (its input line), the body rebuilt from it
    # when sent; only the one a rebuild would refuse keeps its body as given.
    with sqlite3.connect(db) as conn:
        kept = dict(conn.execute("SELECT custom_id, body FROM jobs JOIN batches ON batches.id = jobs.batch_id "
                                 "WHERE batches.name = ?", (created.id,)).fetchall())
    assert {cid for cid, body in kept.items() if body} == {"no-tokens", "text-tokens", "text-messages"}
    given = {r["custom_id"]: r["params"] for r in requests}
    assert all(json.loads(kept[cid]) == given[cid] for cid in ("no-tokens", "text-tokens", "text-messages"))


def test_results_lines_are_plain_jsonl(server: Served, client: anthropic.Anthropic) -> None:
    batch = wait_ended(client, client.messages.batches.create(requests=[request("a"), request("b")]).id)
    response = httpx.get(batch.results_url, headers={"authorization": f"Bearer {server.token}"})
    assert response.status_code == 200 and response.headers["request-id"].startswith("req_")
    lines = response.content.split(b"\n")
    assert lines[-1] == b"" and all(lines[:-1]) and len(lines) == 3
    assert [json.loads(line)["custom_id"] for line in lines[:-1]] == ["a", "b"]
    unauthenticated = httpx.get(batch.results_url)
    assert unauthenticated.status_code == 401


def test_list_pages_newest_first(client: anthropic.Anthropic) -> None:
    made = [client.messages.batches.create(requests=[request(f"p{i}")]).id for i in range(3)]
    first = client.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2]
    assert first.has_more and first.first_id == made[2] and first.last_id == made[1]
    everything = [b.id for b in client.messages.batches.list(limit=2)]  # auto-paging with after_id
    assert everything[:3] == made[::-1] and len(everything) == len(set(everything))
    newer = client.messages.batches.list(limit=1, before_id=made[0])
    assert [b.id for b in newer.data] == [made[1]] and newer.has_more
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.list(limit=1001)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.list(after_id="msgbatch_nope")


def test_cancel_mid_batch_then_delete(client: anthropic.Anthropic) -> None:
    # 1,500 requests at 6,000 rpm take 15 s: cancelled well before the end.
    created = client.messages.batches.create(requests=[request(f"c{i}") for i in range(1500)])
    time.sleep(0.5)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.batches.delete(created.id)
    assert "is in_progress" in refused.value.body["error"]["message"]
    canceling = client.messages.batches.cancel(created.id)
    assert canceling.processing_status in ("canceling", "ended") and canceling.cancel_initiated_at is not None
    ended = wait_ended(client, created.id)
    counts = ended.request_counts
    assert counts.canceled > 1000 and counts.succeeded > 0 and counts.processing == 0
    assert counts.succeeded + counts.canceled == 1500 and counts.errored == counts.expired == 0
    kinds = [r.result.type for r in client.messages.batches.results(created.id)]
    assert len(kinds) == 1500 and kinds.count("canceled") == counts.canceled
    assert client.messages.batches.cancel(created.id).processing_status == "ended"  # idempotent

    deleted = client.messages.batches.delete(created.id)
    assert deleted.id == created.id and deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(created.id)


def test_a_cancel_from_the_cli_cancels_an_api_batch_as_the_api_does(server: Served,
                                                                       client: anthropic.Anthropic) -> None:
    created = client.messages.batches.create(requests=[request(f"k{i}") for i in range(1500)])
    db = server.proc.args[server.proc.args.index("--db") + 1]
    done = subprocess.run([sys.executable, "-m", "batcher", "cancel", created.id, "--db", db],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ended = wait_ended(client, created.id)
    assert ended.cancel_initiated_at is not None and ended.request_counts.canceled > 1000


def test_structural_errors_create_nothing(client: anthropic.Anthropic) -> None:
    before = [b.id for b in client.messages.batches.list(limit=1000)]
    with pytest.raises(anthropic.BadRequestError) as dup:
        client.messages.batches.create(requests=[request("same"), request("other"), request("same")])
    error = dup.value.body
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "'same'" in error["error"]["message"] and error["request_id"].startswith("req_")
    for bad in ([], [{"custom_id": "has space", "params": {}}], [{"custom_id": "x", "params": []}], "nope"):
        with pytest.raises(anthropic.BadRequestError):
            client.messages.batches.create(requests=bad)  # type: ignore[arg-type]
    deep = json.loads("[" * 300 + "]" * 300)  # parses, but is nested deeper than JSON can be stored
    for bad, says in (({"requests": [request("x")], "foo": 1}, "foo: Extra inputs are not permitted"),
                      ({"requests": [{**request("x"), "bar": 2}]}, "requests.0.bar: Extra inputs are not permitted"),
                      ({"requests": [{"params": request("x")["params"]}]}, "requests.0.custom_id: Field required"),
                      ({"requests": [request("x", metadata=deep)]}, "requests.0.params: cannot be stored as JSON")):
        with httpx.Client(base_url=str(client.base_url), headers={"x-api-key": str(client.api_key)}) as http:
            refused = http.post("/v1/messages/batches", json=bad)
            assert refused.status_code == 400 and refused.json()["error"]["message"].startswith(says), refused.text
            assert http.get("/v1/messages/batches").status_code == 200  # the connection is still good
    assert [b.id for b in client.messages.batches.list(limit=1000)] == before
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.batches.retrieve("msgbatch_missing")
    assert missing.value.body["error"]["type"] == "not_found_error"


def test_wrong_token_is_401(server: Served) -> None:
    with pytest.raises(anthropic.AuthenticationError) as refused:
        server.sdk(token="not-the-token").messages.batches.list()
    assert refused.value.body["error"]["type"] == "authentication_error"
    assert refused.value.body["error"]["message"] == "invalid bearer token"  # how this SDK sends its key
    key = httpx.get(f"{server.base_url}/v1/messages/batches", headers={"x-api-key": "nope"})
    assert (key.status_code, key.json()["error"]["message"]) == (401, "invalid x-api-key")
    both = httpx.get(f"{server.base_url}/v1/messages/batches",
                     headers={"x-api-key": "", "authorization": f"Bearer {server.token}"})
    assert both.status_code == 200  # an empty x-api-key is no key
    assert KEY not in str(refused.value.body)
    assert KEY not in server.stdout + server.stderr
    with pytest.raises(anthropic.AuthenticationError):
        server.sdk(token="not-the-token").messages.create(model=MODEL, max_tokens=10,
                                                          messages=[{"role": "user", "content": "hi"}])


# --- pass-through --------------------------------------------------------------------------------


def test_messages_create_and_stream_pass_through(server: Served, client: anthropic.Anthropic) -> None:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 50,
                              "messages": [{"role": "user", "content": "Describe a quiet harbour at dawn"}]}
    plain = client.messages.create(**params)
    assert isinstance(plain, anthropic.types.Message) and plain.content[0].text.startswith("Answer to: Describe")
    with client.messages.stream(**params) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == plain.content[0].text and final.usage.output_tokens == plain.usage.output_tokens
    with pytest.raises(anthropic.BadRequestError) as refused:  # the upstream's own error, relayed
        client.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert "unknown model" in refused.value.body["error"]["message"]
    # The simulator has no count_tokens: its 404 comes back as it is.
    with pytest.raises(anthropic.NotFoundError) as absent:
        client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "/v1/messages/count_tokens" in absent.value.body["error"]["message"]


def test_a_stream_is_relayed_as_it_arrives(client: anthropic.Anthropic) -> None:
    # The simulator spreads this answer's events over 1.2 s (the first after 0.3 s).
    started = time.monotonic()
    with client.messages.stream(model=MODEL, max_tokens=60, messages=[
            {"role": "user", "content": "Tell me about rivers and seas #sim:sleep=1.2"}]) as stream:
        arrivals = [time.monotonic() - started for _ in stream.text_stream]
    assert len(arrivals) > 5 and arrivals[-1] >= 0.9
    assert arrivals[0] < arrivals[-1] - 0.4  # not held back until the end


def test_upstream_429s_are_retried_and_stream_errors_relayed(tmp_path: Path) -> None:
    # 40% of the upstream's answers are 429s (with retry-after); every stream that gets through breaks off.
    with SimulatorThread(latency=0, seed=3, fail_429=0.4, fail_stream_error=0.6) as sim:
        served = Served(tmp_path / "s.db", sim.base_url).wait_ready()
        try:
            client = served.sdk()  # max_retries=0: any 429 the client saw would raise
            for i in range(6):
                assert client.messages.create(model=MODEL, max_tokens=20,
                                              messages=[{"role": "user", "content": f"ask {i}"}]).content
            assert sim.stats()["status_429"] > 0
            with pytest.raises(anthropic.APIStatusError) as failed:
                with client.messages.stream(model=MODEL, max_tokens=50,
                                            messages=[{"role": "user", "content": "a long answer"}]) as s:
                    "".join(s.text_stream)
            assert failed.value.body["error"]["type"] == "overloaded_error"
        finally:
            served.stop()


def test_an_unreachable_upstream_is_an_anthropic_shaped_502(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    served = Served(tmp_path / "s.db", f"http://127.0.0.1:{port}").wait_ready()
    try:
        with pytest.raises(anthropic.APIStatusError) as failed:
            served.sdk().messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "hi"}])
        assert failed.value.status_code == 502
        error = failed.value.body["error"]
        assert error["type"] == "api_error" and error["message"].startswith("cannot reach the upstream API ("), error
        assert KEY not in json.dumps(failed.value.body)
    finally:
        served.stop()
    logged = "\n".join([*served.out, *served.err])
    assert "Traceback" not in logged and KEY not in logged, logged


# --- the process ----------------------------------------------------------------------------------


def test_a_second_signal_stops_the_server_at_once_as_it_does_a_run(tmp_path: Path) -> None:
    """The first says how long requests in flight get; the second does not wait them out."""
    with SimulatorThread(fail_stall=1.0, stall_seconds=120, rpm=100_000) as sim:
        served = Served(tmp_path / "store.db", sim.base_url, "--rpm", "6000", "--grace", "60").wait_ready()
        try:
            served.sdk().messages.batches.create(requests=[request(f"s{i}") for i in range(10)])
            deadline = time.monotonic() + 30
            while sim.stats()["requests"] < 10:  # every request stalls upstream
                assert time.monotonic() < deadline
                time.sleep(0.05)
            served.proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + 30
            while "stopping: requests in flight get up to 60 s (Ctrl-C again to stop at once)" not in served.stderr:
                assert time.monotonic() < deadline, served.stderr
                time.sleep(0.05)
            stopped_at = time.monotonic()
            served.proc.send_signal(signal.SIGINT)
            assert served.wait(30) == 0
            assert time.monotonic() - stopped_at < 15  # not the 60 s grace, nor the upstream's 120 s
        finally:
            served.kill()
    assert "stopping at once; requests in flight are sent again at the next start" in served.stderr
    assert "Traceback" not in served.stderr and "Exception" not in served.stderr, served.stderr


def test_kill_9_mid_batch_then_restart_answers_every_request_once(tmp_path: Path) -> None:
    n = 60
    with SimulatorThread(latency=0.05, rpm=100_000) as sim:
        db = tmp_path / "store.db"
        served = Served(db, sim.base_url, "--rpm", "1500").wait_ready()  # 25 a second: 2.4 s in all
        try:
            client = served.sdk()
            batch_id = client.messages.batches.create(requests=[request(f"k{i}") for i in range(n)]).id
            deadline = time.monotonic() + 30
            while client.messages.batches.retrieve(batch_id).request_counts.succeeded < 15:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            served.kill()
        sent_before = sim.stats()["succeeded"]
        assert sent_before < n

        again = Served(db, sim.base_url, "--rpm", "6000").wait_ready()
        try:
            client = again.sdk()
            ended = wait_ended(client, batch_id)
            assert ended.request_counts.succeeded == n
            ids = [r.custom_id for r in client.messages.batches.results(batch_id)]
        finally:
            assert again.stop(signal.SIGTERM) == 0
        reached = sim.stats()["succeeded"]
    assert "Traceback" not in again.stderr
    assert sorted(ids) == sorted(f"k{i}" for i in range(n))
    # Each request reached the API once, but for the few in flight at the kill.
    assert n <= reached <= n + 10
    assert "resumed" in again.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetchone() == (n,)
    assert_tally_agrees(db, batch_id)


def assert_tally_agrees(db: Path, batch_id: str) -> None:
    engine = open_store(str(db), create=False)
    try:
        assert verify(engine, find_batch(engine, batch_id)) == []
    finally:
        engine.dispose()


def test_a_batch_past_its_deadline_ends_with_the_rest_expired(tmp_path: Path, sim: SimulatorThread) -> None:
    db = tmp_path / "store.db"
    # No --token: a random one is printed once, ready to paste.
    served = Served(db, sim.base_url, "--rpm", "120", "--expire-after", "1s", token=None).wait_ready()  # 2 a second
    try:
        deadline = time.monotonic() + 10
        while "ANTHROPIC_API_KEY=" not in served.stdout:  # printed just after the ready line
            assert time.monotonic() < deadline, served.stdout
            time.sleep(0.02)
        lines = dict(line.split("=", 1) for line in served.stdout.splitlines() if "=" in line)
        assert lines["ANTHROPIC_BASE_URL"] == served.base_url
        token = lines["ANTHROPIC_API_KEY"].strip()
        assert served.stdout.count(token) == 1 and token not in served.stderr and KEY not in served.stdout
        client = served.sdk(token=token)
        created = client.messages.batches.create(requests=[request(f"e{i}") for i in range(20)])
        assert created.expires_at.timestamp() - created.created_at.timestamp() == pytest.approx(1, abs=0.01)
        ended = wait_ended(client, created.id, timeout=30)
        counts = ended.request_counts
        assert counts.expired >= 10 and counts.succeeded >= 1 and counts.succeeded + counts.expired == 20
        assert counts.canceled == counts.errored == counts.processing == 0 and ended.cancel_initiated_at is None
        kinds = [r.result.type for r in client.messages.batches.results(created.id)]
        assert kinds.count("expired") == counts.expired and kinds.count("succeeded") == counts.succeeded
    finally:
        served.stop()
    assert f"batch {created.id} expired: " in served.stderr and f"batch {created.id} ended: " in served.stderr
    assert_tally_agrees(db, created.id)


def test_refuses_an_open_bind_without_a_token_and_a_missing_key(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    open_bind = subprocess.run([sys.executable, "-m", "batcher", "serve", "--host", "0.0.0.0", "--port", "0",
                                "--db", str(tmp_path / "a.db")], capture_output=True, text=True,
                               env=clean_env(), timeout=60)
    assert open_bind.returncode == 2 and "--token" in open_bind.stderr
    assert open_bind.stderr.count("\n") == 1 and "Traceback" not in open_bind.stderr
    monkeypatch.delenv("POE_API_KEY", raising=False)
    with pytest.raises(UsageError, match="POE_API_KEY"):
        serve(ServeOptions(port=0, db=str(tmp_path / "b.db")))
    assert not (tmp_path / "b.db").exists()


# --- cancel, expiry and pauses -------------------------------------------------------------------


def wait_for(check: Any, timeout: float = 15, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.02)


def slow_requests(prefix: str, n: int, seconds: float) -> list[dict[str, Any]]:
    """Requests the simulator answers after ``seconds``."""
    return [request(f"{prefix}{i}", f"take your time #sim:sleep={seconds:g}") for i in range(n)]


def test_a_cancel_sends_nothing_more_not_even_after_a_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with SimulatorThread(latency=0, rpm=100_000) as sim:
        # 3 requests in flight (3 s each) and, at this rpm, 3 more claimed ahead of the workers.
        served = Served(db, sim.base_url, "--rpm", "6000", "--concurrency", "3").wait_ready()
        try:
            client = served.sdk()
            batch_id = client.messages.batches.create(requests=slow_requests("c", 6, 3)).id
            wait_for(lambda: sim.stats()["concurrency"] == 3, what="3 requests in flight")
            counts = client.messages.batches.cancel(batch_id).request_counts
        finally:
            served.kill()
        assert (counts.processing, counts.canceled) == (3, 3)  # the unsent ones at once, the rest in flight

        again = Served(db, sim.base_url).wait_ready()
        try:
            ended = wait_ended(again.sdk(), batch_id, timeout=10)
        finally:
            again.stop()
        assert sim.stats()["requests"] == 3  # nothing sent after the cancel, before the kill or after it
    assert ended.request_counts.canceled == 6 and ended.request_counts.succeeded == 0
    assert "resumed" not in again.stderr and "Traceback" not in again.stderr
    assert_tally_agrees(db, batch_id)


def test_an_expired_batch_sends_nothing_more_not_even_after_a_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with SimulatorThread(latency=0, rpm=100_000) as sim:
        served = Served(db, sim.base_url, "--rpm", "6000", "--concurrency", "3", "--expire-after", "1s").wait_ready()
        try:
            client = served.sdk()
            batch_id = client.messages.batches.create(requests=slow_requests("x", 6, 4)).id
            wait_for(lambda: client.messages.batches.retrieve(batch_id).request_counts.expired > 0, what="expiry")
            counts = client.messages.batches.retrieve(batch_id).request_counts
        finally:
            served.kill()
        assert (counts.processing, counts.expired) == (3, 3)  # the 3 claimed ahead, expired at once
        assert f"batch {batch_id} expired: 3 request(s) ended unanswered" in served.stderr

        again = Served(db, sim.base_url).wait_ready()
        try:
            ended = wait_ended(again.sdk(), batch_id, timeout=10)
        finally:
            again.stop()
        assert sim.stats()["requests"] == 3
    assert ended.request_counts.expired == 6 and ended.cancel_initiated_at is None
    assert f"batch {batch_id} expired: 3 request(s) ended unanswered" in again.stderr  # those in flight at the kill
    assert "resumed" not in again.stderr and "Traceback" not in again.stderr
    assert_tally_agrees(db, batch_id)


def test_canceling_a_paused_batch_ends_it_at_once(tmp_path: Path) -> None:
    with SimulatorThread(latency=0, key="not-the-server-key") as sim:  # refuses the server's key: the batch pauses
        served = Served(tmp_path / "store.db", sim.base_url).wait_ready()
        try:
            client = served.sdk()
            batch_id = client.messages.batches.create(requests=[request("p0"), request("p1")]).id
            wait_for(lambda: f"batch {batch_id} paused: " in served.stderr, what="the pause")
            client.messages.batches.cancel(batch_id)
            ended = wait_ended(client, batch_id, timeout=5)  # not after the pause's 60 s
            assert ended.request_counts.canceled == 2
            assert client.messages.batches.delete(batch_id).type == "message_batch_deleted"
        finally:
            served.stop()


def closed_port_url() -> str:
    import socket

    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_an_unreachable_upstream_pauses_even_a_one_request_batch(tmp_path: Path) -> None:
    served = Served(tmp_path / "store.db", closed_port_url()).wait_ready()
    try:
        client = served.sdk()
        batch_id = client.messages.batches.create(requests=[request("only")]).id
        wait_for(lambda: f"batch {batch_id} paused: " in served.stderr
                 or client.messages.batches.retrieve(batch_id).processing_status == "ended", timeout=25)
        batch = client.messages.batches.retrieve(batch_id)
        assert batch.processing_status == "in_progress" and batch.request_counts.processing == 1
        assert "cannot reach" in served.stderr
    finally:
        served.stop()


def test_the_token_is_stripped_like_the_headers(tmp_path: Path, sim: SimulatorThread) -> None:
    served = Served(tmp_path / "store.db", sim.base_url, token="spaced-token ").wait_ready()
    try:
        assert served.sdk(token="spaced-token").messages.batches.list().data == []
    finally:
        served.stop()


def test_a_wrong_method_is_an_anthropic_shaped_405_naming_those_allowed(server: Served) -> None:
    response = httpx.put(f"{server.base_url}/v1/messages/batches", headers={"x-api-key": server.token})
    assert response.status_code == 405 and response.json()["error"]["type"] == "invalid_request_error"
    assert set(response.headers["allow"].split(", ")) >= {"GET", "POST"}


def test_an_unforeseen_failure_is_a_500_and_one_line_not_a_traceback() -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from batcher.serve._app import ContainErrors

    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    logged: list[str] = []
    app = Starlette(routes=[Route("/x", broken)],
                    middleware=[Middleware(ContainErrors, log=lambda _batch, line: logged.append(line))])

    async def with_id(scope: Any, receive: Any, send: Any) -> None:
        scope.setdefault("state", {})["request_id"] = "req_1"
        await app(scope, receive, send)

    with TestClient(with_id) as http:  # raises here if the error got past the middleware
        response = http.get("/x")
    assert response.status_code == 500
    assert response.json()["error"] == {"type": "api_error", "message": "internal server error"}
    assert logged == ["internal error on GET /x: RuntimeError: a bug"]


def test_a_trailing_slash_is_an_anthropic_shaped_404(server: Served) -> None:
    response = httpx.get(f"{server.base_url}/v1/messages/batches/", headers={"x-api-key": server.token})
    assert response.status_code == 404 and "location" not in response.headers
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error", body


@pytest.mark.parametrize("upstream", [{"key": "not-the-server-key"}, {"points": 0}, {"fail_html": 1.0}],
                         ids=["key", "points", "html"])
def test_upstream_refusals_reach_pass_through_clients_in_anthropic_shape(tmp_path: Path,
                                                                         upstream: dict[str, Any]) -> None:
    with SimulatorThread(latency=0, **upstream) as sim:
        served = Served(tmp_path / "store.db", sim.base_url).wait_ready()
        try:
            with pytest.raises(anthropic.APIStatusError) as refused:
                served.sdk().messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
        finally:
            served.stop()
    error = refused.value
    # The client's token and account were fine.
    assert not isinstance(error, (anthropic.AuthenticationError, anthropic.PermissionDeniedError))
    assert error.status_code == 502 and error.response.headers["content-type"] == "application/json"
    assert error.body["type"] == "error" and error.body["error"]["type"] == "api_error", error.body
    if "key" in upstream:
        assert "refused the server's Poe key" in error.body["error"]["message"]
    elif "points" in upstream:
        assert "the server's Poe key is out of points" in error.body["error"]["message"]
    else:
        assert "<html>" not in error.response.text and "502 Bad Gateway" in error.body["error"]["message"]


def test_an_upstream_page_under_a_200_is_a_502_not_relayed_as_a_message(tmp_path: Path) -> None:
    with Misbehaving() as bad:
        served = Served(tmp_path / "store.db", bad.url("portal")).wait_ready()
        try:
            with pytest.raises(anthropic.APIStatusError) as refused:
                served.sdk().messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
        finally:
            served.stop()
    assert refused.value.status_code == 502 and refused.value.body["error"] == {
        "type": "api_error",
        "message": "the upstream API answered HTTP 200 with something that is not a JSON object "
                   "(text/html; charset=utf-8)"}


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak memory from /proc")
def test_a_body_too_big_is_refused_as_it_streams_in(tmp_path: Path, sim: SimulatorThread) -> None:
    def chunks() -> Iterator[bytes]:  # chunked: no content-length to refuse it by
        yield b'{"model": "' + MODEL.encode() + b'", "max_tokens": 5, "messages": [{"role": "user", "content": "'
        for _ in range(120):
            yield b"a" * 2**20

    served = Served(tmp_path / "store.db", sim.base_url).wait_ready()
    try:
        before = sim.stats()["requests"]
        peak_before = peak_rss_mb(served.proc.pid)
        response = httpx.post(f"{served.base_url}/v1/messages", content=chunks(), timeout=30,
                              headers={"x-api-key": served.token, "content-type": "application/json"})
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["type"] == "request_too_large" and "32 MB" in error["message"]
        assert peak_rss_mb(served.proc.pid) - peak_before < 80  # refused past 32 MB, not held to the end (120 MB)
        assert sim.stats()["requests"] == before
    finally:
        served.stop()


def test_an_ended_batch_cannot_be_reopened(server: Served, client: anthropic.Anthropic) -> None:
    from batcher import apibatches

    ended = wait_ended(client, client.messages.batches.create(requests=[request("r0")]).id)
    db = server.proc.args[server.proc.args.index("--db") + 1]
    engine = open_store(db, create=False)
    try:
        with pytest.raises(UsageError, match="an ended Message Batches API batch cannot be re-opened; create a new"):
            apibatches.refuse_reopen(engine, find_batch(engine, ended.id))
    finally:
        engine.dispose()


def test_retry_refuses_an_ended_api_batch_from_the_cli(server: Served, client: anthropic.Anthropic) -> None:
    # Put back to pending, its jobs would leave it "ended" with requests processing that no server sends.
    ended = wait_ended(client, client.messages.batches.create(requests=[request("r0")]).id)
    db = server.proc.args[server.proc.args.index("--db") + 1]
    done = subprocess.run([sys.executable, "-m", "batcher", "retry", ended.id, "--canceled", "--db", db],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("batcher: error: an ended Message Batches API batch cannot be re-opened; "
                                   "create a new batch")
    again = client.messages.batches.retrieve(ended.id)
    assert again.processing_status == "ended" and again.request_counts.processing == 0


class BetaRecorder(Misbehaving):
    """Answers every request, noting the ``anthropic-beta`` header each one came with."""

    def __init__(self) -> None:
        super().__init__()
        self.betas: list[str | None] = []

    async def _messages(self, request: Request) -> Response:
        self.betas.append(request.headers.get("anthropic-beta"))
        return await super()._messages(request)


def test_a_beta_batch_sends_its_betas_with_every_request(tmp_path: Path) -> None:
    # client.beta.messages.batches.create(betas=[...]): Anthropic applies them to each request of the
    # batch. They are kept with the batch in the store, so a restarted server sends them too.
    with BetaRecorder() as upstream:
        served = Served(tmp_path / "s.db", upstream.url("ok")).wait_ready()
        try:
            client = served.sdk()
            betas = ["context-1m-2025-08-07", "token-efficient-tools-2025-02-19"]
            made = client.beta.messages.batches.create(betas=betas, requests=[request(f"b{i}") for i in range(3)])
            ended = wait_ended(client, made.id)
            assert ended.request_counts.succeeded == 3
            plain = wait_ended(client, client.messages.batches.create(requests=[request("p0")]).id)
            assert plain.request_counts.succeeded == 1
        finally:
            served.stop()
    assert upstream.betas.count(",".join(betas)) == 3 and upstream.betas.count(None) == 1
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT betas FROM api_batches ORDER BY batch_id").fetchall() == [(",".join(betas),),
                                                                                              (None,)]
