"""What every command of the command line shares: one line per mistake, the store option.

The commands live in :mod:`batcher.cli` and :mod:`batcher._cli_run`; both
build on these, so a mistake reads the same whichever command made it.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import sys
from typing import Any, Callable

import click

from . import options as opt
from .errors import EXIT_INTERRUPTED, EXIT_STORE, EXIT_USAGE, BatcherError, Interrupted, UsageError

DB_HELP = "Job store: an SQLite file or a SQLAlchemy URL (env BATCHER_DB; default ./batcher.db)."
EXIT_CODES = ("Exit codes: 0 ok, 1 some jobs failed, 2 usage error or output not writable, 3 stopped by the API, "
              "4 database error, 5 stopped at --limit or a token cap (run again to go on), 130 interrupted.")


def say(line: str) -> None:
    """One line on stderr, if stderr is still there."""
    try:
        click.echo(line, err=True)
    except OSError:
        pass  # stderr is gone too: the exit code is all that is left to say it


def fail(message: str, code: int) -> None:
    say(f"batcher: error: {message}")
    sys.exit(code)


def usage_line(exc: click.ClickException) -> str:
    """A mistake click found on the command line, as one line like every other.

    ``no such option '--bogus' (see batcher import --help)``: click's own
    report is a usage line, a hint and the error, over four lines.
    """
    if isinstance(exc, click.BadParameter):
        return opt.one_line(exc)
    text = " ".join(exc.format_message().split())
    text = re.sub(r"\.\s+\(?Did you mean (.*?)\)?$", r"; did you mean \1", text).rstrip(".")
    if text[:1].isupper() and text[1:2].islower():
        text = text[0].lower() + text[1:]
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        text += f" (see {ctx.command_path} --help)"
    return text


def end_at_once_with(code: Any) -> None:
    """From here on, Ctrl-C or SIGTERM ends the process at once with the exit status ``code`` says.

    For the process's entry, once a command's outcome is settled and
    reported: what is left is the interpreter's own cleanup, where a
    KeyboardInterrupt is printed as an "Exception ignored" traceback and
    would turn a finished command into "interrupted". A signal there asks
    only to hurry. (``code`` is what ``sys.exit`` takes: None is 0, a text 1.)
    """
    status = code if isinstance(code, int) else 0 if code is None else 1
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass

    def end(signum: int, frame: Any) -> None:
        os._exit(status)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, end)


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
                refuse_undecodable(kwargs)
                return command(*args, **kwargs)
            finally:
                flush_stdout()
        except (BatcherError, Interrupted) as exc:
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


#: Parameters that name files: the file system takes any bytes, so these may be other than UTF-8.
#: (Where such a name is kept or shown it is written as text: see :func:`batcher._text.as_text`.)
FILE_NAMES = frozenset({"file", "file_or_batch", "output"})


def refuse_undecodable(values: dict[str, Any]) -> None:
    """Refuse an option value that is not valid UTF-8, naming the option: ``--model 'm\\xe9' is not valid UTF-8``.

    A word typed in a Latin-1 shell reaches Python as lone surrogates, which
    the store, a request's JSON and the API all refuse, each deep inside and
    with a traceback. One check here covers every command and option; file
    names (:data:`FILE_NAMES`) pass, and a FILE_OR_BATCH that is no file is
    checked as a batch name by the store.
    """
    from ._text import as_text, is_text

    params = {param.name: param for param in click.get_current_context().command.params}
    for name, value in values.items():
        for one in value if isinstance(value, tuple) else (value,):
            if name not in FILE_NAMES and isinstance(one, str) and not is_text(one):
                param = params.get(name)
                shown = (max(param.opts, key=len) if isinstance(param, click.Option) else
                         param.human_readable_name if param is not None else name)
                raise UsageError(f"{shown} '{as_text(one)}' is not valid UTF-8")


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


def defaults_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--model, --max-tokens and --system: what job lines leave out, the same for import, run and estimate."""
    command = click.option("--system", help="System prompt for jobs that have none.")(command)
    command = click.option("--max-tokens", type=opt.MAX_TOKENS, help="max_tokens for jobs that have none.")(command)
    command = click.option("--model", help="Model for jobs that name none (e.g. claude-haiku-4.5).")(command)
    return command


def report_rejected(report: Any, fix: str) -> str:
    """A refused import's bad lines, on stderr; then what to tell the user to do.

    ``fix`` (fix the lines, or skip them), unless no line was valid: then
    skipping would leave nothing, and saying so is the only advice.
    """
    for line in report.error_lines():
        click.echo(line, err=True)
    return "no line is a valid job" if report.none_valid else fix


def report_import_notes(report: Any) -> None:
    """An import's warnings and the lines it skipped, on stderr."""
    for warning in report.warnings:
        click.echo(f"batcher: warning: {warning}", err=True)
    for line in report.error_lines(prefix="skipped "):
        click.echo(line, err=True)
