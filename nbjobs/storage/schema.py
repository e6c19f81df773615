"""The tables, created on first connect, and the schema version check.

Indexes are partial where a state selects a small, hot subset (enqueued, scheduled, processing):
the claim, promote and reap queries then touch only the rows that matter, however many finished
jobs the table holds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    and_,
    literal_column,
)
from sqlalchemy.dialects.postgresql import TIMESTAMP

from ..model import (
    CRON_MAX,
    ERROR_TYPE_MAX,
    FUNCTION_MAX,
    KEY_MAX,
    NAME_MAX,
    QUEUE_MAX,
    RECURRING_ID_MAX,
    SERVER_NAME_MAX,
)

#: 2: `ix_nbjobs_jobs_fetch_any` (claims from every shared queue read the backlog in order).
#: 3: `nbjobs_dependencies` (continuations of several jobs; an older nbjobs would never run them).
#: 4: `nbjobs_jobs.lock_name` and its two indexes (`options(lock=…)`: one job of a lock at a time;
#:    an older nbjobs would run them side by side).
#: 5: `nbjobs_paused_queues` (`pause_queue`: an older nbjobs would go on claiming from them).
#: 6: `nbjobs_recurring.start_at` / `end_at` (a definition's window) and `misfire_grace`, and the
#:    shared rates (`nbjobs_queue_rates`, `nbjobs_rate_starts`): an older nbjobs would fire outside
#:    the window or however late, and claim from a rated queue beyond its rate.
#: 7: `nbjobs_queue_quotas` replaces `nbjobs_queue_rates` (rows moved), adding `max_running`, a cap on
#:    a queue's running jobs across servers: an older nbjobs would run more.
SCHEMA_VERSION = 7

metadata = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes: TIMESTAMPTZ on PostgreSQL, epoch seconds (REAL) on SQLite.

    Epoch seconds keep SQLite comparisons and indexes numeric and fast; PostgreSQL keeps a real
    timestamp for people who query it by hand.
    """

    impl = Float
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(TIMESTAMP(timezone=True))
        return dialect.type_descriptor(Float())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected datetime, got {type(value).__name__}")
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if dialect.name == "postgresql":
            return value.astimezone(UTC)
        return value.timestamp()

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return datetime.fromtimestamp(float(value), UTC)


JobId = BigInteger().with_variant(Integer(), "sqlite")

jobs = Table(
    "nbjobs_jobs",
    metadata,
    Column("id", JobId, primary_key=True, autoincrement=True),
    Column("state", String(16), nullable=False),
    Column("queue", String(QUEUE_MAX), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    Column("name", String(NAME_MAX)),
    Column("function", String(FUNCTION_MAX), nullable=False),
    Column("options", Text, nullable=False),  # JSON of JobOptions
    Column("payload", LargeBinary, nullable=False),
    Column("active_key", String(KEY_MAX)),  # the unique key while the job is unfinished, else NULL
    Column("lock_name", String(KEY_MAX)),  # options(lock=…): jobs sharing it never run at once
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("run_at", UTCDateTime),  # due time while Scheduled
    Column("enqueued_at", UTCDateTime),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("server_id", String(64)),
    Column("lease_until", UTCDateTime),
    Column("parent_id", JobId),
    Column("continue_on", String(16)),
    Column("has_children", Boolean, nullable=False, default=False),
    Column("recurring_id", String(RECURRING_ID_MAX)),
    Column("fire_time", UTCDateTime),
    Column("result", LargeBinary),
    Column("error_type", String(ERROR_TYPE_MAX)),
    Column("error_message", Text),
    Column("error_traceback", Text),
    Column("progress", Float),
    Column("progress_message", Text),
    Column("cancel_requested", Boolean, nullable=False, default=False),
)

#: The state as an SQL literal, not a bound parameter: a partial index is usable only by a query
#: whose WHERE has the index's condition verbatim (a `state = ?` parameter does not qualify, on
#: SQLite, or on PostgreSQL once it switches a prepared statement to a generic plan).
ENQUEUED_ROW = jobs.c.state == literal_column("'enqueued'")
_enqueued = ENQUEUED_ROW
_scheduled = jobs.c.state == "scheduled"
_processing = jobs.c.state == "processing"
Index(
    "ix_nbjobs_jobs_fetch",
    jobs.c.queue,
    jobs.c.priority.desc(),
    jobs.c.id,
    sqlite_where=_enqueued,
    postgresql_where=_enqueued,
)
# The claim from every shared queue ("*"): the next jobs in order without sorting the backlog.
FETCH_ANY = Index(
    "ix_nbjobs_jobs_fetch_any",
    jobs.c.priority.desc(),
    jobs.c.id,
    sqlite_where=_enqueued,
    postgresql_where=_enqueued,
)
Index("ix_nbjobs_jobs_due", jobs.c.run_at, sqlite_where=_scheduled, postgresql_where=_scheduled)
Index(
    "ix_nbjobs_jobs_lease",
    jobs.c.lease_until,
    sqlite_where=_processing,
    postgresql_where=_processing,
)
Index("ix_nbjobs_jobs_state_id", jobs.c.state, jobs.c.id)
# The indexes below are partial (non-NULL rows only) because most jobs have no parent, key or
# recurring definition and are unfinished while hot: a plain job's insert and claim then write 4 fewer
# index pages, which is most of a commit's cost. Queries on `col = …` or `col < …` still use them.
_finished = jobs.c.finished_at.isnot(None)
Index("ix_nbjobs_jobs_state_finished", jobs.c.state, jobs.c.finished_at,
      sqlite_where=_finished, postgresql_where=_finished)
_has_parent = jobs.c.parent_id.isnot(None)
Index("ix_nbjobs_jobs_parent", jobs.c.parent_id, sqlite_where=_has_parent, postgresql_where=_has_parent)
_has_key = jobs.c.active_key.isnot(None)
Index("ix_nbjobs_jobs_key", jobs.c.active_key, unique=True, sqlite_where=_has_key, postgresql_where=_has_key)
# `options(lock=…)`: a lock is held by the one Processing job that names it. Unique, so that no
# interleaving of servers can ever run two at once (the claim avoids that; this makes it certain).
_holds_lock = and_(jobs.c.state == literal_column("'processing'"), jobs.c.lock_name.isnot(None))
LOCK_HELD = Index("ix_nbjobs_jobs_lock_held", jobs.c.lock_name, unique=True,
                  sqlite_where=_holds_lock, postgresql_where=_holds_lock)
# The waiting jobs of a lock in claim order: only the first may be claimed.
_waits_for_lock = and_(_enqueued, jobs.c.lock_name.isnot(None))
LOCK_NEXT = Index("ix_nbjobs_jobs_lock_next", jobs.c.lock_name, jobs.c.priority.desc(), jobs.c.id,
                  sqlite_where=_waits_for_lock, postgresql_where=_waits_for_lock)
_has_recurring = jobs.c.recurring_id.isnot(None)
Index("ix_nbjobs_jobs_recurring", jobs.c.recurring_id, jobs.c.fire_time,
      sqlite_where=_has_recurring, postgresql_where=_has_recurring)

history = Table(
    "nbjobs_history",
    metadata,
    Column("id", JobId, primary_key=True, autoincrement=True),
    Column("job_id", JobId, nullable=False),
    Column("state", String(16), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("server_id", String(64)),
    Column("data", Text),  # JSON
)
Index("ix_nbjobs_history_job", history.c.job_id, history.c.id)

# Continuations of several jobs (`Client.after`): one row per parent. A continuation of one job
# keeps `jobs.parent_id`; either way the parents carry `has_children`, which is what makes a
# finishing job look for continuations to release.
dependencies = Table(
    "nbjobs_dependencies",
    metadata,
    Column("parent_id", JobId, primary_key=True, autoincrement=False),
    Column("child_id", JobId, primary_key=True, autoincrement=False),
)
Index("ix_nbjobs_dependencies_child", dependencies.c.child_id)

servers = Table(
    "nbjobs_servers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(SERVER_NAME_MAX), nullable=False),
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("workers", Integer, nullable=False),
    Column("queues", Text, nullable=False),  # JSON list
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
)

logs = Table(
    "nbjobs_logs",
    metadata,
    Column("id", JobId, primary_key=True, autoincrement=True),
    Column("job_id", JobId, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("stream", String(16), nullable=False),  # stdout | stderr | log
    Column("text", Text, nullable=False),
)
Index("ix_nbjobs_logs_job", logs.c.job_id, logs.c.id)

recurring = Table(
    "nbjobs_recurring",
    metadata,
    Column("id", String(RECURRING_ID_MAX), primary_key=True),
    Column("cron", String(CRON_MAX), nullable=False),
    Column("tz", String(100), nullable=False, default="UTC"),
    Column("function", String(FUNCTION_MAX), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("options", Text, nullable=False),  # JSON of JobOptions
    Column("misfire", String(16), nullable=False, default="once"),
    Column("misfire_limit", Integer, nullable=False, default=100),
    Column("misfire_grace", Float),  # seconds: fire times later than this get no job (schema 6)
    Column("overlap", String(16), nullable=False, default="allow"),
    Column("start_at", UTCDateTime),  # no fire time before it (schema 6)
    Column("end_at", UTCDateTime),  # no fire time after it (schema 6)
    Column("next_fire", UTCDateTime),
    Column("last_fire", UTCDateTime),
    Column("last_job_id", JobId),
    Column("paused", Boolean, nullable=False, default=False),
    Column("error", Text),
    Column("missed", Integer, nullable=False, default=0),  # fire times that got no job of their own
    Column("last_skip", Text),  # why the latest of those got none
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Jobs per state, kept exact by triggers (see `dialects.Dialect.install_counters`) so the dashboard
# reads a handful of rows instead of counting a million. Summed over `shard`: on PostgreSQL each
# connection adds to its own shard, so concurrent transactions do not queue on one hot row.
counts = Table(
    "nbjobs_counts",
    metadata,
    Column("state", String(16), primary_key=True),
    Column("shard", Integer, primary_key=True, autoincrement=False),
    Column("n", BigInteger, nullable=False, default=0),
)

# Queues no server claims from until resumed (`Store.pause_queue`); read by every claim statement.
paused_queues = Table(
    "nbjobs_paused_queues",
    metadata,
    Column("queue", String(QUEUE_MAX), primary_key=True),
    Column("paused_at", UTCDateTime, nullable=False),
)

# Quotas every server keeps together (`Store.set_queue_rate`, `Store.set_queue_limit`): at most
# `count` starts of the queue in any `period` seconds, and at most `max_running` of its jobs running,
# whatever the number of servers (NULL: no such quota). Read by every claim statement (a queue with a
# quota is claimed on its own, under a lock of its row) and by the servers' claims of it.
queue_quotas = Table(
    "nbjobs_queue_quotas",
    metadata,
    Column("queue", String(QUEUE_MAX), primary_key=True),
    Column("count", Integer),
    Column("period", Float),
    Column("max_running", Integer),
    Column("set_at", UTCDateTime, nullable=False),
)

# The starts of rated queues within their period (older ones are deleted as claims go).
rate_starts = Table(
    "nbjobs_rate_starts",
    metadata,
    Column("id", JobId, primary_key=True, autoincrement=True),
    Column("queue", String(QUEUE_MAX), nullable=False),
    Column("at", UTCDateTime, nullable=False),
)
Index("ix_nbjobs_rate_starts_queue_at", rate_starts.c.queue, rate_starts.c.at)

locks = Table(
    "nbjobs_locks",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

meta = Table(
    "nbjobs_meta",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", String(1000), nullable=False),
)
