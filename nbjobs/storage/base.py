"""The one storage interface. Every method is one transaction and says what it guarantees.

Methods are named for intent, not CRUD; the server, client and history layers use nothing else,
so a new backend is one class. The SQLAlchemy implementation (SQLite and PostgreSQL) is `sql.SqlStore`.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ..model import (
    ClaimedJob,
    JobOptions,
    JobRecord,
    JobResult,
    JobState,
    NewJob,
    Outcome,
    ServerInfo,
    StateChange,
)
from ..rates import QueueQuota, Rate


@dataclass(frozen=True, kw_only=True)
class Enqueued:
    """Result of storing one new job."""

    id: int
    state: JobState
    created: bool  #: False when a unique key matched an existing unfinished job


@dataclass(frozen=True, kw_only=True)
class LocalClaim:
    """Free workers of a server in the enqueuing process, reserved for the enqueue's transaction.

    Claiming in the transaction that stores the job saves the server a transaction (a commit, an
    fsync at synchronous=FULL) per job and starts the job as soon as the enqueue returns.
    """

    server_id: str
    queues: Sequence[str]
    limit: int
    lease_until: datetime


@dataclass(frozen=True, kw_only=True)
class HeartbeatReply:
    cancel_requested: frozenset[int] = frozenset()  #: running jobs someone asked to cancel
    lost: frozenset[int] = frozenset()  #: jobs this server no longer holds (reaped, deleted)
    registered: bool = True  #: False if the server row was gone (then re-created)


#: Columns of `Store.query_table` (the DataFrame fast path); TIME_COLUMNS come as epoch seconds.
TABLE_COLUMNS = (
    "id", "name", "function", "queue", "state", "attempts", "priority", "created_at", "enqueued_at",
    "run_at", "started_at", "finished_at", "server_id", "progress", "progress_message", "error_type",
    "error_message", "recurring_id", "fire_time", "parent_id", "lock",
)
TIME_COLUMNS = frozenset({"created_at", "enqueued_at", "run_at", "started_at", "finished_at", "fire_time"})


@dataclass(frozen=True, kw_only=True)
class JobFilter:
    """Filters for job listings; all applied in SQL."""

    states: tuple[JobState, ...] = ()
    queues: tuple[str, ...] = ()
    function: str | None = None  #: substring of the function reference
    name: str | None = None  #: exactly this job name (`options(name=…)`): a sweep, a batch
    lock: str | None = None  #: jobs holding or waiting for this lock (`options(lock=…)`)
    search: str | None = None  #: substring of function or name, or an exact id
    recurring_id: str | None = None
    since: datetime | None = None  #: created at or after
    until: datetime | None = None  #: created before
    before_id: int | None = None  #: keyset paging: ids below this (newest first)
    parent_id: int | None = None  #: continuations of this job
    min_attempts: int | None = None  #: at least this many attempts (e.g. 1: Scheduled retries)
    limit: int | None = 1000
    newest_first: bool = True


@dataclass(frozen=True, kw_only=True)
class ReapReport:
    dead_servers: tuple[str, ...] = ()
    returned_jobs: tuple[int, ...] = ()
    #: Private queues of the servers removed as known dead (their process is gone): no one else can
    #: ever run their jobs (`discard_queues`).
    orphaned_queues: tuple[str, ...] = ()
    pruned_jobs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RecurringSpec:
    """A recurring job definition as the client stores it (validated before it gets here)."""

    id: str  #: the user's name for it; adding the same id again updates the definition
    cron: str  #: 5 or 6 fields (seconds first) or an alias, see `nbjobs.cron`
    tz: str = "UTC"  #: IANA time zone the expression is read in
    function: str  #: "module:qualname"
    payload: bytes  #: serialized (and signed) arguments, like `NewJob.payload`
    options: JobOptions  #: options of every job it creates
    misfire: str = "once"  #: "once" | "skip" | "all", see `cron.due_fires`
    misfire_limit: int = 100  #: most jobs one catch-up creates with misfire="all"
    misfire_grace: float | None = None  #: seconds; a fire time later than this gets no job
    overlap: str = "allow"  #: "allow" | "skip": skip fires while the previous run is unfinished
    start: datetime | None = None  #: no fire time before it
    end: datetime | None = None  #: no fire time after it
    next_fire: datetime | None  #: first fire time, computed by the client from the schedule


@dataclass(frozen=True, kw_only=True)
class RecurringRecord:
    """A recurring job definition as stored, with what its schedule has done so far."""

    id: str
    cron: str
    tz: str
    function: str
    payload: bytes
    options: JobOptions
    misfire: str
    misfire_limit: int
    misfire_grace: float | None = None  #: seconds; a fire time later than this gets no job
    overlap: str
    start: datetime | None = None  #: no fire time before it
    end: datetime | None = None  #: no fire time after it
    next_fire: datetime | None  #: the oldest fire time not handled yet (None: ended)
    last_fire: datetime | None = None  #: latest fire time that got a job
    last_job_id: int | None = None  #: latest job it created (fire or trigger)
    last_job_state: JobState | None = None  #: that job's current state (None once pruned)
    paused: bool = False
    error: str | None = None  #: why the scheduler cannot fire it (e.g. function not found)
    missed: int = 0  #: fire times that got no job of their own (misfire policy or overlap skip)
    last_skip: str | None = None  #: why the latest such fire time got no job
    created_at: datetime
    updated_at: datetime


class Store(abc.ABC):
    """What nbjobs needs from a database."""

    dialect_name: str
    #: Which database: the same for two stores on one database, whatever URL each was given.
    database: str

    # -- creating and claiming jobs -------------------------------------------------------
    @abc.abstractmethod
    def enqueue(self, specs: Sequence[NewJob], now: datetime) -> list[Enqueued]:
        """Store new jobs atomically (all or none), in order; unique keys return the existing job."""

    @abc.abstractmethod
    def acquire(
        self,
        server_id: str,
        queues: Sequence[str],
        limit: int,
        lease_until: datetime,
        now: datetime,
        queue_limits: Mapping[str, int] | None = None,
    ) -> list[ClaimedJob]:
        """Claim up to `limit` enqueued jobs (queue order, then priority, then age).

        A job is returned to exactly one caller, whatever the number of concurrent claimers.
        `"*"` in `queues` stands for every queue except private ones (names containing "@").
        `queue_limits`: at most this many jobs of each of these queues (a server's free room for a
        queue it limits); `"*"` then takes them first, up to their room, and no more of them after.
        """

    @abc.abstractmethod
    def finish(self, server_id: str, outcomes: Sequence[Outcome], now: datetime) -> list[int]:
        """Record finished attempts in one transaction (group commit) and release continuations.

        Only jobs still Processing under `server_id` change; the ids of the others are returned.
        """

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
        """`finish` then `acquire`: what a dispatcher does each turn. Returns what each returns.

        `shared`: the queues with quotas set by `set_queue_rate` / `set_queue_limit`, as the server
        last read them; such a queue is claimed only through them (a server that has not read a new
        quota yet claims none of its jobs), each claim counting every server's starts and running
        jobs.
        A store that can should do both in one transaction (one commit per turn; on an error neither
        happens); this default takes two.
        """
        if shared:
            raise NotImplementedError("this store keeps no shared quotas")
        lost = self.finish(server_id, outcomes, now)
        return lost, self.acquire(server_id, queues, limit, lease_until, now, queue_limits)

    def enqueue_and_acquire(
        self, specs: Sequence[NewJob], now: datetime, claim: LocalClaim
    ) -> tuple[list[Enqueued], list[ClaimedJob]]:
        """`enqueue` then `acquire` for `claim`: what an enqueue does when a local server has free
        workers. The claim honours queue order, priority and age as `acquire` does (it may take an
        older job rather than the new one). A store that can should do both in one transaction;
        this default takes two.
        """
        stored = self.enqueue(specs, now)
        return stored, self.acquire(claim.server_id, claim.queues, claim.limit, claim.lease_until, now)

    # -- changes people ask for ----------------------------------------------------------------
    @abc.abstractmethod
    def requeue(self, job_id: int, now: datetime, reason: str) -> JobState:
        """Put a job that is not running back in its queue now."""

    @abc.abstractmethod
    def delete(self, job_id: int, now: datetime, reason: str, *, cancel_only: bool = False) -> JobState:
        """Delete a job; a running one is asked to stop (cooperatively) and ends Deleted.

        With `cancel_only`, a job that already finished is refused (IllegalTransitionError).
        """

    @abc.abstractmethod
    def pause_queue(self, queue: str, now: datetime) -> bool:
        """No server claims from `queue` until it is resumed (jobs running go on); False if it was
        paused already."""

    @abc.abstractmethod
    def resume_queue(self, queue: str) -> bool:
        """Servers claim from `queue` again (and are woken); False if it was not paused."""

    @abc.abstractmethod
    def paused_queues(self) -> dict[str, datetime]:
        """The paused queues and when each was paused."""

    @abc.abstractmethod
    def set_queue_rate(self, queue: str, rate: Rate | None, now: datetime) -> bool:
        """Hold `queue` to `rate` on every server together (None: no shared rate); True if it changed."""

    @abc.abstractmethod
    def set_queue_limit(self, queue: str, running: int | None, now: datetime) -> bool:
        """At most `running` jobs of `queue` running on all servers together (None: no shared limit);
        True if it changed."""

    @abc.abstractmethod
    def queue_quotas(self) -> dict[str, QueueQuota]:
        """The queues with shared quotas (a rate, a limit or both)."""

    @abc.abstractmethod
    def promote_due(self, now: datetime, limit: int = 1000) -> int:
        """Move Scheduled jobs whose time has come to Enqueued; return how many."""

    @abc.abstractmethod
    def next_due(self) -> datetime | None:
        """The earliest due time of any Scheduled job."""

    def next_wakeup(self) -> tuple[datetime | None, datetime | None]:
        """`next_due` and `next_recurring_fire` together: all a sleeping scheduler needs to read
        when the database changed (a store that can should read both in one query)."""
        return self.next_due(), self.next_recurring_fire()

    # -- reading -------------------------------------------------------------------------------
    @abc.abstractmethod
    def get(self, job_id: int) -> JobRecord | None: ...

    @abc.abstractmethod
    def states_of(self, job_ids: Sequence[int]) -> dict[int, JobState]:
        """Current state of each existing job among `job_ids`."""

    @abc.abstractmethod
    def state_counts(self, job_ids: Sequence[int]) -> dict[JobState, int]:
        """How many of the existing jobs among `job_ids` are in each state (counted by the
        database: a live view of thousands of jobs reads a few rows, not one per job)."""

    @abc.abstractmethod
    def results_of(self, job_ids: Sequence[int]) -> dict[int, JobResult]:
        """State and result or error of each existing job among `job_ids`, in one read (a
        gathering reads thousands; `get` would read each whole row)."""

    @abc.abstractmethod
    def query(self, flt: JobFilter) -> list[dict[str, Any]]:
        """Rows for listings (no payloads or results)."""

    def query_table(self, flt: JobFilter) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Listing rows as plain tuples with column names, times as epoch seconds (float or None).

        The fast path behind DataFrames; this default derives it from `query`, backends override it.
        """
        rows = self.query(flt)
        return list(TABLE_COLUMNS), [
            tuple(r[c].timestamp() if c in TIME_COLUMNS and r[c] is not None else r[c] for c in TABLE_COLUMNS)
            for r in rows
        ]

    @abc.abstractmethod
    def history(self, job_id: int) -> list[StateChange]: ...

    @abc.abstractmethod
    def parents(self, job_id: int) -> list[int]:
        """The jobs a continuation waits for (or waited for), in id order; [] for other jobs."""

    @abc.abstractmethod
    def awaiting_descendants(self, job_id: int) -> set[int]:
        """The Awaiting jobs that start only after `job_id` ends: its continuations, theirs, and so
        on (jobs of `after` and jobs given it as an argument included)."""

    @abc.abstractmethod
    def counts(self) -> dict[JobState, int]:
        """Number of jobs per state."""

    @abc.abstractmethod
    def finished_histogram(
        self, since: datetime, width: float
    ) -> dict[tuple[JobState, int], int]:
        """Succeeded and Failed jobs finished at or after `since`, counted per `width`-second bucket
        (bucket k starts at since + k·width), aggregated in the database from the finish index."""

    @abc.abstractmethod
    def queue_lengths(self) -> dict[str, int]:
        """Enqueued jobs per queue."""

    @abc.abstractmethod
    def queue_overview(self) -> list[tuple[str, JobState, int, datetime | None]]:
        """Per queue and unfinished state (Scheduled, Awaiting, Enqueued, Processing): how many jobs,
        and the oldest `enqueued_at` among them (for Enqueued: the longest a job there has waited)."""

    # -- servers, leases, maintenance ---------------------------------------------------------
    @abc.abstractmethod
    def register_server(self, info: ServerInfo) -> None: ...

    @abc.abstractmethod
    def unregister_server(self, server_id: str) -> None: ...

    @abc.abstractmethod
    def heartbeat(
        self, server_id: str, running: Sequence[int], lease_until: datetime, now: datetime
    ) -> HeartbeatReply:
        """Refresh the server row and extend the leases of its running jobs."""

    @abc.abstractmethod
    def list_servers(self) -> list[ServerInfo]: ...

    @abc.abstractmethod
    def running_by_server(self) -> dict[str, list[int]]: ...

    @abc.abstractmethod
    def has_work(self, server_id: str, queues: Sequence[str], now: datetime) -> bool:
        """Whether a server serving `queues` ("*": every shared queue) has anything left to do: a job
        it holds (its outcome not yet written), or one it could claim now (Enqueued in a queue it
        serves that is not paused, or Scheduled there and due). What `nbjobs server --burst` waits for."""

    @abc.abstractmethod
    def reap(
        self,
        now: datetime,
        *,
        server_timeout: float,
        dead_server_ids: Sequence[str] = (),
    ) -> ReapReport:
        """Remove servers silent for `server_timeout` s (or known dead) and return their and any
        lease-expired jobs to their queues, each with a history row saying why. The private queues of
        the known dead ones are reported (`orphaned_queues`); a silent one may only be paused."""

    @abc.abstractmethod
    def discard_queues(self, queues: Sequence[str], now: datetime, reason: str) -> list[int]:
        """Delete the unfinished jobs of `queues` (Enqueued, Scheduled, Awaiting), each with `reason`;
        their continuations follow as those of any deleted job. The ids deleted."""

    @abc.abstractmethod
    def prune(self, now: datetime, *, keep_succeeded: float, keep_deleted: float, batch: int) -> int:
        """Delete up to `batch` finished jobs older than their keep time, with history and logs."""

    @abc.abstractmethod
    def try_lock(self, name: str, owner: str, until: datetime, now: datetime,
                 taking_from: Sequence[str] = ()) -> bool:
        """Take or renew a named lease-lock; True if `owner` holds it until `until`. A lock held by
        one of `taking_from` (owners known dead) is taken at once, without waiting for it to expire."""

    # -- output and progress ------------------------------------------------------------------
    @abc.abstractmethod
    def append_logs(self, job_id: int, chunks: Sequence[tuple[datetime, str, str]]) -> None:
        """Append (time, stream, text) chunks to a job's captured output."""

    @abc.abstractmethod
    def read_logs(self, job_id: int, tail: int | None = None) -> list[tuple[datetime, str, str]]: ...

    @abc.abstractmethod
    def read_log_entries(self, job_id: int, after: int = 0) -> list[tuple[int, str]]:
        """(entry id, text) of a job's output entries with an id above `after`, in order: a reader
        following a running job reads each entry once."""

    @abc.abstractmethod
    def set_progress(self, job_id: int, fraction: float | None, message: str | None) -> None: ...

    # -- wake-ups -----------------------------------------------------------------------------
    @abc.abstractmethod
    def listener(self) -> Any:
        """A `dialects.Listener` that waits for work notifications from other processes."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- recurring jobs -----------------------------------------------------------------------
    @abc.abstractmethod
    def upsert_recurring(self, spec: RecurringSpec, now: datetime) -> bool:
        """Add a definition, or update the one with this id; True if it was added.

        An update replaces what to run and how, clears its error, and keeps its history (last fire,
        last job, missed count) and whether it is paused. Its planned next fire is kept when the
        expression and time zone are unchanged, so defining it again (re-running a notebook cell)
        neither loses nor repeats a fire; otherwise `spec.next_fire` replaces it.
        """

    @abc.abstractmethod
    def get_recurring(self, recurring_id: str) -> RecurringRecord | None: ...

    @abc.abstractmethod
    def list_recurring(self) -> list[RecurringRecord]:
        """Every definition, by id, with the state of its latest job."""

    @abc.abstractmethod
    def due_recurring(self, now: datetime, limit: int = 100) -> list[RecurringRecord]:
        """Definitions that are not paused and whose next fire is at or before `now`, oldest first.

        Definitions with an error are included, so the scheduler can retry or skip them.
        """

    @abc.abstractmethod
    def next_recurring_fire(self) -> datetime | None:
        """The earliest next fire of any definition that is not paused."""

    @abc.abstractmethod
    def remove_recurring(self, recurring_id: str) -> bool:
        """Delete a definition (jobs it created stay); False if there was none."""

    @abc.abstractmethod
    def set_recurring_paused(
        self, recurring_id: str, paused: bool, now: datetime, *,
        next_fire: datetime | Literal["keep"] | None = "keep",
    ) -> bool:
        """Pause or resume; `next_fire`, if given, replaces the plan (resume from now, not the past;
        None: the definition's end has passed, it has ended).

        A pause makes any claim still in flight for this definition fail. False if there is none.
        """

    @abc.abstractmethod
    def set_recurring_error(self, recurring_id: str, error: str | None, now: datetime) -> bool:
        """Record why the definition cannot fire (None clears it); False if there is none."""

    @abc.abstractmethod
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
        """Advance the schedule and store the jobs of the fire times due, in one transaction.

        A compare-and-set: it happens only if the definition still plans `expected_next_fire` and is
        not paused; otherwise nothing changes and None is returned (another server claimed these
        fire times, or the definition was changed, paused or removed). So with any number of
        servers each fire time creates at most one job. Jobs whose `fire_time` is not after the
        last fire that got a job are dropped (never fired twice, even after a plan was reset).

        With overlap="skip" the jobs are dropped while the previous run is unfinished, and at most
        the latest one is kept otherwise; dropped fire times count as missed, with a note. `missed`
        adds fire times the caller's misfire policy left out; `note` says why (kept as last_skip).
        Returns the ids of the jobs created (an existing unfinished job with the same unique key
        stands in for a new one); an empty list if every fire time was skipped.
        """

    @abc.abstractmethod
    def trigger_recurring(self, recurring_id: str, job: NewJob, now: datetime) -> int | None:
        """Store one extra run now, leaving the schedule as it is; None if there is no definition.

        The job becomes the definition's latest job (overlap="skip" waits for it).
        """


NO_STOP = threading.Event()
