"""Engine set-up for the index database and automatic Alembic migration to head."""

from __future__ import annotations

import atexit
import os
import sqlite3
import weakref
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DatabaseError, OperationalError

from retrieval.errors import IndexUnavailableError, SchemaTooNewError
from retrieval.store.redact import first_line, shown_url

if TYPE_CHECKING:
    from alembic.config import Config


def create_sqlite_engine(path: Path) -> Engine:
    """An engine whose transactions are real SQLite transactions (snapshot reads in WAL mode).

    pysqlite does not emit BEGIN before a SELECT by itself, so two reads in one session could see
    two states of a database another process is writing; SQLAlchemy's documented recipe fixes it.
    A connection with the execution option `sqlite_begin="IMMEDIATE"` begins with BEGIN IMMEDIATE:
    a transaction that will write takes the write lock first (waiting up to the busy timeout), instead
    of failing at once with "database is locked" when another process wrote after its first read.

    A database in a folder this process cannot write (a read-only mount, a backup restored read-only) is opened
    read-only (`_read_only_url`).
    """
    engine = create_engine(_read_only_url(path) if not os.access(path.parent, os.W_OK) else f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())

    @event.listens_for(engine, "commit")
    def _on_commit(conn) -> None:  # type: ignore[no-untyped-def]
        if conn.get_execution_options().get("sqlite_begin") == "IMMEDIATE":
            _written.add(engine)

    return engine


def _read_only_url(path: Path) -> URL:
    """The URL that opens the SQLite database at `path` read-only, in a folder where nothing can be written.

    SQLite opens a database in WAL mode only where it can make its `-shm` file beside it, unless told that the
    file cannot change (`immutable`: no locks, no `-shm`), which holds in such a folder. Immutable, though, it
    would not read a `-wal` file holding rows not yet in the database: with one, it is opened through the `-shm`
    file that is there with it (or, where there is none, not at all, rather than without those rows).
    """
    try:
        unchanging = path.with_name(f"{path.name}-wal").stat().st_size == 0
    except FileNotFoundError:
        unchanging = True
    return URL.create("sqlite", database=f"file:{quote(str(path))}",
                      query={"mode": "ro", **({"immutable": "1"} if unchanging else {}), "uri": "true"})


_written: weakref.WeakSet[Engine] = weakref.WeakSet()
"""Engines of this process that committed a write transaction, to checkpoint at exit."""

CHECKPOINT_WAIT_MS = 2000


def checkpoint(engine: Engine) -> None:
    """Move every committed row from `index.db-wal` into `index.db` and empty the WAL.

    SQLite checkpoints when its last connection closes, but the CLI leaves with `os._exit` (no teardown), and
    a database whose rows all sit in the WAL is lost by whoever copies `index.db` alone. Waits a moment for
    readers of another process; when they hold on, the rows stay in the WAL (safe, and checkpointed later).
    """
    engine.dispose()
    try:
        with sqlite3.connect(str(engine.url.database), timeout=CHECKPOINT_WAIT_MS / 1000,
                             isolation_level=None) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    except sqlite3.Error:
        pass


@atexit.register
def _checkpoint_written() -> None:
    for engine in list(_written):
        checkpoint(engine)


def migrations_config() -> Config:
    """Alembic configuration pointing at the `migrations` package, no alembic.ini needed."""
    from alembic.config import Config

    import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


def head_revision() -> str:
    """The head of the migration chain as the scripts say (loads every script: slow)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(migrations_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _shown(engine: Engine) -> str:
    return shown_url(engine.url) if engine.url.get_backend_name() != "sqlite" else str(engine.url.database)


def is_at_head(engine: Engine) -> bool:
    """Whether the database is at the head of the chain, told without loading the migration scripts.
    `SchemaTooNewError` for a database a newer simsearch migrated: this one cannot know what it holds."""
    import migrations

    try:
        if not inspect(engine).has_table("alembic_version"):
            return False
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, DatabaseError) as exc:
        raise IndexUnavailableError(f"cannot open the index database {_shown(engine)}: "
                                    f"{first_line(exc, engine.url)}") from exc
    if version is not None and version not in migrations.REVISIONS:
        raise SchemaTooNewError(f"the index database {_shown(engine)} has schema {version}, newer than this "
                                f"simsearch knows (up to {migrations.HEAD}): upgrade simsearch to use it")
    return version == migrations.HEAD


def upgrade_to_head(engine: Engine) -> None:
    """Apply pending migrations (none on an up-to-date database)."""
    from alembic import command

    try:
        if is_at_head(engine):
            return
        config = migrations_config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except (OperationalError, DatabaseError) as exc:
        raise IndexUnavailableError(f"cannot open the index database {_shown(engine)}: "
                                    f"{first_line(exc, engine.url)}") from exc
