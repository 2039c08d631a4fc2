"""A real PostgreSQL server for the tests and the storage benchmark: Debian's binaries, a cluster in a temporary
directory, started once and stopped at the end. initdb refuses to run as root, so as root the cluster belongs to
the `postgres` user (the package makes it) and its commands run through `runuser`."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "simsearch"
PASSWORD = "simsearch-test"


def find_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: Debian's newest version, else the PATH's."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda f: int(Path(f).parent.name),
                         reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return Path(initdb).parent if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent else None


def missing_reason() -> str | None:
    """Why no server can be started here, or None."""
    if find_binaries() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl): `apt-get install postgresql` (.ci/run does)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: initdb refuses root"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install -e '.[postgres]'"
    return None


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One cluster on 127.0.0.1 with password authentication (scram-sha-256) for the user `simsearch`."""

    def __init__(self, fsync: bool = False) -> None:
        binaries = find_binaries()
        assert binaries is not None, missing_reason()
        self._bin = binaries
        self._dir = Path(tempfile.mkdtemp(prefix="simsearch-pg-"))
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        data = self._dir / "data"
        password_file = self._dir / "password"
        password_file.write_text(PASSWORD)
        if self._as_postgres:
            shutil.chown(self._dir, "postgres")
            shutil.chown(password_file, "postgres")
        self._run("initdb", "-D", str(data), "-U", USER, f"--pwfile={password_file}", "--auth=scram-sha-256",
                  "-E", "UTF8", "--locale=C.UTF-8")
        self._options = f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 -c max_connections=100"
        if not fsync:
            self._options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._data = data
        self.start_again()
        self._count = 0

    def start_again(self) -> None:
        self._run("pg_ctl", "-D", str(self._data), "-l", str(self._dir / "log"), "-w", "-o", self._options, "start")

    def stop_only(self) -> None:
        """Stop the server, keeping its data (as a server going down does)."""
        self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop")

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._bin / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True)

    def url(self, database: str, password: str = PASSWORD, port: int | None = None) -> str:
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{port or self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        import psycopg

        self._count += 1
        name = f"test{self._count}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and remove its cluster."""
        try:
            self.stop_only()
        except subprocess.CalledProcessError:
            pass  # stopped already
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
