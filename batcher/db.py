"""Opening the job store: URL resolution, SQLite set-up, schema upgrade.

A plain path means an SQLite file (created private, mode 0600); anything with
``://`` is handed to SQLAlchemy as a URL. Every open brings the schema to the
newest Alembic revision, so an older database upgrades in place -- but only
a batcher store: a database of another program, or one with a table gone,
is refused with one line rather than written into or half used.

Reading commands open an SQLite store read-only, so they work in a folder
or on a file they may not write (see :func:`_readonly_connect`).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import urllib.parse
from contextlib import contextmanager
from importlib.resources import files
from typing import Any, Callable, Concatenate, Iterator, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ._storefile import create_private_file, remove_if_unused, unwritable
from ._turns import Turns
from .errors import StoreBusy, StoreError, StoreFull, UsageError, option
from .interrupts import letting_go_after_interrupt

DEFAULT_DB = "batcher.db"
BUSY_TIMEOUT_S = 30

#: Alembic keeps the migration under way in module globals, so two threads
#: of one process upgrading at once (a new store opened from a thread pool,
#: or by gathered ``arun`` calls) would trip over each other.
_upgrading = threading.Lock()


def _refuse_memory(db: str) -> None:
    raise UsageError(f"{db}: a job store must be a file (an in-memory database would lose every answer "
                     "when the call ends); give a path")


def resolve_url(db: str | None) -> str:
    """The SQLAlchemy URL for ``--db``/``BATCHER_DB``/the default file.

    An empty ``--db`` (``--db "$STORE"`` with the variable unset) is refused
    rather than taken for the default: an import would otherwise make a new
    store in the current folder. An empty ``BATCHER_DB`` is an unset one.
    """
    if db == "":
        raise UsageError(f"{option('db')} is empty: give the job store's path, or leave it out for ./{DEFAULT_DB}")
    db = db or os.environ.get("BATCHER_DB") or DEFAULT_DB
    if db == ":memory:":
        _refuse_memory(db)
    if "://" in db:
        return db
    # Built, not pasted: a path's %, ? and # would otherwise be read as URL syntax.
    return URL.create("sqlite", database=os.path.abspath(db)).render_as_string(hide_password=False)


def _readonly_connect(path: str) -> Callable[[], sqlite3.Connection]:
    """A connection factory that never writes the store, nor its folder.

    ``mode=ro`` sees a run's committed writes; it needs the WAL's shared
    memory file, which it cannot create in a folder it may not write. Then
    no batcher can be writing there either (it would have created that file)
    and there is no unmerged WAL content, so the file is read as it stands
    (``immutable=1``).
    """
    uri = "file:" + urllib.parse.quote(path)

    def connect() -> sqlite3.Connection:
        def attempt(option: str) -> sqlite3.Connection:
            conn = sqlite3.connect(f"{uri}?{option}", uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            return attempt("mode=ro")
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc) and "unable to open" not in str(exc):
                raise  # e.g. busy: not a reason to read without locks
            return attempt("immutable=1")

    return connect


def _setup_sqlite(engine: Engine, readonly: bool = False) -> None:
    """WAL, busy timeout, foreign keys; transactions we start ourselves.

    pysqlite's own transaction handling is switched off so that ``BEGIN``
    really starts each transaction, and writers can ask for ``BEGIN
    IMMEDIATE`` (see :func:`write`) instead of failing on lock upgrade.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # Larger pages suit rows of a few hundred bytes (a no-op once the
        # file has content): about 15% faster bulk import.
        if not readonly:
            cur.execute("PRAGMA page_size = 16384")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        given = conn.get_execution_options()
        # Set for each transaction: pooled connections serve callers who wait differently.
        wait_s = given.get("batcher_wait_s") or BUSY_TIMEOUT_S
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
        if given.get("isolation_level") != "AUTOCOMMIT":  # else each statement is its own (VACUUM)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if given.get("batcher_immediate") else "BEGIN")


def _newest_revision() -> str:
    """The newest revision shipped, read from the names of the revision files.

    Revisions are numbered in order (``0003_tally.py`` is ``0003``): a guess
    good enough to skip loading Alembic, a fifth of a command's start-up, when
    the store is already there. Any other answer takes Alembic's own path.
    """
    names = [p.name for p in files("batcher.migrations").joinpath("versions").iterdir()]
    return max((n.split("_", 1)[0] for n in names if n[:4].isdigit() and n.endswith(".py")), default="")


def _revision(conn: Connection) -> str | None:
    rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
    return rows[0] if len(rows) == 1 else None


class _NeedsUpgrade(Exception):
    """A read-only open found an older schema: open it writable to upgrade it."""


def _check_ours(engine: Engine, tables: set[str], current: str | None, head: str) -> None:
    """Refuse another program's database, and one of ours with a table gone."""
    from .schema import metadata

    name = display_name(engine.url.render_as_string(hide_password=False))
    if current is None and tables - {"alembic_version"}:
        shown = ", ".join(sorted(tables)[:5])
        raise StoreError(f"{name}: not a batcher job store (it holds other tables: {shown}); "
                         f"check {option('db')}/BATCHER_DB")
    if current == head:
        missing = sorted(set(metadata.tables) - tables)
        if missing:
            raise StoreError(f"{name}: damaged job store: table {', '.join(missing)} missing")


def _upgrade(engine: Engine, readonly: bool = False) -> None:
    """Bring the schema to Alembic's head revision, if it is not there yet.

    Refuses a database that is not a batcher store (tables but no revision)
    and one missing a table of the schema (damaged), naming the table, before
    anything is written to it. Read-only, an older schema is _NeedsUpgrade.
    """
    tables, current = _schema_state(engine)
    newest = _newest_revision()
    _check_ours(engine, tables, current, newest)
    if not readonly and engine.url.get_backend_name() == "sqlite":
        # Set once, kept by the file; only on a store known to be ours.
        raw = engine.raw_connection()  # outside any transaction, as SQLite requires
        try:
            raw.cursor().execute("PRAGMA journal_mode = WAL")
        finally:
            raw.close()
    if current == newest:
        return
    with _upgrading:
        _migrate(engine, readonly)


def _schema_state(engine: Engine) -> tuple[set[str], str | None]:
    """The store's tables and its revision (None if it has none)."""
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        return tables, _revision(conn) if "alembic_version" in tables else None


def _migrate(engine: Engine, readonly: bool) -> None:
    """Alembic's upgrade to head, one thread of the process at a time."""
    tables, current = _schema_state(engine)  # another thread may have upgraded it meanwhile
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError
    from alembic import command

    cfg = Config()
    cfg.set_main_option("script_location", str(files("batcher.migrations")))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    _check_ours(engine, tables, current, head)
    if current == head:
        return
    if readonly:
        raise _NeedsUpgrade
    with engine.connect().execution_options(batcher_immediate=True) as conn:
        cfg.attributes["connection"] = conn
        try:
            command.upgrade(cfg, "head")
        except CommandError as exc:
            # e.g. a revision this version does not know: a newer batcher wrote it.
            where = display_name(engine.url.render_as_string(hide_password=False))
            raise StoreError(f"{where}: cannot upgrade the database schema: {exc}"
                             " (was it made by a newer batcher?)") from None
        conn.commit()


def open_store(db: str | None = None, upgrade: bool = True, create: bool = True, readonly: bool = False) -> Engine:
    """An engine on the job store, schema upgraded; errors as one line.

    With ``create=False`` a missing SQLite file is a UsageError. With
    ``readonly`` (reading commands) an SQLite store is opened read-only,
    unless its schema is older and must be upgraded first.
    """
    url = resolve_url(db)
    try:
        parsed = make_url(url)
    except SQLAlchemyError:
        raise StoreError(f"{url}: not a database path or URL") from None
    is_sqlite = parsed.get_backend_name() == "sqlite"
    on_disk = is_sqlite and parsed.database and parsed.database != ":memory:"
    if is_sqlite and not on_disk:
        _refuse_memory(url)
    created = False
    if on_disk:
        if os.path.isdir(parsed.database):
            raise UsageError(f"{parsed.database}: is a folder, not a job store; check {option('db')}/BATCHER_DB")
        created = create_private_file(parsed.database, create and not readonly)
    readonly = bool(readonly and on_disk)
    options: dict[str, Any] = {"connect_args": {"timeout": BUSY_TIMEOUT_S}} if is_sqlite else {}
    if readonly:
        options = {"creator": _readonly_connect(os.path.abspath(parsed.database))}
    try:
        engine = create_engine(url, **options)
    except (SQLAlchemyError, ImportError) as exc:
        raise StoreError(f"{display_name(url)}: cannot open database: {exc}") from None
    if is_sqlite:
        _setup_sqlite(engine, readonly)
    if upgrade:
        try:
            _upgrade(engine, readonly)
        except _NeedsUpgrade:
            engine.dispose()
            return open_store(db, upgrade, create)
        except (SQLAlchemyError, sqlite3.Error) as exc:  # sqlite3's own: the journal mode is set on a raw connection
            engine.dispose()
            if created:
                remove_if_unused(parsed.database)
            why = getattr(exc, "orig", None) or exc
            kind = StoreFull if getattr(why, "sqlite_errorcode", None) == _SQLITE_FULL else StoreError
            raise kind(f"{display_name(url)}: cannot open database: {why}{unwritable(parsed.database, why)}") from None
    return engine


def display_name(url: str) -> str:
    """The database as the user would name it, password hidden."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    return parsed.render_as_string(hide_password=True)


def read_failure(exc: SQLAlchemyError) -> StoreError:
    """The one-line error for a read of the store that failed midway (an export, results)."""
    return StoreError(f"cannot read the job store: {getattr(exc, 'orig', None) or exc}")


P = ParamSpec("P")
R = TypeVar("R")


def store_errors(fn: Callable[Concatenate[Engine, P], R]) -> Callable[Concatenate[Engine, P], R]:
    """Turn a database failure inside ``fn(engine, ...)`` into one StoreError line.

    A full disk, a read-only file or a lock held too long then reaches the
    user as ``PATH: cannot use the job store: database or disk is full``.
    """

    @functools.wraps(fn)
    def wrapper(engine: Engine, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(engine, *args, **kwargs)
        except DBAPIError as exc:
            where = display_name(engine.url.render_as_string(hide_password=False))
            if is_busy(exc):
                raise _busy(engine) from None
            kind = StoreFull if is_full(exc) else StoreError
            raise kind(f"{where}: cannot use the job store: {exc.orig}") from None

    return wrapper


def _busy(engine: Engine, why: str | None = None) -> StoreBusy:
    """The store's write lock was not had in time: held by another process, unless ``why`` says otherwise."""
    where = display_name(engine.url.render_as_string(hide_password=False))
    return StoreBusy(f"{where}: cannot use the job store: "
                     f"{why or 'database is locked: another process is writing to it'}")


#: SQLite's "database or disk is full" (a full disk, or max_page_count reached), PostgreSQL's disk_full.
_SQLITE_FULL, _PG_DISK_FULL = 13, "53100"
#: SQLite's "database is locked" (its base code, whatever the extended one).
_SQLITE_BUSY = 5


def is_busy(exc: DBAPIError) -> bool:
    """Whether another connection held the write lock past the busy timeout: waiting longer mends it."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == _SQLITE_BUSY


def is_full(exc: DBAPIError) -> bool:
    """Whether a database failure is a lack of room, which freeing space mends."""
    orig = exc.orig
    return (getattr(orig, "sqlite_errorcode", None) == _SQLITE_FULL
            or getattr(orig, "pgcode", None) == _PG_DISK_FULL)


#: One lock per SQLite file for the writers of this process (see :func:`write`).
_writers: dict[str, Turns] = {}
_writers_lock = threading.Lock()


def _writer_lock(engine: Engine) -> Turns | None:
    if engine.url.get_backend_name() != "sqlite" or not engine.url.database:
        return None
    with _writers_lock:
        return _writers.setdefault(engine.url.database, Turns())


@contextmanager
def write(engine: Engine, wait_s: float | None = None) -> Iterator[Connection]:
    """A write transaction that takes the write lock up front (SQLite).

    Another writer is waited for up to ``wait_s`` (by default
    :data:`BUSY_TIMEOUT_S`); then the store is :class:`~batcher.errors.StoreBusy`.
    The writers of this process (the batches ``batcher serve`` runs, each
    run's claimer and writer, a notebook's threads) take turns first (see
    :mod:`batcher._turns`), waiting longer while the turns go round.
    """
    wait = wait_s or BUSY_TIMEOUT_S
    lock = _writer_lock(engine)
    if lock is not None and not lock.acquire(wait, max(wait, BUSY_TIMEOUT_S)):
        raise _busy(engine, f"another thread of this process has been writing to it for over {wait:g} s"
                    if lock.writing else None)
    try:
        with engine.connect().execution_options(batcher_immediate=True, batcher_wait_s=wait) as conn:
            with conn.begin(), letting_go_after_interrupt():
                if lock is not None:
                    lock.writing = True
                yield conn
    finally:
        if lock is not None:
            lock.writing = False
            lock.release()


@store_errors
def compact(engine: Engine) -> int:
    """Rewrite an SQLite store's file without its free pages (``VACUUM``); return the bytes it shrank by.

    Deleting rows leaves their pages free inside the file, for later rows
    to reuse; only a rewrite gives the room back to the disk. It needs free
    disk space about the store's size, and other processes wait for it.
    """
    if engine.url.get_backend_name() != "sqlite" or not engine.url.database:
        raise UsageError(f"{display_name(engine.url.render_as_string())}: only an SQLite store's file can be "
                         "compacted here; use the database's own tools")
    path = engine.url.database
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # The file's size, once what waits in the write-ahead log is in it; and so after the rewrite.
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        before = os.path.getsize(path)
        conn.exec_driver_sql("VACUUM")
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return before - os.path.getsize(path)
