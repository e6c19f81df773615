"""SQLAlchemy Core implementation of the Store, for SQLite and PostgreSQL.

Every state change is a guarded compare-and-set (`WHERE state IN <legal sources>`) with its history
row in the same transaction. Dialect differences are delegated to `dialects`; nothing here asks which
database it talks to.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Integer,
    Row,
    Select,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from .. import states
from ..errors import IllegalTransitionError, JobNotFoundError, SchemaVersionError
from ..model import (
    FINAL_STATES,
    PRIVATE_QUEUE_MARK,
    ClaimedJob,
    ContinueOn,
    JobOptions,
    JobRecord,
    JobState,
    NewJob,
    Outcome,
    OutcomeKind,
    ServerInfo,
    StateChange,
)
from .base import TABLE_COLUMNS, TIME_COLUMNS, Enqueued, HeartbeatReply, JobFilter, ReapReport, Store
from .dialects import Dialect, Listener, dialect_for
from .schema import SCHEMA_VERSION, counts, history, jobs, locks, logs, meta, metadata, servers
from .sql_recurring import RecurringSqlMixin

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


class SqlStore(RecurringSqlMixin, Store):
    """The Store on a SQLAlchemy engine."""

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
        self.engine = self.dialect.create_engine()
        self._max_retries = max_retries
        self._claim_stmts: dict[str, Any] = {}
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
        except BaseException:  # e.g. a newer schema: release the pool rather than leak its connection
            self.engine.dispose()
            raise

    # -- transactions ---------------------------------------------------------------------------
    def _tx(self, body: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run `body` in one transaction; retry lock contention and lost connections with backoff."""
        delay = 0.01
        for attempt in range(self._max_retries + 1):
            try:
                # The guard is outermost so a failed transaction is rolled back before it is released.
                with self.dialect.write_guard() if write else nullcontext(), self.engine.connect() as conn:
                    if write:
                        self.dialect.begin_write(conn)
                    else:
                        conn.begin()
                    result = body(conn)
                    conn.commit()
                    return result
            except Exception as exc:
                if attempt >= self._max_retries or not self.dialect.is_transient(exc):
                    raise
                log.warning("transient database error (attempt %d): %s; retrying", attempt + 1, exc)
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
            elif int(row) > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"this database was written by a newer nbjobs (schema {row}; this nbjobs knows "
                    f"{SCHEMA_VERSION}). Upgrade nbjobs (pip install -U nbjobs) or use another database"
                )
            if self.dialect.install_counters(conn):
                self._recount(conn)

        self._tx(body)

    def close(self) -> None:
        self.engine.dispose()

    def listener(self) -> Listener:
        return self.dialect.make_listener()

    # -- history --------------------------------------------------------------------------------
    @staticmethod
    def _history_rows(
        conn: Connection,
        rows: Iterable[tuple[int, JobState, str]],
        now: datetime,
        server_id: str | None,
        data: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        params = [
            {
                "job_id": job_id,
                "state": state.value,
                "at": now,
                "reason": reason,
                "server_id": server_id,
                "data": json.dumps(data[job_id]) if data and job_id in data else None,
            }
            for job_id, state, reason in rows
        ]
        if params:
            conn.execute(_INSERT_HISTORY, params)

    # -- enqueue --------------------------------------------------------------------------------
    def enqueue(self, specs: Sequence[NewJob], now: datetime) -> list[Enqueued]:
        def body(conn: Connection) -> list[Enqueued]:
            out: list[Enqueued] = []
            simple: list[tuple[int, dict[str, Any]]] = []
            results: dict[int, Enqueued] = {}
            hist: list[tuple[int, JobState, str]] = []
            for index, spec in enumerate(specs):
                if spec.options.key is None and spec.parent_id is None:
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

        return self._tx(body)

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
            "attempts": 0,
            "created_at": now,
            "run_at": spec.run_at if state is S.SCHEDULED else None,
            "enqueued_at": now if state is S.ENQUEUED else None,
            "finished_at": now if state in FINAL_STATES else None,
            "parent_id": spec.parent_id,
            "continue_on": spec.continue_on.value if spec.parent_id is not None else None,
            "has_children": False,
            "recurring_id": spec.recurring_id,
            "fire_time": spec.fire_time,
            "cancel_requested": False,
        }

    def _enqueue_one(self, conn: Connection, spec: NewJob, now: datetime) -> Enqueued:
        key = spec.options.key
        if key is not None:
            found = conn.execute(
                self.dialect.row_lock(select(jobs.c.id, jobs.c.state).where(jobs.c.active_key == key))
            ).first()
            if found is not None:
                return Enqueued(id=found.id, state=JobState(found.state), created=False)
        state = self._initial_state(spec, now)
        if spec.parent_id is not None:
            parent = conn.execute(
                self.dialect.row_lock(select(jobs.c.state).where(jobs.c.id == spec.parent_id))
            ).first()
            if parent is None:
                raise JobNotFoundError(
                    f"parent job {spec.parent_id} does not exist; a continuation needs an existing parent"
                )
            parent_state = JobState(parent.state)
            if parent_state in FINAL_STATES:
                state = self._child_state(spec.continue_on, parent_state)
            else:
                state = S.AWAITING
                conn.execute(update(jobs).where(jobs.c.id == spec.parent_id).values(has_children=True))
                if parent_state is S.ENQUEUED:
                    # We held the parent's row lock, so a concurrent claim (SKIP LOCKED) may have
                    # passed it by: tell the servers to look again once we commit.
                    self.dialect.notify(conn, "unlocked")
        try:
            with conn.begin_nested():
                job_id = conn.execute(
                    insert(jobs).values(**self._row_for(spec, state, now)).returning(jobs.c.id)
                ).scalar_one()
        except IntegrityError:
            # Another process stored the same unique key between our check and insert.
            found = conn.execute(select(jobs.c.id, jobs.c.state).where(jobs.c.active_key == key)).first()
            if found is None:
                raise
            return Enqueued(id=found.id, state=JobState(found.state), created=False)
        return Enqueued(id=job_id, state=state, created=True)

    @staticmethod
    def _child_state(continue_on: ContinueOn | str, parent_state: JobState) -> JobState:
        if ContinueOn(continue_on) is ContinueOn.FINISHED or parent_state is S.SUCCEEDED:
            return S.ENQUEUED
        return S.DELETED

    def _release_children(self, conn: Connection, parents: dict[int, JobState], now: datetime) -> None:
        """Enqueue or delete the Awaiting continuations of parents that just reached a final state."""
        frontier = dict(parents)
        while frontier:
            # Locked: a continuation being added to one of these children right now sets its
            # has_children; reading it unlocked (PostgreSQL) could miss that and strand the grandchild.
            children = conn.execute(
                self.dialect.row_lock(
                    select(jobs.c.id, jobs.c.parent_id, jobs.c.continue_on, jobs.c.has_children).where(
                        jobs.c.parent_id.in_(list(frontier)), jobs.c.state == S.AWAITING.value
                    )
                )
            ).all()
            next_frontier: dict[int, JobState] = {}
            hist: list[tuple[int, JobState, str]] = []
            for child in children:
                parent_state = frontier[child.parent_id]
                new = self._child_state(child.continue_on, parent_state)
                values: dict[str, Any] = {"state": new.value}
                if new is S.ENQUEUED:
                    values["enqueued_at"] = now
                    reason = f"parent {child.parent_id} {parent_state.value}"
                else:
                    values.update(finished_at=now, active_key=None)
                    reason = f"parent {child.parent_id} {parent_state.value}; continuation not run"
                    if child.has_children:
                        next_frontier[child.id] = S.DELETED
                changed = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == child.id, jobs.c.state == S.AWAITING.value)
                    .values(**values)
                ).rowcount
                if changed:
                    hist.append((child.id, new, reason))
            self._history_rows(conn, hist, now, None)
            if any(state is S.ENQUEUED for _, state, _ in hist):
                self.dialect.notify(conn, "released")
            frontier = next_frontier

    # -- claim and finish -----------------------------------------------------------------------
    def acquire(
        self,
        server_id: str,
        queues: Sequence[str],
        limit: int,
        lease_until: datetime,
        now: datetime,
    ) -> list[ClaimedJob]:
        if limit <= 0:
            return []
        return self._tx(lambda conn: self._acquire(conn, server_id, queues, limit, lease_until, now))

    def finish_and_acquire(
        self,
        server_id: str,
        outcomes: Sequence[Outcome],
        queues: Sequence[str],
        limit: int,
        lease_until: datetime,
        now: datetime,
    ) -> tuple[list[int], list[ClaimedJob]]:
        """One transaction, so a dispatcher turn costs one commit (one fsync at synchronous=FULL)."""

        def body(conn: Connection) -> tuple[list[int], list[ClaimedJob]]:
            lost = self._finish(conn, server_id, outcomes, now) if outcomes else []
            claimed = self._acquire(conn, server_id, queues, limit, lease_until, now) if limit > 0 else []
            return lost, claimed

        if not outcomes and limit <= 0:
            return [], []
        return self._tx(body)

    def _acquire(
        self,
        conn: Connection,
        server_id: str,
        queues: Sequence[str],
        limit: int,
        lease_until: datetime,
        now: datetime,
    ) -> list[ClaimedJob]:
        claimed: list[ClaimedJob] = []
        for queue in queues or ["*"]:
            remaining = limit - len(claimed)
            if remaining <= 0:
                break
            rows = conn.execute(
                self._claim_statement(queue),
                {"claim_limit": remaining, "claim_server": server_id, "claim_lease": lease_until,
                 "claim_now": now},
            ).all()
            rows = sorted(rows, key=lambda r: (-r.priority, r.id))
            claimed.extend(
                ClaimedJob(
                    id=r.id,
                    function=r.function,
                    payload=r.payload,
                    options=_options(r.options),
                    attempts=r.attempts,
                    recurring_id=r.recurring_id,
                )
                for r in rows
            )
        self._history_rows(
            conn, ((c.id, S.PROCESSING, f"claimed (attempt {c.attempts})") for c in claimed),
            now, server_id,
        )
        return claimed

    def _claim_statement(self, queue: str) -> Any:
        """The claim UPDATE for one queue ("*": every shared queue), built once with bound values.

        Building a statement costs more than running it for one job; the claim runs on every
        dispatcher turn, so it is built once per queue and reused from SQLAlchemy's compiled cache.
        """
        stmt = self._claim_stmts.get(queue)
        if stmt is not None:
            return stmt
        pick = select(jobs.c.id).where(jobs.c.state == S.ENQUEUED.value)
        if queue != "*":
            pick = pick.where(jobs.c.queue == queue)
        else:  # private queues belong to the one process that names them
            pick = pick.where(~jobs.c.queue.contains(PRIVATE_QUEUE_MARK, autoescape=True))
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
                jobs.c.recurring_id, jobs.c.priority,
            )
        )
        if len(self._claim_stmts) > 256:  # many one-off queue names: keep the cache bounded
            self._claim_stmts.clear()
        self._claim_stmts[queue] = stmt
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
            for p in params:
                by_shape.setdefault(tuple(sorted(k for k in p if k != "_id")), []).append(p)
        for shape, shape_params in by_shape.items():
            stmt = _FINISH_STMTS.get(shape)
            if stmt is None:
                stmt = _FINISH_STMTS[shape] = (
                    update(jobs)
                    .where(jobs.c.id == bindparam("_id"))
                    .values({c: bindparam(c) for c in shape})
                )
            conn.execute(stmt, shape_params)
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
        error = {"error_type": o.error_type, "error_message": o.error_message,
                 "error_traceback": o.error_traceback}
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
            raise JobNotFoundError(f"job {job_id} does not exist (it may have expired or been removed)")
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
            current = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar()
            if current is None:
                raise JobNotFoundError(f"job {job_id} does not exist (it may have expired or been removed)")
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
        return self._tx(
            lambda conn: conn.execute(
                select(func.min(jobs.c.run_at)).where(jobs.c.state == S.SCHEDULED.value)
            ).scalar(),
            write=False,
        )

    # -- reading --------------------------------------------------------------------------------
    def get(self, job_id: int) -> JobRecord | None:
        def body(conn: Connection) -> JobRecord | None:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            return None if row is None else _record(row)

        return self._tx(body, write=False)

    def states_of(self, job_ids: Sequence[int]) -> dict[int, JobState]:
        if not job_ids:
            return {}
        return self._tx(
            lambda conn: {
                r.id: JobState(r.state)
                for r in conn.execute(select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(list(job_ids))))
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
            self.dialect.epoch_seconds(jobs.c[name]).label(name) if name in TIME_COLUMNS else jobs.c[name]
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
        if flt.search:
            term = flt.search.strip()
            cond = or_(
                jobs.c.function.contains(term, autoescape=True),
                jobs.c.name.contains(term, autoescape=True),
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
        if flt.parent_id is not None:
            stmt = stmt.where(jobs.c.parent_id == flt.parent_id)
        if flt.min_attempts is not None:
            stmt = stmt.where(jobs.c.attempts >= flt.min_attempts)
        stmt = stmt.order_by(jobs.c.id.desc() if flt.newest_first else jobs.c.id)
        if flt.limit is not None:
            stmt = stmt.limit(flt.limit)
        return stmt

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

    @staticmethod
    def _recount(conn: Connection) -> None:
        """Rebuild the counters from the jobs table (once, when the triggers are first installed)."""
        conn.execute(delete(counts))
        rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
        if rows:
            conn.execute(insert(counts), [{"state": s, "shard": 0, "n": int(n)} for s, n in rows])

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

    # -- servers and maintenance ----------------------------------------------------------------
    def register_server(self, info: ServerInfo) -> None:
        values = {
            "name": info.name, "host": info.host, "pid": info.pid, "workers": info.workers,
            "queues": json.dumps(list(info.queues)), "started_at": info.started_at,
            "heartbeat_at": info.heartbeat_at,
        }

        def body(conn: Connection) -> None:
            if not conn.execute(update(servers).where(servers.c.id == info.id).values(**values)).rowcount:
                conn.execute(insert(servers).values(id=info.id, **values))

        self._tx(body)

    def unregister_server(self, server_id: str) -> None:
        self._tx(lambda conn: conn.execute(delete(servers).where(servers.c.id == server_id)))

    def heartbeat(
        self, server_id: str, running: Sequence[int], lease_until: datetime, now: datetime
    ) -> HeartbeatReply:
        def body(conn: Connection) -> HeartbeatReply:
            known = conn.execute(
                update(servers).where(servers.c.id == server_id).values(heartbeat_at=now)
            ).rowcount
            if not running:
                return HeartbeatReply(registered=bool(known))
            held = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id.in_(list(running)),
                    jobs.c.server_id == server_id,
                    jobs.c.state == S.PROCESSING.value,
                )
                .values(lease_until=lease_until)
                .returning(jobs.c.id, jobs.c.cancel_requested)
            ).all()
            held_ids = {r.id for r in held}
            return HeartbeatReply(
                cancel_requested=frozenset(r.id for r in held if r.cancel_requested),
                lost=frozenset(set(running) - held_ids),
                registered=bool(known),
            )

        return self._tx(body)

    def list_servers(self) -> list[ServerInfo]:
        def body(conn: Connection) -> list[ServerInfo]:
            return [
                ServerInfo(
                    id=r.id, name=r.name, host=r.host, pid=r.pid, workers=r.workers,
                    queues=tuple(json.loads(r.queues)), started_at=r.started_at,
                    heartbeat_at=r.heartbeat_at,
                )
                for r in conn.execute(select(servers).order_by(servers.c.started_at))
            ]

        return self._tx(body, write=False)

    def running_by_server(self) -> dict[str, list[int]]:
        def body(conn: Connection) -> dict[str, list[int]]:
            out: dict[str, list[int]] = {}
            rows = conn.execute(
                select(jobs.c.server_id, jobs.c.id).where(jobs.c.state == S.PROCESSING.value)
            )
            for sid, jid in rows:
                out.setdefault(sid, []).append(jid)
            return out

        return self._tx(body, write=False)

    def reap(
        self,
        now: datetime,
        *,
        server_timeout: float,
        dead_server_ids: Sequence[str] = (),
    ) -> ReapReport:
        def body(conn: Connection) -> ReapReport:
            stale = now - timedelta(seconds=server_timeout)
            dead = conn.execute(
                delete(servers)
                .where(or_(servers.c.heartbeat_at < stale, servers.c.id.in_(list(dead_server_ids))))
                .returning(servers.c.id)
            ).scalars().all()
            cond = jobs.c.lease_until < now
            if dead:
                cond = or_(cond, jobs.c.server_id.in_(list(dead)))
            rows = conn.execute(
                update(jobs)
                .where(jobs.c.state == S.PROCESSING.value, cond)
                .values(state=S.ENQUEUED.value, enqueued_at=now, **_RELEASE)
                .returning(jobs.c.id, jobs.c.server_id)
            ).all()
            # RETURNING gives the new (NULL) server_id; the history names the reason instead.
            reason = (
                "returned to queue: its server stopped (lease expired"
                + (f"; dead servers {', '.join(dead)})" if dead else ")")
            )
            self._history_rows(conn, ((r.id, S.ENQUEUED, reason) for r in rows), now, None)
            if rows:
                self.dialect.notify(conn, "reaped")
            return ReapReport(dead_servers=tuple(dead), returned_jobs=tuple(r.id for r in rows))

        return self._tx(body)

    def prune(self, now: datetime, *, keep_succeeded: float, keep_deleted: float, batch: int) -> int:
        def body(conn: Connection) -> int:
            cond = or_(
                and_(jobs.c.state == S.SUCCEEDED.value,
                     jobs.c.finished_at < now - timedelta(seconds=keep_succeeded)),
                and_(jobs.c.state == S.DELETED.value,
                     jobs.c.finished_at < now - timedelta(seconds=keep_deleted)),
            )
            ids = conn.execute(select(jobs.c.id).where(cond).limit(batch)).scalars().all()
            if not ids:
                return 0
            conn.execute(delete(history).where(history.c.job_id.in_(ids)))
            conn.execute(delete(logs).where(logs.c.job_id.in_(ids)))
            conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
            return len(ids)

        return self._tx(body)

    def try_lock(self, name: str, owner: str, until: datetime, now: datetime) -> bool:
        def body(conn: Connection) -> bool:
            taken = conn.execute(
                update(locks)
                .where(locks.c.name == name, or_(locks.c.owner == owner, locks.c.expires_at < now))
                .values(owner=owner, expires_at=until)
            ).rowcount
            if taken:
                return True
            try:
                with conn.begin_nested():
                    conn.execute(insert(locks).values(name=name, owner=owner, expires_at=until))
                return True
            except IntegrityError:
                return False

        return self._tx(body)

    # -- output and progress --------------------------------------------------------------------
    def append_logs(self, job_id: int, chunks: Sequence[tuple[datetime, str, str]]) -> None:
        if chunks:
            self._tx(
                lambda conn: conn.execute(
                    insert(logs),
                    [{"job_id": job_id, "at": at, "stream": s, "text": t} for at, s, t in chunks],
                )
            )

    def read_logs(self, job_id: int, tail: int | None = None) -> list[tuple[datetime, str, str]]:
        def body(conn: Connection) -> list[tuple[datetime, str, str]]:
            stmt = select(logs.c.at, logs.c.stream, logs.c.text).where(logs.c.job_id == job_id)
            if tail is None:
                rows = conn.execute(stmt.order_by(logs.c.id)).all()
            else:
                rows = list(reversed(conn.execute(stmt.order_by(logs.c.id.desc()).limit(tail)).all()))
            return [(r.at, r.stream, r.text) for r in rows]

        return self._tx(body, write=False)

    def set_progress(self, job_id: int, fraction: float | None, message: str | None) -> None:
        self._tx(
            lambda conn: conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(progress=fraction, progress_message=message)
            )
        )


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
        options=JobOptions.from_dict(json.loads(row.options)),
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
