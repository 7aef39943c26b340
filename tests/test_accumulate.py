"""Streamed answers folded into final messages, checked against the Anthropic SDK.

Recorded streams live in tests/data/streams/*.sse. For each, our accumulation
must equal the SDK's own (``anthropic.lib.streaming._messages.accumulate_event``)
on the same events, and must validate as a non-streamed ``anthropic.types.Message``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import anthropic
import httpx
import orjson
import pytest
from anthropic._models import construct_type
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent

from batcher.accumulate import MessageAccumulator, StreamFailure
from batcher.sse import read_stream

STREAMS = Path(__file__).parent / "data" / "streams"
FIXTURES = sorted(p.stem for p in STREAMS.glob("*.sse"))


# -- helpers ------------------------------------------------------------------


def sse_blocks(text: str) -> list[tuple[str, str]]:
    """(event name, raw data) pairs of an SSE text; comment-only blocks dropped."""
    out = []
    for block in text.split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if data:
            out.append((name, "\n".join(data)))
    return out


def load(name: str) -> list[tuple[str, dict[str, Any]]]:
    text = (STREAMS / f"{name}.sse").read_text(encoding="utf-8")
    return [(event, orjson.loads(data)) for event, data in sse_blocks(text)]


def ours(events: list[tuple[str, Any]]) -> dict[str, Any]:
    acc = MessageAccumulator()
    for event, data in events:
        acc.feed(event, data)
    assert acc.done
    return acc.message()


def sdk(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The SDK's accumulation, fed what its Stream would yield (it drops pings first)."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for event, data in events:
        if event == "ping":
            continue
        raw = construct_type(type_=RawMessageStreamEvent, value=data)
        snapshot = accumulate_event(event=raw, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    return snapshot.model_dump(mode="json", exclude_unset=True)


def without_sdk_additions(sdk_dump: dict[str, Any], mine: dict[str, Any]) -> dict[str, Any]:
    """Drop what the SDK adds on its own and nothing else.

    ``accumulate_event`` assigns ``stop_details = delta.stop_details`` on every
    message_delta, so the attribute counts as set (``None``) even when the
    stream never mentioned it; a non-streamed answer has it only if the server
    sent it. ``parsed_output`` and the per-block JSON buffers are SDK-internal
    too, but ``exclude_unset`` already keeps them out of the dump (the buffers
    are not even on the model), so they need no stripping.
    """
    out = dict(sdk_dump)
    if "stop_details" not in mine and out.get("stop_details", "absent") is None:
        del out["stop_details"]
    return out


# -- equality with the SDK on recorded streams --------------------------------


def test_fixtures_present() -> None:
    assert set(FIXTURES) >= {
        "text_deltas",
        "text_then_tool_use",
        "tool_use_no_deltas",
        "thinking_then_text",
        "citations",
        "usage_overwrite",
    }


@pytest.mark.parametrize("name", FIXTURES)
def test_matches_sdk_accumulation(name: str) -> None:
    events = load(name)
    mine = ours(events)
    theirs = sdk(events)
    assert set(theirs) - set(mine) <= {"stop_details"}
    assert without_sdk_additions(theirs, mine) == mine
    # Spell out the fields that matter, so a failure says which one differs.
    for key in ("id", "model", "content", "usage", "stop_reason", "stop_sequence"):
        assert mine[key] == theirs[key], key
    # Shaped as a non-streamed answer: same keys as message_start's message,
    # and valid as the SDK's (non-streaming) Message type.
    start = events[0][1]["message"]
    assert set(mine) == set(start)
    anthropic.types.Message.model_validate(mine)


def test_text_deltas() -> None:
    msg = ours(load("text_deltas"))
    assert msg["content"] == [{"type": "text", "text": "Hello, wörld — line one\nline two 🎉"}]
    assert msg["stop_reason"] == "end_turn" and msg["stop_sequence"] is None
    assert msg["usage"] == {
        "input_tokens": 656,
        "output_tokens": 15,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_tool_use_json_split_mid_string_and_mid_escape() -> None:
    msg = ours(load("text_then_tool_use"))
    assert msg["content"] == [
        {"type": "text", "text": "Let me check the weather."},
        {
            "type": "tool_use",
            "id": "toolu_01",
            "name": "get_weather",
            "input": {
                "city": "San Francisco",
                "note": 'café 😀 "quoted"',
                "days": [1, 2, 3],
                "metric": True,
            },
        },
    ]
    assert msg["stop_reason"] == "tool_use"


def test_tool_use_without_deltas_is_empty_object() -> None:
    msg = ours(load("tool_use_no_deltas"))
    assert [b["input"] for b in msg["content"]] == [{}, {}]
    # A tool block opened without an input at all still ends with one.
    events = [
        (e, d)
        if d.get("type") != "content_block_start"
        else (e, {**d, "content_block": {k: v for k, v in d["content_block"].items() if k != "input"}})
        for e, d in load("tool_use_no_deltas")
    ]
    assert [b["input"] for b in ours(events)["content"]] == [{}, {}]


def test_thinking_and_signature() -> None:
    msg = ours(load("thinking_then_text"))
    thinking, text = msg["content"]
    assert thinking == {
        "type": "thinking",
        "thinking": "The user asks for 27 * 453. 27 * 453 = 12231. Done.",
        "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds",
    }
    assert text == {"type": "text", "text": "27 * 453 = 12,231"}


def test_signature_delta_replaces() -> None:
    events = load("thinking_then_text")
    sig = ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "signature_delta", "signature": "second"}})
    stop0 = next(i for i, (_, d) in enumerate(events) if d["type"] == "content_block_stop")
    events.insert(stop0, sig)
    assert ours(events)["content"][0]["signature"] == "second"
    assert sdk(events)["content"][0]["signature"] == "second"


def test_citations_appended_and_created() -> None:
    msg = ours(load("citations"))
    first, cited, last = msg["content"]
    assert "citations" not in first
    assert cited["text"] == "the grass is green and the sky is blue"
    assert [c["cited_text"] for c in cited["citations"]] == ["The grass is green.", "The sky is blue."]
    assert last == {"type": "text", "text": ".", "citations": None}


def test_usage_overwritten_never_added() -> None:
    msg = ours(load("usage_overwrite"))
    assert msg["usage"] == {
        "input_tokens": 12,  # present in the later message_delta: overwrites
        "output_tokens": 20,  # cumulative: the last figure, not 1 + 7 + 20
        "cache_creation_input_tokens": 2048,  # null in message_delta: kept
        "cache_read_input_tokens": 9000,
        "service_tier": "standard",
        "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 0},
    }
    assert msg["stop_reason"] == "max_tokens"
    assert msg["x_future_field"] == {"kept": True}
    assert msg["content"] == [{"type": "text", "text": "Short"}]


def test_message_is_a_copy() -> None:
    acc = MessageAccumulator()
    for event, data in load("citations"):
        acc.feed(event, data)
    first = acc.message()
    first["content"][1]["citations"].clear()
    first["usage"]["output_tokens"] = 0
    assert acc.message() == ours(load("citations"))


def test_event_name_used_when_data_has_no_type() -> None:
    events = [(e, {k: v for k, v in d.items() if k != "type"}) for e, d in load("text_deltas")]
    assert ours(events) == ours(load("text_deltas"))


# -- skipping and failures ----------------------------------------------------


def test_ping_and_unknown_events_and_deltas_skipped() -> None:
    events = load("text_deltas")
    noisy = [events[0], ("ping", {"type": "ping"}), ("future", {"type": "future", "x": 1})]
    for event, data in events[1:]:
        noisy.append((event, data))
        if data["type"] == "content_block_delta":
            noisy.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "future_delta", "x": 2}}))
            noisy.append(("ping", {"type": "ping"}))
    assert ours(noisy) == ours(events)


def failure(events: list[tuple[str, Any]]) -> StreamFailure:
    acc = MessageAccumulator()
    with pytest.raises(StreamFailure) as info:
        for event, data in events:
            acc.feed(event, data)
        acc.message()
    return info.value


def head(name: str, upto: str) -> list[tuple[str, dict[str, Any]]]:
    """The events of a fixture up to and including the first one of type ``upto``."""
    events = load(name)
    end = next(i for i, (_, d) in enumerate(events) if d["type"] == upto)
    return events[: end + 1]


ERROR_EVENT = ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


def test_error_event_raises_its_type() -> None:
    exc = failure(head("text_deltas", "content_block_delta") + [ERROR_EVENT])
    assert (exc.error_type, exc.message) == ("overloaded_error", "Overloaded")
    # Even as the very first event, and even after message_stop.
    assert failure([ERROR_EVENT]).error_type == "overloaded_error"
    assert failure(load("text_deltas") + [ERROR_EVENT]).error_type == "overloaded_error"


def test_error_event_without_details_is_api_error() -> None:
    exc = failure([("error", {"type": "error"})])
    assert exc.error_type == "api_error"
    exc = failure([("error", {"error": {"message": "boom"}})])
    assert (exc.error_type, exc.message) == ("api_error", "boom")


@pytest.mark.parametrize("upto", ["message_start", "content_block_delta", "content_block_stop", "message_delta"])
def test_stream_ending_before_message_stop_is_incomplete(upto: str) -> None:
    acc = MessageAccumulator()
    for event, data in head("text_then_tool_use", upto):
        acc.feed(event, data)
    assert not acc.done
    with pytest.raises(StreamFailure) as info:
        acc.message()
    assert info.value.error_type == "incomplete_stream"


def test_empty_stream_is_incomplete() -> None:
    with pytest.raises(StreamFailure) as info:
        MessageAccumulator().message()
    assert info.value.error_type == "incomplete_stream"


def _delta(index: int, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


TEXT = {"type": "text_delta", "text": "x"}

MALFORMED = {
    "data is a list": lambda: head("text_deltas", "message_start") + [("content_block_start", [1, 2])],
    "data is a string": lambda: [("message_start", "hello")],
    "delta for a block never started": lambda: head("text_deltas", "message_start") + [_delta(3, TEXT)],
    "delta before message_start": lambda: [_delta(0, TEXT)],
    "block start before message_start": lambda: load("text_deltas")[1:],
    "event after message_stop": lambda: load("text_deltas") + [_delta(0, TEXT)],
    "ping after message_stop": lambda: load("text_deltas") + [("ping", {"type": "ping"})],
    "second message_start": lambda: head("text_deltas", "message_start") * 2,
    "delta after block stop": lambda: head("text_deltas", "content_block_stop") + [_delta(0, TEXT)],
    "block started twice": lambda: head("text_deltas", "content_block_start")
    + head("text_deltas", "content_block_start")[-1:],
    "index not an integer": lambda: head("text_deltas", "content_block_start")
    + [("content_block_delta", {"type": "content_block_delta", "index": "0", "delta": TEXT})],
    "text_delta without text": lambda: head("text_deltas", "content_block_start")
    + [_delta(0, {"type": "text_delta"})],
    "invalid tool JSON at block stop": lambda: head("text_then_tool_use", "content_block_start")[:-1]
    + [
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}),
        _delta(0, {"type": "input_json_delta", "partial_json": '{"a": '}),
        _delta(0, {"type": "input_json_delta", "partial_json": "tru}"}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_events(case: str) -> None:
    assert failure(MALFORMED[case]()).error_type == "malformed_event"


def test_failure_attributes() -> None:
    exc = StreamFailure("overloaded_error", "Overloaded")
    assert isinstance(exc, Exception)
    assert (exc.error_type, exc.message) == ("overloaded_error", "Overloaded")
    assert "overloaded_error" in str(exc)


# -- read_stream over real HTTP -----------------------------------------------

RELEASE = threading.Event()


def _sse_text(events: list[tuple[str, Any]]) -> bytes:
    return b"".join(
        f"event: {e}\ndata: ".encode() + orjson.dumps(d) + b"\n\n" for e, d in events
    )


class Handler(BaseHTTPRequestHandler):
    """Serves recorded and broken streams; framing is written by hand to control it."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def head(self, content_type: str = "text/event-stream", chunked: bool = False) -> None:
        lines = ["HTTP/1.1 200 OK", f"Content-Type: {content_type}", "Connection: close"]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def trickle(self, body: bytes, size: int = 7) -> None:
        for i in range(0, len(body), size):
            self.wfile.write(body[i : i + size])
            self.wfile.flush()

    def chunk(self, body: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
        self.wfile.flush()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.close_connection = True
        kind, _, name = self.path.strip("/").partition("/")
        try:
            self.serve(kind, name)
        except OSError:  # the client hung up first, as the timeout test intends
            pass

    def serve(self, kind: str, name: str) -> None:
        prefix = head("text_then_tool_use", "content_block_delta")
        until_first_delta = _sse_text(prefix)
        if kind == "fixture":  # close-delimited, split at arbitrary byte boundaries
            self.head()
            self.trickle((STREAMS / f"{name}.sse").read_bytes())
        elif kind == "chunked":  # proper chunked framing, one chunk per event
            self.head(chunked=True)
            for event, data in load(name):
                self.chunk(_sse_text([(event, data)]))
            self.wfile.write(b"0\r\n\r\n")
        elif kind == "cut":  # close-delimited body that simply stops
            self.head()
            self.trickle(until_first_delta)
        elif kind == "cut-chunked":  # connection closed inside chunked framing
            self.head(chunked=True)
            self.chunk(until_first_delta)
        elif kind == "stall":
            self.head()
            self.trickle(until_first_delta)
            RELEASE.wait(10)
            self.trickle(_sse_text(load("text_then_tool_use")[len(prefix) :]))
        elif kind == "error":
            self.head()
            self.trickle(until_first_delta + _sse_text([ERROR_EVENT]))
        elif kind == "not-json":
            self.head()
            self.trickle(_sse_text(head("text_deltas", "message_start")) + b"event: ping\ndata: {oops\n\n")
        elif kind == "json-body":
            self.head(content_type="application/json")
            self.wfile.write(orjson.dumps(ours(load("text_deltas"))))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RELEASE.clear()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        RELEASE.set()
        httpd.shutdown()
        httpd.server_close()


def fetch(url: str, read_timeout: float = 5.0) -> tuple[Any, int]:
    """read_stream's result (or the exception it raised) and how often on_first_token ran."""
    calls = []

    async def go() -> dict[str, Any]:
        timeout = httpx.Timeout(5.0, read=read_timeout)
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            async with client.stream("POST", url, json={"stream": True}) as response:
                assert response.status_code == 200
                return await read_stream(response, on_first_token=lambda: calls.append(1))

    try:
        result: Any = asyncio.run(go())
    except Exception as exc:  # noqa: BLE001 - the tests inspect it
        result = exc
    return result, len(calls)


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("framing", ["fixture", "chunked"])
def test_read_stream_recorded(server: str, framing: str, name: str) -> None:
    result, first_tokens = fetch(f"{server}/{framing}/{name}")
    assert result == ours(load(name))
    assert first_tokens == (1 if any(d["type"] == "content_block_delta" for _, d in load(name)) else 0)


def test_read_stream_cut_mid_stream_is_incomplete(server: str) -> None:
    result, first_tokens = fetch(f"{server}/cut/")
    assert isinstance(result, StreamFailure) and result.error_type == "incomplete_stream"
    assert first_tokens == 1


def test_read_stream_cut_inside_chunked_framing_propagates_httpx_error(server: str) -> None:
    result, _ = fetch(f"{server}/cut-chunked/")
    assert isinstance(result, httpx.RemoteProtocolError)


def test_read_stream_stall_raises_read_timeout(server: str) -> None:
    started = time.monotonic()
    result, first_tokens = fetch(f"{server}/stall/", read_timeout=0.3)
    assert isinstance(result, httpx.ReadTimeout)
    assert first_tokens == 1
    assert time.monotonic() - started < 5


def test_read_stream_error_event(server: str) -> None:
    result, first_tokens = fetch(f"{server}/error/")
    assert isinstance(result, StreamFailure)
    assert (result.error_type, result.message) == ("overloaded_error", "Overloaded")
    assert first_tokens == 1


def test_read_stream_data_not_json(server: str) -> None:
    result, first_tokens = fetch(f"{server}/not-json/")
    assert isinstance(result, StreamFailure) and result.error_type == "malformed_event"
    assert first_tokens == 0


def test_read_stream_not_an_event_stream(server: str) -> None:
    result, _ = fetch(f"{server}/json-body/")
    assert isinstance(result, StreamFailure) and result.error_type == "malformed_event"

