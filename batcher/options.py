"""Option types every command shares: numbers that are usable, URLs that can be dialled.

click's FloatRange lets ``nan`` and ``inf`` through (no comparison with
them is ever false), and a port is only checked when a connection is
made. These types refuse such values while the command line is parsed, so
a mistake is one usage line (exit 2) before anything is opened or sent.
The ranges are the documented limits of each option.
"""

from __future__ import annotations

import math
from typing import Any

import click

from .validate import MAX_TOKENS_CAP

#: Requests in flight at most: far above what 500 rpm with minute-long
#: answers needs, and low enough that the workers fit in memory.
MAX_CONCURRENCY = 1000
#: The pace at most, in requests per minute.
MAX_RPM = 1_000_000.0
#: The pace at least: a request every 1,000 minutes. Slower is a typo (``--rpm 5e-7`` would send its
#: first request and the next some decades later), not a pace anyone waits for.
MIN_RPM = 0.001
#: Seconds: the longest --timeout, --grace or --stream-limit accepted (a day).
MAX_SECONDS = 86_400.0
MAX_ATTEMPTS = 100
MAX_PORT = 65_535
#: How the key is sent: Anthropic's ``x-api-key`` header, or ``Authorization: Bearer``.
AUTH_STYLES = ("x-api-key", "bearer")


class _Checked(click.ParamType):
    """A type of this module: its messages start with the value, after the option's name."""


def one_line(exc: click.BadParameter) -> str:
    """A bad option value as one line: ``--rpm 'nan' is not a finite number``.

    A value taken from the environment is named by its variable
    (``POE_BASE_URL 'ftp://x' is ...``): the user typed no such option.
    """
    param = exc.param
    if param is not None and isinstance(param.type, _Checked):
        name = max(param.opts, key=len) if param.opts else param.human_readable_name
        if (exc.ctx is not None and isinstance(param.envvar, str) and param.name is not None
                and exc.ctx.get_parameter_source(param.name) is click.core.ParameterSource.ENVIRONMENT):
            name = param.envvar
        return f"{name} {exc.message}"
    return exc.format_message()


#: Upper bounds from here on stand for "no limit" and are not shown to users.
UNBOUNDED = 10**12


class Number(_Checked):
    """A finite float or int within ``[low, high]`` (``low`` excluded when ``low_open``)."""

    def __init__(self, low: float, high: float, *, low_open: bool = False, integer: bool = False,
                 unit: str = "") -> None:
        self.low, self.high, self.low_open, self.integer, self.unit = low, high, low_open, integer, unit
        self.name = "integer" if integer else "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | int:
        number, problem = self.check(value)
        if problem is not None:
            self.fail(problem, param, ctx)
        return number

    def check(self, value: Any) -> tuple[Any, str | None]:
        """``(number, None)``, or ``(value, why it is refused)``; for callers without click too."""
        if isinstance(value, bool):
            return value, f"{_shown(value)} is not a number"
        number: float | int
        try:
            if self.integer:
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                number = value if isinstance(value, int) else int(str(value).strip(), 10)
            else:
                number = float(value)
        except (TypeError, ValueError, OverflowError):
            return value, f"{_shown(value)} is not {'a whole number' if self.integer else 'a number'}"
        if not math.isfinite(number):
            return value, f"{_shown(value)} is not a finite number"
        below = number <= self.low if self.low_open else number < self.low
        if below and self.high >= UNBOUNDED:
            # A bound of a quadrillion is no help to read: say only the low one.
            least = "above" if self.low_open else "at least"
            return value, f"{_shown(value)} is not {least} {_fmt(self.low)}{self._unit}"
        if below or number > self.high:
            return value, f"{_shown(value)} is not in {self.describe()}"
        return number, None

    def describe(self) -> str:
        bracket = "(" if self.low_open else "["
        return f"{bracket}{_fmt(self.low)}, {_fmt(self.high)}]{self._unit}"

    @property
    def _unit(self) -> str:
        return f" {self.unit}" if self.unit else ""

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"{'INTEGER' if self.integer else 'FLOAT'} {self.describe()}"


class Port(Number):
    """A TCP port; 0 asks the system for a free one."""

    def __init__(self) -> None:
        super().__init__(0, MAX_PORT, integer=True)


class BaseURL(_Checked):
    """An http(s) URL with a host and a valid port, as :func:`batcher.client.check_base_url` checks it."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from .client import check_base_url  # httpx loads only for the commands that send
        from .errors import UsageError

        try:
            check_base_url(str(value))
        except UsageError as exc:
            self.fail(str(exc).removeprefix("--base-url "), param, ctx)
        return str(value)


def _fmt(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"


def _shown(value: Any) -> str:
    text = repr(str(value))
    return text if len(text) <= 60 else text[:57] + "...'"


RPM = Number(MIN_RPM, MAX_RPM, unit="requests/minute")
CONCURRENCY = Number(1, MAX_CONCURRENCY, integer=True)
ATTEMPTS = Number(1, MAX_ATTEMPTS, integer=True)
SECONDS = Number(0, MAX_SECONDS, low_open=True, unit="s")
SECONDS_OR_ZERO = Number(0, MAX_SECONDS, unit="s")
PROBABILITY = Number(0, 1)
MAX_TOKENS = Number(1, MAX_TOKENS_CAP, integer=True)
HTTP_STATUS = Number(100, 599, integer=True)
#: --limit (jobs) and the token caps: whole numbers, from one to far beyond any batch.
COUNT = Number(1, 10**15, integer=True)
PORT = Port()
URL = BaseURL()


def checked(name: str, kind: Number, value: Any) -> Any:
    """``value`` as the number it stands for (``"500"``, numpy's int64), or a UsageError naming ``name``.

    For the Python API, which takes the same options as the command line.
    """
    from .errors import UsageError

    number, problem = kind.check(value)
    if problem is not None:  # "rpm: '0' is not in [0.001, 1000000] requests/minute"
        raise UsageError(f"{name}: {problem}")
    return number
