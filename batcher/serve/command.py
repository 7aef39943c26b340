"""The ``serve`` command: options in, :func:`batcher.serve.serve` out.

Starlette/uvicorn are optional (the ``serve`` extra), so they are imported
only inside the command body; ``batcher --help`` works without them.
"""

from __future__ import annotations

import re
import sys

import click

from batcher import options as opt

EPILOG = """\b
Examples:
  export POE_API_KEY=...
  batcher serve                       # http://127.0.0.1:8787, prints the lines to paste
  ANTHROPIC_BASE_URL=http://127.0.0.1:8787 ANTHROPIC_API_KEY=<token> python my_batches.py
  batcher serve --host 0.0.0.0 --token "$(openssl rand -hex 16)"   # other machines: a token is required

\b
Exit codes: 0 stopped (Ctrl-C/SIGTERM), 2 usage error (no key, port taken, open bind without --token),
4 database error.
"""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


#: The longest ``--expire-after``: ten years. Far longer and a batch's ``expires_at`` would lie past the year
#: 9999, which no RFC 3339 time can say: every answer naming that batch would fail.
MAX_EXPIRE_AFTER_DAYS = 3650


class Duration(click.ParamType):
    """``90``, ``90s``, ``30m``, ``24h``, ``7d`` as seconds, up to ``max_days``."""

    name = "duration"

    def __init__(self, max_days: int) -> None:
        self.max_days = max_days

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            match = _DURATION.fullmatch(str(value).strip().lower())
            if match is None or float(match.group(1)) <= 0:
                self.fail(f"{value!r} is not a duration such as 90s, 30m, 24h or 7d", param, ctx)
            seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
        if seconds > self.max_days * 86400:
            self.fail(f"{value!r} is longer than {self.max_days}d, the longest allowed", param, ctx)
        return seconds


@click.command("serve", epilog=EPILOG)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8787, show_default=True, type=opt.PORT, help="Port (0 picks a free one).")
@click.option("--db", envvar="BATCHER_DB", metavar="PATH|URL",
              help="Job store: an SQLite file or a SQLAlchemy URL (env BATCHER_DB; default ./batcher.db).")
@click.option("--rpm", type=opt.RPM, default=500, show_default=True,
              help="Requests per minute allowed for the key, shared by every batch and client.")
@click.option("--base-url", envvar="POE_BASE_URL", type=opt.URL, default="https://api.poe.com", show_default=True,
              help="Upstream API (env POE_BASE_URL).")
@click.option("--token", help="The token clients must send (env BATCHER_SERVE_TOKEN; default: a random one, printed).")
@click.option("--concurrency", type=opt.CONCURRENCY,
              help="Requests in flight at most per batch (default: the rpm).")
@click.option("--expire-after", type=Duration(MAX_EXPIRE_AFTER_DAYS), default="24h", show_default=True,
              help=f"A batch not finished by then ends with its unsent requests expired (at most "
                   f"{MAX_EXPIRE_AFTER_DAYS}d).")
@click.option("--grace", type=opt.SECONDS_OR_ZERO, default=10, show_default=True,
              help="Seconds requests in flight get to finish when the server stops.")
def serve_command(host: str, port: int, db: str | None, rpm: float, base_url: str, token: str | None,
                  concurrency: int | None, expire_after: float, grace: float) -> None:
    """Serve Anthropic's Message Batches API and /v1/messages locally, over the Poe key.

    The official SDKs, Claude Code and scripts work unchanged against it and
    together stay within the key's limit, interactive requests ahead of batch
    jobs. Batches live in the job store: `batcher status` and `export` see them,
    and they resume when the server starts again. The key is read from POE_API_KEY
    and never shown to clients.
    """
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        click.echo("batcher: error: the server needs extra packages: pip install 'batcher[serve]'", err=True)
        sys.exit(2)
    from batcher.serve import ServeOptions, serve

    serve(ServeOptions(host=host, port=port, db=db, rpm=rpm, base_url=base_url, token=token,
                       concurrency=concurrency, expire_after_s=expire_after, grace_s=grace))
