"""The scheduler's recurring duty: turn due fire times of recurring definitions into jobs.

Every server runs it on its scheduler tick; none of them coordinates in memory. Each definition is
advanced with `Store.claim_recurring_fire`, a compare-and-set on its planned next fire done in the
same transaction as the job inserts, so when several servers see the same fire time due, exactly one
creates its job and the others' claims match nothing.

A definition whose `end` leaves no fire time gets no next fire (it has ended; `due_recurring`
never returns it again). A definition that cannot fire (its function no longer imports, its schedule
no longer parses) is marked with an error and its due fire times are skipped (counted as missed); the
duty goes on with the other definitions and never raises for one of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..clock import Clock
from ..cron import FirePlan, due_fires, parse_schedule
from ..errors import NbJobsError
from ..model import NewJob
from ..payload import unresolvable
from ..storage import Store
from ..storage.base import RecurringRecord

log = logging.getLogger("nbjobs.server")


def fire_reason(recurring_id: str, fire_time: datetime) -> str:
    """The history reason of a job created by a schedule."""
    return f"fired by schedule {recurring_id} for {fire_time.isoformat()}"


@dataclass
class DutyStats:
    """What this server's duty did (for tests and diagnostics; the database is the truth)."""

    claimed: int = 0  #: fire claims won (each advanced one definition's plan)
    lost: int = 0  #: claims another server (or a change to the definition) got first
    jobs: int = 0  #: jobs created


class RecurringDuty:
    """Callable scheduler duty: fires what is due now and returns the number of jobs enqueued."""

    def __init__(self, store: Store, clock: Clock, *, batch: int = 100) -> None:
        self.store = store
        self.clock = clock
        self.batch = batch
        self.stats = DutyStats()

    def __repr__(self) -> str:
        return "<RecurringDuty>"

    def __call__(self) -> int:
        now = self.clock.now()
        created = 0
        for record in self.store.due_recurring(now, limit=self.batch):
            try:
                created += self.fire(record, now)
            except Exception:
                # One definition must never stop the others (or the scheduler): log and go on.
                log.exception("recurring job %r could not fire; trying again at the next tick", record.id,
                              extra={"action": "recurring_fire_failed", "recurring_id": record.id})
        return created

    def fire(self, record: RecurringRecord, now: datetime) -> int:
        """Claim the fire times of one due definition; return the jobs created."""
        if record.next_fire is None:
            return 0
        try:
            schedule = parse_schedule(record.cron, record.tz, start=record.start, end=record.end)
        except NbJobsError as exc:
            self._mark_error(record, f"schedule cannot be read: {exc}", now)
            return 0  # no next fire to move to; it stays due and is looked at again each tick
        grace = None if record.misfire_grace is None else timedelta(seconds=record.misfire_grace)
        plan = due_fires(schedule, record.next_fire, now, record.misfire, record.misfire_limit, grace=grace)
        problem = unresolvable(record.function)
        if problem is not None:
            self._mark_error(record, f"{problem}; was it renamed or removed? Restore it, or define "
                             f"recurring job {record.id!r} again with the function's new name, or "
                             "remove it", now)
            return self._claim(record, plan, [], now, missed=plan.due,
                               note=f"skipped {_count(plan.due, plan.missed_capped)}: {problem}")
        if record.error is not None:
            self.store.set_recurring_error(record.id, None, now)
            log.info("recurring job %r can fire again", record.id,
                     extra={"action": "recurring_error_cleared", "recurring_id": record.id})
        jobs = [
            NewJob(function=record.function, payload=record.payload, options=record.options,
                   recurring_id=record.id, fire_time=fire, reason=fire_reason(record.id, fire))
            for fire in plan.fires
        ]
        note = None
        if plan.missed:
            policy = f"misfire={record.misfire!r}" + (
                "" if grace is None else f", misfire_grace={grace.total_seconds():g}s"
            )
            note = (f"{policy}: {_count(plan.missed, plan.missed_capped)} from "
                    f"{record.next_fire.isoformat()} got no job of their own")
        return self._claim(record, plan, jobs, now, missed=plan.missed, note=note)

    def _claim(self, record: RecurringRecord, plan: FirePlan, jobs: list[NewJob], now: datetime, *,
               missed: int, note: str | None) -> int:
        ids = self.store.claim_recurring_fire(record.id, record.next_fire, plan.next_fire, jobs, now,
                                              missed=missed, note=note)
        if ids is None:
            self.stats.lost += 1
            return 0
        self.stats.claimed += 1
        self.stats.jobs += len(ids)
        if plan.next_fire is None:
            log.info("recurring job %r has ended: no fire time is left before its end %s", record.id,
                     record.end.isoformat() if record.end else "?",
                     extra={"action": "recurring_ended", "recurring_id": record.id})
        if ids or missed:
            log.debug("recurring job %r fired %d job(s), %d missed; next fire %s", record.id, len(ids),
                      missed, plan.next_fire.isoformat() if plan.next_fire else "none (ended)",
                      extra={"action": "recurring_fired", "recurring_id": record.id})
        return len(ids)

    def _mark_error(self, record: RecurringRecord, error: str, now: datetime) -> None:
        if record.error == error:
            return
        self.store.set_recurring_error(record.id, error, now)
        log.error("recurring job %r cannot fire: %s", record.id, error,
                  extra={"action": "recurring_error", "recurring_id": record.id})


def _count(n: int, capped: bool) -> str:
    return f"{n}{'+' if capped else ''} fire time{'' if n == 1 and not capped else 's'}"
