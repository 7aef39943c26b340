"""Property tests: any string as a numeric option's value.

``batcher run`` (parsed in this process with click's runner) either takes
the value and goes on (here, to the missing key: exit 2 with that line) or
refuses it with one line naming the option: never a traceback, never a
value that is not a finite number in the documented range.
"""

from __future__ import annotations

import math
from typing import Any

from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import strategies as st

from batcher import options as opt
from batcher.cli import main

#: option -> (low, high, low excluded, whole numbers only), as the README documents them.
RANGES = {
    "--rpm": (opt.MIN_RPM, opt.MAX_RPM, False, False),
    "--timeout": (0, opt.MAX_SECONDS, True, False),
    "--stream-limit": (0, opt.MAX_SECONDS, True, False),
    "--grace": (0, opt.MAX_SECONDS, False, False),
    "--concurrency": (1, opt.MAX_CONCURRENCY, False, True),
    "--max-attempts": (1, opt.MAX_ATTEMPTS, False, True),
    "--max-tokens": (1, 10_000_000, False, True),
    "--limit": (1, 10**15, False, True),
    "--max-output-tokens": (1, 10**15, False, True),
}

numberish = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-0", "0", "0.0", "1e-320", " 5 ", "5.",
                     "1_000", "0x10", "1000", "1001", "0.001", "0.00099", "1e-9", "86400", "86400.5", "65536",
                     "9" * 5000]),
    st.floats().map(repr),
    st.integers(-(10**20), 10**20).map(str),
)


def accepted(value: str, low: float, high: float, low_open: bool, integer: bool) -> bool:
    """An independent reading of what each option documents."""
    try:
        number = int(value.strip(), 10) if integer else float(value)
    except ValueError:
        return False
    if not math.isfinite(number):
        return False
    return (number > low if low_open else number >= low) and number <= high


@given(st.sampled_from(sorted(RANGES)), numberish)
@example("--rpm", "nan")
@example("--concurrency", "1000000000")
def test_numeric_options_take_a_usable_number_or_say_one_line(option: str, value: str) -> None:
    result = CliRunner().invoke(main, ["run", "some-batch", "--db", "/nonexistent/x.db", f"{option}={value}"],
                                env={"POE_API_KEY": "", "POE_BASE_URL": None, "BATCHER_DB": None})
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batcher: error: "), result.output
    if accepted(value, *RANGES[option]):
        assert "no API key" in lines[0], (option, value, lines)
    else:
        assert lines[0].startswith(f"batcher: error: {option} "), (option, value, lines)


def test_a_count_below_one_is_refused_without_an_unreadable_upper_bound() -> None:
    result = CliRunner().invoke(main, ["run", "b", "--db", "/nonexistent/x.db", "--limit", "0"],
                                env={"POE_API_KEY": "", "POE_BASE_URL": None, "BATCHER_DB": None})
    assert result.exit_code == 2 and result.output.strip() == "batcher: error: --limit '0' is not at least 1"


@given(st.text(max_size=30) | st.builds(lambda p: f"http://127.0.0.1:{p}", st.text(max_size=8)))
@example("http://127.0.0.1:99999")
@example("http://127.0.0.1:0")
def test_any_base_url_is_taken_or_refused_in_one_line(url: str) -> None:
    result = CliRunner().invoke(main, ["run", "b", "--db", "/nonexistent/x.db", f"--base-url={url}"],
                                env={"POE_API_KEY": "", "POE_BASE_URL": None, "BATCHER_DB": None})
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(("batcher: error: --base-url ", "batcher: error: no API key"))


def test_a_bad_value_from_the_environment_names_its_variable_not_the_option() -> None:
    env = {"POE_API_KEY": "", "POE_BASE_URL": "ftp://x", "BATCHER_DB": None}
    result = CliRunner().invoke(main, ["run", "b", "--db", "/nonexistent/x.db"], env=env)
    assert result.exit_code == 2
    assert result.output.strip() == "batcher: error: POE_BASE_URL 'ftp://x' is not an http(s) URL"
    given = CliRunner().invoke(main, ["run", "b", "--db", "/nonexistent/x.db", "--base-url", "ftp://y"], env=env)
    assert given.output.strip() == "batcher: error: --base-url 'ftp://y' is not an http(s) URL"
