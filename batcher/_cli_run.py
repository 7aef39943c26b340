"""``batcher run`` and ``batcher estimate``: the commands that look at sending a batch.

Kept apart from :mod:`batcher.cli` only for size; like every command they
parse options, call the library and print.
"""

from __future__ import annotations

import json
import sys

import click

from . import options as opt
from ._clikit import EXIT_CODES, db_option, defaults_options, fail, friendly, report_import_notes, report_rejected
from .errors import BatcherError, Interrupted


RUN_EPILOG = """\b
Examples:
  export POE_API_KEY=...            # from https://poe.com/api_key
  batcher run prompts.jsonl --model claude-haiku-4.5 --max-tokens 1024
  batcher run prompts               # resume the batch after an interruption
  batcher run prompts --limit 20    # try the first 20 pending jobs first
  batcher run prompts --max-output-tokens 2000000 --reuse

""" + EXIT_CODES


@click.command("run", epilog=RUN_EPILOG)
@click.argument("file_or_batch")
@click.option("--batch", help="Batch name when FILE_OR_BATCH is a file (default: the file's name; required for -).")
@db_option
@click.option("--rpm", type=opt.RPM, default=500, show_default=True,
              help="Requests per minute allowed for the key.")
@click.option("--concurrency", type=opt.CONCURRENCY,
              help=f"Requests in flight at most (default: the rpm, enough for 60 s answers; at most {opt.MAX_CONCURRENCY}).")
@click.option("--max-attempts", type=opt.ATTEMPTS, default=6, show_default=True,
              help="Attempts per job before it fails (429s do not count).")
@click.option("--timeout", type=opt.SECONDS, default=600, show_default=True,
              help="Seconds a whole answer may take; when streaming, seconds without a new event.")
@click.option("--stream-limit", type=opt.SECONDS, default=3600, show_default=True,
              help="Seconds a streamed answer may take in all.")
@click.option("--base-url", envvar="POE_BASE_URL", type=opt.URL, default="https://api.poe.com", show_default=True,
              help="API endpoint (env POE_BASE_URL).")
@click.option("--auth", type=click.Choice(opt.AUTH_STYLES), default="x-api-key", show_default=True,
              help="How the key is sent.")
@click.option("--stream/--no-stream", default=None,
              help="Stream answers (default: only jobs with max_tokens above 4096).")
@click.option("--grace", type=opt.SECONDS_OR_ZERO, default=10, show_default=True,
              help="Seconds in-flight requests get to finish after Ctrl-C.")
@defaults_options
@click.option("--skip-invalid", is_flag=True, help="Import FILE's valid lines, report the others, and run.")
@click.option("--limit", type=opt.COUNT, metavar="N",
              help="Send only the first N pending jobs (input order), then stop with exit 5.")
@click.option("--max-input-tokens", type=opt.COUNT, metavar="N",
              help="Cap on this run's input tokens (estimated per request in flight); exit 5 when reached.")
@click.option("--max-output-tokens", type=opt.COUNT, metavar="N",
              help="Cap on this run's output tokens, counting max_tokens of requests in flight; exit 5 when reached.")
@click.option("--reuse", is_flag=True,
              help="Answer a job with the stored answer of an identical request (any batch) instead of sending it.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the final summary.")
@friendly
def run_command(file_or_batch: str, batch: str | None, db: str | None, rpm: float, concurrency: int | None,
                max_attempts: int, timeout: float, stream_limit: float, base_url: str, auth: str,
                stream: bool | None, grace: float, model: str | None, max_tokens: int | None, system: str | None,
                skip_invalid: bool, limit: int | None, max_input_tokens: int | None, max_output_tokens: int | None,
                reuse: bool, quiet: bool) -> None:
    """Send every pending job of a batch (importing FILE first), at the rate limit.

    Interrupted runs resume where they stopped: run the same command again.
    The key is read from POE_API_KEY.
    """
    import functools

    import anyio

    from ._batch import check_run
    from ._handles import Store
    from .importer import ImportRejected
    from .jobfile import is_job_input, naming_a_batch
    from .progress import summary_lines
    from .store import batch_from_file

    options = dict(rpm=rpm, concurrency=concurrency, max_attempts=max_attempts, timeout=timeout, base_url=base_url,
                   auth=auth, stream=stream, grace=grace, stream_limit=stream_limit, progress=not quiet,
                   limit=limit, max_input_tokens=max_input_tokens, max_output_tokens=max_output_tokens, reuse=reuse)
    check_run(**options)  # no key, malformed key, unsafe URL: refused before the store is touched
    is_file = is_job_input(file_or_batch)
    with naming_a_batch(file_or_batch, imported_from=functools.partial(batch_from_file, db)):
        store = Store(db, create=is_file)
        handle = None if is_file else store.batch(file_or_batch)
    with store:
        if handle is None:
            try:
                handle = store.add(batch, file_or_batch, model=model, max_tokens=max_tokens, system=system,
                                   skip_invalid=skip_invalid, progress=False if quiet else None)
            except ImportRejected as exc:
                fix = report_rejected(exc.report, "fix the lines above (or pass --skip-invalid)")
                fail(f"nothing imported, nothing sent; {fix}", 2)
            report = handle.report
            assert report is not None
            report_import_notes(report)
            if not quiet and report.added:
                click.echo(f"batch {report.batch}: {report.added:,} new job(s) imported", err=True)
        else:
            _warn_file_only(handle.name, {"--batch": batch, "--model": model, "--max-tokens": max_tokens,
                                          "--system": system, "--skip-invalid": skip_invalid})
        try:
            summary = anyio.run(functools.partial(handle.arun, signals=True, **options))
        except (BatcherError, Interrupted) as exc:
            if exc.summary is None:
                raise
            summary = exc.summary  # a run that ended early: its summary says how
    for line in summary_lines(summary):
        click.echo(line, err=summary.exit_code not in (0,))
    sys.exit(summary.exit_code)


def _warn_file_only(batch: str, given: dict[str, object]) -> None:
    """Options that fill in a job file's lines do nothing to a stored batch: say so rather than ignore them."""
    named = [option for option, value in given.items() if value not in (None, False)]
    if named:
        verb = "applies" if len(named) == 1 else "apply"
        click.echo(f"batcher: warning: {', '.join(named)} {verb} only to a job file being imported; the jobs of "
                   f"batch {batch} keep what they were imported with", err=True)


ESTIMATE_EPILOG = """\b
Examples:
  batcher estimate prompts.jsonl --model claude-haiku-4.5 --max-tokens 1024
  batcher estimate prompts --json   # a batch in the store: its jobs not yet done

Input tokens are a local estimate (UTF-8 bytes of the text / 3.5); output
tokens are the worst case, the sum of max_tokens.
"""


@click.command("estimate", epilog=ESTIMATE_EPILOG)
@click.argument("file_or_batch")
@db_option
@defaults_options
@click.option("--rpm", type=opt.RPM, default=500, show_default=True,
              help="Requests per minute the run would be allowed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@friendly
def estimate_command(file_or_batch: str, db: str | None, model: str | None, max_tokens: int | None,
                     system: str | None, rpm: float, as_json: bool) -> None:
    """Show what sending a job file or a batch's unfinished jobs would take; send nothing.

    Jobs, requests, estimated input tokens, worst-case output tokens and time
    at --rpm, by model. A file is validated as `import` would (bad lines are
    listed, exit 2) and nothing is stored.
    """
    from ._progress import counting
    from .estimator import estimate, estimate_lines
    from .importer import ImportRejected
    from .jobfile import describe, is_job_input
    from .validate import Defaults

    is_file = is_job_input(file_or_batch)
    if not is_file:
        _warn_file_only(file_or_batch, {"--model": model, "--max-tokens": max_tokens, "--system": system})
    doing = f"reading {describe(file_or_batch)}" if is_file else f"reading batch {file_or_batch}"
    try:
        with counting(None, doing, "line" if is_file else "job") as display:
            found = estimate(file_or_batch, db, Defaults(model, max_tokens, system), rpm, display)
    except ImportRejected as exc:
        for line in exc.report.error_lines():
            click.echo(line, err=True)
        fail("the file would not import; fix the lines above", exc.exit_code)
    for warning in found.warnings:
        click.echo(f"batcher: warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(found.to_dict()))
        return
    for line in estimate_lines(found):
        click.echo(line)
