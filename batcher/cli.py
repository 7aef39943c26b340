"""The ``batcher`` command: options in, library calls out, one line per error.

Every command is a thin wrapper over functions a Python user can call too;
what a user can get wrong ends as one line on stderr and an exit code:
0 ok, 1 finished with failed jobs, 2 usage or configuration error (or the
output cannot be written), 3 run stopped by the API (bad key, no points),
4 database unusable, 5 run stopped at its --limit or a token cap,
130 interrupted; a closed pipe ends quietly (SIGPIPE).
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from . import interrupts

if os.path.basename(sys.argv[0]) == "batcher":  # the installed command is starting: see _Group.main
    interrupts.hold_while_starting()

import click  # noqa: E402  (after the line above: loading modules is most of a short command's start)

from . import __version__
from . import options as opt
from ._cli_manage import cancel_command, delete_command, retry_command
from ._cli_run import estimate_command, run_command
from ._clikit import (EXIT_CODES, db_option, defaults_options, end_at_once_with, fail, friendly, report_import_notes,
                      report_rejected, reports_commit, say, usage_line)
from .errors import EXIT_INTERRUPTED, command_line_words


class _Group(click.Group):
    """Option values that do not parse are one line too, like every other mistake."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with command_line_words():
                return super().invoke(ctx)
        except click.BadParameter as exc:
            fail(opt.one_line(exc), 2)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """The ``batcher`` command: run it, then end the process with the README's exit code.

        click's own ending is taken over (a caller passing
        ``standalone_mode=False`` still gets click's): it turns a Ctrl-C or
        SIGTERM landing outside a command's body, while modules load or
        options parse, into "Aborted!" and exit 1, which means failed jobs
        here; and it reports a usage mistake over four lines. Here both are
        one line, an interruption exits 130 and a mistake 2. Called with no
        ``args`` it is the process's entry (the installed script, ``python
        -m batcher``), which owns the signals until the process ends.
        """
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        own_process = args is None
        code: Any = EXIT_INTERRUPTED
        try:
            try:
                if own_process and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as in main(), but from the start
                    interrupts.redeliver_lost_interrupts()
                interrupts.answer_from_now()  # a signal held while modules loaded lands here
                code = self._outcome(sys.argv[1:] if args is None else list(args), prog_name or _program_name(),
                                     complete_var, extra)
            except SystemExit as exc:
                code = exc.code
            except KeyboardInterrupt:
                say("batcher: interrupted")
            finally:
                if own_process:
                    end_at_once_with(code)
        except KeyboardInterrupt:
            # A second signal, while the first was reported or the outcome
            # settled: the outcome stands.
            if own_process:
                end_at_once_with(code)
        sys.exit(code)

    def _outcome(self, args: list[str], prog_name: str, complete_var: str | None, extra: dict[str, Any]) -> Any:
        """Parse and run the command; its exit code (a command's own failures exit from inside it)."""
        self._main_shell_completion(extra, prog_name, complete_var)
        try:
            with self.make_context(prog_name, args, **extra) as ctx:
                self.invoke(ctx)
            return 0
        except click.exceptions.Exit as exc:  # --help, --version
            return exc.exit_code
        except click.exceptions.NoArgsIsHelpError as exc:  # plain `batcher`: the help, as a usage error
            exc.show()
            return exc.exit_code
        except click.Abort:  # what click makes of a Ctrl-C at a prompt
            say("batcher: interrupted")
            return EXIT_INTERRUPTED
        except click.ClickException as exc:
            say(f"batcher: error: {usage_line(exc)}")
            return exc.exit_code
        except BrokenPipeError:  # --help | head -1
            from .outstream import end_on_closed_pipe

            end_on_closed_pipe()


def _program_name() -> str:
    """How the command was run, as click names it in help (``batcher``, ``python -m batcher``)."""
    try:
        from click.core import _detect_program_name

        return _detect_program_name()
    except ImportError:  # click keeps it private: a future click may not have it
        return "batcher"


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
    # At exit the interpreter's last collections walk every object of every
    # loaded module (SQLAlchemy's are many): ~0.1 s of a short command like
    # status. Frozen, they are left to the process's end, after the command's
    # own cleanup (the store is closed by then).
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


main.add_command(run_command)  # run and estimate are written in _cli_run (for size), commands like the rest
main.add_command(estimate_command)
main.add_command(retry_command)  # and the commands that change a batch, in _cli_manage
main.add_command(cancel_command)
main.add_command(delete_command)


@main.command("import", epilog="Example: batcher import prompts.jsonl --model claude-haiku-4.5 --max-tokens 1024")
@click.argument("file", type=click.Path(allow_dash=True))  # a folder is refused as run refuses it (ensure_readable)
@click.option("--batch", help="Batch name (default: the file's name without extension; required for -).")
@db_option
@defaults_options
@click.option("--skip-invalid", is_flag=True, help="Import the valid lines and report the others.")
@friendly
@reports_commit
def import_command(file: str, batch: str | None, db: str | None, model: str | None, max_tokens: int | None,
                   system: str | None, skip_invalid: bool) -> None:
    """Load a JSONL job file into a batch (idempotent: run it again after editing).

    A file unchanged since the batch's last import is not read again; one that
    only grew (lines appended) is read from its new lines.

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
            fix = report_rejected(exc.report, "fix the lines above or pass --skip-invalid")
            fail(f"nothing imported; {fix}", exc.exit_code)
    assert report is not None
    report_import_notes(report)
    how = ""
    if report.unread:
        how = "; the file is as its last import read it: not read again"
    elif report.skipped_lines:
        how = (f"; its first {report.skipped_lines:,} line(s) are as its last import read them: "
               "only the lines after them were read")
    click.echo(f"batch {report.batch}: {report.added:,} added, {report.unchanged:,} unchanged, {report.rejected:,} rejected"
               f"{how}")


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


@main.command("batches", epilog="\b\nExamples:\n  batcher batches --db runs.db\n"
                                "  batcher batches --json | jq -r 'select(.pending == 0) | .batch'")
@db_option
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per batch and line: the fields of `status --json` up to the token totals.")
@friendly
def batches_command(db: str | None, as_json: bool) -> None:
    """List the batches in the store with their job counts."""
    from ._handles import Store

    with Store(db, create=False, readonly=True) as store:
        found = store.batches()
        if not found and not as_json:
            click.echo("no batches yet: batcher import FILE")
        for batch in found:
            s = batch.status(detail=False)
            if as_json:
                click.echo(json.dumps(s))
                continue
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
            from ._progress import waiting

            with waiting(f"recounting batch {found.name} from its rows"):
                problems = found.verify()
            if as_json:
                click.echo(json.dumps({"batch": found.name, "agrees": not problems, "problems": problems}))
            for problem in problems:
                click.echo(f"batcher: batch {found.name}: tally differs from the rows: {problem}", err=True)
            if problems:
                sys.exit(4)
            if not as_json:
                click.echo(f"batch {found.name}: the kept totals agree with a recount of the rows")
            return
        status = found.status()
    if as_json:
        click.echo(json.dumps(status))
        return
    for line in status_lines(status):
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
@click.option("--only", type=click.Choice(["all", "succeeded", "failed", "canceled", "pending"]), default="all",
              show_default=True, help="Which jobs to write (all: every finished one, canceled included).")
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
    click.echo(f"batch {found.name}: {written:,} line(s) written to {where} ({fmt})",
               err=is_stream_destination(output))


def _register_wings() -> None:
    from .serve.command import serve_command
    from .sim.command import simulate

    main.add_command(simulate)
    # The server's mistakes (no key, port taken) end as one line, like every command's.
    serve_command.callback = friendly(serve_command.callback)
    main.add_command(serve_command)


_register_wings()
