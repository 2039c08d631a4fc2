"""Engine set-up for the index database and automatic Alembic migration to head."""

from __future__ import annotations

import atexit
import sqlite3
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DatabaseError, OperationalError

from retrieval.errors import IndexUnavailableError, SchemaTooNewError

if TYPE_CHECKING:
    from alembic.config import Config


def create_sqlite_engine(path: Path) -> Engine:
    """An engine whose transactions are real SQLite transactions (snapshot reads in WAL mode).

    pysqlite does not emit BEGIN before a SELECT by itself, so two reads in one session could see
    two states of a database another process is writing; SQLAlchemy's documented recipe fixes it.
    A connection with the execution option `sqlite_begin="IMMEDIATE"` begins with BEGIN IMMEDIATE:
    a transaction that will write takes the write lock first (waiting up to the busy timeout), instead
    of failing at once with "database is locked" when another process wrote after its first read.
    """
    engine = create_engine(f"sqlite:///{path}")

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
    return engine.url.render_as_string(hide_password=True) if engine.url.get_backend_name() != "sqlite" \
        else str(engine.url.database)


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
        raise IndexUnavailableError(f"cannot open the index database {_shown(engine)}: {exc.orig}") from exc
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
        raise IndexUnavailableError(f"cannot open the index database {_shown(engine)}: {exc.orig}") from exc
