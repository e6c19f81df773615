"""The only place where SQLite and PostgreSQL differ: engine set-up, write locking, row claims, wake-ups.

SQLite: WAL journal, a busy timeout, and `BEGIN IMMEDIATE` for writes, so a writer takes the lock up
front instead of failing with "database is locked" on upgrade. `synchronous=FULL` by default: every
acknowledged commit survives power loss (`NORMAL` survives any process crash; an option).

PostgreSQL (psycopg 3): claims with `FOR UPDATE SKIP LOCKED`, and `LISTEN/NOTIFY` on one channel so
an idle server elsewhere wakes as soon as a job is enqueued.
"""

from __future__ import annotations

import logging
import os
import select as _select
import sqlite3
import threading
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Select, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from ..errors import ConfigurationError

log = logging.getLogger("nbjobs.storage")

CHANNEL = "nbjobs_work"
SYNCHRONOUS_MODES = ("FULL", "NORMAL", "OFF", "EXTRA")
_S = TypeVar("_S", bound=Select[Any])


def normalize_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` and use psycopg 3; accept a bare path for SQLite."""
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


class Dialect:
    """Behaviour shared by both databases; subclasses override what differs."""

    name = "generic"

    def __init__(self, url: str, *, synchronous: str = "FULL", pool_size: int = 10) -> None:
        self.url = url
        self.synchronous = synchronous
        self.pool_size = pool_size

    def create_engine(self) -> Engine:
        raise NotImplementedError

    def begin_write(self, conn: Connection) -> None:
        """Start a write transaction."""
        conn.begin()

    def schema_lock(self, conn: Connection) -> None:
        """Serialise schema creation between processes starting at once."""

    def claim_lock(self, stmt: _S) -> _S:
        """Lock the rows a claim selects so no other claimer takes them."""
        return stmt

    def row_lock(self, stmt: _S) -> _S:
        """Lock rows read inside a write transaction until it ends."""
        return stmt

    def notify(self, conn: Connection, payload: str) -> None:
        """Tell other processes that work arrived (inside the enqueue transaction)."""

    def make_listener(self) -> Listener:
        return Listener()

    def is_transient(self, exc: BaseException) -> bool:
        """Errors worth retrying: lock contention, lost connections."""
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        return isinstance(exc, OperationalError)


class Listener:
    """Waits for work notifications; the base one only sleeps (polling fallback)."""

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        """Block up to `timeout` s; True if a notification arrived."""
        stop.wait(timeout)
        return False

    def close(self) -> None:
        pass


class SqliteDialect(Dialect):
    name = "sqlite"

    def create_engine(self) -> Engine:
        if self.synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ConfigurationError(
                f"unknown SQLite synchronous mode {self.synchronous!r}; use one of {SYNCHRONOUS_MODES}"
            )
        url = make_url(self.url)
        if url.database and url.database != ":memory:":
            folder = os.path.dirname(os.path.abspath(url.database))
            if not os.path.isdir(folder):
                raise ConfigurationError(
                    f"folder {folder} for the SQLite database does not exist; create it or use another path"
                )
        else:
            raise ConfigurationError(
                "an in-memory SQLite database cannot be shared by the server's threads; use a file path, "
                "e.g. connect('sqlite:///nbjobs.db')"
            )
        engine = create_engine(
            self.url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=self.pool_size,
            max_overflow=20,
        )
        sync = self.synchronous.upper()

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # We issue BEGIN ourselves (pysqlite's implicit transactions defeat BEGIN IMMEDIATE).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            mode = "IMMEDIATE" if conn.get_execution_options().get("nbjobs_write") else "DEFERRED"
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine

    def begin_write(self, conn: Connection) -> None:
        conn.execution_options(nbjobs_write=True)
        conn.begin()

    def make_listener(self) -> Listener:
        return SqliteListener(make_url(self.url).database or "")


class SqliteListener(Listener):
    """Polls SQLite's `PRAGMA data_version`, which changes when another connection commits.

    A poll costs microseconds and touches no table, so an idle server stays near zero CPU while
    still seeing work enqueued by other processes within one poll interval.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        if stop.wait(timeout):
            return False
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(self._path, check_same_thread=False)
            version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            self.close()
            return True  # cannot tell: let the dispatcher look
        changed = self._version is not None and version != self._version
        self._version = version
        return changed

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class PostgresDialect(Dialect):
    name = "postgresql"

    def create_engine(self) -> Engine:
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise ConfigurationError(
                "PostgreSQL needs psycopg 3: pip install 'nbjobs[postgres]'"
            ) from exc
        return create_engine(
            self.url, pool_size=self.pool_size, max_overflow=20, pool_pre_ping=True, pool_recycle=1800
        )

    def schema_lock(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(7412093)"))

    def claim_lock(self, stmt: _S) -> _S:
        return stmt.with_for_update(skip_locked=True)

    def row_lock(self, stmt: _S) -> _S:
        return stmt.with_for_update()

    def notify(self, conn: Connection, payload: str) -> None:
        conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})

    def make_listener(self) -> Listener:
        return PostgresListener(self.url)


class PostgresListener(Listener):
    """A dedicated autocommit psycopg connection on LISTEN; reconnects after a lost connection."""

    def __init__(self, sa_url: str) -> None:
        url = make_url(sa_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._conn: Any = None

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self._dsn, autocommit=True)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            conn = self._conn
            # Wait on the socket so the wait itself costs nothing; drain whatever arrived.
            ready, _, _ = _select.select([conn.fileno()], [], [], timeout)
            if not ready:
                return False
            got = False
            for _ in conn.notifies(timeout=0, stop_after=1000):
                got = True
            return got
        except Exception as exc:
            log.warning("LISTEN connection lost (%s); falling back to polling until it returns", exc)
            self.close()
            stop.wait(min(timeout, 1.0))
            return False

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken
                log.debug("closing LISTEN connection failed", exc_info=True)


def dialect_for(url: str, *, synchronous: str = "FULL", pool_size: int = 10) -> Dialect:
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return SqliteDialect(url, synchronous=synchronous, pool_size=pool_size)
    if backend == "postgresql":
        return PostgresDialect(url, synchronous=synchronous, pool_size=pool_size)
    raise ConfigurationError(
        f"unsupported database {backend!r}; use a sqlite:///path or postgresql://… URL"
    )
