"""A server that echoes the API key back never gets it printed, stored or exported.

The real ``batcher`` command runs in a subprocess against a real HTTP server
on 127.0.0.1 that quotes the key it was sent in everything it can: error
messages (plain and as a stream's error event), the ``request-id`` header,
a redirect's location (percent-encoded) and the text of an answer. Each
test then reads stderr, ``batcher status``, every export format and the raw
bytes of the store's files (the database and its write-ahead log).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator, Iterator
from urllib.parse import quote

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from batcher._keymask import KEY_MASK

from misbehaving import Misbehaving, _event, answer
from test_run_cli import assert_clean, cli, cli_each, query, run_args, write_jobs

#: A key with characters that change when percent-encoded, so that spelling is tested too.
KEY = "sk-poe-ECHO/7d1f+9a=c2"
NEEDLES = (KEY, quote(KEY, safe=""), "ECHO/7d1f", "ECHO%2F7d1f")
FORMATS = ("results", "text", "merged")


class Echoing(Misbehaving):
    """Quotes the key it was sent; the first path segment says where.

    ``status-N`` (an HTTP N error that quotes it, final: ``x-should-retry:
    false``), ``redirect`` (307 to a URL carrying it), ``stream-error`` (an
    SSE error event quoting it), ``answer`` (an answer whose text holds it,
    split over two deltas when streamed), ``plain`` (an answer without it).
    """

    async def _messages(self, request: Request) -> Response:
        mode = request.path_params["mode"]
        self.hits[mode] += 1
        body = orjson.loads(await request.body())
        key = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if mode.startswith("status-"):
            error = {"type": "error", "error": {"type": "api_error", "message": f"Bad request for key {key}"}}
            return Response(orjson.dumps(error), status_code=int(mode.split("-")[1]), media_type="application/json",
                            headers={"request-id": f"req-{key}", "x-should-retry": "false"})
        if mode == "redirect":
            return Response(status_code=307, headers={
                "location": f"{self.base_url}/plain/v1/messages?key={quote(key, safe='')}"})
        if mode == "stream-error":
            error = {"error": {"type": "invalid_request_error", "message": f"stream refused for {key}"}}
            return StreamingResponse(_events(_event("error", error)), media_type="text/event-stream",
                                     headers={"x-should-retry": "false"})
        text = f"your key is {key}." if mode == "answer" else "fine, thanks"
        if not body.get("stream"):
            return Response(orjson.dumps(answer(text)), media_type="application/json")
        start = {**answer(), "content": [], "stop_reason": None}
        half = len(text) // 2
        events = [_event("message_start", {"message": start}),
                  _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
                  *(_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": part}})
                    for part in (text[:half], text[half:])),
                  _event("content_block_stop", {"index": 0}),
                  _event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}),
                  _event("message_stop", {})]
        return StreamingResponse(_events(*events), media_type="text/event-stream")


async def _events(*events: bytes) -> AsyncIterator[bytes]:
    for event in events:
        yield event


@pytest.fixture(scope="module")
def echo() -> Iterator[Echoing]:
    with Echoing() as server:
        yield server


def assert_no_key(texts: list[str], store_dir: Path) -> None:
    """No spelling of the key in any of ``texts`` nor in any file of ``store_dir``."""
    for text in texts:
        for needle in NEEDLES:
            assert needle not in text, text
    files = [p for p in store_dir.iterdir() if p.is_file()]
    assert any(p.name == "store.db" for p in files), files
    for path in files:
        data = path.read_bytes()
        for needle in NEEDLES:
            assert needle.encode() not in data, path


def run(tmp_path: Path, batch: str, url: str, *extra: str) -> tuple[Any, Path]:
    jobs = tmp_path / f"{batch}.jsonl"
    write_jobs(jobs, ["hello"])
    db = tmp_path / "store" / "store.db"
    db.parent.mkdir(exist_ok=True)
    return cli(*run_args(jobs, db, url, "--max-attempts", "2", *extra), key=KEY), db


def shown(db: Path, batch: str) -> list[str]:
    """What ``status`` (as text and as JSON) and every export format show of ``batch``."""
    texts = []
    commands = (["status", batch], ["status", batch, "--json"],
                *(["export", batch, "--format", fmt, "-o", "-", "--include-pending"] for fmt in FORMATS))
    for done in cli_each(*([*args, "--db", str(db)] for args in commands), key=KEY):
        assert done.returncode == 0, done.stderr
        texts += [done.stdout, done.stderr]
    return texts


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("mode", "extra"), [("status-400", ["--no-stream"]), ("status-422", ["--no-stream"]),
                                             ("status-500", ["--auth", "bearer"]),
                                             ("stream-error", ["--stream"])])
def test_a_failure_that_quotes_the_key_is_stored_and_shown_masked(tmp_path: Path, echo: Echoing, mode: str,
                                                                    extra: list[str]) -> None:
    done, db = run(tmp_path, "b", echo.url(mode), *extra)
    assert done.returncode == 1, done.stderr
    assert_clean(done.stderr)
    texts = [done.stdout, done.stderr, *shown(db, "b")]
    (error,) = [json.loads(e)["error"] for (e,) in query(db, "SELECT error FROM jobs")]
    assert KEY_MASK in error["message"], error
    assert any(KEY_MASK in text for text in texts[2:4])  # status names the failure, masked
    assert_no_key(texts, db.parent)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("mode", "code", "says"), [
    ("status-401", 3, "refused the key"), ("status-403", 3, "refused the key"), ("status-402", 3, "out of points"),
    ("redirect", 2, "redirects to"), ("status-404", 2, "HTTP 404"),
])
def test_a_stop_that_quotes_the_key_says_why_without_it(tmp_path: Path, echo: Echoing, mode: str, code: int,
                                                        says: str) -> None:
    done, db = run(tmp_path, "b", echo.url(mode), "--no-stream")
    assert done.returncode == code, done.stderr
    assert_clean(done.stderr)
    assert says in done.stderr and KEY_MASK in done.stderr, done.stderr
    assert_no_key([done.stdout, done.stderr, *shown(db, "b")], db.parent)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_an_answer_is_kept_as_sent_unless_it_quotes_the_key(tmp_path: Path, echo: Echoing, stream: str) -> None:
    done, db = run(tmp_path, "quoting", echo.url("answer"), stream)
    assert done.returncode == 0, done.stderr
    done_plain, _ = run(tmp_path, "plain", echo.url("plain"), stream)
    assert done_plain.returncode == 0, done_plain.stderr
    stored = dict(query(db, "SELECT b.name, j.response FROM jobs j JOIN batches b ON b.id = j.batch_id"))
    assert json.loads(stored["quoting"])["content"][0]["text"] == f"your key is {KEY_MASK}."
    # An answer without the key is stored exactly as the server sent it.
    assert stored["plain"] == orjson.dumps(answer("fine, thanks")).decode()
    texts = [done.stdout, done.stderr, *shown(db, "quoting"), *shown(db, "plain")]
    assert "fine, thanks" in texts[-2]  # the last export's stdout
    assert_no_key(texts, db.parent)


@pytest.mark.timeout(90)
def test_serve_never_relays_the_key_to_its_clients(tmp_path: Path, echo: Echoing) -> None:
    """``/v1/messages`` passed through: a quoted key reaches the client masked, in a body, a header or a stream."""
    import anthropic

    from servehelp import Served, clean_env

    seen: list[str] = []
    for mode, stream in (("status-400", False), ("stream-error", True), ("answer", False), ("plain", False)):
        served = Served(tmp_path / f"{mode}.db", echo.url(mode), env=clean_env(key=KEY)).wait_ready()
        try:
            client = served.sdk()
            ask = dict(model="claude-haiku-4.5", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
            if mode == "answer" or mode == "plain":
                raw = client.messages.with_raw_response.create(**ask)
                seen += [raw.text(), json.dumps(dict(raw.headers))]
                expected = f"your key is {KEY_MASK}." if mode == "answer" else "fine, thanks"
                assert raw.parse().content[0].text == expected
            else:
                with pytest.raises(anthropic.APIStatusError) as failed:
                    if stream:
                        with client.messages.stream(**ask) as events:
                            "".join(events.text_stream)
                    else:
                        client.messages.create(**ask)
                seen += [json.dumps(failed.value.body), json.dumps(dict(failed.value.response.headers))]
                assert KEY_MASK in seen[-2], seen[-2]
        finally:
            served.stop()
        seen += [*served.out, *served.err]
    for text in seen:
        for needle in NEEDLES:
            assert needle not in text, text


def test_a_placeholder_key_leaves_answers_as_they_are() -> None:
    """A local server's key (``anything``, ``k``) is no secret: masking it would rewrite ordinary words."""
    from batcher.client import Attempt, without_key

    message = answer("I cannot do anything about it, ok?")
    for key in ("anything", "k"):
        attempt = without_key(Attempt(200, 0.1, message=json.loads(json.dumps(message))), key)
        assert orjson.dumps(attempt.message) == orjson.dumps(message)
    quoted = without_key(Attempt(200, 0.1, message=answer(f"the key {KEY} again")), KEY)
    assert quoted.message["content"][0]["text"] == f"the key {KEY_MASK} again"
    assert set(quoted.message) == set(message)  # the API's names stay, masked or not
