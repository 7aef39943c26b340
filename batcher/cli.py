"""The ``batcher`` command: options in, library calls out, one line per error.

Every command is a thin wrapper over functions a Python user can call too;
what a user can get wrong ends as one line on stderr and an exit code:
0 ok, 1 finished with failed jobs, 2 usage or configuration error (or the
output cannot be written), 3 run stopped by the API (bad key, no points),
4 database unusable, 5 run stopped at its --limit or a token cap,
130 interrupted; a closed pipe ends quietly (SIGPIPE).
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import threading
import time
from typing import Any, Callable

import click

from . import __version__
from . import options as opt
from .errors import EXIT_INTERRUPTED, EXIT_STORE, EXIT_USAGE, BatcherError

DB_HELP = "Job store: an SQLite file or a SQLAlchemy URL (env BATCHER_DB; default ./batcher.db)."
EXIT_CODES = ("Exit codes: 0 ok, 1 some jobs failed, 2 usage error or output not writable, 3 stopped by the API, "
              "4 database error, 5 stopped at --limit or a token cap (run again to go on), 130 interrupted.")


def fail(message: str, code: int) -> None:
    try:
        click.echo(f"batcher: error: {message}", err=True)
    except OSError:
        pass  # stderr is gone too: the exit code is all that is left to say it
    sys.exit(code)


def friendly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a user's mistake into one line on stderr and its exit code.

    Standard output is flushed before the code is settled, so that a write
    failure is reported rather than lost at exit; a closed pipe ends the
    command quietly, as it ends other filters.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        from .outstream import end_on_closed_pipe, flush_stdout, guard_stdout

        guard_stdout()
        try:
            try:
                return command(*args, **kwargs)
            finally:
                flush_stdout()
        except BatcherError as exc:
            fail(str(exc), exc.exit_code)
        except BrokenPipeError:
            end_on_closed_pipe()
        except KeyboardInterrupt:
            try:
                click.echo("batcher: interrupted", err=True)
            finally:
                sys.exit(EXIT_INTERRUPTED)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or exc}", EXIT_USAGE)
        except SQLAlchemyError as exc:
            # A store damaged in a way the checks on opening did not see.
            fail(f"cannot use the job store: {getattr(exc, 'orig', None) or exc}", EXIT_STORE)

    return wrapper


def reports_commit(command: Callable[..., Any]) -> Callable[..., Any]:
    """For a command whose work ends in one commit (import, export): a signal
    landing after the commit is held until the result is printed, then
    dropped, so the command ends as what it did (see :mod:`batcher.interrupts`).
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .interrupts import until_reported

        with until_reported():
            return command(*args, **kwargs)

    return wrapper


db_option = click.option("--db", envvar="BATCHER_DB", metavar="PATH|URL", help=DB_HELP)


class _Group(click.Group):
    """Option values that do not parse are one line too, like every other mistake."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.BadParameter as exc:
            fail(opt.one_line(exc), 2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="batcher")
def main() -> None:
    """Push large prompt datasets through Claude on Poe, at the rate limit, losing nothing.

    \b
    Try it without a key:
      batcher simulate &                 # a local Poe look-alike
      POE_API_KEY=x batcher run jobs/example.jsonl --base-url http://127.0.0.1:8788
    """
    # SIGTERM ends a command the way Ctrl-C does: one line, exit 130, and
    # whatever transaction was open rolls back. (A run installs its own
    # handlers for its graceful stop.)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def _defaults_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--system", help="System prompt for jobs that have none.")(command)
    command = click.option("--max-tokens", type=opt.MAX_TOKENS, help="max_tokens for jobs that have none.")(command)
    command = click.option("--model", help="Model for jobs that name none (e.g. claude-haiku-4.5).")(command)
    return command


@main.command("import", epilog="Example: batcher import prompts.jsonl --model claude-haiku-4.5 --max-tokens 1024")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--batch", help="Batch name (default: the file's name without extension; required for -).")
@db_option
@_defaults_options
@click.option("--skip-invalid", is_flag=True, help="Import the valid lines and report the others.")
@friendly
@reports_commit
def import_command(file: str, batch: str | None, db: str | None, model: str | None, max_tokens: int | None,
                   system: str | None, skip_invalid: bool) -> None:
    """Load a JSONL job file into a batch (idempotent: run it again after editing).

    FILE may be - (standard input), a FIFO or <(cmd): it is read once, to the
    end, then imported all or nothing like a file (make-prompts | batcher
    import - --batch prompts).
    """
    from ._handles import Store
    from .importer import ImportRejected
    from .jobfile import ensure_readable

    ensure_readable(file)  # before the store is created
    with Store(db) as store:
        try:
            report = store.add(batch, file, model=model, max_tokens=max_tokens, system=system,
                               skip_invalid=skip_invalid).report
        except ImportRejected as exc:
            for line in exc.report.error_lines():
                click.echo(line, err=True)
            click.echo("batcher: nothing imported; fix the lines above or pass --skip-invalid", err=True)
            sys.exit(exc.exit_code)
    assert report is not None
    _report_import_notes(report)
    click.echo(f"batch {report.batch}: {report.added} added, {report.unchanged} unchanged, {report.rejected} rejected")


def _report_import_notes(report: Any) -> None:
    """An import's warnings and the lines it skipped, on stderr."""
    for warning in report.warnings:
        click.echo(f"batcher: warning: {warning}", err=True)
    for line in report.error_lines(prefix="skipped "):
        click.echo(line, err=True)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


@main.command("batches", epilog="Example: batcher batches --db runs.db")
@db_option
@friendly
def batches_command(db: str | None) -> None:
    """List the batches in the store with their job counts."""
    from ._handles import Store

    with Store(db, create=False, readonly=True) as store:
        found = store.batches()
        if not found:
            click.echo("no batches yet: batcher import FILE")
        for batch in found:
            s = batch.status(detail=False)
            counts = " ".join(f"{k}={s[k]}" for k in ("pending", "running", "succeeded", "failed", "canceled") if s[k])
            click.echo(f"{batch.name}\t{batch.source}\t{s['total']} jobs: {counts or 'none'}\t"
                       f"created {_when(batch.created_at)}")


@main.command("status", epilog="Example: batcher status prompts --json")
@click.argument("batch", required=False)
@db_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@click.option("--verify", is_flag=True,
              help="Recount every figure from the job rows and check the kept totals agree (slow on big batches).")
@friendly
def status_command(batch: str | None, db: str | None, as_json: bool, verify: bool) -> None:
    """Show a batch's progress: counts, failures by kind, tokens by model, pace and the live run.

    BATCH may be left out when the store holds a single batch.
    """
    from ._handles import Store
    from .status import status_lines

    with Store(db, create=False, readonly=True) as store:
        found = store.batch(batch)
        if verify:
            problems = found.verify()
            for problem in problems:
                click.echo(f"batcher: tally differs from the rows: {problem}", err=True)
            if problems:
                sys.exit(4)
            click.echo(f"batch {found.name}: the kept totals agree with a recount of the rows")
            return
        status = found.status()
    if as_json:
        click.echo(json.dumps(status))
        return
    for line in status_lines(status):
        click.echo(line)


RUN_EPILOG = """\b
Examples:
  export POE_API_KEY=...            # from https://poe.com/api_key
  batcher run prompts.jsonl --model claude-haiku-4.5 --max-tokens 1024
  batcher run prompts               # resume the batch after an interruption
  batcher run prompts --limit 20    # try the first 20 pending jobs first
  batcher run prompts --max-output-tokens 2000000 --reuse

""" + EXIT_CODES


@main.command("run", epilog=RUN_EPILOG)
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
@click.option("--auth", type=click.Choice(["x-api-key", "bearer"]), default="x-api-key", show_default=True,
              help="How the key is sent.")
@click.option("--stream/--no-stream", default=None,
              help="Stream answers (default: only jobs with max_tokens above 4096).")
@click.option("--grace", type=opt.SECONDS_OR_ZERO, default=10, show_default=True,
              help="Seconds in-flight requests get to finish after Ctrl-C.")
@_defaults_options
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
    import os

    import anyio

    from ._handles import Store, check_run
    from .importer import ImportRejected
    from .jobfile import is_job_input
    from .progress import summary_lines

    options = dict(rpm=rpm, concurrency=concurrency, max_attempts=max_attempts, timeout=timeout, base_url=base_url,
                   auth=auth, stream=stream, grace=grace, stream_limit=stream_limit, progress=not quiet,
                   limit=limit, max_input_tokens=max_input_tokens, max_output_tokens=max_output_tokens, reuse=reuse)
    check_run(**options)  # no key, malformed key, unsafe URL: refused before the store is touched
    is_file = is_job_input(file_or_batch)
    if not is_file and (os.path.exists(file_or_batch) or file_or_batch.endswith((".jsonl", ".json"))):
        fail(f"{file_or_batch}: not a readable job file", 2)
    with Store(db, create=is_file) as store:
        if is_file:
            try:
                handle = store.add(batch, file_or_batch, model=model, max_tokens=max_tokens, system=system,
                                   skip_invalid=skip_invalid)
            except ImportRejected as exc:
                for line in exc.report.error_lines():
                    click.echo(line, err=True)
                fail("nothing imported, nothing sent; fix the lines above (or pass --skip-invalid)", 2)
            report = handle.report
            assert report is not None
            _report_import_notes(report)
            if not quiet and report.added:
                click.echo(f"batch {report.batch}: {report.added} new job(s) imported", err=True)
        else:
            handle = store.batch(file_or_batch)
        try:
            summary = anyio.run(functools.partial(handle.arun, signals=True, **options))
        except BatcherError as exc:
            if exc.summary is None:
                raise
            summary = exc.summary  # a run that ended early: its summary says how
    for line in summary_lines(summary):
        click.echo(line, err=summary.exit_code not in (0,))
    sys.exit(summary.exit_code)


ESTIMATE_EPILOG = """\b
Examples:
  batcher estimate prompts.jsonl --model claude-haiku-4.5 --max-tokens 1024
  batcher estimate prompts --json   # a batch in the store: its jobs not yet done

Input tokens are a local estimate (UTF-8 bytes of the text / 3.5); output
tokens are the worst case, the sum of max_tokens.
"""


@main.command("estimate", epilog=ESTIMATE_EPILOG)
@click.argument("file_or_batch")
@db_option
@_defaults_options
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
    from .estimator import estimate, estimate_lines
    from .importer import ImportRejected
    from .validate import Defaults

    try:
        found = estimate(file_or_batch, db, Defaults(model, max_tokens, system), rpm)
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


EXPORT_EPILOG = """\b
Examples:
  batcher export prompts                        # -> prompts.results.jsonl
  batcher export prompts --format merged -o answers.jsonl
  batcher export prompts --only failed -o - | jq .result.error

\b
Formats, one line per job in input order:
  results  Anthropic's Message Batches result lines (succeeded/errored/canceled)
  text     {"custom_id", "status", "text", "stop_reason", "usage", "error"}
  merged   the input line's object plus "response", "error" and "usage"
"""


@main.command("export", epilog=EXPORT_EPILOG)
@click.argument("batch", required=False)
@db_option
@click.option("-o", "--output", metavar="FILE|-",
              help="Where to write; - is stdout (default: BATCH.FORMAT.jsonl in the current folder).")
@click.option("--format", "fmt", type=click.Choice(["results", "text", "merged"]), default="results",
              show_default=True, help="Line format (see below).")
@click.option("--only", type=click.Choice(["all", "succeeded", "failed"]), default="all", show_default=True,
              help="Which finished jobs to write (all includes canceled).")
@click.option("--include-pending", is_flag=True,
              help="Also write unfinished jobs (as type pending), so lines align with the input.")
@click.option("--force", is_flag=True, help="Allow writing over the batch's own job file.")
@friendly
@reports_commit
def export_command(batch: str | None, db: str | None, output: str | None, fmt: str, only: str,
                   include_pending: bool, force: bool) -> None:
    """Write a batch's results as JSONL, in input order, from one consistent snapshot.

    A file is written under a temporary name and renamed when complete, so an
    interrupted export never leaves a partial file; a symlink is followed, and
    a FIFO or device (/dev/stdout, >(cmd)) is written into. New files are
    private (0600). Safe while a run is going.
    """
    import signal

    from ._handles import Store
    from .export import ExportNotes, default_output, is_stream_destination

    with Store(db, create=False, readonly=True) as store:
        found = store.batch(batch)
        output = output or default_output(found, fmt)
        if output == "-":
            # Behave like other filters when the reader goes away (| head).
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        # SIGTERM ends like Ctrl-C: the temporary file is removed on the way out.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        notes = ExportNotes()
        written = found.export(output, fmt, only, include_pending, force=force, notes=notes)
    for warning in notes.warnings():
        click.echo(f"batcher: warning: {warning}", err=True)
    where = "stdout" if output == "-" else output
    click.echo(f"batch {found.name}: {written} line(s) written to {where} ({fmt})",
               err=is_stream_destination(output))


@main.command("retry", epilog="Example: batcher retry prompts --error-type overloaded_error --status-code 529")
@click.argument("batch", required=False)
@db_option
@click.option("--error-type", "error_types", multiple=True, metavar="TYPE",
              help="Only failures of this type, e.g. api_error (repeatable).")
@click.option("--status-code", "status_codes", multiple=True, type=opt.HTTP_STATUS, metavar="N",
              help="Only failures with this HTTP status, e.g. 529 (repeatable).")
@click.option("--canceled", is_flag=True, help="Bring back canceled jobs instead of failed ones.")
@friendly
def retry_command(batch: str | None, db: str | None, error_types: tuple[str, ...], status_codes: tuple[int, ...],
                  canceled: bool) -> None:
    """Put failed jobs (all, or those matching) back to pending with a fresh attempt budget.

    The next `batcher run` sends them again (a run going now may pick them up too).
    `batcher status` lists failures by type and HTTP status.
    """
    from ._handles import Store

    with Store(db, create=False) as store:
        found = store.batch(batch)
        kinds = found.failure_kinds()
        n = found.retry(error_types, status_codes, canceled)
    for unknown in (t for t in error_types if t not in kinds):
        have = ", ".join(f"{k} ({v})" for k, v in kinds.items()) or "none"
        click.echo(f"batcher: warning: no failed job has error type {unknown!r}; the batch's failures: {have}",
                   err=True)
    what = "canceled" if canceled else "failed"
    hint = f"; send them with: batcher run {found.name}" if n else ""
    click.echo(f"batch {found.name}: {n} {what} job(s) back to pending{hint}")


@main.command("cancel", epilog="Example: batcher cancel prompts")
@click.argument("batch", required=False)
@db_option
@friendly
def cancel_command(batch: str | None, db: str | None) -> None:
    """Mark a batch's pending jobs canceled, so no run sends them.

    Jobs already in flight finish. `batcher retry --canceled` brings them back.
    """
    from ._handles import Store

    with Store(db, create=False) as store:
        found = store.batch(batch)
        n = found.cancel()
    click.echo(f"batch {found.name}: {n} pending job(s) canceled")


def _register_wings() -> None:
    from .serve.command import serve_command
    from .sim.command import simulate

    main.add_command(simulate)
    # The server's mistakes (no key, port taken) end as one line, like every command's.
    serve_command.callback = friendly(serve_command.callback)
    main.add_command(serve_command)


_register_wings()
