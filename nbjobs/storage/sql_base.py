"""The shared part of the SQL store: engine, transactions with retries, schema, history rows.

The store is split by concern (`sql` the job write path, `sql_reads` listings and counts,
`sql_upkeep` servers, leases, maintenance and output, `sql_recurring` schedules); every part is a mixin
on this base, and `sql.SqlStore` puts them together.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Row,
    Table,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)

from .. import states
from ..errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    SchemaVersionError,
    StorageFullError,
    UnstorableError,
)
from ..model import (
    ContinueOn,
    JobOptions,
    JobRecord,
    JobState,
    storable,
)
from .dialects import Dialect, Listener, dialect_for
from .schema import (
    FETCH_ANY,
    LOCK_HELD,
    LOCK_NEXT,
    SCHEMA_VERSION,
    counts,
    history,
    jobs,
    meta,
    metadata,
    recurring,
)

log = logging.getLogger("nbjobs.storage")
T = TypeVar("T")
S = JobState
E = states.Event

#: Columns shown in listings; payloads and results stay in the database.
LIST_COLUMNS = [
    jobs.c.id, jobs.c.name, jobs.c.function, jobs.c.queue, jobs.c.priority, jobs.c.state,
    jobs.c.attempts, jobs.c.created_at, jobs.c.enqueued_at, jobs.c.run_at, jobs.c.started_at,
    jobs.c.finished_at, jobs.c.server_id, jobs.c.progress, jobs.c.progress_message, jobs.c.error_type,
    jobs.c.error_message, jobs.c.recurring_id, jobs.c.fire_time, jobs.c.parent_id, jobs.c.options,
]

#: Statements built once: building one costs more than executing it for a single row.
_INSERT_HISTORY = insert(history)
_INSERT_JOB = insert(jobs).returning(jobs.c.id)
_INSERT_JOB_PLAIN = insert(jobs)  #: for the driver, which tells the new id itself (`lastrowid`)
_INSERT_JOBS = insert(jobs).returning(jobs.c.id, sort_by_parameter_order=True)
#: Finish UPDATEs by the set of columns they write (a handful of shapes).
_FINISH_STMTS: dict[tuple[str, ...], Any] = {}
#: Parsed options by their stored JSON: the jobs of one function share a few distinct texts.
_OPTIONS_CACHE: dict[str, JobOptions] = {}
_OPTIONS_JSON: dict[JobOptions, str] = {}


def _options_json(opts: JobOptions) -> str:
    """JobOptions as stored JSON, encoded once per distinct value (the inverse of `_options`)."""
    try:
        text = _OPTIONS_JSON.get(opts)
    except TypeError:  # an option holding a list or dict: not hashable, not cached
        return json.dumps(opts.to_dict())
    if text is None:
        if len(_OPTIONS_JSON) >= 1024:
            _OPTIONS_JSON.clear()
        text = _OPTIONS_JSON[opts] = json.dumps(opts.to_dict())
    return text


def _options(text: str) -> JobOptions:
    """Stored options as JobOptions, parsed once per distinct text (JobOptions is frozen)."""
    found = _OPTIONS_CACHE.get(text)
    if found is None:
        if len(_OPTIONS_CACHE) >= 1024:
            _OPTIONS_CACHE.clear()
        found = _OPTIONS_CACHE[text] = JobOptions.from_dict(json.loads(text))
    return found


#: Values that end a job's hold by a server and its unique key.
_RELEASE = {"server_id": None, "lease_until": None}



class SqlBase:
    """Engine, transactions and schema for the SQL store mixins."""

    dialect_name: str


    def __init__(
        self,
        url: str,
        *,
        synchronous: str = "FULL",
        pool_size: int = 10,
        max_retries: int = 8,
    ) -> None:
        self.dialect: Dialect = dialect_for(url, synchronous=synchronous, pool_size=pool_size)
        self.dialect_name = self.dialect.name
        self.url = self.dialect.url
        self.database = self.dialect.database
        self.engine = self.dialect.create_engine()
        #: The same pool, its connections in autocommit while checked out (one-statement writes).
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._max_retries = max_retries
        self._claim_stmts: dict[tuple[str, frozenset[str], bool], Any] = {}
        self._enqueue_stmt: Any = None
        self._parent_states_stmt: Any = None  #: these two: `dialect.row_lock` of a module statement
        self._keyed_stmt: Any = None
        #: `_executemany`'s compiled statements by statement and columns (a handful of shapes).
        self._driver_batches: dict[tuple[Any, tuple[str, ...]], _DriverBatch | None] = {}
        #: The pooled connection kept for `_driver_tx` (used only under the write guard, so by one
        #: thread at a time), and the process that opened it: a forked child opens its own.
        self._writer: Any = None
        self._closed = False
        self._writer_pid = 0
        #: The running jobs of a finishing server, locked until the outcome is written.
        self._held_stmt = self.dialect.row_lock(
            select(jobs.c.id, jobs.c.has_children, jobs.c.started_at, jobs.c.attempts).where(
                jobs.c.id.in_(bindparam("held_ids", expanding=True)),
                jobs.c.state == S.PROCESSING.value,
                jobs.c.server_id == bindparam("held_server", type_=jobs.c.server_id.type),
            )
        )
        try:
            self._ensure_schema()
        except BaseException as exc:  # e.g. a newer schema: release the pool rather than leak its connection
            self.engine.dispose()
            if isinstance(exc, Exception) and self.dialect.is_transient(exc):  # tried, in vain
                raise DatabaseUnavailableError(
                    f"cannot reach the database {self.database} ({_driver_message(exc)}) after "
                    f"{self._max_retries + 1} tries; check that its server runs and that the URL "
                    "(NBJOBS_URL, or connect(url)) names it"
                ) from exc
            raise

    # -- transactions ---------------------------------------------------------------------------
    def _tx(self, body: Callable[[Connection], T], *, write: bool = True, one_statement: bool = False) -> T:
        """Run `body` in one transaction; retry lock contention and lost connections with backoff.

        `one_statement`: `body` runs a single statement, which is its own transaction in autocommit
        mode (only where `dialect.one_statement_writes`): no BEGIN and COMMIT round trips.
        """

        def once() -> T:
            if one_statement:
                with self._autocommit.connect() as conn:
                    return body(conn)
            # The guard is outermost so a failed transaction is rolled back before it is released.
            with self.dialect.write_guard() if write else nullcontext(), self.engine.connect() as conn:
                if write:
                    self.dialect.begin_write(conn)
                else:
                    conn.begin()
                result = body(conn)
                conn.commit()
                return result

        return self._retrying(once)

    def _driver_tx(self, body: Callable[[Any], T]) -> T:
        """A write transaction on the driver's own connection (`dialect.driver_writes`), for the
        hot single-job writes: `body` gets the DBAPI connection and runs `_driver_statement`s."""

        def once() -> T:
            with self.dialect.write_guard():
                dbapi_conn = self._writer_connection()
                self.dialect.begin_driver_write(dbapi_conn)
                try:
                    result = body(dbapi_conn)
                    dbapi_conn.commit()
                except BaseException:
                    self._drop_writer_after_error()
                    raise
                return result

        return self._retrying(once)

    def _writer_connection(self) -> Any:
        """The driver connection for `_driver_tx`, checked out once rather than per write (the
        pool's checkout, reset and checkin cost a fifth of a lone enqueue). Under the write guard."""
        if self._writer is None or self._writer_pid != os.getpid():
            # An inherited connection is left alone (neither used nor closed): it is the parent's.
            self._writer = self.engine.raw_connection()
            self._writer_pid = os.getpid()
        return self._writer.dbapi_connection

    def _drop_writer_after_error(self) -> None:
        """Roll back a failed driver write; a connection that cannot even do that is discarded."""
        writer, self._writer = self._writer, None
        try:
            writer.dbapi_connection.rollback()
        except Exception:
            writer.invalidate()
            return
        writer.close()  # back to the pool; the next write checks one out again

    def _retrying(self, once: Callable[[], T]) -> T:
        if self._closed:
            # Used after close(): a Job handle outliving its engine (`%reload_ext nbjobs`, a `with`
            # block ended) still reads and changes its job, as users rely on, but leaves no
            # connection open behind it (SQLAlchemy would keep a new pool's connections for good).
            try:
                return self._retrying_open(once)
            finally:
                self.reset_connections()
        return self._retrying_open(once)

    def _retrying_open(self, once: Callable[[], T]) -> T:
        delay = 0.01
        for attempt in range(self._max_retries + 1):
            try:
                return once()
            except Exception as exc:
                if self.dialect.is_unstorable(exc):
                    cause = getattr(exc, "orig", None) or exc
                    raise UnstorableError(f"the database refused the values written: {cause}") from exc
                if self.dialect.is_full(exc):
                    cause = getattr(exc, "orig", None) or exc
                    raise StorageFullError(
                        f"the database {self.database} is full ({cause}); nothing of this call was "
                        "stored. Free space where it is kept (its disk, or the PostgreSQL server's), or "
                        "keep finished jobs for less time (start_server(keep_succeeded=…))"
                    ) from exc
                if self.dialect.is_misconfigured(exc):
                    raise ConfigurationError(
                        f"cannot use the database {self.database}: {_driver_message(exc)}. Check the URL "
                        "(NBJOBS_URL, or connect(url)): the host, database and user it names must exist"
                    ) from exc
                if attempt >= self._max_retries or not self.dialect.is_transient(exc):
                    raise
                log.warning("transient database error (attempt %d): %s; retrying", attempt + 1,
                            _driver_message(exc))
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def _ensure_schema(self) -> None:
        def body(conn: Connection) -> None:
            self.dialect.schema_lock(conn)
            metadata.create_all(conn, checkfirst=True)
            row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
            if row is None:
                conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
                self.dialect.seed_planner_stats(conn)
            elif int(row) > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"this database was written by a newer nbjobs (schema {row}; this nbjobs knows "
                    f"{SCHEMA_VERSION}). Upgrade nbjobs (pip install -U nbjobs) or use another database"
                )
            elif int(row) < SCHEMA_VERSION:
                self._migrate(conn, int(row))
                self.dialect.seed_planner_stats(conn)
            if self.dialect.install_counters(conn):
                self._recount(conn)

        self._tx(body)

    @staticmethod
    def _migrate(conn: Connection, version: int) -> None:
        """Bring an older schema up to date (`create_all` adds tables, not indexes of old tables)."""
        if version < 2:
            FETCH_ANY.create(conn, checkfirst=True)
        if version < 4:
            _add_columns(conn, jobs, "lock_name")
            LOCK_HELD.create(conn, checkfirst=True)
            LOCK_NEXT.create(conn, checkfirst=True)
        if version < 6:
            _add_columns(conn, recurring, "start_at", "end_at", "misfire_grace")
        if version < 7 and "nbjobs_queue_rates" in inspect(conn).get_table_names():
            conn.execute(text(  # schema 6's shared rates, now one kind of quota
                "INSERT INTO nbjobs_queue_quotas (queue, count, period, set_at) "
                "SELECT queue, count, period, set_at FROM nbjobs_queue_rates"
            ))
            conn.execute(text("DROP TABLE nbjobs_queue_rates"))
        conn.execute(update(meta).where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))
        log.info("database schema upgraded from %d to %d", version, SCHEMA_VERSION)

    @staticmethod
    def _recount(conn: Connection) -> None:
        """Rebuild the counters from the jobs table (once, when the triggers are first installed)."""
        conn.execute(delete(counts))
        rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
        if rows:
            conn.execute(insert(counts), [{"state": s, "shard": 0, "n": int(n)} for s, n in rows])

    def close(self) -> None:
        """Close every connection; later calls still work, each closing what it opened."""
        self._closed = True
        self.reset_connections()

    def reset_connections(self) -> None:
        with self.dialect.write_guard():  # not while a driver write is using the writer
            writer, self._writer = self._writer, None
            if writer is not None and self._writer_pid == os.getpid():
                writer.close()
        self.engine.dispose()

    def listener(self) -> Listener:
        return self.dialect.make_listener()

    # -- many rows ------------------------------------------------------------------------------
    def _executemany(self, conn: Connection, stmt: Any, rows: Sequence[dict[str, Any]]) -> None:
        """`conn.execute(stmt, rows)`, faster for many rows where the driver's parameters are positional.

        SQLAlchemy's executemany builds every row's parameters through its compiler, about 20 µs a row
        here, and a dispatcher turn writes hundreds of rows (finished jobs, history). The statement,
        its parameter order and its types' bind processors still come from SQLAlchemy, compiled once;
        only the loop that turns rows into tuples for `cursor.executemany` is ours.
        """
        if len(rows) < _DRIVER_BATCH_MIN:
            conn.execute(stmt, rows)
            return
        batch = self._driver_statement(stmt, tuple(rows[0]))
        if batch is None:
            conn.execute(stmt, rows)
        else:
            conn.exec_driver_sql(batch.sql, batch.tuples(rows))

    def _driver_statement(self, stmt: Any, columns: tuple[str, ...]) -> _DriverBatch | None:
        """`stmt` compiled once for this store's driver, for rows with these keys (an INSERT's columns
        are those of its rows, as in SQLAlchemy); None where the driver's parameters are named."""
        key = (stmt, columns)
        batch: _DriverBatch | None = self._driver_batches.get(key, _UNCOMPILED)
        if batch is _UNCOMPILED:
            batch = self._driver_batches[key] = _DriverBatch.compile(stmt, self.engine.dialect, columns)
        return batch

    def _driver_row_statement(self, stmt: Any, row: dict[str, Any]) -> _DriverBatch:
        """`_driver_statement` for a driver write (`_driver_tx`), whose driver is always positional."""
        batch = self._driver_statement(stmt, tuple(row))
        assert batch is not None, "driver writes need a positional driver"
        return batch

    # -- history --------------------------------------------------------------------------------
    def _history_rows(
        self,
        conn: Connection,
        rows: Iterable[tuple[int, JobState, str]],
        now: datetime,
        server_id: str | None,
        data: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        params = _history_params(rows, now, server_id, data)
        if params:
            self._executemany(conn, _INSERT_HISTORY, params)

    def _driver_history_row(
        self, dbapi_conn: Any, job_id: int, state: JobState, now: datetime, reason: str
    ) -> None:
        """`_history_rows` for one row without data, on the driver's connection (`_driver_tx`)."""
        [row] = _history_params([(job_id, state, reason)], now, None, None)
        stmt = self._driver_row_statement(_INSERT_HISTORY, row)
        dbapi_conn.execute(stmt.sql, stmt.tuples([row])[0])


def _history_params(
    rows: Iterable[tuple[int, JobState, str]],
    now: datetime,
    server_id: str | None,
    data: dict[int, dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    return [
        {
            "job_id": job_id,
            "state": state.value,
            "at": now,
            "reason": storable(reason),
            "server_id": server_id,
            "data": json.dumps(data[job_id]) if data and job_id in data else None,
        }
        for job_id, state, reason in rows
    ]


#: From this many rows on, `_executemany` hands tuples to the driver (below, SQLAlchemy's own path).
_DRIVER_BATCH_MIN = 8


class _DriverBatch:
    """A statement compiled for a positional-parameter driver, with its bind processors in order."""

    def __init__(self, sql: str, names: Sequence[str], processors: Sequence[Callable[[Any], Any] | None]):
        self.sql = sql
        self._names = tuple(names)
        # Rows are read with one C-level itemgetter; only the few typed values (times) are converted.
        self._get: Callable[[dict[str, Any]], tuple[Any, ...]]
        if len(self._names) > 1:
            self._get = operator.itemgetter(*self._names)
        else:  # itemgetter of one name returns the value itself, not a 1-tuple
            self._get = self._few
        self._converted = tuple((i, p) for i, p in enumerate(processors) if p is not None)

    def _few(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row[n] for n in self._names)

    @classmethod
    def compile(cls, stmt: Any, dialect: Any, columns: Sequence[str]) -> _DriverBatch | None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(columns))
        if not compiled.positional or compiled.positiontup is None:
            return None  # e.g. psycopg's named parameters: SQLAlchemy's path is fine there
        processors = compiled._bind_processors  # what SQLAlchemy itself applies, keyed by name
        names = list(compiled.positiontup)
        return cls(compiled.string, names, [processors.get(n) for n in names])

    def tuples(self, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        get, converted = self._get, self._converted
        if not converted:
            return [get(row) for row in rows]
        out = []
        for row in rows:
            values = list(get(row))
            for i, proc in converted:
                if values[i] is not None:
                    values[i] = proc(values[i])
            out.append(tuple(values))
        return out


_UNCOMPILED: Any = object()


def _picked(pick: Any) -> Any:
    """The ids a claim picked, as a materialized CTE.

    `UPDATE … WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` may run the subquery more than
    once on PostgreSQL and so update more than n rows; a materialized CTE is evaluated exactly once.
    """
    cte = pick.cte("picked").prefix_with("MATERIALIZED")
    return select(cte.c.id)


def _record(row: Row[Any]) -> JobRecord:
    return JobRecord(
        id=row.id,
        function=row.function,
        state=JobState(row.state),
        options=_options(row.options),
        payload=row.payload,
        created_at=row.created_at,
        attempts=row.attempts,
        run_at=row.run_at,
        enqueued_at=row.enqueued_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        server_id=row.server_id,
        lease_until=row.lease_until,
        parent_id=row.parent_id,
        continue_on=ContinueOn(row.continue_on or "succeeded"),
        recurring_id=row.recurring_id,
        fire_time=row.fire_time,
        result=row.result,
        error_type=row.error_type,
        error_message=row.error_message,
        error_traceback=row.error_traceback,
        progress=row.progress,
        progress_message=row.progress_message,
        cancel_requested=bool(row.cancel_requested),
    )


def _driver_message(exc: BaseException) -> str:
    """A driver's error as one line: its own message, without SQLAlchemy's wrapping and links."""
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def _add_columns(conn: Connection, table: Table, *names: str) -> None:
    """Add the (nullable) columns a newer schema gave an existing table, those it lacks."""
    present = {c["name"] for c in inspect(conn).get_columns(table.name)}
    for name in names:
        if name not in present:
            column_type = table.c[name].type.compile(conn.dialect)
            conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {name} {column_type}"))
