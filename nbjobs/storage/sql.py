"""SQLAlchemy Core implementation of the Store, for SQLite and PostgreSQL.

Every state change is a guarded compare-and-set (`WHERE state IN <legal sources>`) with its history
row in the same transaction. Dialect differences are delegated to `dialects`; nothing here asks which
database it talks to.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    String,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from .. import states
from ..errors import IllegalTransitionError, JobNotFoundError
from ..model import (
    ERROR_MESSAGE_MAX,
    ERROR_TRACEBACK_MAX,
    ERROR_TYPE_MAX,
    FINAL_STATES,
    PRIVATE_QUEUE_MARK,
    ClaimedJob,
    ContinueOn,
    JobState,
    NewJob,
    Outcome,
    OutcomeKind,
    clip_middle,
    storable,
)
from ..rates import QueueQuota, Rate
from .base import Enqueued, LocalClaim, Store
from .schema import ENQUEUED_ROW, dependencies, history, jobs, paused_queues, queue_quotas, rate_starts
from .sql_base import (
    _FINISH_STMTS,
    _INSERT_JOB,
    _INSERT_JOB_PLAIN,
    _INSERT_JOBS,
    _RELEASE,
    E,
    S,
    SqlBase,
    _options,
    _options_json,
    _picked,
)
from .sql_reads import ReadsSqlMixin
from .sql_recurring import NEXT_FIRE, RecurringSqlMixin
from .sql_upkeep import UpkeepSqlMixin


def _with_history(written: Any, name: str, state: Any, at: Any, reason: Any, server_id: Any) -> Any:
    """`SELECT * FROM written` plus a history row per row of `written` (a data-modifying CTE with
    `id`), in the same statement: the one-statement writes (`Dialect.one_statement_writes`)."""
    hist = insert(history).from_select(
        ["job_id", "state", "at", "reason", "server_id"],
        select(written.c.id, state, at, reason, server_id),
    ).cte(name)
    return select(written).add_cte(hist)


#: The unfinished job holding a unique key.
_KEYED = select(jobs.c.id, jobs.c.state).where(jobs.c.active_key == bindparam("key"))
#: A new continuation's parents and their states, in id order (the order a finishing server locks them).
_PARENT_STATES = (
    select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(bindparam("ids", expanding=True))).order_by(jobs.c.id)
)
#: Marks unfinished parents as having continuations; rows marked already are not rewritten.
_MARK_PARENTS = (
    update(jobs)
    .where(jobs.c.id.in_(bindparam("ids", expanding=True)), jobs.c.has_children.is_(False))
    .values(has_children=True)
)

#: A queue's shared quotas (`count` labelled: `Row.count` is the tuple method).
_QUOTA = select(queue_quotas.c.queue, queue_quotas.c.count.label("starts"), queue_quotas.c.period,
                queue_quotas.c.max_running)

#: The earliest due time of a Scheduled job.
_NEXT_DUE = select(func.min(jobs.c.run_at)).where(jobs.c.state == S.SCHEDULED.value).scalar_subquery()


class SqlStore(ReadsSqlMixin, UpkeepSqlMixin, RecurringSqlMixin, SqlBase, Store):
    """The Store on a SQLAlchemy engine: the job write path (enqueue, claim, finish, user changes)."""

    # -- enqueue --------------------------------------------------------------------------------
    def enqueue(self, specs: Sequence[NewJob], now: datetime) -> list[Enqueued]:
        if len(specs) == 1 and specs[0].options.key is None and not specs[0].continues:
            if self.dialect.one_statement_writes:
                return [self._enqueue_in_one_statement(specs[0], now)]
            if self.dialect.driver_writes:
                return [self._enqueue_on_driver(specs[0], now)]
        return self._tx(lambda conn: self._enqueue(conn, specs, now))

    def enqueue_and_acquire(
        self, specs: Sequence[NewJob], now: datetime, claim: LocalClaim
    ) -> tuple[list[Enqueued], list[ClaimedJob]]:
        """One transaction: the claim's commit is the enqueue's (one commit per job, not two)."""

        def body(conn: Connection) -> tuple[list[Enqueued], list[ClaimedJob]]:
            stored = self._enqueue(conn, specs, now)
            claimed = self._acquire(conn, claim.server_id, claim.queues, claim.limit, claim.lease_until, now)
            return stored, claimed

        return self._tx(body)

    def _enqueue(self, conn: Connection, specs: Sequence[NewJob], now: datetime) -> list[Enqueued]:
        simple: list[tuple[int, dict[str, Any]]] = []
        results: dict[int, Enqueued] = {}
        hist: list[tuple[int, JobState, str]] = []
        for index, spec in enumerate(specs):
            if spec.options.key is None and not spec.continues:
                simple.append((index, self._row_for(spec, self._initial_state(spec, now), now)))
                continue
            result = self._enqueue_one(conn, spec, now)
            results[index] = result
            if result.created:
                hist.append((result.id, result.state, spec.reason))
        if simple:
            ids: Sequence[int]
            if len(simple) == 1:  # a plain INSERT, cheaper than the many-rows RETURNING path
                ids = [conn.execute(_INSERT_JOB, simple[0][1]).scalar_one()]
            else:
                ids = conn.execute(_INSERT_JOBS, [row for _, row in simple]).scalars().all()
            for (index, row), job_id in zip(simple, ids, strict=True):
                state = JobState(row["state"])
                results[index] = Enqueued(id=job_id, state=state, created=True)
                hist.append((job_id, state, specs[index].reason))
        self._history_rows(conn, hist, now, None)
        out = [results[i] for i in range(len(specs))]
        if any(r.created and r.state is S.ENQUEUED for r in out):
            self.dialect.notify(conn, "enqueued")
        return out

    def _enqueue_in_one_statement(self, spec: NewJob, now: datetime) -> Enqueued:
        """A lone plain job: job row, history row and notification in one autocommit statement."""
        values = self._row_for(spec, self._initial_state(spec, now), now)
        if self._enqueue_stmt is None:
            row = insert(jobs).values(
                {c: bindparam(f"j_{c}", type_=jobs.c[c].type) for c in values}
            ).returning(jobs.c.id, jobs.c.state).cte("new_job")
            wake = case((row.c.state == S.ENQUEUED.value, self.dialect.notify_expr("enqueued")))
            self._enqueue_stmt = _with_history(
                row, "new_history", row.c.state, bindparam("h_at", type_=history.c.at.type),
                bindparam("h_reason", type_=history.c.reason.type), null(),
            ).add_columns(wake)
        params = {f"j_{c}": v for c, v in values.items()}
        params.update(h_at=now, h_reason=spec.reason)
        stmt = self._enqueue_stmt
        found = self._tx(lambda conn: conn.execute(stmt, params).one(), one_statement=True)
        return Enqueued(id=found.id, state=JobState(found.state), created=True)

    def _enqueue_on_driver(self, spec: NewJob, now: datetime) -> Enqueued:
        """A lone plain job on an embedded database: the job row and its history row, as `_enqueue`
        writes them, on the driver's connection (a third of the time of SQLAlchemy's path)."""
        state = self._initial_state(spec, now)
        row = self._row_for(spec, state, now)
        stmt = self._driver_row_statement(_INSERT_JOB_PLAIN, row)
        params = stmt.tuples([row])[0]

        def body(dbapi_conn: Any) -> int:
            job_id: int = dbapi_conn.execute(stmt.sql, params).lastrowid
            self._driver_history_row(dbapi_conn, job_id, state, now, spec.reason)
            return job_id

        # No `dialect.notify` (it takes a SQLAlchemy connection): `driver_writes` is only for a
        # database whose notify does nothing (SQLite's listeners watch its files).
        return Enqueued(id=self._driver_tx(body), state=state, created=True)

    @staticmethod
    def _initial_state(spec: NewJob, now: datetime) -> JobState:
        if spec.run_at is not None and spec.run_at > now:
            return S.SCHEDULED
        return S.ENQUEUED

    @staticmethod
    def _row_for(spec: NewJob, state: JobState, now: datetime) -> dict[str, Any]:
        opts = spec.options
        return {
            "state": state.value,
            "queue": opts.queue,
            "priority": opts.priority,
            "name": opts.name,
            "function": spec.function,
            "options": _options_json(opts),
            "payload": spec.payload,
            "active_key": opts.key if state not in FINAL_STATES else None,
            "lock_name": opts.lock,
            "attempts": 0,
            "created_at": now,
            "run_at": spec.run_at if state is S.SCHEDULED else None,
            "enqueued_at": now if state is S.ENQUEUED else None,
            "finished_at": now if state in FINAL_STATES else None,
            "parent_id": spec.parent_id,
            "continue_on": spec.continue_on.value if spec.continues else None,
            "has_children": False,
            "recurring_id": spec.recurring_id,
            "fire_time": spec.fire_time,
            "cancel_requested": False,
        }

    def _enqueue_one(self, conn: Connection, spec: NewJob, now: datetime) -> Enqueued:
        key = spec.options.key
        if key is not None:
            if self._keyed_stmt is None:
                self._keyed_stmt = self.dialect.row_lock(_KEYED)
            found = conn.execute(self._keyed_stmt, {"key": key}).first()
            if found is not None:
                return Enqueued(id=found.id, state=JobState(found.state), created=False)
        state = self._initial_state(spec, now)
        if spec.continues:
            state = self._continuation_state(conn, spec) or S.AWAITING
        row = self._row_for(spec, state, now)
        if key is None:  # no unique key to race for: no savepoint (two statements fewer)
            job_id = conn.execute(_INSERT_JOB, row).scalar_one()
        else:
            inserted = self._insert_keyed(conn, row, key)
            if isinstance(inserted, Enqueued):
                return inserted
            job_id = inserted
        if spec.parent_ids:
            conn.execute(
                insert(dependencies), [{"parent_id": p, "child_id": job_id} for p in spec.parent_ids]
            )
        return Enqueued(id=job_id, state=state, created=True)

    @staticmethod
    def _insert_keyed(conn: Connection, row: dict[str, Any], key: str) -> int | Enqueued:
        """Insert a job with a unique key: its id, or the job another process stored with the same
        key between our check and this insert (the savepoint keeps the transaction usable)."""
        try:
            with conn.begin_nested():
                job_id: int = conn.execute(_INSERT_JOB, row).scalar_one()
                return job_id
        except IntegrityError:
            found = conn.execute(select(jobs.c.id, jobs.c.state).where(jobs.c.active_key == key)).first()
            if found is None:
                raise
            return Enqueued(id=found.id, state=JobState(found.state), created=False)

    def _continuation_state(self, conn: Connection, spec: NewJob) -> JobState | None:
        """A new continuation's state if its parents already decide it, else None (it awaits them,
        and the parents that have not finished are marked as having continuations)."""
        ids = sorted(set(spec.parent_ids)) if spec.parent_ids else [spec.parent_id or 0]
        # Locked (in id order, as a finishing server locks them): a parent finishing now either
        # committed before we read it, or waits for us and then sees its `has_children`.
        if self._parent_states_stmt is None:  # built once: a fan of continuations pays no compile
            self._parent_states_stmt = self.dialect.row_lock(_PARENT_STATES)
        parents = {r.id: JobState(r.state) for r in conn.execute(self._parent_states_stmt, {"ids": ids})}
        missing = [i for i in ids if i not in parents]
        if missing:
            raise JobNotFoundError(
                f"parent job {', '.join(map(str, missing))} does not exist; a continuation needs "
                "existing parents"
            )
        decided = states.continuation_state(spec.continue_on, parents.values())
        if decided is not None:
            return decided
        waiting = [i for i, s in parents.items() if s not in FINAL_STATES]
        conn.execute(_MARK_PARENTS, {"ids": waiting})
        if any(parents[i] is S.ENQUEUED for i in waiting):
            # We held the parents' row locks, so a concurrent claim (SKIP LOCKED) may have passed
            # them by: tell the servers to look again once we commit.
            self.dialect.notify(conn, "unlocked")
        return None

    def _release_children(self, conn: Connection, parents: dict[int, JobState], now: datetime) -> None:
        """Enqueue or delete the Awaiting continuations of parents that just reached a final state."""
        frontier = dict(parents)
        while frontier:
            ids = list(frontier)
            next_frontier: dict[int, JobState] = {}
            hist: list[tuple[int, JobState, str]] = []
            # Locked: a continuation being added to one of these children right now sets its
            # has_children; reading it unlocked (PostgreSQL) could miss that and strand the grandchild.
            children = conn.execute(
                self.dialect.row_lock(
                    select(jobs.c.id, jobs.c.parent_id, jobs.c.continue_on, jobs.c.has_children).where(
                        jobs.c.parent_id.in_(ids), jobs.c.state == S.AWAITING.value
                    )
                )
            ).all()
            for child in children:
                parent_state = frontier[child.parent_id]
                new = states.continuation_state(child.continue_on, [parent_state])
                assert new is not None  # one parent, final: it decides
                reason = f"parent {child.parent_id} {parent_state.value}"
                self._release_child(conn, child, new, reason, now, hist, next_frontier)
            for child, new, reason in self._decided_fan_ins(conn, ids):
                self._release_child(conn, child, new, reason, now, hist, next_frontier)
            self._history_rows(conn, hist, now, None)
            if any(state is S.ENQUEUED for _, state, _ in hist):
                self.dialect.notify(conn, "released")
            frontier = next_frontier

    def _decided_fan_ins(self, conn: Connection, parent_ids: list[int]) -> list[tuple[Any, JobState, str]]:
        """Awaiting continuations of several jobs, among them one of `parent_ids`, that their parents
        now decide: (child row, new state, reason)."""
        children = conn.execute(
            self.dialect.row_lock(
                select(jobs.c.id, jobs.c.continue_on, jobs.c.has_children).where(
                    jobs.c.id.in_(
                        select(dependencies.c.child_id).where(dependencies.c.parent_id.in_(parent_ids))
                    ),
                    jobs.c.state == S.AWAITING.value,
                ).order_by(jobs.c.id)
            )
        ).all()
        if not children:
            return []
        # Read after the children's locks: on PostgreSQL this statement sees every parent finish
        # committed by a transaction that held one of those locks before us.
        parent_states: dict[int, dict[int, JobState]] = {}
        for child_id, parent_id, state in conn.execute(
            select(dependencies.c.child_id, jobs.c.id, jobs.c.state)
            .join(jobs, jobs.c.id == dependencies.c.parent_id)
            .where(dependencies.c.child_id.in_([c.id for c in children]))
        ):
            parent_states.setdefault(child_id, {})[parent_id] = JobState(state)
        decided: list[tuple[Any, JobState, str]] = []
        for child in children:
            found = parent_states.get(child.id, {})  # a parent pruned since: it had succeeded
            new = states.continuation_state(child.continue_on, found.values())
            if new is S.ENQUEUED:
                decided.append((child, new, f"parents {_id_list(found)} finished"))
            elif new is S.DELETED and child.continue_on == ContinueOn.FAILED.value:
                decided.append((child, new, f"parents {_id_list(found)} ended and none failed"))
            elif new is S.DELETED:
                ended = {i: s for i, s in found.items() if s in (S.FAILED, S.DELETED)}
                how = "/".join(sorted({s.value for s in ended.values()}))
                decided.append((child, new, f"parent {_id_list(ended)} {how}"))
        return decided

    @staticmethod
    def _release_child(
        conn: Connection, child: Any, new: JobState, reason: str, now: datetime,
        hist: list[tuple[int, JobState, str]], next_frontier: dict[int, JobState],
    ) -> None:
        """Move one Awaiting continuation to `new` (Enqueued or Deleted), with its history row."""
        values: dict[str, Any] = {"state": new.value}
        if new is S.ENQUEUED:
            values["enqueued_at"] = now
        else:
            values.update(finished_at=now, active_key=None)
            reason += "; continuation not run"
            if child.has_children:
                next_frontier[child.id] = S.DELETED
        changed = conn.execute(
            update(jobs).where(jobs.c.id == child.id, jobs.c.state == S.AWAITING.value).values(**values)
        ).rowcount
        if changed:
            hist.append((child.id, new, reason))

    # -- claim and finish -----------------------------------------------------------------------
    def acquire(
        self,
        server_id: str,
        queues: Sequence[str],
        limit: int,
        lease_until: datetime,
        now: datetime,
        queue_limits: Mapping[str, int] | None = None,
    ) -> list[ClaimedJob]:
        return self.finish_and_acquire(server_id, [], queues, limit, lease_until, now, queue_limits)[1]

    def finish_and_acquire(
        self,
        server_id: str,
        outcomes: Sequence[Outcome],
        queues: Sequence[str],
        limit: int,
        lease_until: datetime,
        now: datetime,
        queue_limits: Mapping[str, int] | None = None,
        shared: Collection[str] | None = None,
    ) -> tuple[list[int], list[ClaimedJob]]:
        """One transaction, so a dispatcher turn costs one commit (one fsync at synchronous=FULL)."""

        def body(conn: Connection) -> tuple[list[int], list[ClaimedJob]]:
            lost = self._finish(conn, server_id, outcomes, now) if outcomes else []
            claimed = (
                self._acquire(conn, server_id, queues, limit, lease_until, now, queue_limits, shared)
                if limit > 0 else []
            )
            return lost, claimed

        if not outcomes and limit <= 0:
            return [], []
        # An idle server's claim from one queue list entry is a single statement (see `_tx`).
        alone = (not outcomes and len(queues) <= 1 and not queue_limits and not shared
                 and self.dialect.one_statement_writes)
        return self._tx(body, one_statement=alone)

    def _acquire(
        self,
        conn: Connection,
        server_id: str,
        queues: Sequence[str],
        limit: int,
        lease_until: datetime,
        now: datetime,
        queue_limits: Mapping[str, int] | None = None,
        shared: Collection[str] | None = None,
    ) -> list[ClaimedJob]:
        claimed: list[ClaimedJob] = []
        for queue, exclude, room, quota in _claim_plan(queues or ["*"], queue_limits or {}, shared or ()):
            remaining = min(limit - len(claimed), room)
            if limit - len(claimed) <= 0:
                break
            rated = False
            if quota and remaining > 0:
                shared_room, rated = self._shared_room(conn, queue, now)
                remaining = min(remaining, shared_room)
            if remaining <= 0:
                continue
            rows = conn.execute(
                self._claim_statement(queue, exclude, quota),
                {"claim_limit": remaining, "claim_server": server_id, "claim_lease": lease_until,
                 "claim_now": now},
            ).all()
            if rated and rows:
                conn.execute(insert(rate_starts), [{"queue": queue, "at": now} for _ in rows])
            rows = sorted(rows, key=lambda r: (-r.priority, r.id))
            claimed.extend(
                ClaimedJob(
                    id=r.id,
                    function=r.function,
                    payload=r.payload,
                    options=_options(r.options),
                    attempts=r.attempts,
                    recurring_id=r.recurring_id,
                    enqueued_at=r.enqueued_at,
                )
                for r in rows
            )
        if not self.dialect.one_statement_writes:  # else the claim statement wrote them
            self._history_rows(
                conn, ((c.id, S.PROCESSING, f"claimed (attempt {c.attempts})") for c in claimed),
                now, server_id,
            )
        return claimed

    def _shared_room(self, conn: Connection, queue: str, now: datetime) -> tuple[int, bool]:
        """How many more jobs of a queue with shared quotas may start now, counting every server's
        starts in the last period (a rate) and every server's running jobs (a limit); and whether it
        has a rate (whose starts the claim records). The quota's row is locked first (PostgreSQL;
        SQLite's writer is alone), so two servers never both take the last room; starts older than the
        period go. A row another server holds is skipped, not waited for: that server is claiming the
        queue now, and two servers locking two such queues in opposite orders cannot deadlock."""
        quota = conn.execute(self.dialect.claim_lock(_QUOTA.where(queue_quotas.c.queue == queue))).first()
        if quota is None:  # being claimed by another server, or cleared (then claimed as any queue)
            return 0, False
        room = _NO_LIMIT
        if quota.starts is not None:
            since = now - timedelta(seconds=quota.period)
            conn.execute(delete(rate_starts).where(rate_starts.c.queue == queue, rate_starts.c.at <= since))
            started = conn.execute(
                select(func.count()).select_from(rate_starts).where(rate_starts.c.queue == queue)
            ).scalar_one()
            room = int(quota.starts) - int(started)
        if quota.max_running is not None:
            running = conn.execute(
                select(func.count()).select_from(jobs)
                .where(jobs.c.state == S.PROCESSING.value, jobs.c.queue == queue)
            ).scalar_one()
            room = min(room, int(quota.max_running) - int(running))
        return max(0, room), quota.starts is not None

    def set_queue_rate(self, queue: str, rate: Rate | None, now: datetime) -> bool:
        values = {"count": None, "period": None} if rate is None else {"count": rate.count,
                                                                         "period": rate.period}
        return self._set_quota(queue, values, now)

    def set_queue_limit(self, queue: str, running: int | None, now: datetime) -> bool:
        return self._set_quota(queue, {"max_running": running}, now)

    def _set_quota(self, queue: str, values: dict[str, Any], now: datetime) -> bool:
        """Set some of a queue's quota columns (None: that quota removed); the row goes with its last
        quota. True if anything changed."""

        def body(conn: Connection) -> bool:
            found = conn.execute(select(queue_quotas).where(queue_quotas.c.queue == queue)).first()
            before = {name: None for name in values} if found is None else {
                name: getattr(found, name) for name in values}
            if before == values:
                return False
            if found is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(queue_quotas).values(queue=queue, set_at=now, **values))
                except IntegrityError:  # set by another process between our look and our insert
                    pass
                else:
                    return True  # a new quota only holds jobs back: no server needs waking
            where = queue_quotas.c.queue == queue
            conn.execute(update(queue_quotas).where(where).values(set_at=now, **values))
            conn.execute(delete(queue_quotas).where(
                where, queue_quotas.c.count.is_(None), queue_quotas.c.max_running.is_(None)))
            if values.get("period", 0) is None:
                conn.execute(delete(rate_starts).where(rate_starts.c.queue == queue))
            self.dialect.notify(conn, "enqueued")  # a quota raised or removed may leave room now
            return True

        return self._tx(body)

    def queue_quotas(self) -> dict[str, QueueQuota]:
        rows = self._tx(lambda conn: conn.execute(_QUOTA.order_by(queue_quotas.c.queue)).all(), write=False)
        return {
            row.queue: QueueQuota(
                rate=None if row.starts is None else Rate(count=row.starts, period=row.period),
                running=row.max_running,
            )
            for row in rows
        }

    def _claim_statement(
        self, queue: str, exclude: frozenset[str] = frozenset(), quota: bool = False
    ) -> Any:
        """The claim UPDATE for one queue ("*": every shared queue but `exclude`), built once with
        bound values. Queues with shared quotas are left out, but by the claim of one (`quota`).

        Building a statement costs more than running it for one job; the claim runs on every
        dispatcher turn, so it is built once per queue and reused from SQLAlchemy's compiled cache.
        """
        key = (queue, exclude, quota)
        stmt = self._claim_stmts.get(key)
        if stmt is not None:
            return stmt
        pick = select(jobs.c.id).where(ENQUEUED_ROW)  # verbatim, so the partial indexes apply
        if queue != "*":
            pick = pick.where(jobs.c.queue == queue)
        else:  # private queues belong to the one process that names them
            pick = pick.where(~jobs.c.queue.contains(PRIVATE_QUEUE_MARK, autoescape=True))
            if exclude:  # limited queues: claimed on their own, up to their room
                pick = pick.where(jobs.c.queue.not_in(sorted(exclude)))
        pick = pick.where(_LOCK_FREE, jobs.c.queue.not_in(select(paused_queues.c.queue).scalar_subquery()))
        if not quota:
            pick = pick.where(jobs.c.queue.not_in(select(queue_quotas.c.queue).scalar_subquery()))
        pick = self.dialect.claim_lock(
            pick.order_by(jobs.c.priority.desc(), jobs.c.id).limit(bindparam("claim_limit", type_=Integer))
        )
        stmt = (
            update(jobs)
            .where(jobs.c.id.in_(_picked(pick)), jobs.c.state == S.ENQUEUED.value)
            .values(
                state=S.PROCESSING.value,
                server_id=bindparam("claim_server", type_=jobs.c.server_id.type),
                lease_until=bindparam("claim_lease", type_=jobs.c.lease_until.type),
                started_at=bindparam("claim_now", type_=jobs.c.started_at.type),
                attempts=jobs.c.attempts + 1,
                cancel_requested=False,
            )
            .returning(
                jobs.c.id, jobs.c.function, jobs.c.payload, jobs.c.options, jobs.c.attempts,
                jobs.c.recurring_id, jobs.c.priority, jobs.c.enqueued_at,
            )
        )
        if self.dialect.one_statement_writes:  # the history rows in the same statement
            claimed = stmt.cte("claimed")
            stmt = _with_history(
                claimed, "claim_history", literal(S.PROCESSING.value),
                bindparam("claim_now", type_=history.c.at.type),
                literal("claimed (attempt ") + cast(claimed.c.attempts, String) + literal(")"),
                bindparam("claim_server", type_=history.c.server_id.type),
            )
        if len(self._claim_stmts) > 256:  # many one-off queue names: keep the cache bounded
            self._claim_stmts.clear()
        self._claim_stmts[key] = stmt
        return stmt

    def finish(self, server_id: str, outcomes: Sequence[Outcome], now: datetime) -> list[int]:
        if not outcomes:
            return []
        return self._tx(lambda conn: self._finish(conn, server_id, outcomes, now))

    def _finish(
        self, conn: Connection, server_id: str, outcomes: Sequence[Outcome], now: datetime
    ) -> list[int]:
        ids = [o.job_id for o in outcomes]
        held = {
            r.id: r
            for r in conn.execute(self._held_stmt, {"held_ids": ids, "held_server": server_id}).all()
        }
        lost = [o.job_id for o in outcomes if o.job_id not in held]
        grouped: dict[JobState, list[dict[str, Any]]] = {}
        hist: list[tuple[int, JobState, str]] = []
        data: dict[int, dict[str, Any]] = {}
        finished_parents: dict[int, JobState] = {}
        for o in outcomes:
            row = held.get(o.job_id)
            if row is None:
                continue
            state, values = self._outcome_values(o, row)
            grouped.setdefault(state, []).append({"_id": o.job_id, **values})
            hist.append((o.job_id, state, o.reason or self._default_reason(o, state)))
            data[o.job_id] = self._outcome_data(o)
            if state in FINAL_STATES and row.has_children:
                finished_parents[o.job_id] = state
        # One executemany per distinct set of columns (group commit: a few statements per batch).
        by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for params in grouped.values():
            for p in params:  # "_id" first, then the columns in `_outcome_values`' fixed order
                by_shape.setdefault(tuple(p)[1:], []).append(p)
        for shape, shape_params in by_shape.items():
            stmt = _FINISH_STMTS.get(shape)
            if stmt is None:
                stmt = _FINISH_STMTS[shape] = (
                    update(jobs)
                    .where(jobs.c.id == bindparam("_id"))
                    .values({c: bindparam(c) for c in shape})
                )
            self._executemany(conn, stmt, shape_params)
        self._history_rows(conn, hist, now, server_id, data)
        if finished_parents:
            self._release_children(conn, finished_parents, now)
        if any(state is S.ENQUEUED for _, state, _ in hist):
            self.dialect.notify(conn, "returned")
        return lost

    @staticmethod
    def _outcome_values(o: Outcome, row: Any) -> tuple[JobState, dict[str, Any]]:
        base: dict[str, Any] = {"server_id": None, "lease_until": None}
        if o.kind is OutcomeKind.SUCCEEDED:
            return S.SUCCEEDED, {
                **base, "state": S.SUCCEEDED.value, "finished_at": o.finished_at, "result": o.result,
                "started_at": o.started_at or row.started_at, "active_key": None,
                "error_type": None, "error_message": None, "error_traceback": None,
            }
        # A type name is the server's, not a person's: cut to the column rather than refuse the outcome.
        # The texts come from the job's exception: stored even with NULs, which would fail the write.
        error_type = storable(o.error_type[:ERROR_TYPE_MAX] if o.error_type else o.error_type)
        error = {"error_type": error_type,
                 "error_message": storable(clip_middle(o.error_message, ERROR_MESSAGE_MAX)),
                 "error_traceback": storable(clip_middle(o.error_traceback, ERROR_TRACEBACK_MAX))}
        if o.kind is OutcomeKind.FAILED and o.retry_at is not None:
            return S.SCHEDULED, {**base, **error, "state": S.SCHEDULED.value, "run_at": o.retry_at,
                                 "started_at": o.started_at or row.started_at}
        if o.kind is OutcomeKind.FAILED:
            return S.FAILED, {**base, **error, "state": S.FAILED.value, "finished_at": o.finished_at,
                              "started_at": o.started_at or row.started_at, "active_key": None}
        if o.kind is OutcomeKind.CANCELLED:
            return S.DELETED, {**base, **error, "state": S.DELETED.value, "finished_at": o.finished_at,
                               "active_key": None}
        # Returned unfinished (graceful shutdown): the attempt does not count against its retries.
        return S.ENQUEUED, {**base, "state": S.ENQUEUED.value, "enqueued_at": o.finished_at,
                            "attempts": max(0, row.attempts - 1)}

    @staticmethod
    def _default_reason(o: Outcome, state: JobState) -> str:
        if state is S.SCHEDULED:
            return f"failed with {o.error_type}; retry scheduled"
        if state is S.FAILED:
            return f"failed with {o.error_type}"
        if state is S.DELETED:
            return "cancelled while running"
        if state is S.ENQUEUED:
            return "returned to queue"
        return "succeeded"

    @staticmethod
    def _outcome_data(o: Outcome) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if o.started_at is not None:
            data["duration"] = (o.finished_at - o.started_at).total_seconds()
        if o.error_type:
            data["exception"] = o.error_type
            data["message"] = (o.error_message or "")[:2000]
        if o.retry_at is not None:
            data["retry_at"] = o.retry_at.isoformat()
        return data

    # -- changes people ask for -----------------------------------------------------------------
    def _change(
        self,
        conn: Connection,
        job_id: int,
        event: states.Event,
        now: datetime,
        reason: str,
        values: dict[str, Any],
    ) -> JobState:
        row = conn.execute(
            self.dialect.row_lock(
                select(jobs.c.state, jobs.c.has_children, jobs.c.options).where(jobs.c.id == job_id)
            )
        ).first()
        if row is None:
            raise JobNotFoundError.of(job_id)
        current = JobState(row.state)
        new = states.transition(current, event)
        if new is S.ENQUEUED:
            values = {**values, "active_key": json.loads(row.options).get("key")}
        changed = conn.execute(
            update(jobs).where(jobs.c.id == job_id, jobs.c.state == current.value).values(
                state=new.value, **values
            )
        ).rowcount
        if not changed:  # impossible under the row lock, kept as the compare-and-set guard
            raise IllegalTransitionError(f"job {job_id} changed state meanwhile; try again")
        self._history_rows(conn, [(job_id, new, reason)], now, None)
        if new in FINAL_STATES and row.has_children:
            self._release_children(conn, {job_id: new}, now)
        if new is S.ENQUEUED:
            self.dialect.notify(conn, "requeued")
        return new

    def requeue(self, job_id: int, now: datetime, reason: str) -> JobState:
        values = {
            "enqueued_at": now, "run_at": None, "finished_at": None, "started_at": None,
            "attempts": 0, "result": None, "error_type": None, "error_message": None,
            "error_traceback": None, "progress": None, "progress_message": None,
            "cancel_requested": False, **_RELEASE,
        }

        def body(conn: Connection) -> JobState:
            try:
                return self._change(conn, job_id, E.REQUEUE, now, reason, values)
            except IntegrityError as exc:
                raise IllegalTransitionError(
                    f"job {job_id} cannot be requeued: another unfinished job holds its unique key"
                ) from exc

        return self._tx(body)

    def delete(self, job_id: int, now: datetime, reason: str, *, cancel_only: bool = False) -> JobState:
        def body(conn: Connection) -> JobState:
            # Read under the row lock: a claim committing between an unlocked read and _change's
            # lock made a delete of a job just starting fail with "cannot delete … processing".
            locked = self.dialect.row_lock(select(jobs.c.state).where(jobs.c.id == job_id))
            current = conn.execute(locked).scalar()
            if current is None:
                raise JobNotFoundError.of(job_id)
            state = JobState(current)
            if state is S.PROCESSING:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.state == S.PROCESSING.value)
                    .values(cancel_requested=True)
                )
                self._history_rows(
                    conn, [(job_id, S.PROCESSING, f"cancel requested: {reason}")], now, None
                )
                return S.PROCESSING
            if cancel_only and state is S.DELETED:
                raise IllegalTransitionError(f"job {job_id} is already deleted; there is nothing to cancel")
            if cancel_only and state in FINAL_STATES:
                raise IllegalTransitionError(
                    f"job {job_id} already finished ({state.value}); there is nothing to cancel. "
                    "Use delete() to mark it Deleted"
                )
            return self._change(
                conn, job_id, E.DELETE, now, reason,
                {"finished_at": now, "active_key": None, **_RELEASE},
            )

        return self._tx(body)

    def discard_queues(self, queues: Sequence[str], now: datetime, reason: str) -> list[int]:
        if not queues:
            return []
        unfinished = [S.ENQUEUED.value, S.SCHEDULED.value, S.AWAITING.value]

        def body(conn: Connection) -> list[int]:
            ids = conn.execute(
                select(jobs.c.id).where(jobs.c.queue.in_(list(queues)), jobs.c.state.in_(unfinished))
                .order_by(jobs.c.id)
            ).scalars().all()
            deleted = []
            for job_id in ids:
                try:
                    self._change(conn, job_id, E.DELETE, now, reason,
                                 {"finished_at": now, "active_key": None, **_RELEASE})
                except IllegalTransitionError:  # deleted above with its parent, as its continuation
                    continue
                deleted.append(job_id)
            return deleted

        return self._tx(body)

    def pause_queue(self, queue: str, now: datetime) -> bool:
        def body(conn: Connection) -> bool:
            if conn.execute(select(paused_queues.c.queue).where(paused_queues.c.queue == queue)).first():
                return False
            try:
                with conn.begin_nested():
                    conn.execute(insert(paused_queues).values(queue=queue, paused_at=now))
            except IntegrityError:  # paused by another process between our look and our insert
                return False
            return True

        return self._tx(body)

    def resume_queue(self, queue: str) -> bool:
        def body(conn: Connection) -> bool:
            resumed = conn.execute(delete(paused_queues).where(paused_queues.c.queue == queue)).rowcount > 0
            if resumed:
                self.dialect.notify(conn, "enqueued")  # its waiting jobs are claimable again
            return resumed

        return self._tx(body)

    def paused_queues(self) -> dict[str, datetime]:
        rows = self._tx(lambda conn: conn.execute(select(paused_queues.c.queue, paused_queues.c.paused_at)
                                                  .order_by(paused_queues.c.queue)).all(), write=False)
        return {row.queue: row.paused_at for row in rows}

    def promote_due(self, now: datetime, limit: int = 1000) -> int:
        def body(conn: Connection) -> int:
            pick = self.dialect.claim_lock(
                select(jobs.c.id)
                .where(jobs.c.state == S.SCHEDULED.value, jobs.c.run_at <= now)
                .order_by(jobs.c.run_at)
                .limit(limit)
            )
            ids = conn.execute(
                update(jobs)
                .where(jobs.c.id.in_(_picked(pick)), jobs.c.state == S.SCHEDULED.value)
                .values(state=S.ENQUEUED.value, enqueued_at=now)
                .returning(jobs.c.id)
            ).scalars().all()
            self._history_rows(conn, ((i, S.ENQUEUED, "due") for i in ids), now, None)
            if ids:
                self.dialect.notify(conn, "due")
            return len(ids)

        return self._tx(body)

    def next_due(self) -> datetime | None:
        return self._tx(lambda conn: conn.execute(select(_NEXT_DUE)).scalar(), write=False)

    def next_wakeup(self) -> tuple[datetime | None, datetime | None]:
        row = self._tx(lambda conn: conn.execute(select(_NEXT_DUE, NEXT_FIRE)).one(), write=False)
        return row[0], row[1]


def _lock_free() -> Any:
    """A job without a lock, or the first waiting job of a lock no Processing job holds
    (`options(lock=…)`). Each subquery reads one of the lock's partial indexes, by their conditions
    verbatim; a plain job costs one NULL test."""
    held, ahead = jobs.alias("lock_held"), jobs.alias("lock_ahead")
    holder = select(held.c.id).where(
        held.c.state == literal_column("'processing'"), held.c.lock_name == jobs.c.lock_name)
    earlier = select(ahead.c.id).where(
        ahead.c.state == literal_column("'enqueued'"), ahead.c.lock_name == jobs.c.lock_name,
        or_(ahead.c.priority > jobs.c.priority,
            and_(ahead.c.priority == jobs.c.priority, ahead.c.id < jobs.c.id)))
    return or_(jobs.c.lock_name.is_(None), and_(~holder.exists(), ~earlier.exists()))


_LOCK_FREE = _lock_free()


def _id_list(ids: Any) -> str:
    return ", ".join(str(i) for i in sorted(ids))


def _claim_plan(
    queues: Sequence[str], limits: Mapping[str, int], shared: Collection[str] = frozenset()
) -> list[tuple[str, frozenset[str], int, bool]]:
    """The claims of one acquire, in order: (queue, queues "*" leaves out, most jobs to take, whether
    the queue has shared quotas).

    A limited queue takes at most its room: listed by name, in its place; covered by "*", just
    before the other queues "*" stands for, which are claimed without it. A queue with shared quotas
    (`shared`) is placed the same way and claimed on its own (the claim statements leave it out).
    """
    if not limits and not shared:
        return [(queue, frozenset(), _NO_LIMIT, False) for queue in queues]
    capped = frozenset(limits) | frozenset(shared)
    plan: list[tuple[str, frozenset[str], int, bool]] = []
    for queue in queues:
        if queue == "*":
            plan += [(q, frozenset(), limits.get(q, _NO_LIMIT), q in shared) for q in sorted(capped)
                     if q not in queues and PRIVATE_QUEUE_MARK not in q]
            plan.append(("*", frozenset(limits), _NO_LIMIT, False))
        else:
            plan.append((queue, frozenset(), limits.get(queue, _NO_LIMIT), queue in shared))
    return plan


_NO_LIMIT = 2**31
