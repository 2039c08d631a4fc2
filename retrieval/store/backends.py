"""Where an index's database lives and what differs between the two backends.

An index's database is SQLite in the index directory (`index.db`) unless `--db URL` or `$SIMSEARCH_DB` names
another, such as `postgresql+psycopg://user@host/simsearch`. Both backends share the SQLAlchemy models and the
Alembic chain; what differs lives here:

- engine set-up (SQLite's PRAGMAs and BEGIN IMMEDIATE; a PostgreSQL connection checked at once);
- the writer's lock: a POSIX record lock on a file in the index directory for SQLite, where one writer at a time
  is all the database allows; a PostgreSQL advisory lock, shared by `index` runs (which may run at once, on
  different folders, thanks to unique constraints and upserts) and exclusive for whoever switches the served
  model or cleans up after everyone;
- reading a consistent snapshot: SQLite's deferred transaction in WAL mode, PostgreSQL's REPEATABLE READ;
- the dialect's INSERT ... ON CONFLICT;
- noticing the database deleted or replaced under a process that keeps it open (a server): SQLite's file is
  known by its device and inode; PostgreSQL's connections are checked before use, and a database made anew under
  the same name has another id (its index-state row), which names its FAISS cache.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError
from sqlalchemy.orm import Session

from retrieval.errors import DatabaseURLError, IndexUnavailableError
from retrieval.store.database import create_sqlite_engine, is_at_head, upgrade_to_head
from retrieval.store.redact import first_line, shown_url

DB_ENV_VAR = "SIMSEARCH_DB"
SQLITE_NAME = "index.db"
LOCK_NAME = "lock"
MIGRATE_LOCK_NAME = "migrate.lock"
_WRITER_KEY = 0x73696D7365617263  # "simsearc": the advisory lock of writers
_MIGRATE_KEY = _WRITER_KEY + 1
SHARED_LOCK_WAIT_SECONDS = 30
"""How long an `index` run on PostgreSQL waits for an exclusive writer (a cleanup takes a moment; a re-embed with
another model takes long, and the run is then refused)."""
CONNECT_TIMEOUT_SECONDS = 10


def database_url(root: Path, db: str | None = None, environ: Mapping[str, str] | None = None) -> URL:
    """The database of the index at `root`: `db`, else `$SIMSEARCH_DB`, else `root/index.db`. `DatabaseURLError`
    for a URL that does not parse or names a database simsearch does not speak."""
    given = db if db is not None else (os.environ if environ is None else environ).get(DB_ENV_VAR) or None
    if given is None:
        return URL.create("sqlite", database=str(root / SQLITE_NAME))
    try:
        url = make_url(given)
    except (ArgumentError, ValueError):
        where = "the --db URL" if db is not None else f"${DB_ENV_VAR}"
        raise DatabaseURLError(f"{where} is not a database URL (its text is not shown: it may hold a password); e.g. "
                               "postgresql+psycopg://user@host/simsearch") from None  # the parser's message quotes it
    backend = url.get_backend_name()
    if backend == "postgresql":
        if url.get_driver_name() != "psycopg":
            url = url.set(drivername="postgresql+psycopg")
        if not url.database:
            raise DatabaseURLError(f"the URL names no database: {shown_url(url)} (add /simsearch, say)")
        return url
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise DatabaseURLError(f"a SQLite URL needs a file: {shown_url(url)} (e.g. sqlite:////data/index.db)")
        return url
    raise DatabaseURLError(f"simsearch stores an index in SQLite or PostgreSQL, not {backend}: {shown_url(url)}")


class Backend:
    """One index database: its engines, its locks and its dialect's upsert."""

    name: str

    def __init__(self, url: URL, engine: Engine) -> None:
        self.url = url
        self.engine = engine

    @property
    def shown(self) -> str:
        return shown_url(self.url)

    @property
    def read_engine(self) -> Engine:
        """Sessions of this engine read one consistent snapshot per transaction."""
        raise NotImplementedError

    @property
    def write_engine(self) -> Engine:
        raise NotImplementedError

    def insert(self, table: Table) -> Any:
        """The dialect's INSERT for `table`, with `on_conflict_do_nothing` / `on_conflict_do_update`."""
        raise NotImplementedError

    def to_head(self) -> None:
        """Migrate the schema to the current one, under the migration lock (nothing to do when it is there);
        `IndexUnavailableError` when the database cannot be read or migrated."""
        try:
            try:
                at_head = is_at_head(self.engine)
            except IndexUnavailableError:
                at_head = False  # another process may be creating it this moment: look again under its lock
            if not at_head:
                with self.migration_lock():
                    upgrade_to_head(self.engine)
        except (OperationalError, DatabaseError) as exc:
            raise IndexUnavailableError(f"cannot open the index database {self.shown}: {first_line(exc, self.url)}") \
                from exc

    def follow(self, prepare: Callable[[], None]) -> None:
        """Before a transaction, notice the database deleted or replaced since this process opened it (a server
        runs for days). Gone: `IndexUnavailableError`. Another one made where it was: the connections let go of the
        old one, `prepare()` readies the new one (schema, state row), and it is the one read from then on. Asked
        before every transaction, so it must cost next to nothing. Nothing to do for a database server: its
        connections are checked before use, and a database made anew there has an id of its own."""

    def upsert_rows(self, session: Session, table: Table, rows: list[dict[str, Any]], conflict: list[str],
                    update: bool) -> None:
        """Insert `rows` (all with the same keys); a row that collides on the unique columns `conflict` updates
        the row there (`update`) or is dropped. Through the driver's executemany (SQLite's is in-process)."""
        statement = self.insert(table)
        if update:
            statement = statement.on_conflict_do_update(
                index_elements=conflict, set_={key: statement.excluded[key] for key in rows[0] if key not in conflict})
        else:
            statement = statement.on_conflict_do_nothing(index_elements=conflict)
        session.execute(statement, rows)

    def writer_lock(self, exclusive: bool) -> WriterLock:
        raise NotImplementedError

    def migration_lock(self) -> Any:
        raise NotImplementedError

    def after_explicit_ids(self, session: Any, tables: list[str]) -> None:
        """After rows were inserted with their ids given (a copy), let new rows get ids after them."""


class WriterLock:
    """Held for a whole writing command. `alone()` tells, inside it, whether no other writer runs now, holding
    them off for the block: the time for work that must not overlap another writer (dropping vectors no image
    uses, say)."""

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    @contextmanager
    def alone(self) -> Iterator[bool]:
        yield True


_GONE = (-1, -1)
"""The identity of a database file that was deleted: whatever file comes next is another database."""


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, url: URL, root: Path) -> None:
        assert url.database is not None
        self.path = Path(url.database)
        super().__init__(url, create_sqlite_engine(self.path))
        self.root = root
        self._write = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        self._opened = self._identity()  # (device, inode) of the file opened; None until there is one
        self._following = threading.Lock()

    def _identity(self) -> tuple[int, int] | None:
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise IndexUnavailableError(f"cannot read the index database {self.path}: {exc.strerror}") from exc
        return found.st_dev, found.st_ino

    def follow(self, prepare: Callable[[], None]) -> None:
        """A connection goes on reading (and writing) a file deleted, or renamed over, after it was opened: the
        file at the path is compared with the one opened (an os.stat, a microsecond or two). Gone, the connections
        let it go, and none is made until a file is back (SQLite would make an empty database there). A `prepare`
        that fails is tried again at the next transaction."""
        if self._identity() == self._opened:
            return
        with self._following:
            found = self._identity()
            if found == self._opened:
                return
            if self._opened is None:  # the first file there: the one this process's connections open
                self._opened = found
                return
            if found is None:
                if self._opened != _GONE:
                    self.engine.dispose()
                    self._opened = _GONE
                raise IndexUnavailableError(f"the index database {self.path} is gone (deleted or moved away since "
                                            "it was opened): index again to make a new one there, or put it back")
            self.engine.dispose()
            prepare()
            self._opened = found

    @property
    def read_engine(self) -> Engine:
        return self.engine

    @property
    def write_engine(self) -> Engine:
        return self._write

    def insert(self, table: Table) -> Any:
        return sqlite.insert(table)

    def writer_lock(self, exclusive: bool) -> WriterLock:
        return _FileLock(self.root / LOCK_NAME)

    @contextmanager
    def migration_lock(self) -> Iterator[None]:
        with _locked(self.root / MIGRATE_LOCK_NAME, wait=True):
            yield


class _FileLock(WriterLock):
    """SQLite allows one writer at a time: a second one is refused rather than queued."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._held: Any = None

    def __enter__(self) -> WriterLock:
        self._held = _locked(self._path, wait=False)
        self._held.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._held.__exit__(*exc)


@contextmanager
def _locked(path: Path, wait: bool) -> Iterator[None]:
    """Hold an exclusive POSIX record lock on `path`.

    Record locks (lockf) belong to the process, unlike flock locks which forked DataLoader
    workers would inherit and keep alive after the writer itself was killed.
    """
    try:
        handle = open(path, "a+b")
    except OSError as exc:
        raise IndexUnavailableError(f"cannot write to index directory {path.parent}: {exc.strerror}") from exc
    with handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise IndexUnavailableError(f"another simsearch process is writing to {path.parent}") from exc
            raise
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


class PostgresBackend(Backend):
    name = "postgresql"

    def __init__(self, url: URL) -> None:
        # No server-side prepared statements: once psycopg prepared the `IN (500 values)` lookup (after five runs),
        # its plan made the lookups of a 20k-row ingest take 3.1 s instead of 0.15 s (benchmarks/store_ingest.py).
        engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS,
                                                                      "prepare_threshold": None})
        super().__init__(url, engine)
        self._read = engine.execution_options(isolation_level="REPEATABLE READ")

    @property
    def read_engine(self) -> Engine:
        return self._read

    @property
    def write_engine(self) -> Engine:
        return self.engine

    def insert(self, table: Table) -> Any:
        return postgresql.insert(table)

    def writer_lock(self, exclusive: bool) -> WriterLock:
        return _AdvisoryLock(self.engine, self.url, exclusive)

    def upsert_rows(self, session: Session, table: Table, rows: list[dict[str, Any]], conflict: list[str],
                    update: bool) -> None:
        """COPY into a temporary table, then one INSERT ... SELECT ... ON CONFLICT: psycopg's fastest way in, 2.4
        times the rows/s of its pipelined executemany at 1000 rows a batch and no slower at 32
        (`benchmarks/store_ingest.py`)."""
        import psycopg

        columns = list(rows[0])
        stage = f"simsearch_stage_{table.name}"
        listed = ", ".join(columns)
        action = "NOTHING" if not update else "UPDATE SET " + ", ".join(
            f"{column} = EXCLUDED.{column}" for column in columns if column not in conflict)
        cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
                           f"SELECT {listed} FROM {table.name} WITH NO DATA")
            with cursor.copy(f"COPY {stage} ({listed}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row([row[column] for column in columns])
            cursor.execute(f"INSERT INTO {table.name} ({listed}) SELECT {listed} FROM {stage} "
                           f"ON CONFLICT ({', '.join(conflict)}) DO {action}")
            cursor.execute(f"TRUNCATE {stage}")
        except psycopg.Error as exc:  # the raw cursor's errors, as SQLAlchemy's own statements would raise them
            raise OperationalError(f"COPY into {table.name}", None, exc) from exc

    def after_explicit_ids(self, session: Any, tables: list[str]) -> None:
        """A serial column's sequence does not see ids given explicitly: move each past its table's largest id."""
        for table in tables:
            session.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                 f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"))

    @contextmanager
    def migration_lock(self) -> Iterator[None]:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATE_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATE_KEY})
                conn.commit()


class _AdvisoryLock(WriterLock):
    """A session-level advisory lock on a connection of its own, held for the command. Shared: waits a while for
    an exclusive holder; exclusive: refused at once while any other writer runs."""

    def __init__(self, engine: Engine, url: URL, exclusive: bool) -> None:
        self._engine = engine
        self._url = url
        self._shown = shown_url(url)
        self._exclusive = exclusive
        self._conn: Connection | None = None

    def __enter__(self) -> WriterLock:
        try:
            conn = self._engine.connect()
        except (OperationalError, DatabaseError) as exc:
            raise IndexUnavailableError(f"cannot connect to {self._shown}: {first_line(exc, self._url)}") from exc
        try:
            if self._exclusive:
                got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": _WRITER_KEY}).scalar()
            else:
                conn.execute(text(f"SET lock_timeout = '{SHARED_LOCK_WAIT_SECONDS}s'"))
                try:
                    conn.execute(text("SELECT pg_advisory_lock_shared(:key)"), {"key": _WRITER_KEY})
                    got = True
                except OperationalError:  # the lock timeout: an exclusive writer holds on
                    conn.rollback()
                    got = False
            conn.commit()
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            what = "writing to" if self._exclusive else "re-embedding or cleaning up"
            raise IndexUnavailableError(f"another simsearch process is {what} {self._shown}")
        self._conn = conn
        return self

    def __exit__(self, *_: object) -> None:
        assert self._conn is not None
        try:
            self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
            self._conn.commit()
        except (OperationalError, DatabaseError):
            pass  # the connection is gone, and its locks with it
        finally:
            self._conn.close()
            self._conn = None

    @contextmanager
    def alone(self) -> Iterator[bool]:
        if self._exclusive:
            yield True
            return
        assert self._conn is not None
        got = bool(self._conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": _WRITER_KEY}).scalar())
        self._conn.commit()
        try:
            yield got
        finally:
            if got:
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _WRITER_KEY})
                self._conn.commit()


def open_backend(root: Path, url: URL) -> Backend:
    """The backend of the database at `url`, checked reachable: `IndexUnavailableError` naming the problem (a
    server that is down, a password refused, a database that does not exist) in one line."""
    if url.get_backend_name() == "sqlite":
        return SQLiteBackend(url, root)
    try:
        backend = PostgresBackend(url)
    except ModuleNotFoundError as exc:
        raise DatabaseURLError("an index in PostgreSQL needs the psycopg driver: pip install 'simsearch[postgres]'") \
            from exc
    try:
        with backend.engine.connect():
            pass
    except (OperationalError, DatabaseError) as exc:
        backend.engine.dispose()
        raise IndexUnavailableError(f"cannot connect to {backend.shown}: {first_line(exc, url)}") from exc
    return backend
