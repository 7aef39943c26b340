"""Opening the job store: URL resolution, SQLite set-up, schema upgrade.

A plain path means an SQLite file (created private, mode 0600); anything with
``://`` is handed to SQLAlchemy as a URL. Every open brings the schema to the
newest Alembic revision, so an older database upgrades in place.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from importlib.resources import files
from typing import Callable, Concatenate, Iterator, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .errors import StoreError, UsageError

DEFAULT_DB = "batcher.db"
BUSY_TIMEOUT_S = 30


def resolve_url(db: str | None) -> str:
    """The SQLAlchemy URL for ``--db``/``BATCHER_DB``/the default file."""
    db = db or os.environ.get("BATCHER_DB") or DEFAULT_DB
    if "://" in db:
        return db
    return "sqlite:///" + os.path.abspath(db)


def _create_private_file(path: str, create: bool) -> None:
    """Create an empty SQLite file readable by its owner only, if absent.

    Commands that only read or change existing batches pass ``create=False``:
    a mistyped ``--db`` is then an error, not a new empty store.
    """
    if not create:
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such database (import a job file first, or check --db/BATCHER_DB)")
        return
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise UsageError(f"{path}: folder {directory} does not exist")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"{path}: cannot create database: {exc.strerror}") from None
    os.close(fd)


def _setup_sqlite(engine: Engine) -> None:
    """WAL, busy timeout, foreign keys; transactions we start ourselves.

    pysqlite's own transaction handling is switched off so that ``BEGIN``
    really starts each transaction, and writers can ask for ``BEGIN
    IMMEDIATE`` (see :func:`write`) instead of failing on lock upgrade.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        # Larger pages suit rows of a few hundred bytes (a no-op once the
        # file has content): about 15% faster bulk import.
        cur.execute("PRAGMA page_size = 16384")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("batcher_immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _newest_revision() -> str:
    """The newest revision shipped, read from the names of the revision files.

    Revisions are numbered in order (``0003_tally.py`` is ``0003``): a guess
    good enough to skip loading Alembic, a fifth of a command's start-up, when
    the store is already there. Any other answer takes Alembic's own path.
    """
    names = [p.name for p in files("batcher.migrations").joinpath("versions").iterdir()]
    return max((n.split("_", 1)[0] for n in names if n[:4].isdigit() and n.endswith(".py")), default="")


def _at_newest(engine: Engine) -> bool:
    with engine.connect() as conn:
        try:
            current = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
        except SQLAlchemyError:
            return False  # a new store: no version table yet
    return current == [_newest_revision()]


def _upgrade(engine: Engine) -> None:
    """Bring the schema to Alembic's head revision, if it is not there yet."""
    if _at_newest(engine):
        return
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError
    from alembic import command

    cfg = Config()
    cfg.set_main_option("script_location", str(files("batcher.migrations")))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        if MigrationContext.configure(conn).get_current_revision() == head:
            return
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


def open_store(db: str | None = None, upgrade: bool = True, create: bool = True) -> Engine:
    """An engine on the job store, schema upgraded; errors as one line.

    With ``create=False`` a missing SQLite file is a UsageError.
    """
    url = resolve_url(db)
    try:
        parsed = make_url(url)
    except SQLAlchemyError:
        raise StoreError(f"{url}: not a database path or URL") from None
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and parsed.database and parsed.database != ":memory:":
        _create_private_file(parsed.database, create)
    try:
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S} if is_sqlite else {})
    except (SQLAlchemyError, ImportError) as exc:
        raise StoreError(f"{display_name(url)}: cannot open database: {exc}") from None
    if is_sqlite:
        _setup_sqlite(engine)
    if upgrade:
        try:
            _upgrade(engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"{display_name(url)}: cannot open database: {exc.orig or exc}") from None
    return engine


def display_name(url: str) -> str:
    """The database as the user would name it, password hidden."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    return parsed.render_as_string(hide_password=True)


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
            raise StoreError(f"{where}: cannot use the job store: {exc.orig}") from None

    return wrapper


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A write transaction that takes the write lock up front (SQLite)."""
    with engine.connect().execution_options(batcher_immediate=True) as conn:
        with conn.begin():
            yield conn
