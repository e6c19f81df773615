"""The only place where SQLite and PostgreSQL differ: engine set-up, write locking, row claims, wake-ups.

SQLite: WAL journal, a busy timeout, and `BEGIN IMMEDIATE` for writes, so a writer takes the lock up
front instead of failing with "database is locked" on upgrade. `synchronous=FULL` by default: every
acknowledged commit survives power loss (`NORMAL` survives any process crash; an option).

PostgreSQL (psycopg 3): claims with `FOR UPDATE SKIP LOCKED`, and `LISTEN/NOTIFY` on one channel so
an idle server elsewhere wakes as soon as a job is enqueued.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select as _select
import sqlite3
import threading
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import unquote

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    Integer,
    Select,
    cast,
    create_engine,
    event,
    func,
    literal,
    text,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError

from ..errors import ConfigurationError

log = logging.getLogger("nbjobs.storage")

CHANNEL = "nbjobs_work"
SYNCHRONOUS_MODES = ("FULL", "NORMAL", "OFF", "EXTRA")
_S = TypeVar("_S", bound=Select[Any])

#: One in-process write lock per SQLite file, shared by every engine on it (see `write_guard`).
_write_locks: dict[str, threading.RLock] = {}
_write_locks_guard = threading.Lock()


def _new_locks_after_fork() -> None:
    """A child forked while another thread held a lock would wait on it forever: start afresh."""
    global _write_locks_guard
    _write_locks.clear()
    _write_locks_guard = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_after_fork)


def absolute_sqlite(url: str) -> str:
    """A SQLite URL (or a bare path, made one) with its file path made absolute; others as given.
    Whatever opens the database again by this URL later (a worker process, after the notebook
    changed folder) must open this file, not one of that name in its own folder."""
    if "://" not in url:  # a path: '?' and '%' in a file name are not a URL's query and escapes
        url = "sqlite:///" + url.replace("%", "%25").replace("?", "%3F")
    scheme, sep, rest = url.partition(":///")
    if not sep or not scheme.startswith("sqlite"):
        return url
    path, mark, query = rest.partition("?")
    if path and path != ":memory:" and not path.startswith("file:") and not os.path.isabs(path):
        path = os.path.abspath(path)
    return f"{scheme}:///{path}{mark}{query}"


def sqlite_file(url: str) -> str | None:
    """The file a SQLite URL (or bare path) names, absolute; None for other databases, `:memory:`
    and `file:` URIs."""
    scheme, sep, rest = absolute_sqlite(url).partition(":///")
    if not sep or not scheme.startswith("sqlite"):
        return None
    path = rest.partition("?")[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return unquote(path)  # as SQLAlchemy reads the database part of a URL


def normalize_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` and use psycopg 3; accept a bare path for SQLite, made
    absolute (`absolute_sqlite`)."""
    url = absolute_sqlite(url)
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    scheme, sep, rest = url.partition("://")
    if sep and scheme.split("+")[0] == "postgresql":
        # Any driver named (psycopg2, asyncpg, pg8000: a URL copied from another project's settings)
        # is the same database; nbjobs talks to it through psycopg 3 (LISTEN/NOTIFY, one-statement
        # writes), which the `postgres` extra installs.
        url = f"postgresql+psycopg://{rest}"
    return url


class Dialect:
    """Behaviour shared by both databases; subclasses override what differs."""

    name = "generic"
    #: A write of several statements can be one statement with data-modifying CTEs, run outside an
    #: explicit transaction (autocommit). On a server database that turns BEGIN, the statements and
    #: COMMIT into one round trip, which is most of what a lone enqueue or an idle server's claim
    #: costs; SQLite has no data-modifying CTEs (and no round trips), so it keeps transactions.
    one_statement_writes = False
    #: A short write may run on the driver's own connection (`begin_driver_write`), not through a
    #: SQLAlchemy Connection. For an embedded database a statement costs a few microseconds and
    #: SQLAlchemy's connection, transaction and execution layers cost ten times that; a server
    #: database spends its time in round trips instead, and keeps SQLAlchemy's path. Only for a
    #: dialect whose `notify` does nothing: a driver write cannot call it.
    driver_writes = False

    def __init__(self, url: str, *, synchronous: str = "FULL", pool_size: int = 10) -> None:
        self.url = url
        self.synchronous = synchronous
        self.pool_size = pool_size

    def create_engine(self) -> Engine:
        raise NotImplementedError

    @property
    def database(self) -> str:
        """Which database this is, the same for every URL naming it (a relative and an absolute path,
        another user or password): a Job of one engine may then be used with another."""
        url = make_url(self.url)
        if url.get_backend_name() == "sqlite":
            return f"sqlite:{os.path.realpath(url.database) if url.database else ''}"
        port = url.port or (5432 if url.get_backend_name() == "postgresql" else "")  # the same server
        return f"{url.get_backend_name()}://{url.host or ''}:{port}/{url.database or ''}"

    def begin_write(self, conn: Connection) -> None:
        """Start a write transaction."""
        conn.begin()

    def begin_driver_write(self, dbapi_conn: Any) -> None:
        """Start a write transaction on the driver's connection (only where `driver_writes`)."""
        raise NotImplementedError

    def write_guard(self) -> AbstractContextManager[Any]:
        """Held around a whole write transaction in this process (nothing for a server database)."""
        return contextlib.nullcontext()

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

    def notify_expr(self, payload: str) -> ColumnElement[Any]:
        """`notify` as an expression, for a one-statement write (see `one_statement_writes`)."""
        raise NotImplementedError

    def time_bucket(self, column: Any, since: datetime, width: float) -> ColumnElement[Any]:
        """The 0-based index of the `width`-second interval after `since` that `column` falls in."""
        raise NotImplementedError

    def epoch_seconds(self, column: Any) -> ColumnElement[Any]:
        """A time column as epoch seconds (a float), computed by the database: no per-row Python."""
        raise NotImplementedError

    def install_counters(self, conn: Connection) -> bool:
        """Create the triggers that keep `nbjobs_counts` exact; True if they were just created.

        Triggers, not application code, so every path that writes jobs (this package's, a recurring
        fire, a hand-written UPDATE) moves the counters in its own transaction.
        """
        raise NotImplementedError

    def seed_planner_stats(self, conn: Connection) -> None:
        """Give the query planner a realistic picture of a new jobs table (once, at creation)."""

    def make_listener(self) -> Listener:
        return Listener()

    def is_transient(self, exc: BaseException) -> bool:
        """Errors worth retrying: lock contention, lost connections."""
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        return isinstance(exc, OperationalError)

    def is_full(self, exc: BaseException) -> bool:
        """The database has no room left (a full disk): retrying at once would fail the same way."""
        return False

    #: What the driver says when the URL names what does not exist or may not connect: no retry helps.
    misconfigured_messages: tuple[str, ...] = ()

    def is_misconfigured(self, exc: BaseException) -> bool:
        """A connection refused for what the URL says (no such database, user or host; a password
        refused), not for a passing fault."""
        text = str(getattr(exc, "orig", None) or exc)
        return isinstance(exc, OperationalError | sqlite3.OperationalError) and any(
            m in text for m in self.misconfigured_messages)

    def is_unstorable(self, exc: BaseException) -> bool:
        """Errors about the values written (too long, a character or constraint refused): the same
        write fails again, whatever the connection."""
        if isinstance(getattr(exc, "orig", exc), UnicodeError):
            return True  # text the database's encoding cannot hold (a lone surrogate `storable` missed)
        return isinstance(exc, DataError | IntegrityError) and not exc.connection_invalidated


class Listener:
    """Waits for work notifications; the base one only sleeps (polling fallback)."""

    #: True if `wait` reports every commit to the database (not only new work), so a server may
    #: sleep long between schedule checks and rely on it to be woken by any change.
    sees_every_commit = False

    def open(self) -> None:
        """Start listening now (before the server's first look for work), so the first `wait`
        need not report a change just in case. A listener not opened opens on its first wait."""

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        """Block up to `timeout` s; True if a notification arrived."""
        stop.wait(timeout)
        return False

    def work_pending(self) -> bool:
        """After `wait` reported a change: could there be a job to claim? A cheap look that spares
        the dispatcher a claim transaction for every commit that brought no work; True if unsure."""
        return True

    def due_times_changed(self) -> bool:
        """After `wait` reported a change: did the earliest due time (of a Scheduled job or of a
        recurring fire) change since the last look? Spares a sleeping scheduler the commits that
        move nothing (heartbeats, finished jobs); True if unsure."""
        return True

    def interrupt(self) -> None:
        """Make a blocked `wait` return now (the server is stopping)."""

    def close(self) -> None:
        pass


class SqliteDialect(Dialect):
    name = "sqlite"
    driver_writes = True
    _lock_path: str | None = None

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
            # Straight to the driver: a full SQLAlchemy execution would cost more than the BEGIN itself.
            try:
                conn.connection.dbapi_connection.execute(f"BEGIN {mode}")  # type: ignore[union-attr]
            except sqlite3.OperationalError as exc:  # wrapped as SQLAlchemy would, so it is retried
                raise OperationalError(f"BEGIN {mode}", None, exc) from exc

        return engine

    def begin_write(self, conn: Connection) -> None:
        conn.execution_options(nbjobs_write=True)
        conn.begin()

    def begin_driver_write(self, dbapi_conn: Any) -> None:
        dbapi_conn.execute("BEGIN IMMEDIATE")

    def is_transient(self, exc: BaseException) -> bool:
        # A driver-level write (`driver_writes`) meets the driver's own exception, not SQLAlchemy's.
        return isinstance(exc, sqlite3.OperationalError) or super().is_transient(exc)

    def is_unstorable(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.DataError | sqlite3.IntegrityError) or super().is_unstorable(exc)

    def is_full(self, exc: BaseException) -> bool:
        cause = getattr(exc, "orig", None) or exc
        return getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL

    def write_guard(self) -> AbstractContextManager[Any]:
        # SQLite has one writer at a time. Threads of this process (client, dispatcher, heartbeat)
        # queue on a lock per database file instead of meeting SQLITE_BUSY, whose handler sleeps
        # 1, 2, 5, 10 … ms before trying again: a lock hand-over takes microseconds. Other processes
        # still wait through the busy timeout.
        path = self._lock_path
        if path is None:
            path = self._lock_path = os.path.abspath(make_url(self.url).database or "")
        lock = _write_locks.get(path)
        if lock is None:
            with _write_locks_guard:
                lock = _write_locks.setdefault(path, threading.RLock())
        return lock

    def epoch_seconds(self, column: Any) -> ColumnElement[Any]:
        return type_coerce(column, Float)  # stored as epoch seconds already

    def time_bucket(self, column: Any, since: datetime, width: float) -> ColumnElement[Any]:
        # Times are epoch seconds (REAL) here; CAST truncates, which is floor for the values >= 0
        # that a `column >= since` filter leaves.
        offset = (type_coerce(column, Float) - since.timestamp()) / width
        return cast(offset, Integer)

    def install_counters(self, conn: Connection) -> bool:
        # One writer at a time in SQLite, so one shard (0) and row-level triggers suffice.
        found = conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'nbjobs_count_ins'"
        ).first()
        if found is not None:
            return False
        bump = (
            "INSERT INTO nbjobs_counts (state, shard, n) VALUES ({state}, 0, {delta}) "
            "ON CONFLICT (state, shard) DO UPDATE SET n = n + excluded.n;"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER nbjobs_count_ins AFTER INSERT ON nbjobs_jobs BEGIN "
            + bump.format(state="NEW.state", delta=1) + " END"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER nbjobs_count_upd AFTER UPDATE OF state ON nbjobs_jobs "
            "WHEN OLD.state <> NEW.state BEGIN "
            + bump.format(state="NEW.state", delta=1) + bump.format(state="OLD.state", delta=-1)
            + " END"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER nbjobs_count_del AFTER DELETE ON nbjobs_jobs BEGIN "
            + bump.format(state="OLD.state", delta=-1) + " END"
        )
        return True

    def seed_planner_stats(self, conn: Connection) -> None:
        # Without statistics SQLite takes `state = 'enqueued'` for a selective filter and claims
        # through the (state, id) index, sorting the whole backlog on every claim. These figures
        # (a few states, each a large share of the rows) steer it to the ordered partial indexes,
        # so a claim reads `limit` rows whatever the backlog. A later ANALYZE replaces them with
        # real ones, which lead to the same plans once there is a backlog.
        conn.exec_driver_sql("ANALYZE sqlite_schema")  # creates sqlite_stat1 if it does not exist
        conn.exec_driver_sql("DELETE FROM sqlite_stat1 WHERE tbl = 'nbjobs_jobs'")
        conn.exec_driver_sql(
            "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES "
            "('nbjobs_jobs', 'ix_nbjobs_jobs_state_id', '100000 20000 1'), "
            "('nbjobs_jobs', 'ix_nbjobs_jobs_fetch_any', '20000 20000 1'), "
            "('nbjobs_jobs', 'ix_nbjobs_jobs_fetch', '20000 5000 5000 1')"
        )
        conn.exec_driver_sql("ANALYZE sqlite_schema")  # reload the statistics

    def make_listener(self) -> Listener:
        return SqliteListener(make_url(self.url).database or "")


#: Whether any job waits to be claimed (the text of `schema.ENQUEUED_ROW`, so its partial index serves).
_ANY_ENQUEUED = "SELECT 1 FROM nbjobs_jobs WHERE state = 'enqueued' LIMIT 1"
#: The earliest due times the scheduler waits for (`Store.next_wakeup`), as stored (epoch seconds).
_DUE_TIMES = (
    "SELECT (SELECT min(run_at) FROM nbjobs_jobs WHERE state = 'scheduled'),"
    " (SELECT min(next_fire) FROM nbjobs_recurring WHERE paused = 0)"
)


class SqliteListener(Listener):
    """Sees commits of other connections through SQLite's `PRAGMA data_version`.

    On Linux the database's directory is watched with inotify, so a commit by any process (a write
    to the WAL) wakes the listener at once and an idle one sleeps: no 4-per-second polling, and
    cross-process pickup in milliseconds instead of a poll interval. `data_version` then confirms a
    real change (a checkpoint writes files too). Elsewhere, or if inotify is unavailable (instance
    limit reached), it polls `data_version` every `timeout`, which touches no table.
    """

    sees_every_commit = True
    #: With inotify, a safety poll this often (seconds) in case a write went unseen.
    WATCHED_POLL = 2.0
    #: With inotify, at least this long between two reports, so a busy database (thousands of
    #: commits a second) costs the listener a few dozen wake-ups a second, not one per commit (the
    #: scheduler coalesces further: `scheduler.MIN_TICK_GAP`).
    MIN_GAP = 0.02
    #: How long a write may take to become a visible commit (its fsync) before it is taken for a
    #: write that commits nothing (a checkpoint); the safety poll covers anything slower.
    PUBLISH_WAIT = 0.25

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._due: tuple[Any, ...] | None = None  #: the due times at the last look (raw values)
        self._watch: _DirectoryWatch | None = _DirectoryWatch.open(path)

    def open(self) -> None:
        self._version = self._data_version()
        self.due_times_changed()  # the baseline

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        # Unopened, the first call only takes the baseline, before waiting, and reports "changed":
        # whatever was committed between the dispatcher's last look and it would otherwise go unseen.
        written = False
        if self._version is not None:
            if self._watch is not None:
                if stop.wait(self.MIN_GAP):
                    return False
                written = self._watch.wait(max(timeout, self.WATCHED_POLL))  # or the safety poll
                if stop.is_set():
                    return False
            elif stop.wait(timeout):
                return False
        try:
            version = self._data_version()
            # A commit writes its WAL frames (the event), syncs them, and only then publishes them
            # in the shared-memory index (no event): the change may become visible a little later.
            delay = 0.001
            while written and version == self._version and delay < self.PUBLISH_WAIT:
                if stop.wait(delay):
                    return False
                version, delay = self._data_version(), delay * 2
        except sqlite3.Error:
            self.close()
            stop.wait(timeout)
            return True  # cannot tell: let the dispatcher look
        changed = self._version is None or version != self._version
        self._version = version
        return changed

    # Every commit is reported (heartbeats, finished jobs, …) and most concern neither the dispatcher
    # nor the scheduler: two lookups (partial indexes) on the listener's own connection tell.
    def work_pending(self) -> bool:
        try:
            return self._connection().execute(_ANY_ENQUEUED).fetchone() is not None
        except sqlite3.Error:
            return True

    def due_times_changed(self) -> bool:
        try:
            due = tuple(self._connection().execute(_DUE_TIMES).fetchone())
        except sqlite3.Error:
            return True
        changed, self._due = due != self._due, due
        return changed

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self._path, check_same_thread=False)
        return self._conn

    def _data_version(self) -> int:
        return int(self._connection().execute("PRAGMA data_version").fetchone()[0])

    def interrupt(self) -> None:
        if self._watch is not None:
            self._watch.interrupt()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()


class _DirectoryWatch:
    """inotify on a database's directory, for writes to its WAL (Linux only)."""

    def __init__(self, inotify: Any, wal: str) -> None:
        self._inotify = inotify
        self._wal = wal  #: in WAL mode every commit writes here; the database file only at checkpoints
        self._waker = _WakePipe()

    @classmethod
    def open(cls, path: str) -> _DirectoryWatch | None:
        if not path or path == ":memory:":
            return None
        try:
            from inotify_simple import INotify, flags
        except ImportError:  # not Linux, or not installed: poll instead
            return None
        directory, name = os.path.split(os.path.abspath(path))
        try:
            inotify = INotify()
        except OSError as exc:  # e.g. fs.inotify.max_user_instances reached
            log.info("inotify unavailable (%s); polling the database for changes", exc)
            return None
        try:
            inotify.add_watch(directory, flags.MODIFY | flags.CREATE | flags.MOVED_TO)
        except OSError as exc:
            inotify.close()
            log.info("cannot watch %s (%s); polling the database for changes", directory, exc)
            return None
        return cls(inotify, f"{name}-wal")

    def wait(self, timeout: float) -> bool:
        """True when the database or its WAL was written (events drained); False on timeout."""
        ready, _, _ = _select.select([self._inotify.fileno(), self._waker.fd], [], [], timeout)
        if not ready or self._waker.fd in ready:  # timed out, or interrupted
            return False
        return any(e.name == self._wal for e in self._inotify.read(timeout=0))

    def interrupt(self) -> None:
        self._waker.wake()

    def close(self) -> None:
        self._inotify.close()
        self._waker.close()


class _WakePipe:
    """A pipe that a listener's `select` also waits on, so that stopping the server ends the wait
    at once, however long the poll interval."""

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # closed already
            os.write(self._write_fd, b"x")

    def close(self) -> None:
        for fd in (self.fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class PostgresDialect(Dialect):
    name = "postgresql"
    one_statement_writes = True

    misconfigured_messages = ("does not exist", "authentication failed", "failed to resolve host",
                              "no pg_hba.conf entry", "does not support SSL")

    def is_full(self, exc: BaseException) -> bool:
        # SQLSTATE class 53, insufficient resources: disk_full (53100), out_of_memory (53200), …
        cause = getattr(exc, "orig", None) or exc
        return str(getattr(cause, "sqlstate", "") or "").startswith("53")

    def create_engine(self) -> Engine:
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise ConfigurationError(
                "PostgreSQL needs psycopg 3: pip install 'nbjobs[postgres]'"
            ) from exc
        return create_engine(
            # No pre-ping: it costs a round trip per transaction, and a connection found dead on use
            # is a transient error that `SqlStore._tx` retries on a fresh one anyway.
            self.url, pool_size=self.pool_size, max_overflow=20, pool_pre_ping=False, pool_recycle=1800,
            pool_use_lifo=True,
        )

    def schema_lock(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(7412093)"))

    def claim_lock(self, stmt: _S) -> _S:
        return stmt.with_for_update(skip_locked=True)

    def row_lock(self, stmt: _S) -> _S:
        return stmt.with_for_update()

    def notify(self, conn: Connection, payload: str) -> None:
        conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})

    def notify_expr(self, payload: str) -> ColumnElement[Any]:
        return func.pg_notify(literal(CHANNEL), literal(payload))

    def epoch_seconds(self, column: Any) -> ColumnElement[Any]:
        return cast(func.extract("epoch", column), Float)  # numeric → double: no Decimal per row

    def time_bucket(self, column: Any, since: datetime, width: float) -> ColumnElement[Any]:
        start = literal(since, TIMESTAMP(timezone=True))
        seconds = func.extract("epoch", column) - func.extract("epoch", start)
        return cast(func.floor(seconds / width), Integer)

    def install_counters(self, conn: Connection) -> bool:
        # Statement-level triggers over transition tables: one counter upsert per statement, however
        # many rows it changed. Each connection adds to shard pid % 16 (rows summed on read), so
        # servers claiming at once do not serialise on one counter row.
        found = conn.exec_driver_sql(
            "SELECT 1 FROM pg_trigger WHERE tgname = 'nbjobs_count_upd' AND NOT tgisinternal"
        ).first()
        if found is not None:
            return False
        upsert = (
            "INSERT INTO nbjobs_counts (state, shard, n) SELECT state, mod(pg_backend_pid(), 16), sum(d) "
            "FROM ({rows}) AS t GROUP BY state HAVING sum(d) <> 0 ORDER BY state "
            "ON CONFLICT (state, shard) DO UPDATE SET n = nbjobs_counts.n + EXCLUDED.n;"
        )
        bodies = {
            "ins": upsert.format(rows="SELECT state, 1 AS d FROM new_rows"),
            "upd": upsert.format(
                rows="SELECT state, 1 AS d FROM new_rows UNION ALL SELECT state, -1 FROM old_rows"
            ),
            "del": upsert.format(rows="SELECT state, -1 AS d FROM old_rows"),
        }
        tables = {
            "ins": ("INSERT", "NEW TABLE AS new_rows"),
            "upd": ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
            "del": ("DELETE", "OLD TABLE AS old_rows"),
        }
        for kind, body in bodies.items():
            conn.exec_driver_sql(
                f"CREATE OR REPLACE FUNCTION nbjobs_count_{kind}() RETURNS trigger LANGUAGE plpgsql "
                f"AS $$ BEGIN {body} RETURN NULL; END $$"
            )
            event, referencing = tables[kind]
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS nbjobs_count_{kind} ON nbjobs_jobs")
            conn.exec_driver_sql(
                f"CREATE TRIGGER nbjobs_count_{kind} AFTER {event} ON nbjobs_jobs "
                f"REFERENCING {referencing} FOR EACH STATEMENT EXECUTE FUNCTION nbjobs_count_{kind}()"
            )
        return True

    def make_listener(self) -> Listener:
        return PostgresListener(self.url)


class PostgresListener(Listener):
    """A dedicated autocommit psycopg connection on LISTEN; reconnects after a lost connection."""

    CONNECT_TIMEOUT = 5  #: seconds; an unreachable host must not hang the listener thread

    def __init__(self, sa_url: str) -> None:
        url = make_url(sa_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._conn: Any = None
        self._failing = False  #: the last attempt failed (log once per outage, not once per retry)
        self._waker = _WakePipe()

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=self.CONNECT_TIMEOUT)
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:  # killed between connect and LISTEN: close it rather than leak it
            conn.close()
            raise
        return conn

    def open(self) -> None:
        self._conn = self._connect()

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
                if self._failing:
                    log.info("LISTEN connection restored", extra={"action": "listen_restored"})
                self._failing = False
                # Notifications sent while we were not listening are gone: let the dispatcher look.
                return True
            conn = self._conn
            # Wait on the socket so the wait itself costs nothing; drain whatever arrived.
            ready, _, _ = _select.select([conn.fileno(), self._waker.fd], [], [], timeout)
            if not ready or self._waker.fd in ready:  # timed out, or the server is stopping
                return False
            got = False
            for _ in conn.notifies(timeout=0, stop_after=1000):
                got = True
            return got
        except Exception as exc:
            if not self._failing:
                log.warning("LISTEN connection lost (%s); polling every %.2fs until it returns", exc,
                            timeout, extra={"action": "listen_lost"})
            else:
                log.debug("LISTEN reconnect failed: %s", exc)
            self._failing = True
            self._drop()
            stop.wait(min(timeout, 1.0))
            return True  # we may have missed a notification: let the dispatcher look

    def interrupt(self) -> None:
        self._waker.wake()

    def close(self) -> None:
        self._drop()
        self._waker.close()

    def _drop(self) -> None:
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
