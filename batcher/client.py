"""The HTTP client: one attempt at one Messages API request.

Knows HTTP and the API's shapes, nothing of jobs or SQL. Every outcome, a
network failure included, comes back as an :class:`Attempt` value; only
programming errors raise. The API key lives in the client's headers and
nowhere else: never in an Attempt, an error message or a log line, even
when the server's reply quotes it (each spelling of it then reads
:data:`~batcher._keymask.KEY_MASK`).
"""

from __future__ import annotations

import ipaddress
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import anyio

# ``import httpx`` also loads httpx's own command-line client (click, rich,
# pygments) unless that module is known to be absent. batcher never uses it,
# and it was ~80 ms of every run's start.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
import httpx
import orjson

from . import __version__
from ._keymask import mask_key, masked_json
from .accumulate import StreamFailure
from .answer import INVALID_RESPONSE, answer_problem
from .apierror import make_error, parse_error
from .errors import UsageError, option
from .sse import read_stream

DEFAULT_BASE_URL = "https://api.poe.com"
ANTHROPIC_VERSION = "2023-06-01"
CONNECT_TIMEOUT_S = 10.0
#: The longest a streamed answer may take in all, whatever its pace (an hour:
#: a 64k-token answer at 30 tokens a second takes ~36 minutes).
STREAM_LIMIT_S = 3600.0


@dataclass(frozen=True, slots=True)
class RateInfo:
    """What the rate-limit headers of one answer said (None: absent)."""

    limit: int | None = None
    remaining: int | None = None
    reset_s: float | None = None
    retry_after_s: float | None = None
    should_retry: bool | None = None


@dataclass(slots=True)
class Attempt:
    """The outcome of one HTTP attempt.

    ``message`` is set on success; otherwise ``error`` holds an Anthropic-format
    error and ``error_type`` its type (``connection_error``, ``timeout_error``
    and ``invalid_response`` stand for failures with no API answer).
    """

    status_code: int | None
    latency_s: float
    message: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    error_type: str | None = None
    rate: RateInfo = field(default_factory=RateInfo)
    streamed: bool = False
    ttft_s: float | None = None
    #: A 200 whose body was no JSON at all: a sign-in page or a proxy's, not an API, is answering.
    not_json: bool = False

    @property
    def ok(self) -> bool:
        return self.message is not None


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _reset_seconds(value: str | None) -> float | None:
    """Seconds until a window's reset: a number of seconds, or an RFC 3339 time
    (Anthropic's spelling), read against this machine's clock."""
    seconds = _number(value)
    if seconds is not None or not value:
        return seconds
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def rate_info(headers: httpx.Headers) -> RateInfo:
    """Parse the rate-limit and retry headers leniently.

    The request window comes as ``x-ratelimit-*-requests`` (Poe, OpenAI) or
    as ``anthropic-ratelimit-requests-*`` (Anthropic and servers copying it);
    the first spelling present wins.
    """
    retry_after = _number(headers.get("retry-after-ms"))
    retry_after = retry_after / 1000 if retry_after is not None else _number(headers.get("retry-after"))
    should_retry = headers.get("x-should-retry")
    if "x-ratelimit-remaining-requests" in headers:
        limit, remaining, reset = (headers.get(f"x-ratelimit-{k}-requests") for k in ("limit", "remaining", "reset"))
    else:
        limit, remaining, reset = (headers.get(f"anthropic-ratelimit-requests-{k}")
                                   for k in ("limit", "remaining", "reset"))
    limit_n, remaining_n = _number(limit), _number(remaining)
    return RateInfo(
        limit=int(limit_n) if limit_n is not None else None,
        remaining=int(remaining_n) if remaining_n is not None else None,
        reset_s=_reset_seconds(reset),
        retry_after_s=retry_after,
        should_retry={"true": True, "false": False}.get((should_retry or "").strip().lower()),
    )


def check_base_url(base_url: str) -> str:
    """The base URL without a trailing slash; refuses to send a key in clear.

    The URL needs a host and, when it names one, a port in 1-65535. The key
    goes only over https, except to a loopback host (the simulator).
    """
    shown = base_url if len(base_url) <= 80 else base_url[:77] + "..."
    if any(ord(c) < 33 or ord(c) == 127 for c in base_url):
        raise UsageError(f"{option('base_url')} {shown!r} contains spaces or control characters")
    try:
        parts = urlsplit(base_url)
    except ValueError:  # an unclosed [ around an IPv6 host
        raise UsageError(f"{option('base_url')} {shown!r} is not an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{option('base_url')} {shown!r} is not an http(s) URL")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise UsageError(f"{option('base_url')} {shown!r} has no valid port (1-65535)")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise UsageError(f"{option('base_url')} {shown!r}: refusing to send the API key over plain http "
                         "to a host that is not this machine; use https")
    return base_url.rstrip("/")


#: Where the key is read when none is given.
KEY_VARIABLE = "POE_API_KEY"


def check_api_key(api_key: str, source: str = KEY_VARIABLE) -> str:
    """The key without surrounding whitespace, if it can be sent in a header at all.

    A key with a newline, a space or a non-ASCII character inside cannot be
    a Poe key, and sending it would only make every request fail with an
    error that quotes the header. ``source`` is where the key came from
    (``api_key`` when a caller passed it), for the message to name what to
    fix; the message never shows the key.
    """
    if not isinstance(api_key, str):
        raise UsageError(f"{source} must be a string, not {type(api_key).__name__} (the key is not shown here)")
    key = api_key.strip()
    if not key and source == KEY_VARIABLE:
        raise UsageError("no API key: set POE_API_KEY (export POE_API_KEY=your-key; "
                         "keys at https://poe.com/api_key)")
    if not key:
        raise UsageError(f"{source} is blank; give the key, or leave {source} out to read POE_API_KEY")
    if not all(33 <= ord(c) <= 126 for c in key):
        raise UsageError(f"{source} is malformed ({_key_flaw(key)}); "
                         "copy it again from https://poe.com/api_key (the key is not shown here)")
    return key


def _key_flaw(key: str) -> str:
    if any(c.isspace() for c in key):
        return "it has whitespace or a line break inside"
    if any(ord(c) > 127 for c in key):  # DEL (127) is ASCII, a control character
        return "it has characters that are not ASCII"
    return "it has control characters"


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address: traffic that never leaves this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MessagesClient:
    """A pooled HTTP client for ``POST /v1/messages``, sized to the concurrency."""

    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE_URL, *, concurrency: int = 100,
                 timeout_s: float = 600.0, stream_limit_s: float = STREAM_LIMIT_S, auth: str = "x-api-key",
                 betas: str | None = None) -> None:
        """``betas``: an ``anthropic-beta`` header sent with every request (a Message Batches API batch's)."""
        self._key = api_key = check_api_key(api_key)
        self.timeout_s, self.stream_limit_s = timeout_s, stream_limit_s
        headers = {
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
            "user-agent": f"batcher/{__version__} (+httpx {httpx.__version__})",
        }
        if betas:
            headers["anthropic-beta"] = betas
        if auth == "bearer":
            headers["authorization"] = f"Bearer {api_key}"
        else:
            headers["x-api-key"] = api_key
        # The pool matches the concurrency and waits for a free connection
        # without a deadline: the rate limiter, not httpx, decides the pace.
        self._http = httpx.AsyncClient(
            base_url=check_base_url(base_url),
            headers=headers,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s), pool=None),
            verify=True,
            trust_env=False,
        )

    async def __aenter__(self) -> MessagesClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, body: bytes | dict[str, Any], stream: bool = False) -> Attempt:
        """One attempt; never raises for network or API trouble.

        A non-streamed answer must be complete within ``timeout_s``, however
        slowly its bytes arrive; a stream may go quiet (pings aside) for at
        most ``timeout_s`` and may last ``stream_limit_s`` in all. Whatever
        the server said passes :func:`without_key` here, on its one way out.
        """
        return without_key(await self._attempt(body, stream), self._key)

    async def _attempt(self, body: bytes | dict[str, Any], stream: bool) -> Attempt:
        start = time.monotonic()
        if stream:
            payload = body if isinstance(body, dict) else orjson.loads(body)
            body = orjson.dumps({**payload, "stream": True})
        elif isinstance(body, dict):
            body = orjson.dumps(body)
        try:
            if stream:
                return await self._send_streaming(body, start)
            with anyio.move_on_after(self.timeout_s):
                response = await self._http.post("/v1/messages", content=body)
                return _from_response(response, response.content, start)
            why = f"no complete answer within {self.timeout_s:g} s ({option('timeout')})"
            return _network_failure("timeout_error", why, start, False)
        except httpx.TimeoutException as exc:
            return _network_failure("timeout_error", f"timed out ({type(exc).__name__})", start, stream)
        except httpx.HTTPError as exc:
            return _network_failure("connection_error", safe_error_text(exc, self._key), start, stream)

    async def forward(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """Send someone else's request body as it is, with this client's key.

        For a local gateway: ``headers`` may set ``anthropic-version``,
        ``anthropic-beta`` or ``accept`` (never the key). The answer comes
        back unread, to be relayed as it arrives; the caller closes it.
        Network failures raise :class:`httpx.HTTPError`.
        """
        request = self._http.build_request("POST", path, content=body, headers=headers)
        return await self._http.send(request, stream=True)

    async def _send_streaming(self, body: bytes, start: float) -> Attempt:
        first: list[float] = []
        idle = anyio.CancelScope(deadline=anyio.current_time() + self.timeout_s)

        def on_event(event: str) -> None:
            if event != "ping":  # a ping says the server lives, not that the answer moves
                idle.deadline = anyio.current_time() + self.timeout_s

        with anyio.move_on_after(self.stream_limit_s) as overall:
            with idle:
                async with self._http.stream("POST", "/v1/messages", content=body,
                                             headers={"accept": "text/event-stream"}) as response:
                    if response.status_code != 200 or _is_json(response):
                        # An error, or a server that answered the whole message at once.
                        return _from_response(response, await response.aread(), start, streamed=True)
                    rate = rate_info(response.headers)
                    try:
                        message = await read_stream(response, lambda: first.append(time.monotonic()), on_event)
                    except StreamFailure as exc:
                        return Attempt(200, time.monotonic() - start, error=make_error(
                            exc.error_type, exc.message, response.headers.get("request-id")),
                            error_type=exc.error_type, rate=rate, streamed=True)
                ttft = first[0] - start if first else None
                return _checked(message, response, time.monotonic() - start, rate, streamed=True, ttft_s=ttft)
        if overall.cancelled_caught:
            why = f"the stream went on for more than {self.stream_limit_s:g} s ({option('stream_limit')})"
        else:
            why = f"the stream sent nothing new for {self.timeout_s:g} s ({option('timeout')})"
        return _network_failure("timeout_error", why, start, True)


def safe_error_text(exc: BaseException, secret: str = "") -> str:
    """An httpx error as one line that cannot hold the key or another header value.

    A request that could not even be written (``LocalProtocolError``) names
    the offending header in its text, so only its kind is kept; other texts
    lose any spelling of ``secret`` (:func:`mask_key`) and are shortened.
    """
    name = type(exc).__name__
    if isinstance(exc, httpx.LocalProtocolError):
        return f"{name}: the request could not be written (a header value is not allowed)"
    text = " ".join(mask_key(str(exc), secret).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{name}: {text}" if text else name


def without_key(attempt: Attempt, key: str) -> Attempt:
    """``attempt`` with the key masked in all that came from the server's reply.

    The answer, the error object (its message, type and request id, a
    redirect's location inside it) and the error type: whatever the runner
    prints, stores or exports, a server that echoed the key (an error
    message quoting the header, a redirect to ``?key=...``) cannot put it
    there.
    """
    attempt.message = masked_json(attempt.message, key)
    attempt.error = masked_json(attempt.error, key)
    attempt.error_type = masked_json(attempt.error_type, key)
    return attempt


def _is_json(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


def _network_failure(error_type: str, message: str, start: float, streamed: bool) -> Attempt:
    return Attempt(None, time.monotonic() - start, error=make_error(error_type, message),
                   error_type=error_type, streamed=streamed)


def _checked(message: Any, response: httpx.Response, latency: float, rate: RateInfo, *, streamed: bool,
             ttft_s: float | None = None, problem: str | None = None) -> Attempt:
    """A success only if ``message`` has the shape of an answer, and no ``problem``; else ``invalid_response``."""
    problem = problem or answer_problem(message)
    if problem is None:
        return Attempt(200, latency, message=message, rate=rate, streamed=streamed, ttft_s=ttft_s)
    error = make_error(INVALID_RESPONSE, f"HTTP 200 but not a Messages API answer: {problem}",
                       response.headers.get("request-id"))
    return Attempt(200, latency, error=error, error_type=INVALID_RESPONSE, rate=rate, streamed=streamed)


def _from_response(response: httpx.Response, content: bytes, start: float, streamed: bool = False) -> Attempt:
    latency = time.monotonic() - start
    rate = rate_info(response.headers)
    if response.status_code == 200:
        try:
            message: Any = orjson.loads(content)
        except orjson.JSONDecodeError:  # a sign-in page, a proxy's: named by its type, not taken for a JSON string
            kind = response.headers.get("content-type") or "no content-type"
            page = _checked(None, response, latency, rate, streamed=streamed, problem=f"the body is not JSON ({kind})")
            page.not_json = True
            return page
        return _checked(message, response, latency, rate, streamed=streamed)
    error = parse_error(response.status_code, content, response.headers.get("request-id"))
    if 300 <= response.status_code < 400:
        error["error"]["message"] = redirect_message(response)
    return Attempt(response.status_code, latency, error=error, error_type=error["error"]["type"], rate=rate,
                   streamed=streamed)


def redirect_message(response: httpx.Response) -> str:
    """Where a redirect points, and the base URL that would reach it directly.

    Redirects are not followed: the key would travel along to wherever they
    point.
    """
    location = response.headers.get("location", "")
    if not location:
        return f"HTTP {response.status_code}: a redirect without a location; check {option('base_url')}"
    target = response.url.join(location)
    base = str(target.copy_with(query=None, fragment=None)).removesuffix("/v1/messages")
    return (f"HTTP {response.status_code}: the server redirects to {target}; batcher does not follow "
            f"redirects (the key would go along): use {option('base_url')} {base}")
