"""Recurring job definitions on SQL: the part of `SqlStore` that stores schedules and claims fires.

The claim is a compare-and-set on the definition's planned next fire (`UPDATE … WHERE next_fire =
:expected AND NOT paused`), done in the same transaction as the inserts of the jobs it creates. The
UPDATE takes the row's write lock (SQLite: the database write lock of `BEGIN IMMEDIATE`; PostgreSQL:
the row lock, after which a waiting claimer re-reads the row, sees the new plan and matches nothing),
so exactly one claimer per planned fire time wins, whatever the number of servers. Jobs are written
with `SqlStore`'s own enqueue helpers, so they are the same rows `enqueue` writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy import Connection, Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..cron import runs_allowed
from ..model import JobState, NewJob
from .base import Enqueued, RecurringRecord, RecurringSpec
from .schema import jobs, recurring
from .sql_base import SqlBase, _options

T = TypeVar("T")

#: The definition's columns plus the state of its latest job.
_RECORD_QUERY = select(recurring, jobs.c.state.label("last_job_state")).select_from(
    recurring.outerjoin(jobs, jobs.c.id == recurring.c.last_job_id)
)


#: The earliest next fire of a definition that is not paused.
NEXT_FIRE = select(func.min(recurring.c.next_fire)).where(recurring.c.paused.is_(False)).scalar_subquery()


class RecurringSqlMixin(SqlBase):
    """Recurring-job methods of `SqlStore` (see `Store` for what each guarantees)."""

    if TYPE_CHECKING:  # provided by SqlStore

        def _enqueue_one(self, conn: Connection, spec: NewJob, now: datetime) -> Enqueued: ...

    # -- definitions --------------------------------------------------------------------------------
    def upsert_recurring(self, spec: RecurringSpec, now: datetime) -> bool:
        values = {
            "cron": spec.cron,
            "tz": spec.tz,
            "function": spec.function,
            "payload": spec.payload,
            "options": json.dumps(spec.options.to_dict()),
            "misfire": spec.misfire,
            "misfire_limit": spec.misfire_limit,
            "misfire_grace": spec.misfire_grace,
            "overlap": spec.overlap,
            "start_at": spec.start,
            "end_at": spec.end,
            "error": None,
            "updated_at": now,
        }

        def update_existing(conn: Connection) -> bool:
            row = conn.execute(
                self.dialect.row_lock(
                    select(
                        recurring.c.cron, recurring.c.tz, recurring.c.start_at, recurring.c.end_at,
                        recurring.c.next_fire,
                    ).where(recurring.c.id == spec.id)
                )
            ).first()
            if row is None:
                return False
            same_schedule = (
                (row.cron, row.tz, row.start_at, row.end_at) == (spec.cron, spec.tz, spec.start, spec.end)
                and row.next_fire is not None
            )
            next_fire = row.next_fire if same_schedule else spec.next_fire
            conn.execute(
                update(recurring).where(recurring.c.id == spec.id).values(next_fire=next_fire, **values)
            )
            return True

        def body(conn: Connection) -> bool:
            if update_existing(conn):
                return False
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(recurring).values(
                            id=spec.id, next_fire=spec.next_fire, paused=False, missed=0,
                            created_at=now, **values,
                        )
                    )
                return True
            except IntegrityError:
                # Another process added the same id between our look and our insert.
                if not update_existing(conn):
                    raise
                return False

        return self._tx(body)

    def get_recurring(self, recurring_id: str) -> RecurringRecord | None:
        def body(conn: Connection) -> RecurringRecord | None:
            row = conn.execute(_RECORD_QUERY.where(recurring.c.id == recurring_id)).first()
            return None if row is None else _recurring_record(row)

        return self._tx(body, write=False)

    def list_recurring(self) -> list[RecurringRecord]:
        return self._tx(
            lambda conn: [
                _recurring_record(r) for r in conn.execute(_RECORD_QUERY.order_by(recurring.c.id))
            ],
            write=False,
        )

    def due_recurring(self, now: datetime, limit: int = 100) -> list[RecurringRecord]:
        stmt = (
            _RECORD_QUERY.where(recurring.c.paused.is_(False), recurring.c.next_fire <= now)
            .order_by(recurring.c.next_fire, recurring.c.id)
            .limit(limit)
        )
        return self._tx(lambda conn: [_recurring_record(r) for r in conn.execute(stmt)], write=False)

    def next_recurring_fire(self) -> datetime | None:
        return self._tx(
            lambda conn: conn.execute(select(NEXT_FIRE)).scalar(),
            write=False,
        )

    def remove_recurring(self, recurring_id: str) -> bool:
        return self._tx(
            lambda conn: conn.execute(delete(recurring).where(recurring.c.id == recurring_id)).rowcount
            > 0
        )

    def set_recurring_paused(
        self, recurring_id: str, paused: bool, now: datetime, *,
        next_fire: datetime | Literal["keep"] | None = "keep",
    ) -> bool:
        values: dict[str, Any] = {"paused": paused, "updated_at": now}
        if next_fire != "keep":
            values["next_fire"] = next_fire
        return self._tx(
            lambda conn: conn.execute(
                update(recurring).where(recurring.c.id == recurring_id).values(**values)
            ).rowcount
            > 0
        )

    def set_recurring_error(self, recurring_id: str, error: str | None, now: datetime) -> bool:
        return self._tx(
            lambda conn: conn.execute(
                update(recurring)
                .where(recurring.c.id == recurring_id)
                .values(error=error, updated_at=now)
            ).rowcount
            > 0
        )

    # -- firing -------------------------------------------------------------------------------------
    def claim_recurring_fire(
        self,
        recurring_id: str,
        expected_next_fire: datetime | None,
        new_next_fire: datetime | None,
        jobs_to_create: Sequence[NewJob],
        now: datetime,
        *,
        missed: int = 0,
        note: str | None = None,
    ) -> list[int] | None:
        def body(conn: Connection) -> list[int] | None:
            skip_note = note
            planned = (
                recurring.c.next_fire.is_(None)
                if expected_next_fire is None
                else recurring.c.next_fire == expected_next_fire
            )
            # The compare-and-set itself: whoever changes the plan first owns these fire times.
            row = conn.execute(
                update(recurring)
                .where(recurring.c.id == recurring_id, planned, recurring.c.paused.is_(False))
                .values(next_fire=new_next_fire)
                .returning(recurring.c.overlap, recurring.c.last_fire, recurring.c.last_job_id)
            ).first()
            if row is None:
                return None
            specs = [
                s for s in jobs_to_create
                if s.fire_time is None or row.last_fire is None or s.fire_time > row.last_fire
            ]
            previous = None
            if row.last_job_id is not None:
                state = conn.execute(select(jobs.c.state).where(jobs.c.id == row.last_job_id)).scalar()
                previous = None if state is None else JobState(state)
            keep = runs_allowed(row.overlap, len(specs), previous)
            skipped, specs = specs[: len(specs) - keep], specs[len(specs) - keep :]
            if skipped:
                times = ", ".join(_when(s.fire_time, now) for s in skipped)
                if keep == 0:
                    why = f"previous run (job {row.last_job_id}) still {_state_name(previous)}"
                else:
                    why = "overlap='skip' starts only the latest of several due fire times"
                skip_note = "; ".join(n for n in (note, f"skipped {times}: {why}") if n)
            created = [self._enqueue_one(conn, spec, now) for spec in specs]
            self._history_rows(
                conn,
                ((e.id, e.state, spec.reason) for e, spec in zip(created, specs, strict=True) if e.created),
                now,
                None,
            )
            values: dict[str, Any] = {"missed": recurring.c.missed + missed + len(skipped)}
            if created:
                values["last_job_id"] = created[-1].id
                fired = [s.fire_time for s in specs if s.fire_time is not None]
                if fired:
                    values["last_fire"] = max(fired)
            if skip_note is not None:
                values["last_skip"] = skip_note
            conn.execute(update(recurring).where(recurring.c.id == recurring_id).values(**values))
            if any(e.created and e.state is JobState.ENQUEUED for e in created):
                self.dialect.notify(conn, "recurring")
            return [e.id for e in created]

        return self._tx(body)

    def trigger_recurring(self, recurring_id: str, job: NewJob, now: datetime) -> int | None:
        def body(conn: Connection) -> int | None:
            # Locked, so a concurrent removal cannot slip between the check and the job's insert.
            found = conn.execute(
                self.dialect.row_lock(select(recurring.c.id).where(recurring.c.id == recurring_id))
            ).first()
            if found is None:
                return None
            created = self._enqueue_one(conn, job, now)
            if created.created:
                self._history_rows(conn, [(created.id, created.state, job.reason)], now, None)
                if created.state is JobState.ENQUEUED:
                    self.dialect.notify(conn, "recurring")
            conn.execute(
                update(recurring).where(recurring.c.id == recurring_id).values(last_job_id=created.id)
            )
            return created.id

        return self._tx(body)


def _when(fire_time: datetime | None, now: datetime) -> str:
    return (fire_time or now).isoformat(timespec="seconds")


def _state_name(state: JobState | None) -> str:
    return "unfinished" if state is None else state.value


def _recurring_record(row: Row[Any]) -> RecurringRecord:
    return RecurringRecord(
        id=row.id,
        cron=row.cron,
        tz=row.tz,
        function=row.function,
        payload=row.payload,
        options=_options(row.options),
        misfire=row.misfire,
        misfire_limit=row.misfire_limit,
        misfire_grace=row.misfire_grace,
        overlap=row.overlap,
        start=row.start_at,
        end=row.end_at,
        next_fire=row.next_fire,
        last_fire=row.last_fire,
        last_job_id=row.last_job_id,
        last_job_state=None if row.last_job_state is None else JobState(row.last_job_state),
        paused=bool(row.paused),
        error=row.error,
        missed=row.missed,
        last_skip=row.last_skip,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
