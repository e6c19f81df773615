"""Reading jobs on SQL: records, listings for DataFrames and the dashboard, history, counts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    Connection,
    Select,
    bindparam,
    func,
    literal_column,
    or_,
    select,
)

from ..model import (
    JobRecord,
    JobResult,
    JobState,
    StateChange,
)
from .base import TABLE_COLUMNS, TIME_COLUMNS, JobFilter
from .schema import counts, dependencies, history, jobs
from .sql_base import (
    LIST_COLUMNS,
    S,
    SqlBase,
    _record,
)

# Built once (an expanding IN): `job.state` and `job.result()` run them on every poll.
_IDS: BindParameter[int] = bindparam("ids", expanding=True)
_STATES_OF = select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(_IDS))
_STATE_COUNTS = select(jobs.c.state, func.count()).where(jobs.c.id.in_(_IDS)).group_by(jobs.c.state)
_RESULTS_OF = select(jobs.c.id, jobs.c.state, jobs.c.result, jobs.c.error_type, jobs.c.error_message,
                     jobs.c.error_traceback, jobs.c.function).where(jobs.c.id.in_(_IDS))



#: Awaiting continuations of some jobs (`then`), and Awaiting jobs among whose parents they are
#: (`after`, a Job given as an argument): `awaiting_descendants` a level at a time.
_AWAITING_CHILDREN = select(jobs.c.id).where(
    jobs.c.parent_id.in_(bindparam("ids", expanding=True)), jobs.c.state == JobState.AWAITING.value
)
_AWAITING_FAN_INS = select(jobs.c.id).where(
    jobs.c.id.in_(
        select(dependencies.c.child_id).where(dependencies.c.parent_id.in_(bindparam("ids", expanding=True)))
    ),
    jobs.c.state == JobState.AWAITING.value,
)

class ReadsSqlMixin(SqlBase):
    """Read-only methods of `SqlStore` (see `Store` for what each guarantees)."""

    # -- reading --------------------------------------------------------------------------------
    def get(self, job_id: int) -> JobRecord | None:
        def body(conn: Connection) -> JobRecord | None:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            return None if row is None else _record(row)

        return self._tx(body, write=False)

    def states_of(self, job_ids: Sequence[int]) -> dict[int, JobState]:
        if not job_ids:
            return {}
        ids = {"ids": list(job_ids)}
        return self._tx(lambda conn: {r.id: JobState(r.state) for r in conn.execute(_STATES_OF, ids)},
                        write=False)

    def state_counts(self, job_ids: Sequence[int]) -> dict[JobState, int]:
        if not job_ids:
            return {}
        ids = {"ids": list(job_ids)}
        return self._tx(
            lambda conn: {JobState(state): int(n) for state, n in conn.execute(_STATE_COUNTS, ids)},
            write=False,
        )

    def results_of(self, job_ids: Sequence[int]) -> dict[int, JobResult]:
        if not job_ids:
            return {}
        ids = {"ids": list(job_ids)}
        return self._tx(
            lambda conn: {
                r.id: JobResult(state=JobState(r.state), result=r.result, error_type=r.error_type,
                                error_message=r.error_message, error_traceback=r.error_traceback,
                                function=r.function)
                for r in conn.execute(_RESULTS_OF, ids)
            },
            write=False,
        )

    def query(self, flt: JobFilter) -> list[dict[str, Any]]:
        stmt = self._filtered(select(*LIST_COLUMNS), flt)
        return self._tx(lambda conn: [dict(r._mapping) for r in conn.execute(stmt)], write=False)

    def query_table(self, flt: JobFilter) -> tuple[list[str], list[tuple[Any, ...]]]:
        # Bypass per-value result processing: times come back as epoch seconds computed by the
        # database, rows as the driver's own tuples. This is what makes 100,000-row frames fast.
        cols = [
            self.dialect.epoch_seconds(jobs.c[name]).label(name) if name in TIME_COLUMNS
            else jobs.c.lock_name.label(name) if name == "lock" else jobs.c[name]
            for name in TABLE_COLUMNS
        ]
        stmt = self._filtered(select(*cols), flt)

        def body(conn: Connection) -> list[tuple[Any, ...]]:
            result = conn.execute(stmt)
            try:
                return list(result.cursor.fetchall())
            finally:
                result.close()

        return list(TABLE_COLUMNS), self._tx(body, write=False)

    def _filtered(self, stmt: Select[Any], flt: JobFilter) -> Select[Any]:
        if flt.states:
            stmt = stmt.where(jobs.c.state.in_([s.value for s in flt.states]))
        if flt.queues:
            stmt = stmt.where(jobs.c.queue.in_(list(flt.queues)))
        if flt.function:
            stmt = stmt.where(jobs.c.function.contains(flt.function, autoescape=True))
        if flt.name is not None:
            stmt = stmt.where(jobs.c.name == flt.name)
        if flt.lock is not None:
            stmt = stmt.where(jobs.c.lock_name == flt.lock)
        if flt.search:
            term = flt.search.strip()
            cond = or_(
                # In any case on both databases (SQLite's LIKE ignores ASCII case, PostgreSQL's does not).
                jobs.c.function.icontains(term, autoescape=True),
                jobs.c.name.icontains(term, autoescape=True),
            )
            if term.isdigit():
                cond = or_(cond, jobs.c.id == int(term))
            stmt = stmt.where(cond)
        if flt.recurring_id:
            stmt = stmt.where(jobs.c.recurring_id == flt.recurring_id)
        if flt.since is not None:
            stmt = stmt.where(jobs.c.created_at >= flt.since)
        if flt.until is not None:
            stmt = stmt.where(jobs.c.created_at < flt.until)
        if flt.before_id is not None:
            stmt = stmt.where(jobs.c.id < flt.before_id)
        if flt.parent_id is not None:  # its continuations, of it alone or of it among others
            of_many = select(dependencies.c.child_id).where(dependencies.c.parent_id == flt.parent_id)
            stmt = stmt.where(or_(jobs.c.parent_id == flt.parent_id, jobs.c.id.in_(of_many)))
        if flt.min_attempts is not None:
            stmt = stmt.where(jobs.c.attempts >= flt.min_attempts)
        stmt = stmt.order_by(jobs.c.id.desc() if flt.newest_first else jobs.c.id)
        if flt.limit is not None:
            stmt = stmt.limit(flt.limit)
        return stmt

    def parents(self, job_id: int) -> list[int]:
        def body(conn: Connection) -> list[int]:
            single = conn.execute(select(jobs.c.parent_id).where(jobs.c.id == job_id)).scalar()
            if single is not None:
                return [single]
            return list(conn.execute(
                select(dependencies.c.parent_id)
                .where(dependencies.c.child_id == job_id)
                .order_by(dependencies.c.parent_id)
            ).scalars())

        return self._tx(body, write=False)

    def awaiting_descendants(self, job_id: int) -> set[int]:
        def body(conn: Connection) -> set[int]:
            found: set[int] = set()
            frontier = {job_id}
            while frontier:  # a level at a time: usually one empty read
                ids = sorted(frontier)
                level = set(conn.execute(_AWAITING_CHILDREN, {"ids": ids}).scalars())
                level |= set(conn.execute(_AWAITING_FAN_INS, {"ids": ids}).scalars())
                frontier = level - found
                found |= frontier
            return found

        return self._tx(body, write=False)

    def history(self, job_id: int) -> list[StateChange]:
        def body(conn: Connection) -> list[StateChange]:
            rows = conn.execute(
                select(history).where(history.c.job_id == job_id).order_by(history.c.id)
            ).all()
            return [
                StateChange(
                    job_id=r.job_id, state=JobState(r.state), at=r.at, reason=r.reason,
                    server_id=r.server_id, data=json.loads(r.data) if r.data else {},
                )
                for r in rows
            ]

        return self._tx(body, write=False)

    def counts(self) -> dict[JobState, int]:
        """From the trigger-maintained counters: a few rows, however many jobs there are."""

        def body(conn: Connection) -> dict[JobState, int]:
            rows = conn.execute(select(counts.c.state, func.sum(counts.c.n)).group_by(counts.c.state))
            found = {JobState(s): int(n) for s, n in rows}
            return {s: found.get(s, 0) for s in JobState}

        return self._tx(body, write=False)

    def finished_histogram(self, since: datetime, width: float) -> dict[tuple[JobState, int], int]:
        bucket = self.dialect.time_bucket(jobs.c.finished_at, since, width).label("bucket")
        stmt = (
            select(jobs.c.state, bucket, func.count())
            .where(jobs.c.state.in_([S.SUCCEEDED.value, S.FAILED.value]), jobs.c.finished_at >= since)
            .group_by(jobs.c.state, bucket)
        )
        return self._tx(
            lambda conn: {(JobState(s), int(b)): int(n) for s, b, n in conn.execute(stmt)}, write=False
        )

    def queue_overview(self) -> list[tuple[str, JobState, int, datetime | None]]:
        unfinished = [S.SCHEDULED.value, S.AWAITING.value, S.ENQUEUED.value, S.PROCESSING.value]
        stmt = (select(jobs.c.queue, jobs.c.state, func.count(), func.min(jobs.c.enqueued_at))
                .where(jobs.c.state.in_(unfinished)).group_by(jobs.c.queue, jobs.c.state))
        return self._tx(
            lambda conn: [(q, JobState(st), int(n), oldest) for q, st, n, oldest in conn.execute(stmt)],
            write=False,
        )

    def queue_lengths(self) -> dict[str, int]:
        return self._tx(
            lambda conn: {
                q: int(n)
                for q, n in conn.execute(
                    select(jobs.c.queue, func.count())
                    # A literal, not a bound parameter: SQLite only uses a partial index (here
                    # ix_nbjobs_jobs_fetch, enqueued only) when the query names its predicate.
                    .where(jobs.c.state == literal_column("'enqueued'"))
                    .group_by(jobs.c.queue)
                )
            },
            write=False,
        )
