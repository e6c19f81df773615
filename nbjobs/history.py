"""Read-only pandas views of jobs, history, servers and statistics. Filters run in SQL."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from .clock import duration, user_time, utcnow
from .errors import ConfigurationError, InvalidJobError, JobNotFoundError, caller_stacklevel
from .model import JobState
from .storage import JobFilter, Store

STATE_DTYPE = pd.CategoricalDtype([s.value for s in JobState])
TIME_DTYPE = pd.DatetimeTZDtype(unit="us", tz="UTC")
JOB_COLUMNS = [
    "id", "name", "function", "queue", "state", "attempts", "priority", "created_at", "enqueued_at",
    "run_at", "started_at", "finished_at", "duration", "server_id", "progress", "progress_message",
    "error_type", "error_message", "recurring_id", "fire_time", "parent_id", "lock",
]
#: What a time filter takes (`as_utc_time`).
TimeFilter = datetime | date | str | timedelta | None
_TIME_COLUMNS = ["created_at", "enqueued_at", "run_at", "started_at", "finished_at", "fire_time"]


def _parse_states(state: str | JobState | Sequence[str | JobState] | None) -> tuple[JobState, ...]:
    """One state, a list, or names separated by commas ("failed,deleted", as `--state` takes them)."""
    if state is None:
        return ()
    if isinstance(state, JobState):
        return (state,)
    items = state.split(",") if isinstance(state, str) else list(state)
    return tuple(JobState.parse(s) for s in items)


def as_utc_time(value: Any, what: str, now: datetime) -> datetime | None:
    """A time filter as an aware UTC datetime: a time (`clock.user_time`: naive = local time, as
    `schedule` reads it), or a timedelta or a duration such as "1h" (that long ago, as `--since`)."""
    if value is None:
        return None
    if isinstance(value, str) and (ago := duration(value)) is not None:
        value = ago
    if isinstance(value, timedelta):
        try:
            return now - value
        except OverflowError:
            return datetime.min.replace(tzinfo=UTC)  # longer ago than the calendar: every job
    found = user_time(value)
    if found is None:
        raise ConfigurationError(
            f"{what} must be a time: a datetime, a date, an ISO string such as '2026-11-28 09:00', or a "
            f"timedelta or duration such as '1h' or '2d' (that long ago); got {value!r}"
        )
    return found


def _queues(queue: Any) -> tuple[str, ...]:
    items = () if queue is None else (queue,) if isinstance(queue, str) else queue
    queues = tuple(items) if isinstance(items, Iterable) else None
    if queues is None or not all(isinstance(q, str) for q in queues):
        raise ConfigurationError(f"queue must be a queue name or a list of them, got {queue!r}")
    return queues


def _utc(series: pd.Series[Any]) -> pd.Series[Any]:
    return pd.to_datetime(series, utc=True)


class _DefaultLimit(int):
    """The default limit of `jobs()`: an int, told apart from a limit the caller chose by identity."""


DEFAULT_LIMIT: int = _DefaultLimit(1000)


class TruncatedWarning(UserWarning):
    """A listing was cut at its default length and more rows match."""


def jobs_frame(
    store: Store,
    *,
    state: str | JobState | Sequence[str | JobState] | None = None,
    queue: str | Sequence[str] | None = None,
    function: str | None = None,
    name: str | None = None,
    since: TimeFilter = None,
    until: TimeFilter = None,
    limit: int | None = DEFAULT_LIMIT,
    lock: str | None = None,
    recurring: str | None = None,
) -> pd.DataFrame:
    """One row a job, newest first, with UTC datetimes, categorical state and timedelta durations.
    Cut at the default limit, it warns: `requeue(jobs(state="failed"))` would otherwise act on the
    newest 1,000 of more without a word."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidJobError(f"limit must be a whole number ≥ 0, or None for every job; got {limit!r}")
    by_default = limit is DEFAULT_LIMIT
    now = utcnow()
    names, rows = store.query_table(JobFilter(
        states=_parse_states(state), queues=_queues(queue), function=function, name=name,
        since=as_utc_time(since, "since", now), until=as_utc_time(until, "until", now),
        limit=limit + 1 if by_default and limit is not None else limit, lock=lock, recurring_id=recurring,
    ))
    if by_default and len(rows) > DEFAULT_LIMIT:
        rows = rows[:DEFAULT_LIMIT]
        warnings.warn(
            f"more than {DEFAULT_LIMIT:,} jobs match: these are the newest {DEFAULT_LIMIT:,}; pass "
            "limit=None for all of them (or narrow with state=, queue=, since=)",
            TruncatedWarning, stacklevel=caller_stacklevel(),
        )
    # One 2-D object array from the driver's tuples, then typed columns: ~10x faster than
    # DataFrame(list_of_dicts) and no per-value Python conversion of times.
    table = np.array(rows, dtype=object) if rows else np.empty((0, len(names)), dtype=object)
    data: dict[str, Any] = {}
    for index, name in enumerate(names):
        values = table[:, index]
        if name in _TIME_COLUMNS:
            micros = (pd.Series(values, dtype="float64") * 1e6).round()  # µs: no float noise in ns
            data[name] = pd.to_datetime(micros, unit="us", utc=True).astype(TIME_DTYPE)
        elif name in ("id", "attempts", "priority"):
            data[name] = values.astype("int64")
        elif name == "progress":
            data[name] = pd.Series(values, dtype="float64")
        elif name == "parent_id":
            data[name] = pd.array(values, dtype="Int64")
        elif name == "state":
            data[name] = pd.Categorical(values, dtype=STATE_DTYPE)
        else:
            data[name] = pd.array(values, dtype="string")
    frame = pd.DataFrame(data, columns=names)
    frame["duration"] = frame["finished_at"] - frame["started_at"]
    return frame[JOB_COLUMNS]


def history_frame(store: Store, job_id: int) -> pd.DataFrame:
    changes = store.history(job_id)
    if not changes:  # every stored job has at least the row of its creation
        raise JobNotFoundError.of(job_id)
    frame = pd.DataFrame(
        [{"job_id": c.job_id, "state": c.state.value, "at": c.at, "reason": c.reason,
          "server_id": c.server_id, "data": c.data} for c in changes],
        columns=["job_id", "state", "at", "reason", "server_id", "data"],
    )
    frame["at"] = _utc(frame["at"])
    frame["state"] = frame["state"].astype(STATE_DTYPE)
    return frame


def servers_frame(store: Store) -> pd.DataFrame:
    running = store.running_by_server()
    frame = pd.DataFrame(
        [{"id": s.id, "name": s.name, "host": s.host, "pid": s.pid, "workers": s.workers,
          "queues": ",".join(s.queues), "started_at": s.started_at, "heartbeat_at": s.heartbeat_at,
          "running": len(running.get(s.id, []))} for s in store.list_servers()],
        columns=["id", "name", "host", "pid", "workers", "queues", "started_at", "heartbeat_at", "running"],
    )
    for col in ("started_at", "heartbeat_at"):
        frame[col] = _utc(frame[col])
    return frame


QUEUE_COLUMNS = ["queue", "enqueued", "scheduled", "awaiting", "processing", "longest_wait", "paused", "rate",
                 "limit"]


def queues_frame(store: Store, now: datetime) -> pd.DataFrame:
    """One row a queue with unfinished jobs (or paused, or with a shared quota): how many wait in each
    state, how long the oldest Enqueued one has waited (is the queue keeping up?), whether it is
    paused, and the rate and the most running all servers keep together for it (`set_queue_rate`,
    `set_queue_limit`)."""
    counts: dict[str, dict[str, Any]] = {}
    for queue, state, n, oldest in store.queue_overview():
        row = counts.setdefault(queue, {"queue": queue})
        row[state.value] = n
        if state is JobState.ENQUEUED and oldest is not None:
            row["longest_wait"] = now - oldest
    paused = store.paused_queues()
    quotas = store.queue_quotas()
    for queue in [*paused, *quotas]:
        counts.setdefault(queue, {"queue": queue})
    frame = pd.DataFrame([counts[q] for q in sorted(counts)], columns=QUEUE_COLUMNS)
    for column in ("enqueued", "scheduled", "awaiting", "processing"):
        frame[column] = frame[column].fillna(0).astype("int64")
    frame["longest_wait"] = pd.to_timedelta(frame["longest_wait"])
    frame["paused"] = frame["queue"].isin(list(paused))
    rates = [quotas[q].rate if q in quotas else None for q in frame["queue"]]
    frame["rate"] = pd.array([str(rate) if rate else None for rate in rates], dtype="string")
    frame["limit"] = pd.array([quotas[q].running if q in quotas else None for q in frame["queue"]],
                              dtype="Int64")
    return frame


def stats_frame(
    store: Store, *, freq: str = "1min", since: TimeFilter = None, now: datetime | None = None
) -> pd.DataFrame:
    """Succeeded and failed jobs per `freq` interval by finish time (zeros included), for plotting.

    Counted in the database (one GROUP BY on the finish index), so a long history costs one query.
    `since` defaults to the oldest finished job; intervals start on multiples of `freq`.
    """
    try:
        width = pd.Timedelta(pd.tseries.frequencies.to_offset(freq)).total_seconds()  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise ConfigurationError(
            f"freq must be a fixed interval such as '30s', '1min', '1h' or '1D', got {freq!r}"
        ) from None
    if width <= 0:
        raise ConfigurationError(f"freq must be a positive interval, got {freq!r}")
    end = pd.Timestamp(now or utcnow())
    since = as_utc_time(since, "since", end.to_pydatetime())
    if since is None:
        oldest = store.query(JobFilter(states=(JobState.SUCCEEDED, JobState.FAILED), newest_first=False,
                                       limit=1))
        # ids grow with creation time, and a job finishes after it was created: nothing is earlier.
        since = oldest[0]["created_at"] if oldest else end.to_pydatetime()
    start = pd.Timestamp(since).tz_convert("UTC").floor(pd.Timedelta(seconds=width))
    counts = store.finished_histogram(start.to_pydatetime(), width)
    buckets = max(int((end - start).total_seconds() // width) + 1, 1)
    if counts:
        buckets = max(buckets, max(b for _, b in counts) + 1)
    index = pd.date_range(start, periods=buckets, freq=pd.Timedelta(seconds=width), name="time")
    values = {"succeeded": np.zeros(buckets, dtype="int64"), "failed": np.zeros(buckets, dtype="int64")}
    for (state, bucket), n in counts.items():
        values["succeeded" if state is JobState.SUCCEEDED else "failed"][bucket] += n
    return pd.DataFrame(values, index=index.as_unit("us"))


RECURRING_COLUMNS = [
    "id", "cron", "tz", "function", "queue", "next_run", "last_run", "last_job_id", "last_state",
    "paused", "error", "missed", "last_skip", "start", "end",
]


def recurring_frame(store: Store) -> pd.DataFrame:
    """One row per recurring definition, by id. `last_run` is the latest fire time that got a job
    (a trigger shows in `last_job_id`); `missed` counts fire times that got no job of their own;
    `start` and `end` bound its fire times (`next_run` is NaT once the end has passed)."""
    rows = [
        {"id": r.id, "cron": r.cron, "tz": r.tz, "function": r.function, "queue": r.options.queue,
         "next_run": r.next_fire, "last_run": r.last_fire, "last_job_id": r.last_job_id,
         "last_state": None if r.last_job_state is None else r.last_job_state.value,
         "paused": r.paused, "error": r.error, "missed": r.missed, "last_skip": r.last_skip,
         "start": r.start, "end": r.end}
        for r in store.list_recurring()
    ]
    frame = pd.DataFrame(rows, columns=RECURRING_COLUMNS)
    for col in ("next_run", "last_run", "start", "end"):
        frame[col] = _utc(frame[col])
    frame["last_job_id"] = frame["last_job_id"].astype("Int64")
    frame["last_state"] = frame["last_state"].astype(STATE_DTYPE)
    frame["paused"] = frame["paused"].astype("bool")
    frame["missed"] = frame["missed"].astype("int64")
    return frame
