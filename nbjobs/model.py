"""Frozen value objects shared by every layer: job states, specs, records, outcomes, servers."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from .clock import duration, user_time
from .errors import LONGEST_SECONDS as LONGEST_SECONDS  # re-exported: options are checked against it
from .errors import InvalidJobError, UnknownStateError

#: When a scheduled job runs: a datetime (naive = local), an ISO string, a date, a delay.
When = datetime | date | timedelta | int | float | str


def resolve_when(when: When, now: datetime, what: str = "when") -> datetime:
    """A datetime (naive = local time), an ISO time string ("2026-12-01 07:00", as `jobs(since=…)`
    takes), a date (its local midnight), a timedelta or seconds from now → aware UTC. `what` names
    the value in a refusal (`when` of `schedule`, `start` of a recurring definition)."""
    if isinstance(when, bool):
        raise InvalidJobError(f"{what} must be a datetime, timedelta or seconds, got {when!r}")
    if isinstance(when, str) and (delay := duration(when)) is not None:
        when = delay  # "10m" is a delay, as `nbjobs enqueue --at 10m` reads it
    if isinstance(when, str | date):  # a datetime is a date too
        at = user_time(when)
        if at is None:
            raise InvalidJobError(
                f"{what} {when!r} is not a time; write it as '2026-12-01 07:00' (local time, or with an "
                "offset such as '+01:00') or as a delay such as '10m' or '2h', or give a datetime, a "
                "timedelta or a number of seconds"
            )
        return at
    if isinstance(when, timedelta):
        seconds = when.total_seconds()
    elif isinstance(when, int | float):
        seconds = float(when)
    else:
        raise InvalidJobError(
            f"{what} must be a datetime, an ISO time string, a timedelta or a number of seconds, got "
            f"{type(when).__name__}"
        )
    if math.isnan(seconds):
        raise InvalidJobError(f"{what}: a delay must be a number of seconds, got NaN; use 0 for now")
    if seconds < 0:
        raise InvalidJobError(f"{what}: a delay must not be negative, got {seconds}s; use 0 for now")
    try:
        return now + timedelta(seconds=seconds)
    except OverflowError:  # also infinity
        raise InvalidJobError(
            f"{what}: a delay of {seconds} s is past the last date a datetime holds; give a nearer time"
        ) from None


class JobState(enum.StrEnum):
    """Where a job is in its life (Hangfire's machine). Exactly one at a time."""

    #: Due later: a delayed job, or a failed attempt waiting for its retry.
    SCHEDULED = "scheduled"
    #: A continuation waiting for its parent to reach the required state.
    AWAITING = "awaiting"
    #: In a queue, ready for any server that listens to it.
    ENQUEUED = "enqueued"
    #: Claimed by a server, which holds a lease on it.
    PROCESSING = "processing"
    #: Finished and returned a value.
    SUCCEEDED = "succeeded"
    #: Finished with an exception after its last attempt.
    FAILED = "failed"
    #: Deleted or cancelled by a person (never an automatic outcome of failure).
    DELETED = "deleted"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @classmethod
    def parse(cls, value: str | JobState) -> JobState:
        """Accept a member or a case-insensitive name; say which names exist otherwise."""
        if isinstance(value, JobState):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise UnknownStateError(f"unknown job state {value!r}; use one of: {names}") from None


#: A queue whose name contains this mark is private to one process (e.g. `%%job` cells of one kernel,
#: "default@kernel-1a2b…"): the wildcard queue "*" never serves it; only a server naming it does.
PRIVATE_QUEUE_MARK = "@"

#: Widths (characters) of the columns that hold names people choose. Checked at the call, so a name
#: that SQLite would store and PostgreSQL refuse is refused on both, with the limit in the message.
QUEUE_MAX = 200
NAME_MAX = 500
KEY_MAX = 500
FUNCTION_MAX = 1000
RECURRING_ID_MAX = 200
CRON_MAX = 200
#: A job's stored arguments, or its result, at most this many bytes once serialized (`max_payload=`):
#: a field of either database holds at most about 1 GB, and every read copies it whole.
PAYLOAD_MAX = 512 * 2**20
#: The most `max_payload` may be: SQLite's longest value (1,000,000,000 bytes), less the envelope.
PAYLOAD_CEILING = 999_000_000
SERVER_NAME_MAX = 200
#: Exception type names are written by servers, not people: longer ones are stored cut to this.
ERROR_TYPE_MAX = 500
#: A failed job's message and traceback are stored cut to these (characters), their middle taken
#: out: an exception carrying a whole dataset in its message would otherwise make every read of the
#: jobs table (`jobs()`, the dashboard) copy megabytes, once per attempt.
ERROR_MESSAGE_MAX = 100_000
ERROR_TRACEBACK_MAX = 200_000
#: A priority is stored in a 32-bit integer column.
PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1

def storable(text: str | None) -> str | None:
    """`text` as the database can hold it: NUL characters written as `\\x00` (PostgreSQL text cannot
    hold them) and lone surrogates as `\\udce9` (no database's UTF-8 can; a file name decoded with
    `errors="surrogateescape"`, as `os.listdir` does, carries them). A job's error message, output or
    progress note may hold either (binary data printed, a C library's message, a bad file name)."""
    if not text:
        return text
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if unencodable(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def unencodable(text: str) -> bool:
    """Whether `text` holds a lone surrogate, which UTF-8 cannot encode (cheap for ASCII text)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def unstorable_character(text: str) -> str | None:
    """What in a name or key the database cannot store, described for an error message; else None."""
    if "\x00" in text:
        return "a NUL character"
    if unencodable(text):
        return "a lone surrogate (from text decoded with errors='surrogateescape', such as a file name)"
    return None


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.DELETED})
UNFINISHED_STATES = frozenset(JobState) - FINAL_STATES


class ContinueOn(enum.StrEnum):
    """When a continuation runs."""

    #: Only when the parent succeeded; a parent that fails or is deleted deletes the continuation.
    SUCCEEDED = "succeeded"
    #: When the parent reaches any final state.
    FINISHED = "finished"
    #: Only when the parent failed (after its last retry): a failure handler, as Celery's `link_error`
    #: and RQ's `on_failure`. Of several parents: once all ended and one of them failed; deleted
    #: when they all ended and none failed.
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class JobOptions:
    """Per-job execution options, stored with the job."""

    queue: str = "default"
    priority: int = 0  #: higher runs first within a queue
    retries: int = 3  #: retries after the first attempt
    timeout: float | None = None  #: seconds; an overrunning job is cancelled
    #: seconds: a job not started this long after it was enqueued (or became due) is deleted unrun
    expires: float | None = None
    retry_on: tuple[str, ...] = ()  #: exception type names that are retried (empty: all)
    no_retry_on: tuple[str, ...] = ()  #: exception type names that are never retried
    retry_base: float = 2.0  #: first retry delay in seconds (doubles per attempt)
    retry_cap: float = 3600.0  #: longest retry delay in seconds
    executor: str = "thread"  #: "thread" (in the server's process) or "process" (worker processes)
    name: str | None = None  #: a human name shown in tables and the dashboard
    key: str | None = None  #: unique key: an unfinished job with the same key is returned instead
    lock: str | None = None  #: jobs sharing a lock never run at once, on any server (in order)
    serializer: str = "pickle"  #: "pickle" (signed) or "json"

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "priority": self.priority,
            "retries": self.retries,
            "timeout": self.timeout,
            "expires": self.expires,
            "retry_on": list(self.retry_on),
            "no_retry_on": list(self.no_retry_on),
            "retry_base": self.retry_base,
            "retry_cap": self.retry_cap,
            "executor": self.executor,
            "name": self.name,
            "key": self.key,
            "lock": self.lock,
            "serializer": self.serializer,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobOptions:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in ("retry_on", "no_retry_on"):
            if name in known:
                known[name] = tuple(known[name])
        return cls(**known)


@dataclass(frozen=True, kw_only=True)
class NewJob:
    """Everything storage needs to create one job; built and validated by the client."""

    function: str  #: "module:qualname"
    payload: bytes  #: serialized (and signed) arguments, maybe the function by value
    options: JobOptions
    run_at: datetime | None = None  #: None: enqueue now
    parent_id: int | None = None
    #: A continuation of several jobs (`Client.after`): runs once all of them reached `continue_on`.
    parent_ids: tuple[int, ...] = ()
    continue_on: ContinueOn = ContinueOn.SUCCEEDED
    recurring_id: str | None = None
    fire_time: datetime | None = None  #: the recurring fire time this job stands for
    reason: str = "created"

    @property
    def continues(self) -> bool:
        """Whether the job waits for other jobs (one parent or several)."""
        return self.parent_id is not None or bool(self.parent_ids)


@dataclass(frozen=True, kw_only=True)
class JobResult:
    """What `result()` needs of a job: its state, its pickled return value or its error."""

    state: JobState
    result: bytes | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    function: str | None = None  #: the job's function reference (a notebook run's result is its notebook)


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    """A job as stored, read back from storage."""

    id: int
    function: str
    state: JobState
    options: JobOptions
    payload: bytes
    created_at: datetime
    attempts: int = 0
    run_at: datetime | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    server_id: str | None = None
    lease_until: datetime | None = None
    parent_id: int | None = None
    continue_on: ContinueOn = ContinueOn.SUCCEEDED
    recurring_id: str | None = None
    fire_time: datetime | None = None
    result: bytes | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    progress: float | None = None
    progress_message: str | None = None
    cancel_requested: bool = False

    @property
    def queue(self) -> str:
        return self.options.queue

    @property
    def name(self) -> str | None:
        return self.options.name


@dataclass(frozen=True, kw_only=True)
class ClaimedJob:
    """A job a server has just claimed: what a worker needs to run it."""

    id: int
    function: str
    payload: bytes
    options: JobOptions
    attempts: int  #: attempts including this one
    recurring_id: str | None = None
    enqueued_at: datetime | None = None  #: when it last became Enqueued (for `expires`)


class OutcomeKind(enum.StrEnum):
    """How one attempt ended, as reported by a worker (separate from the resulting state)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  #: raised; the retry policy decides between Scheduled and Failed
    CANCELLED = "cancelled"  #: stopped on request; ends Deleted
    RETURNED = "returned"  #: not finished (shutdown, lost lease); back to its queue


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """One finished attempt, written to storage by the server (in batches)."""

    job_id: int
    kind: OutcomeKind
    started_at: datetime | None = None
    finished_at: datetime
    result: bytes | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    retry_at: datetime | None = None  #: set when a failure is to be retried
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class StateChange:
    """One row of a job's state history."""

    job_id: int
    state: JobState
    at: datetime
    reason: str
    server_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ServerInfo:
    """A running server as registered in storage."""

    id: str
    name: str
    host: str
    pid: int
    workers: int
    queues: tuple[str, ...]
    started_at: datetime
    heartbeat_at: datetime


def clip_middle(text: str | None, limit: int) -> str | None:
    """`text` within `limit` characters: its start and end kept, the middle replaced by a note of
    how much was cut (a traceback's end says where it was raised, its start what called it)."""
    if text is None or len(text) <= limit:
        return text
    note = f"\n[… {len(text) - limit:,} characters cut by nbjobs …]\n"
    head = (limit - len(note)) // 2
    tail = limit - len(note) - head
    return text[:head] + note + text[len(text) - tail :]


def padded_queue(queue: str) -> str | None:
    """Why `queue` is refused if it has spaces at its ends (a name read from a file or typed with a
    space after a comma): its jobs would wait for a server serving exactly that, and none does."""
    if queue == queue.strip():
        return None
    return (f"queue {queue!r} has spaces at its start or end, so servers of {queue.strip()!r} would not "
            f"take its jobs; write {queue.strip()!r}")
