"""The ``simulate`` command: run the simulator from the command line.

Starlette/uvicorn are optional (the ``sim`` extra), so they are imported only
inside the command body; ``batcher --help`` works without them.
"""

from __future__ import annotations

from typing import Any

import click

from batcher import options as opt
from batcher._clikit import friendly
from batcher.errors import UsageError

_P = opt.PROBABILITY


EPILOG = """\b
Examples:
  batcher simulate                                  # http://127.0.0.1:8788, 500 rpm
  batcher simulate --rpm 250 --fail-500 0.05 --seed 1
  POE_API_KEY=any batcher run jobs.jsonl --base-url http://127.0.0.1:8788
"""


@click.command("simulate", epilog=EPILOG)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8788, show_default=True, type=opt.PORT, help="Port (0 picks a free one).")
@click.option("--key", default=None, help="The only API key accepted (default: any non-empty key).")
@click.option("--rpm", default=500, show_default=True, type=click.IntRange(min=1), help="Requests per window per key.")
@click.option("--window", default=60.0, show_default=True, type=opt.SECONDS,
              help="Sliding window length in seconds.")
@click.option("--latency", default="0.1:0.4", show_default=True, metavar="MIN:MAX",
              help="Answer latency in seconds, uniform in MIN..MAX (0 for none).")
@click.option("--seed", default=None, type=int, help="Make faults and latencies reproducible.")
@click.option("--fail-429", default=0.0, type=_P,
              help="Probability of an upstream 429 rate_limit_error: the request counts in the window, "
                   "whose headers still show the room left.")
@click.option("--fail-500", default=0.0, type=_P, help="Probability of a 500 api_error.")
@click.option("--fail-529", default=0.0, type=_P, help="Probability of a 529 overloaded_error.")
@click.option("--fail-cut", default=0.0, type=_P, help="Probability of dropping the connection mid-response.")
@click.option("--fail-stream-error", default=0.0, type=_P,
              help="Probability of an SSE error event mid-stream (stream requests only).")
@click.option("--fail-status", multiple=True, metavar="CODE=P",
              help="Probability P of answering HTTP CODE with its Anthropic error type (repeatable).")
@click.option("--fail-html", default=0.0, type=_P, help="Probability of a 502 with an HTML body, as a proxy sends.")
@click.option("--fail-bad-json", default=0.0, type=_P, help="Probability of a 200 whose body is not valid JSON.")
@click.option("--fail-stall", default=0.0, type=_P, help="Probability of waiting --stall-seconds before answering.")
@click.option("--stall-seconds", default=30.0, show_default=True, type=opt.SECONDS_OR_ZERO,
              help="How long a stalled request waits.")
@click.option("--points", default=None, type=click.IntRange(min=0),
              help="The key runs out of points after this many answers (then 402).")
@click.option("--no-retry-after", "no_retry_after", is_flag=True, help="Omit retry-after headers on 429.")
@click.option("--rate-headers", type=click.Choice(["poe", "anthropic", "none"]), default="poe", show_default=True,
              help="Announce the window as x-ratelimit-*-requests (poe), as anthropic-ratelimit-requests-* "
                   "with an RFC 3339 reset (anthropic), or not at all (none).")
@click.option("--verbose", is_flag=True, help="Log one line per request on stderr.")
@friendly  # here, not where the batcher command adds it: python -m batcher.sim speaks the same
def simulate(no_retry_after: bool, fail_status: tuple[str, ...], **options: Any) -> None:
    """Run a local imitation of Poe's Anthropic-compatible Messages API (no key needed).

    Point a client at http://HOST:PORT; GET /stats shows what it saw.
    """
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError("the simulator needs extra packages: pip install 'batcher[sim]'") from None
    from batcher.sim.config import SimConfig
    from batcher.sim.server import serve

    try:
        config = SimConfig(retry_after=not no_retry_after, fail_status=list(fail_status), **options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        serve(config)
    except OSError as exc:  # the port taken, an address not this machine's: a mistake, as for batcher serve
        raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
