"""Read-only pandas views of jobs, history, servers and statistics. Filters run in SQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from .model import JobState
from .storage import JobFilter, Store

STATE_DTYPE = pd.CategoricalDtype([s.value for s in JobState])
JOB_COLUMNS = [
    "id", "name", "function", "queue", "state", "attempts", "priority", "created_at", "enqueued_at",
    "run_at", "started_at", "finished_at", "duration", "server_id", "progress", "progress_message",
    "error_type", "error_message", "recurring_id", "fire_time", "parent_id",
]
_TIME_COLUMNS = ["created_at", "enqueued_at", "run_at", "started_at", "finished_at", "fire_time"]


def _parse_states(state: str | JobState | Sequence[str | JobState] | None) -> tuple[JobState, ...]:
    if state is None:
        return ()
    items = [state] if isinstance(state, str | JobState) else list(state)
    return tuple(JobState.parse(s) for s in items)


def _utc(series: pd.Series[Any]) -> pd.Series[Any]:
    return pd.to_datetime(series, utc=True)


def jobs_frame(
    store: Store,
    *,
    state: str | JobState | Sequence[str | JobState] | None = None,
    queue: str | Sequence[str] | None = None,
    function: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = 1000,
) -> pd.DataFrame:
    """One row a job, newest first, with UTC datetimes, categorical state and timedelta durations."""
    queues = () if queue is None else ((queue,) if isinstance(queue, str) else tuple(queue))
    rows = store.query(JobFilter(states=_parse_states(state), queues=queues, function=function,
                                 since=since, until=until, limit=limit))
    frame = pd.DataFrame(rows, columns=[c for c in JOB_COLUMNS if c != "duration"] + ["options"])
    frame = frame.drop(columns=["options"])
    for col in _TIME_COLUMNS:
        frame[col] = _utc(frame[col])
    frame["duration"] = frame["finished_at"] - frame["started_at"]
    frame["state"] = frame["state"].astype(STATE_DTYPE)
    for col in ("id", "attempts", "priority"):
        frame[col] = frame[col].astype("int64")
    frame["parent_id"] = frame["parent_id"].astype("Int64")
    frame["progress"] = frame["progress"].astype("float64")
    return frame[JOB_COLUMNS]


def history_frame(store: Store, job_id: int) -> pd.DataFrame:
    changes = store.history(job_id)
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


def stats_frame(
    store: Store, *, freq: str = "1min", since: datetime | None = None, limit: int | None = 100_000
) -> pd.DataFrame:
    """Succeeded and failed jobs per interval (by finish time), for plotting."""
    rows = store.query(JobFilter(states=(JobState.SUCCEEDED, JobState.FAILED), since=since, limit=limit))
    frame = pd.DataFrame(rows, columns=["finished_at", "state"])
    if frame.empty:
        return pd.DataFrame({"succeeded": pd.Series(dtype="int64"), "failed": pd.Series(dtype="int64")},
                            index=pd.DatetimeIndex([], tz="UTC", name="time"))
    frame["finished_at"] = _utc(frame["finished_at"])
    table = (
        frame.groupby([pd.Grouper(key="finished_at", freq=freq), "state"]).size().unstack(fill_value=0)
    )
    for col in ("succeeded", "failed"):
        if col not in table:
            table[col] = 0
    table = table[["succeeded", "failed"]].astype("int64")
    table.index.name = "time"
    table.columns.name = None
    return table


RECURRING_COLUMNS = [
    "id", "cron", "tz", "function", "queue", "next_run", "last_run", "last_job_id", "last_state",
    "paused", "error", "missed", "last_skip",
]


def recurring_frame(store: Store) -> pd.DataFrame:
    """One row per recurring definition, by id. `last_run` is the latest fire time that got a job
    (a trigger shows in `last_job_id`); `missed` counts fire times that got no job of their own."""
    rows = [
        {"id": r.id, "cron": r.cron, "tz": r.tz, "function": r.function, "queue": r.options.queue,
         "next_run": r.next_fire, "last_run": r.last_fire, "last_job_id": r.last_job_id,
         "last_state": None if r.last_job_state is None else r.last_job_state.value,
         "paused": r.paused, "error": r.error, "missed": r.missed, "last_skip": r.last_skip}
        for r in store.list_recurring()
    ]
    frame = pd.DataFrame(rows, columns=RECURRING_COLUMNS)
    for col in ("next_run", "last_run"):
        frame[col] = _utc(frame[col])
    frame["last_job_id"] = frame["last_job_id"].astype("Int64")
    frame["last_state"] = frame["last_state"].astype(STATE_DTYPE)
    frame["paused"] = frame["paused"].astype("bool")
    frame["missed"] = frame["missed"].astype("int64")
    return frame
