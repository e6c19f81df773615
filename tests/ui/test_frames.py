"""DataFrame views: dtypes, SQL filters and stats on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

import pandas as pd
import pytest
from click.testing import CliRunner

import nbjobs
from nbjobs import JobState
from nbjobs.cli import cli
from nbjobs.errors import ConfigurationError
from nbjobs.history import JOB_COLUMNS


def ok(x: int) -> int:
    return x


def boom(x: int) -> int:
    raise ValueError(f"bad {x}")


@pytest.fixture
def finished(engine: nbjobs.Engine) -> nbjobs.Engine:
    io = engine.options(queue="io", retries=0)
    jobs = [io.enqueue(ok, i) for i in range(3)]
    jobs += [engine.options(retries=0, name="explodes").enqueue(boom, 1)]
    jobs += [engine.enqueue(ok, 10)]
    engine.start_server(workers=2, poll_interval=0.05)
    for job in jobs:
        job.wait(30)
    engine.stop_server()
    engine.schedule(3600, ok, 99)  # still scheduled
    return engine


def test_jobs_frame_has_the_documented_columns_and_dtypes(finished: nbjobs.Engine) -> None:
    frame = finished.jobs()
    assert list(frame.columns) == JOB_COLUMNS
    for col in ("id", "name", "function", "queue", "state", "attempts", "created_at", "started_at",
                "finished_at", "duration", "server_id", "progress", "error_type", "error_message",
                "recurring_id", "parent_id"):
        assert col in frame.columns
    assert isinstance(frame["state"].dtype, pd.CategoricalDtype)
    assert set(frame["state"].cat.categories) == {s.value for s in JobState}
    for col in ("created_at", "started_at", "finished_at", "run_at", "enqueued_at", "fire_time"):
        assert isinstance(frame[col].dtype, pd.DatetimeTZDtype) and str(frame[col].dt.tz) == "UTC"
    assert pd.api.types.is_timedelta64_dtype(frame["duration"])
    assert frame["id"].dtype == "int64" and frame["attempts"].dtype == "int64"
    assert frame["progress"].dtype == "float64"
    assert str(frame["parent_id"].dtype) == "Int64"
    assert frame["id"].is_monotonic_decreasing  # newest first
    done = frame[frame["state"] == "succeeded"]
    assert (done["duration"] >= pd.Timedelta(0)).all() and done["finished_at"].notna().all()
    scheduled = frame[frame["state"] == "scheduled"]
    assert len(scheduled) == 1 and pd.isna(scheduled["duration"].item())
    failed = frame[frame["state"] == "failed"].iloc[0]
    assert (failed["error_type"], failed["error_message"]) == ("ValueError", "bad 1")
    assert failed["name"] == "explodes"


def test_filters_run_in_the_database(finished: nbjobs.Engine) -> None:
    assert set(finished.jobs(state="failed")["function"]) == {f"{__name__}:boom"}
    assert len(finished.jobs(state=["succeeded", "scheduled"])) == 5
    assert len(finished.jobs(state="Succeeded, scheduled")) == 5  # as `nbjobs jobs --state` takes it
    with pytest.raises(nbjobs.UnknownStateError, match="unknown job state 'done'"):
        finished.jobs(state="succeeded,done")
    assert set(finished.jobs(queue="io")["queue"]) == {"io"} and len(finished.jobs(queue="io")) == 3
    assert len(finished.jobs(function="boom")) == 1
    assert len(finished.jobs(limit=2)) == 2
    everything = finished.jobs(limit=None)
    middle = everything["created_at"].sort_values().iloc[3].to_pydatetime()
    assert (finished.jobs(since=middle)["created_at"] >= middle).all()
    assert (finished.jobs(until=middle)["created_at"] < middle).all()
    assert len(finished.jobs(since=middle)) + len(finished.jobs(until=middle)) == len(everything)


def test_time_filters_take_what_a_notebook_has_at_hand(finished: nbjobs.Engine) -> None:
    everything = finished.jobs(limit=None)
    middle = everything["created_at"].sort_values().iloc[3]
    later = len(finished.jobs(since=middle.to_pydatetime()))
    assert len(finished.jobs(since=middle)) == later  # a pandas Timestamp, as the frame gives
    assert len(finished.jobs(since=middle.isoformat())) == later  # an ISO string
    local_zone = datetime.now().astimezone().tzinfo
    local = middle.tz_convert(local_zone).tz_localize(None).to_pydatetime()
    assert len(finished.jobs(since=local)) == later  # naive: local time, as schedule() reads it
    assert len(finished.jobs(since=timedelta(hours=1))) == len(everything)  # the last hour
    for ago in ("1h", "90m", "10 minutes", "2d", "3600"):  # as `nbjobs jobs --since` reads them
        assert len(finished.jobs(since=ago)) == len(everything)  # before: "year 0 is out of range"
        assert finished.jobs(until=ago).empty
    assert len(finished.jobs(since=timedelta(days=999_999_999))) == len(everything)  # before the calendar
    assert finished.jobs(since=date.today() + timedelta(days=1)).empty  # a date: its midnight
    assert finished.jobs(until="2020-01-01").empty
    assert finished.stats(since=timedelta(hours=2), freq="1h")["succeeded"].sum() == 4
    first = everything["created_at"].min().tz_convert(local_zone).tz_localize(None).to_pydatetime()
    assert finished.stats(since=first, freq="1h")["failed"].sum() == 1  # naive, local, as above
    for bad in ("yesterday", "1e20d", 5, [middle]):
        with pytest.raises(ConfigurationError, match=f"since must be a time: .* got {re.escape(repr(bad))}"):
            finished.jobs(since=bad)
    with pytest.raises(ConfigurationError, match="queue must be a queue name or a list of them, got 5"):
        finished.jobs(queue=5)


def test_jobs_command_lists_the_jobs_since_a_time_or_a_duration_ago(finished: nbjobs.Engine) -> None:
    def listed(since: str) -> list[str]:
        result = CliRunner().invoke(cli, ["jobs", "--url", finished.url, "--since", since])
        assert result.exit_code == 0, result.output
        return [line for line in result.output.splitlines()[1:] if line.strip() and line != "(none)"]

    everything = len(finished.jobs(limit=None))
    assert len(listed("1h")) == len(listed("90m")) == everything
    assert listed("2999-01-01") == []
    refused = CliRunner().invoke(cli, ["jobs", "--url", finished.url, "--since", "soon"])
    assert isinstance(refused.exception, ConfigurationError)  # `nbjobs` prints it and exits 2
    assert "since must be a time" in str(refused.exception)


def test_empty_frames_keep_their_dtypes(engine: nbjobs.Engine) -> None:
    frame = engine.jobs()
    assert frame.empty and list(frame.columns) == JOB_COLUMNS
    assert isinstance(frame["state"].dtype, pd.CategoricalDtype)
    assert isinstance(frame["created_at"].dtype, pd.DatetimeTZDtype)
    stats = engine.stats()
    assert list(stats.columns) == ["succeeded", "failed"] and stats.to_numpy().sum() == 0


def test_stats_counts_outcomes_per_interval(finished: nbjobs.Engine) -> None:
    stats = finished.stats(freq="1h")
    assert stats["succeeded"].sum() == 4 and stats["failed"].sum() == 1
    assert str(stats.index.tz) == "UTC" and stats["succeeded"].dtype == "int64"
    assert (stats.index.to_series().diff().dropna() == timedelta(hours=1)).all()
    with pytest.raises(ConfigurationError):
        finished.stats(freq="MS")


def test_history_and_servers_frames(finished: nbjobs.Engine) -> None:
    job_id = int(finished.jobs(state="failed")["id"].item())
    history = finished.history(job_id)
    assert list(history["state"]) == ["enqueued", "processing", "failed"]
    assert isinstance(history["at"].dtype, pd.DatetimeTZDtype)
    assert isinstance(history["state"].dtype, pd.CategoricalDtype)
    servers = finished.servers()
    assert isinstance(servers["heartbeat_at"].dtype, pd.DatetimeTZDtype)
