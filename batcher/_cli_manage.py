"""``batcher retry``, ``cancel`` and ``delete``: the commands that change what a batch holds or will send.

Kept apart from :mod:`batcher.cli` only for size; like every command they
parse options, call the library and print.
"""

from __future__ import annotations

import sys

import click

from . import options as opt
from ._clikit import db_option, friendly, reports_commit
from .errors import UsageError


@click.command("retry", epilog="Example: batcher retry prompts --error-type overloaded_error --status-code 529")
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
    from ._progress import waiting

    with Store(db, create=False) as store:
        found = store.batch(batch)
        kinds = found.failure_kinds()
        with waiting(f"putting the {'canceled' if canceled else 'failed'} jobs of batch {found.name} back to pending"):
            n = found.retry(error_types, status_codes, canceled)
    for unknown in (t for t in error_types if t not in kinds):
        have = ", ".join(f"{k} ({v})" for k, v in kinds.items()) or "none"
        click.echo(f"batcher: warning: no failed job has error type {unknown!r}; the batch's failures: {have}",
                   err=True)
    what = "canceled" if canceled else "failed"
    hint = f"; send them with: batcher run {found.name}" if n else ""
    click.echo(f"batch {found.name}: {n:,} {what} job(s) back to pending{hint}")


@click.command("cancel", epilog="Example: batcher cancel prompts")
@click.argument("batch", required=False)
@db_option
@friendly
def cancel_command(batch: str | None, db: str | None) -> None:
    """Mark a batch's pending jobs canceled, so no run sends them.

    Jobs already in flight finish. `batcher retry --canceled` brings them back.
    """
    from ._handles import Store
    from ._progress import waiting

    with Store(db, create=False) as store:
        found = store.batch(batch)
        with waiting(f"canceling the pending jobs of batch {found.name}"):
            n = found.cancel()
    click.echo(f"batch {found.name}: {n:,} pending job(s) canceled")


@click.command("delete", epilog="Example: batcher export prompts && batcher delete prompts --yes --compact")
@click.argument("batch")
@db_option
@click.option("-y", "--yes", is_flag=True, help="Delete without asking (needed when stdin is not a terminal).")
@click.option("--compact", is_flag=True,
              help="Then shrink the store's file (SQLite): it rewrites the file and needs as much free disk space.")
@friendly
@reports_commit
def delete_command(batch: str, db: str | None, yes: bool, compact: bool) -> None:
    """Delete a batch with all its jobs, answers and attempts (export its results first).

    A run of the batch going now must be stopped first. The store's file
    keeps its size, and later imports reuse the room, unless --compact.
    """
    from ._handles import Store
    from ._progress import waiting

    with Store(db, create=False) as store:
        found = store.batch(batch)
        if not yes:
            counts = found.status(detail=False)
            what = f"batch {found.name!r} holds {counts['total']:,} job(s), {counts['succeeded']:,} answered"
            if not sys.stdin.isatty():
                raise UsageError(f"{what}: add --yes to delete it")
            if not _yes(f"{what}. Delete it? [y/N]: "):
                click.echo("batcher: nothing deleted", err=True)
                return
        with waiting(f"deleting batch {found.name}"):
            n = found.delete()
        click.echo(f"batch {found.name}: deleted, with its {n:,} job(s)")
        if compact:
            with waiting("compacting the store"):
                freed = store.compact()
            click.echo(f"store compacted: {freed / 1e6:,.1f} MB given back to the disk")


def _yes(question: str) -> bool:
    """Ask on the terminal; only y or yes is a yes.

    The end of input (Ctrl-D) is a no, as the default is: click's own
    prompt takes it for a Ctrl-C, and the command would end "interrupted"
    (exit 130, "run the same command again") when the user only declined.
    A Ctrl-C is still one.
    """
    click.echo(question, err=True, nl=False)
    answer = sys.stdin.readline()
    if not answer.endswith("\n"):
        click.echo(err=True)  # the end of input: the next line starts on its own
    return answer.strip().lower() in ("y", "yes")
