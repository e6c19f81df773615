"""The one storage interface. Every method is one transaction and says what it guarantees.

Methods are named for intent, not CRUD; the server, client and history layers use nothing else,
so a new backend is one class. The SQLAlchemy implementation (SQLite and PostgreSQL) is `sql.SqlStore`.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..model import ClaimedJob, JobRecord, JobState, NewJob, Outcome, ServerInfo, StateChange


@dataclass(frozen=True, kw_only=True)
class Enqueued:
    """Result of storing one new job."""

    id: int
    state: JobState
    created: bool  #: False when a unique key matched an existing unfinished job


@dataclass(frozen=True, kw_only=True)
class HeartbeatReply:
    cancel_requested: frozenset[int] = frozenset()  #: running jobs someone asked to cancel
    lost: frozenset[int] = frozenset()  #: jobs this server no longer holds (reaped, deleted)
    registered: bool = True  #: False if the server row was gone (then re-created)


@dataclass(frozen=True, kw_only=True)
class JobFilter:
    """Filters for job listings; all applied in SQL."""

    states: tuple[JobState, ...] = ()
    queues: tuple[str, ...] = ()
    function: str | None = None  #: substring of the function reference
    search: str | None = None  #: substring of function or name, or an exact id
    recurring_id: str | None = None
    since: datetime | None = None  #: created at or after
    until: datetime | None = None  #: created before
    before_id: int | None = None  #: keyset paging: ids below this (newest first)
    limit: int | None = 1000
    newest_first: bool = True


@dataclass(frozen=True, kw_only=True)
class ReapReport:
    dead_servers: tuple[str, ...] = ()
    returned_jobs: tuple[int, ...] = ()
    pruned_jobs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Store(abc.ABC):
    """What nbjobs needs from a database."""

    dialect_name: str

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
    ) -> list[ClaimedJob]:
        """Claim up to `limit` enqueued jobs (queue order, then priority, then age).

        A job is returned to exactly one caller, whatever the number of concurrent claimers.
        `"*"` in `queues` stands for every queue.
        """

    @abc.abstractmethod
    def finish(self, server_id: str, outcomes: Sequence[Outcome], now: datetime) -> list[int]:
        """Record finished attempts in one transaction (group commit) and release continuations.

        Only jobs still Processing under `server_id` change; the ids of the others are returned.
        """

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
    def promote_due(self, now: datetime, limit: int = 1000) -> int:
        """Move Scheduled jobs whose time has come to Enqueued; return how many."""

    @abc.abstractmethod
    def next_due(self) -> datetime | None:
        """The earliest due time of any Scheduled job."""

    # -- reading -------------------------------------------------------------------------------
    @abc.abstractmethod
    def get(self, job_id: int) -> JobRecord | None: ...

    @abc.abstractmethod
    def states_of(self, job_ids: Sequence[int]) -> dict[int, JobState]:
        """Current state of each existing job among `job_ids`."""

    @abc.abstractmethod
    def query(self, flt: JobFilter) -> list[dict[str, Any]]:
        """Rows for listings (no payloads or results)."""

    @abc.abstractmethod
    def history(self, job_id: int) -> list[StateChange]: ...

    @abc.abstractmethod
    def counts(self) -> dict[JobState, int]:
        """Number of jobs per state."""

    @abc.abstractmethod
    def queue_lengths(self) -> dict[str, int]:
        """Enqueued jobs per queue."""

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
    def reap(
        self,
        now: datetime,
        *,
        server_timeout: float,
        dead_server_ids: Sequence[str] = (),
    ) -> ReapReport:
        """Remove servers silent for `server_timeout` s (or known dead) and return their and any
        lease-expired jobs to their queues, each with a history row saying why."""

    @abc.abstractmethod
    def prune(self, now: datetime, *, keep_succeeded: float, keep_deleted: float, batch: int) -> int:
        """Delete up to `batch` finished jobs older than their keep time, with history and logs."""

    @abc.abstractmethod
    def try_lock(self, name: str, owner: str, until: datetime, now: datetime) -> bool:
        """Take or renew a named lease-lock; True if `owner` holds it until `until`."""

    # -- output and progress ------------------------------------------------------------------
    @abc.abstractmethod
    def append_logs(self, job_id: int, chunks: Sequence[tuple[datetime, str, str]]) -> None:
        """Append (time, stream, text) chunks to a job's captured output."""

    @abc.abstractmethod
    def read_logs(self, job_id: int, tail: int | None = None) -> list[tuple[datetime, str, str]]: ...

    @abc.abstractmethod
    def set_progress(self, job_id: int, fraction: float | None, message: str | None) -> None: ...

    # -- wake-ups -----------------------------------------------------------------------------
    @abc.abstractmethod
    def listener(self) -> Any:
        """A `dialects.Listener` that waits for work notifications from other processes."""

    @abc.abstractmethod
    def close(self) -> None: ...


NO_STOP = threading.Event()
