"""Fault decisions: which requests the simulator answers badly, and how.

Each decision hashes (seed, request body bytes, how often that body was seen
before), so under a fixed seed a request's sequence of faults and retries
does not depend on the order in which concurrent requests arrive.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Iterable, Mapping, NamedTuple

# Anthropic error type for each HTTP status the simulator can answer with.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

MESSAGES: dict[int, str] = {
    400: "Invalid request",
    401: "Invalid API key",
    402: "Insufficient points: your Poe account does not have enough points for this request",
    403: "Your API key does not have permission to use this model",
    404: "Not found",
    408: "Request timed out",
    409: "Conflict: the request could not be completed",
    413: "Request exceeds the maximum allowed size of 32 MB",
    429: "Rate limit exceeded",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Upstream request timed out",
    529: "Overloaded",
}

HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)

_STATUS_DIRECTIVE = re.compile(r"#sim:status=(\d{3})")
_SLEEP_DIRECTIVE = re.compile(r"#sim:sleep=(\d+(?:\.\d*)?|\.\d+)")


def error_type(status: int) -> str:
    """The Anthropic ``error.type`` for an HTTP status."""
    found = ERROR_TYPES.get(status)
    if found:
        return found
    return "api_error" if status >= 500 else "invalid_request_error"


def error_message(status: int) -> str:
    return MESSAGES.get(status, f"Simulated error {status}")


def directives(text: str) -> tuple[int | None, float]:
    """``#sim:status=NNN`` and ``#sim:sleep=S`` found in a prompt, for tests."""
    status = None
    if "#sim:" not in text:
        return None, 0.0
    m = _STATUS_DIRECTIVE.search(text)
    if m and 400 <= int(m.group(1)) <= 599:
        status = int(m.group(1))
    m = _SLEEP_DIRECTIVE.search(text)
    return status, float(m.group(1)) if m else 0.0


def parse_fail_status(value: Mapping[int, float] | Iterable[str] | None) -> dict[int, float]:
    """``{503: 0.1}`` or ``["503=0.1", ...]`` -> {status: probability}."""
    if not value:
        return {}
    if isinstance(value, Mapping):
        items = [(int(k), float(v)) for k, v in value.items()]
    else:
        items = []
        for item in value:
            code, sep, p = str(item).partition("=")
            try:
                if not sep:
                    raise ValueError
                items.append((int(code), float(p)))
            except ValueError:
                raise ValueError(f"fail-status must be CODE=P (e.g. 503=0.1), got {item!r}") from None
    for code, p in items:
        if not 400 <= code <= 599:
            raise ValueError(f"fail-status code must be 400..599, got {code}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"fail-status probability must be within 0..1, got {p}")
    return dict(items)


class Fault(NamedTuple):
    """One decided fault: its kind (stats name), status, and a fraction for placement."""

    kind: str  # "429", "503", ..., "html", "bad_json", "stall", "cut", "stream_error"
    status: int  # HTTP status sent (200 for cut, bad_json, stall, stream_error)
    fraction: float  # 0..1, e.g. where to cut a body


class FaultPlan:
    """Decides faults from configured probabilities, deterministically under a seed."""

    def __init__(
        self,
        seed: int | None = None,
        *,
        fail_429: float = 0.0,
        fail_500: float = 0.0,
        fail_529: float = 0.0,
        fail_status: Mapping[int, float] | None = None,
        fail_html: float = 0.0,
        fail_bad_json: float = 0.0,
        fail_stall: float = 0.0,
        fail_cut: float = 0.0,
        fail_stream_error: float = 0.0,
    ) -> None:
        seed = random.getrandbits(63) if seed is None else seed
        self._key = str(seed).encode()[:64]
        choices: list[tuple[float, str, int]] = [
            (fail_429, "429", 429),
            (fail_500, "500", 500),
            (fail_529, "529", 529),
        ]
        choices += [(p, str(code), code) for code, p in sorted((fail_status or {}).items())]
        choices += [
            (fail_html, "html", 502),
            (fail_bad_json, "bad_json", 200),
            (fail_stall, "stall", 200),
            (fail_cut, "cut", 200),
            (fail_stream_error, "stream_error", 200),
        ]
        self._ranges: list[tuple[float, str, int]] = []
        upper = 0.0
        for p, kind, status in choices:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"fault probability for {kind} must be within 0..1, got {p}")
            if p > 0:
                upper += p
                self._ranges.append((upper, kind, status))
        if upper > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities add up to {upper:g}, more than 1")
        self.active = bool(self._ranges)
        self._seen: dict[bytes, int] = {}

    def decide(self, raw: bytes, stream: bool) -> Fault | None:
        """The fault (if any) for this arrival of ``raw``; counts the arrival."""
        if not self.active:
            return None
        body_key = hashlib.blake2b(raw, digest_size=16).digest()
        n = self._seen.get(body_key, 0)
        self._seen[body_key] = n + 1
        h = hashlib.blake2b(body_key + n.to_bytes(8, "big"), key=self._key, digest_size=16).digest()
        r = int.from_bytes(h[:8], "big") / 2.0**64
        fraction = int.from_bytes(h[8:], "big") / 2.0**64
        for upper, kind, status in self._ranges:
            if r < upper:
                if kind == "stream_error" and not stream:
                    return None
                return Fault(kind, status, fraction)
        return None

    def reset(self) -> None:
        """Forget how often each body was seen."""
        self._seen.clear()
