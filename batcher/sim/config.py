"""What the simulator can be told: one dataclass mirroring ``batcher simulate``'s flags."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from batcher.sim.faults import FaultPlan, parse_fail_status


def parse_latency(value: Any) -> tuple[float, float]:
    """``0``, ``0.2``, ``"0.1:0.4"`` or ``(0.1, 0.4)`` -> (min, max) seconds.

    Anything else is a ValueError that names the latency and the value
    given, as ``batcher simulate`` shows it (not Python's "could not convert").
    """
    try:
        if isinstance(value, str):
            parts = value.split(":")
            if len(parts) > 2:
                raise ValueError
            lo, hi = float(parts[0]), float(parts[-1])
        elif isinstance(value, (int, float)):
            lo = hi = float(value)
        else:
            lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"latency must be MIN:MAX seconds (e.g. 0.1:0.4), got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi < lo:
        raise ValueError(f"latency needs 0 <= MIN <= MAX, finite seconds, got {value!r}")
    return lo, hi


#: How the window is announced: Poe's spelling, Anthropic's, or not at all.
RATE_HEADERS = ("poe", "anthropic", "none")


@dataclass
class SimConfig:
    """Everything the simulator can be told; mirrors the ``simulate`` command's flags."""

    host: str = "127.0.0.1"
    port: int = 8788
    key: str | None = None  # None: accept any non-empty key
    rpm: int = 500
    window: float = 60.0
    latency: Any = (0.1, 0.4)  # normalised to (min, max) seconds
    seed: int | None = None
    fail_429: float = 0.0
    fail_500: float = 0.0
    fail_529: float = 0.0
    fail_cut: float = 0.0
    fail_stream_error: float = 0.0
    fail_status: Any = field(default_factory=dict)  # normalised to {status: probability}
    fail_html: float = 0.0
    fail_bad_json: float = 0.0
    fail_stall: float = 0.0
    stall_seconds: float = 30.0
    points: int | None = None
    retry_after: bool = True
    rate_headers: str = "poe"  # poe: x-ratelimit-*; anthropic: anthropic-ratelimit-* (RFC 3339 reset); none
    verbose: bool = False

    def __post_init__(self) -> None:
        self.latency = parse_latency(self.latency)
        self.fail_status = parse_fail_status(self.fail_status)
        if self.rate_headers not in RATE_HEADERS:
            raise ValueError(f"rate_headers must be one of {', '.join(RATE_HEADERS)}, got {self.rate_headers!r}")
        if self.rpm < 1 or self.window <= 0:
            raise ValueError("rpm must be >= 1 and window > 0")
        self.fault_plan()  # validates the probabilities

    def fault_plan(self) -> FaultPlan:
        return FaultPlan(
            self.seed,
            fail_429=self.fail_429,
            fail_500=self.fail_500,
            fail_529=self.fail_529,
            fail_status=self.fail_status,
            fail_html=self.fail_html,
            fail_bad_json=self.fail_bad_json,
            fail_stall=self.fail_stall,
            fail_cut=self.fail_cut,
            fail_stream_error=self.fail_stream_error,
        )

    def to_args(self) -> list[str]:
        """Command-line flags reproducing this configuration (for a subprocess)."""
        default = SimConfig()
        args: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value == getattr(default, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            if f.name == "latency":
                args += [flag, f"{value[0]}:{value[1]}"]
            elif f.name == "fail_status":
                for code, p in value.items():
                    args += [flag, f"{code}={p}"]
            elif f.name == "retry_after":
                args.append("--no-retry-after")
            elif f.name == "verbose":
                args.append(flag)
            elif value is not None:
                args += [flag, str(value)]
        return args
