"""The simulator over real HTTP: answers, streaming, auth, validation, the rate window, faults, stats, CLI."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner

from batcher.sim import SimConfig, SimulatorProcess
from batcher.sim.answers import split_chunks, stream_events, build_message
from batcher.sim.command import simulate

MODEL = "claude-haiku-4.5"
HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}


def body(prompt: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 256, "messages": [{"role": "user", "content": prompt}], **extra}


def client(sim: Any, timeout: float = 10) -> httpx.Client:
    # Plain http to localhost: verify=False skips building a TLS context (~60 ms a client).
    return httpx.Client(base_url=sim.base_url, headers=HEADERS, timeout=timeout, trust_env=False, verify=False)


def post(sim: Any, data: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10) -> httpx.Response:
    hdrs = dict(HEADERS if headers is None else headers)
    content = raw if raw is not None else orjson.dumps(data if data is not None else body())
    with httpx.Client(base_url=sim.base_url, timeout=timeout, trust_env=False, verify=False) as c:
        return c.post("/v1/messages", content=content, headers={"content-type": "application/json", **hdrs})


def events(text: str) -> list[tuple[str, Any]]:
    """Parse an SSE body into (event, data) pairs; data stays a string if it is not JSON."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "", ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        try:
            out.append((name, orjson.loads(data)))
        except orjson.JSONDecodeError:
            out.append((name, data))
    return out


def accumulate(evts: list[tuple[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {}
    for name, data in evts:
        if name == "message_start":
            message = data["message"]
        elif name == "content_block_start":
            message["content"].append(data["content_block"])
        elif name == "content_block_delta":
            message["content"][data["index"]]["text"] += data["delta"]["text"]
        elif name == "message_delta":
            message.update(data["delta"])
            message["usage"].update(data["usage"])
    return message


def error_of(resp: httpx.Response) -> dict[str, Any]:
    data = resp.json()
    assert data["type"] == "error" and data["request_id"] == resp.headers["request-id"]
    return data["error"]


# -- answers ---------------------------------------------------------------------------


def test_answer_shape_headers_and_determinism(simulator: Any) -> None:
    sim = simulator()
    prompt = "Tell me something about the long history of the river Thames and its bridges"
    resp = post(sim, body(prompt))
    assert resp.status_code == 200
    msg = resp.json()
    assert msg["id"].startswith("msg_") and msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["model"] == MODEL and msg["stop_reason"] == "end_turn" and msg["stop_sequence"] is None
    text = msg["content"][0]["text"]
    assert msg["content"][0]["type"] == "text" and text.startswith("Answer to: " + prompt[:60])
    assert prompt not in text  # only the first ~60 characters are echoed
    usage = msg["usage"]
    assert usage["input_tokens"] == (len(prompt) + 3) // 4
    assert usage["output_tokens"] == len(text.split())
    assert usage["cache_creation_input_tokens"] == 0 and usage["cache_read_input_tokens"] == 0
    h = resp.headers
    assert h["request-id"].startswith("req_") and h["content-type"] == "application/json"
    assert h["x-ratelimit-limit-requests"] == "500" and h["x-ratelimit-remaining-requests"] == "499"
    assert 59 < float(h["x-ratelimit-reset-requests"]) <= 60 and "." in h["x-ratelimit-reset-requests"]
    assert post(sim, body(prompt)).json() == msg  # same request, same answer
    other = post(sim, body("Something else entirely")).json()
    assert other["id"] != msg["id"] and other["content"][0]["text"].startswith("Answer to: Something else entirely")
    # Bearer auth and the model's Anthropic ID work as well.
    resp = post(sim, body(model="claude-3-5-haiku-20241022"),
                headers={"authorization": "Bearer k2", "anthropic-version": "2023-06-01"})
    assert resp.status_code == 200 and resp.json()["model"] == "claude-3-5-haiku-20241022"


def test_max_tokens_stop_sequences_and_input_tokens(simulator: Any) -> None:
    sim = simulator()
    msg = post(sim, body("alpha beta gamma delta", max_tokens=3)).json()
    assert msg["stop_reason"] == "max_tokens" and msg["stop_sequence"] is None
    assert msg["content"][0]["text"] == "Answer to: alpha" and msg["usage"]["output_tokens"] == 3
    msg = post(sim, body("alpha beta STOP gamma", stop_sequences=["nothing", "STOP", "gamma"])).json()
    assert msg["stop_reason"] == "stop_sequence" and msg["stop_sequence"] == "STOP"
    assert msg["content"][0]["text"] == "Answer to: alpha beta "
    data = body(system="x" * 40, messages=[
        {"role": "user", "content": [{"type": "text", "text": "y" * 20}]},
        {"role": "assistant", "content": "z" * 20},
        {"role": "user", "content": [{"type": "text", "text": "last one"}]},
    ])
    msg = post(sim, data).json()
    assert msg["usage"]["input_tokens"] == (40 + 20 + 20 + 8 + 3) // 4
    assert msg["content"][0]["text"].startswith("Answer to: last one")


def test_stream_accumulates_to_the_non_streamed_message(simulator: Any) -> None:
    sim = simulator()
    data = body("Stream me a story about a lighthouse keeper", max_tokens=12)
    plain = post(sim, data).json()
    resp = post(sim, {**data, "stream": True})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-ratelimit-remaining-requests"] == "498"
    evts = events(resp.text)
    names = [n for n, _ in evts]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert names.count("content_block_delta") >= 3 and all(d["type"] == n for n, d in evts)
    start = evts[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 1
    assert start["usage"]["input_tokens"] == plain["usage"]["input_tokens"]
    assert accumulate(evts) == plain
    assert plain["stop_reason"] == "max_tokens"


def test_helpers_split_and_events_join_back() -> None:
    for text in ["", "ab", "abc", "one two", "one two three four five six seven eight nine ten " * 5]:
        chunks = split_chunks(text)
        assert "".join(chunks) == text and (len(chunks) >= 3 or len(text) < 3)
    msg = build_message(body("hello"))
    assert accumulate(events(b"".join(stream_events(msg)).decode())) == msg


def test_latency_applies_and_directive_sleep_adds(simulator: Any) -> None:
    sim = simulator(latency="0.15:0.2")
    t = time.monotonic()
    assert post(sim).status_code == 200
    assert 0.15 <= time.monotonic() - t < 2
    t = time.monotonic()
    assert post(sim, body("slow #sim:sleep=0.2", stream=True)).status_code == 200
    assert 0.35 <= time.monotonic() - t < 2


# -- auth, headers, validation ------------------------------------------------------------


def test_auth_precedence_wrong_key_and_version(simulator: Any) -> None:
    sim = simulator(key="good")
    v = {"anthropic-version": "2023-06-01"}
    assert post(sim, headers={**v, "x-api-key": "good", "authorization": "Bearer bad"}).status_code == 200
    resp = post(sim, headers={**v, "x-api-key": "bad", "authorization": "Bearer good"})
    assert resp.status_code == 401 and error_of(resp)["type"] == "authentication_error"
    assert post(sim, headers={**v, "authorization": "Bearer good"}).status_code == 200
    for headers in ({**v}, {**v, "x-api-key": "nope"}, {**v, "authorization": "Basic good"}):
        resp = post(sim, headers=headers)
        assert resp.status_code == 401 and error_of(resp)["type"] == "authentication_error"
        assert resp.headers["x-ratelimit-limit-requests"] == "500"
    resp = post(sim, headers={"x-api-key": "good"})
    assert resp.status_code == 400 and "anthropic-version" in error_of(resp)["message"]
    assert error_of(resp)["type"] == "invalid_request_error"
    any_key = simulator()
    assert post(any_key, headers={**v, "x-api-key": "whatever"}).status_code == 200
    assert post(any_key, headers={**v, "x-api-key": ""}).status_code == 401


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": None}, "model"),
        ({"model": "gpt-4o"}, "model"),
        ({"model": 3}, "model"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages.0.content.0.type"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_validation_names_the_field(simulator: Any, change: dict[str, Any], field: str) -> None:
    sim = simulator.default
    data = {k: v for k, v in {**body(), **change}.items() if v is not None}
    resp = post(sim, data)
    err = error_of(resp)
    assert resp.status_code == 400 and err["type"] == "invalid_request_error"
    assert err["message"].startswith(field + ":")


def test_bad_bodies_paths_and_methods(simulator: Any) -> None:
    sim = simulator.default
    for raw in (b"{not json", b"[1, 2]", b""):
        resp = post(sim, raw=raw)
        assert resp.status_code == 400 and error_of(resp)["type"] == "invalid_request_error"
    with client(sim) as c:
        resp = c.post("/v1/nothing", json=body())
        assert resp.status_code == 404 and error_of(resp)["type"] == "not_found_error"
        resp = c.get("/v1/messages")
        assert resp.status_code == 405 and resp.headers["request-id"].startswith("req_")


# -- the sliding window ----------------------------------------------------------------


def test_sliding_window_admits_rpm_per_window(simulator: Any) -> None:
    sim = simulator(rpm=5, window=1)
    with client(sim) as c:
        first = c.post("/v1/messages", json=body())
        assert first.headers["x-ratelimit-remaining-requests"] == "4"
        time.sleep(0.3)
        remaining = [c.post("/v1/messages", json=body()).headers["x-ratelimit-remaining-requests"] for _ in range(4)]
        assert remaining == ["3", "2", "1", "0"]
        refused = c.post("/v1/messages", json=body())
        assert refused.status_code == 429 and error_of(refused)["type"] == "rate_limit_error"
        wait = float(refused.headers["retry-after"])
        assert 0.5 < wait <= 0.7 and refused.headers["retry-after-ms"] == str(round(wait * 1000))
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert abs(float(refused.headers["x-ratelimit-reset-requests"]) - wait) < 0.01
        assert c.post("/v1/messages", json=body()).status_code == 429  # refusals do not count...
        time.sleep(wait)
        assert c.post("/v1/messages", json=body()).status_code == 200  # ...so the oldest leaving frees one
        assert c.post("/v1/messages", json=body()).status_code == 429
        stats = sim.stats()
        assert stats["rate_limited"] == 3 and stats["status_429"] == 3 and stats["peak_window"] == 5
        assert stats["by_status"] == {"200": 6, "429": 3}
        # The window is per key.
        assert c.post("/v1/messages", json=body(), headers={"x-api-key": "other"}).status_code == 200


def test_no_retry_after_and_empty_window_reset(simulator: Any) -> None:
    sim = simulator(rpm=1, window=5, retry_after=False)
    resp = post(sim, headers={**HEADERS, "anthropic-version": ""})
    assert resp.status_code == 400 and resp.headers["x-ratelimit-reset-requests"] == "0"
    assert post(sim).status_code == 200
    resp = post(sim)
    assert resp.status_code == 429 and "retry-after" not in resp.headers and "retry-after-ms" not in resp.headers
    assert 4 < float(resp.headers["x-ratelimit-reset-requests"]) <= 5


# -- faults ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "status", "etype"),
    [
        ({"fail_429": 1}, 429, "rate_limit_error"),
        ({"fail_500": 1}, 500, "api_error"),
        ({"fail_529": 1}, 529, "overloaded_error"),
        ({"fail_status": {400: 1}}, 400, "invalid_request_error"),
        ({"fail_status": {402: 1}}, 402, "billing_error"),
        ({"fail_status": {403: 1}}, 403, "permission_error"),
        ({"fail_status": ["408=1"]}, 408, "timeout_error"),
        ({"fail_status": {409: 1}}, 409, "conflict_error"),
        ({"fail_status": {413: 1}}, 413, "request_too_large"),
        ({"fail_status": {502: 1}}, 502, "api_error"),
        ({"fail_status": {503: 1}}, 503, "api_error"),
        ({"fail_status": {504: 1}}, 504, "timeout_error"),
    ],
)
def test_error_faults(simulator: Any, options: dict[str, Any], status: int, etype: str) -> None:
    sim = simulator(**options)
    for stream in (False, True):
        resp = post(sim, body(stream=stream))
        assert resp.status_code == status and error_of(resp)["type"] == etype
        assert resp.headers["x-ratelimit-limit-requests"] == "500"
        assert ("retry-after" in resp.headers) == (status == 429)
    if status == 402:
        assert "points" in error_of(resp)["message"]
    assert sim.stats()["faults"] == {str(status): 2}


def test_html_and_bad_json_faults(simulator: Any) -> None:
    sim = simulator(fail_html=1)
    resp = post(sim)
    assert resp.status_code == 502 and resp.headers["content-type"].startswith("text/html")
    assert "<html>" in resp.text and "request-id" in resp.headers
    sim = simulator(fail_bad_json=1)
    for stream in (False, True):
        resp = post(sim, body(stream=stream))
        assert resp.status_code == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(resp.content if not stream else resp.text.split("data: ", 1)[1])


def test_cut_drops_the_connection_mid_body(simulator: Any) -> None:
    sim = simulator(fail_cut=1)
    with pytest.raises(httpx.RemoteProtocolError):
        post(sim)
    with client(sim) as c, pytest.raises(httpx.RemoteProtocolError):
        with c.stream("POST", "/v1/messages", json=body(stream=True)) as resp:
            assert resp.status_code == 200
            received = b""
            for chunk in resp.iter_bytes():
                received += chunk
    assert received.startswith(b"event: message_start") and b"message_stop" not in received
    assert sim.stats()["faults"] == {"cut": 2}


def test_stream_error_fault_only_hits_streams(simulator: Any) -> None:
    sim = simulator(fail_stream_error=1)
    resp = post(sim, body(stream=True))
    names = [n for n, _ in events(resp.text)]
    assert resp.status_code == 200 and names[0] == "message_start" and names[-1] == "error"
    assert "message_stop" not in names
    assert events(resp.text)[-1][1]["error"]["type"] == "overloaded_error"
    assert post(sim).status_code == 200  # a non-stream request is answered normally
    assert sim.stats()["faults"] == {"stream_error": 1}


def test_stall_fault_triggers_client_timeouts(simulator: Any) -> None:
    sim = simulator(fail_stall=1, stall_seconds=0.4)
    with pytest.raises(httpx.ReadTimeout):
        post(sim, timeout=0.1)
    t = time.monotonic()
    assert post(sim).status_code == 200 and time.monotonic() - t >= 0.4


def test_status_directive_and_points(simulator: Any) -> None:
    sim = simulator(points=2)
    for _ in range(2):
        resp = post(sim, body("please fail #sim:status=503"))
        assert resp.status_code == 503 and error_of(resp)["type"] == "api_error"
    resp = post(sim, body("#sim:status=429"))
    assert resp.status_code == 429 and "retry-after" in resp.headers
    assert post(sim).status_code == 200 and post(sim, body(stream=True)).status_code == 200
    for _ in range(2):
        resp = post(sim)
        assert resp.status_code == 402 and error_of(resp)["type"] == "billing_error"
        assert "points" in error_of(resp)["message"].lower()
    assert post(sim, headers={**HEADERS, "x-api-key": "another"}).status_code == 200  # points are per key


def statuses(sim: Any, bodies: list[dict[str, Any]], order: list[int]) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {i: [] for i in set(order)}
    with client(sim) as c:
        for i in order:
            seen[i].append(c.post("/v1/messages", json=bodies[i]).status_code)
    return seen


def test_faults_are_deterministic_under_seed_whatever_the_order(simulator: Any) -> None:
    bodies = [body(f"question {i}") for i in range(12)]
    forward = [i for i in range(12) for _ in range(3)]
    interleaved = list(range(12)) * 3
    sim = simulator(seed=42, fail_500=0.3, fail_529=0.2)
    first = statuses(sim, bodies, forward)
    assert {s for seq in first.values() for s in seq} == {200, 500, 529}
    sim.reset()  # forgets seen-body counts: the same sequence starts over
    assert statuses(sim, bodies, interleaved) == first
    assert statuses(simulator(seed=42, fail_500=0.3, fail_529=0.2), bodies, interleaved[::-1]) == first
    assert statuses(simulator(seed=43, fail_500=0.3, fail_529=0.2), bodies, forward) != first


# -- stats ---------------------------------------------------------------------------------


def test_stats_counts_concurrency_times_and_reset(simulator: Any) -> None:
    sim = simulator(rpm=100, window=2)
    before = time.monotonic()

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=sim.base_url, headers=HEADERS, trust_env=False, verify=False) as c:
            rs = await asyncio.gather(*(c.post("/v1/messages", json=body(f"q{i} #sim:sleep=0.3")) for i in range(6)))
        return [r.status_code for r in rs]

    assert asyncio.run(burst()) == [200] * 6
    post(sim, headers={"anthropic-version": "2023-06-01"})  # a 401
    after = time.monotonic()
    stats = sim.stats(times=True)
    assert stats["requests"] == 7 and stats["by_status"] == {"200": 6, "401": 1} and stats["succeeded"] == 6
    assert stats["peak_concurrency"] == 6 and stats["concurrency"] == 0 and stats["peak_window"] == 6
    assert stats["status_429"] == 0 and stats["output_tokens"] > 0 and stats["input_tokens"] > 0
    assert len(stats["arrivals"]) == 7 and len(stats["accepted"]) == 6
    assert all(before <= t <= after for t in stats["arrivals"]) and stats["arrivals"] == sorted(stats["arrivals"])
    assert "arrivals" not in sim.stats()
    sim.reset()
    stats = sim.stats(times=True)
    assert stats["requests"] == 0 and stats["by_status"] == {} and stats["arrivals"] == []
    assert stats["peak_window"] == 0 and stats["peak_concurrency"] == 0
    assert post(sim).headers["x-ratelimit-remaining-requests"] == "99"  # the window was emptied too


# -- configuration and command line -----------------------------------------------------


def test_config_normalises_and_round_trips_to_flags() -> None:
    cfg = SimConfig(latency="0.2:0.5", fail_status=["503=0.25"], seed=3, retry_after=False, port=0)
    assert cfg.latency == (0.2, 0.5) and cfg.fail_status == {503: 0.25}
    args = cfg.to_args()
    assert args == ["--port", "0", "--latency", "0.2:0.5", "--seed", "3", "--fail-status", "503=0.25",
                    "--no-retry-after"]
    assert SimConfig(latency=0).latency == (0.0, 0.0)
    for bad in ({"latency": "0.5:0.1"}, {"fail_500": 0.7, "fail_529": 0.5}, {"fail_status": ["99=0.1"]},
                {"fail_cut": 2}, {"rpm": 0}):
        with pytest.raises(ValueError):
            SimConfig(**bad)


def test_command_usage_errors_and_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    done = runner.invoke(simulate, ["--help"])
    assert done.exit_code == 0 and "--fail-status" in done.output and "--rpm" in done.output
    done = runner.invoke(simulate, ["--fail-500", "0.8", "--fail-529", "0.8"])
    assert done.exit_code == 2 and "more than 1" in done.output
    done = runner.invoke(simulate, ["--fail-status", "503"])
    assert done.exit_code == 2 and "CODE=P" in done.output
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the sim extra were not installed
    done = runner.invoke(simulate, [])
    assert done.exit_code == 2 and "pip install 'batcher[sim]'" in done.output
    assert len(done.output.strip().splitlines()) == 1


def test_a_port_in_use_is_one_error_line_exit_2_as_for_serve() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for command in (["-m", "batcher", "simulate"], ["-m", "batcher.sim"]):
            done = subprocess.run([sys.executable, *command, "--port", str(port)], capture_output=True, text=True,
                                  timeout=60)
            assert (done.returncode, done.stdout) == (2, ""), done.stderr
            assert done.stderr == f"batcher: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_subprocess_serves_and_stops_cleanly(sig: int) -> None:
    with SimulatorProcess(["--verbose", "--key", "secret-key-1234"], rpm=2, window=30, latency=0) as sim:
        assert sim.port > 0 and sim.base_url == f"http://127.0.0.1:{sim.port}"
        assert sim.output.startswith(f"batcher simulator listening on {sim.base_url} (rpm 2/30s)")
        auth = {**HEADERS, "x-api-key": "secret-key-1234"}
        assert post(sim, headers=auth).status_code == 200
        assert post(sim, body(stream=True), headers=auth).status_code == 200
        assert post(sim, headers=auth).status_code == 429
        assert post(sim).status_code == 401
        stats = sim.stats()
        assert stats["requests"] == 4 and stats["by_status"] == {"200": 2, "401": 1, "429": 1}
        code = sim.stop(sig)
    assert code == 0
    assert sim.proc is not None and sim.proc.stdout.closed and sim.proc.stderr.closed  # no ResourceWarning later
    assert "Traceback" not in sim.errors and "Error" not in sim.errors
    lines = sim.errors.splitlines()
    assert len(lines) == 4 and lines[0].startswith("POST /v1/messages 200 ")
    assert "secr...1234" in lines[0] and "secret-key-1234" not in sim.errors
