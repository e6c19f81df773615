"""Recurring jobs end to end: real servers (threads) on a real SQLite file and real PostgreSQL, with a
ManualClock, so fire times are exact and nothing sleeps."""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

import nbjobs
from nbjobs.model import JobState
from nbjobs.server.recurring import RecurringDuty
from nbjobs.server.scheduler import Scheduler
from nbjobs.storage import JobFilter, SqlStore

from ..conftest import wait_for

pytestmark = pytest.mark.timeout(60)

#: A Monday, 30 s past a minute: "* * * * *" first fires at FIRST.
T0 = datetime(2026, 1, 5, 7, 0, 30, tzinfo=UTC)
FIRST = datetime(2026, 1, 5, 7, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
#: Long leases and rare heartbeats: jumps of the manual clock must not reap our own server.
SERVER: dict[str, Any] = {"workers": 2, "server_timeout": 7200.0, "heartbeat_interval": 3600.0}

GATE = threading.Event()


def record(tag: str) -> str:
    return tag


def blocked() -> str:
    GATE.wait(20)
    return "released"


def renamable() -> str:
    return "still here"


@pytest.fixture
def clock() -> nbjobs.ManualClock:
    return nbjobs.ManualClock(T0)


@pytest.fixture
def nb(db_url: str, clock: nbjobs.ManualClock) -> Iterator[nbjobs.Engine]:
    eng = nbjobs.connect(db_url, secret="test-secret", clock=clock)
    yield eng
    eng.close()


def jobs_of(nb: nbjobs.Engine, rid: str) -> list[dict[str, Any]]:
    return nb.store.query(JobFilter(recurring_id=rid, newest_first=False, limit=None))


def fire_times(nb: nbjobs.Engine, rid: str) -> list[datetime | None]:
    return [row["fire_time"] for row in jobs_of(nb, rid)]


def row(nb: nbjobs.Engine, rid: str) -> pd.Series[Any]:
    frame = nb.recurring_jobs().set_index("id")
    return frame.loc[rid]


def looks(nb: nbjobs.Engine) -> int:
    """How often the scheduler looked at the database: passes, and reads of the next wake-up."""
    assert nb.server is not None
    return nb.server.scheduler.ticks + nb.server.scheduler.peeks


def settle(nb: nbjobs.Engine) -> None:
    """Wait until the server's scheduler has looked at the database after this call (twice, so a
    pass that look started has ended too)."""
    for _ in range(2):
        before = looks(nb)
        nb.notifier.schedule_changed.set()
        wait_for(lambda before=before: looks(nb) > before)


def succeeded(nb: nbjobs.Engine, rid: str, n: int) -> bool:
    rows = jobs_of(nb, rid)
    return len(rows) == n and all(r["state"] == JobState.SUCCEEDED.value for r in rows)


# -- firing ---------------------------------------------------------------------------------------------
def test_fires_on_schedule_with_recurring_id_and_fire_time(
    nb: nbjobs.Engine, clock: nbjobs.ManualClock
) -> None:
    handle = nb.recurring("every-minute", "* * * * *", record, "tick")
    assert handle.next_fire == FIRST
    nb.start_server(**SERVER)
    settle(nb)
    assert jobs_of(nb, "every-minute") == []  # not due yet
    clock.set(FIRST)
    wait_for(lambda: succeeded(nb, "every-minute", 1))
    clock.set(FIRST + MINUTE)
    wait_for(lambda: succeeded(nb, "every-minute", 2))
    assert fire_times(nb, "every-minute") == [FIRST, FIRST + MINUTE]
    frame = nb.jobs()
    assert list(frame["recurring_id"]) == ["every-minute"] * 2
    assert list(frame["fire_time"]) == [pd.Timestamp(FIRST + MINUTE), pd.Timestamp(FIRST)]
    first = nb.job(int(frame["id"].iloc[-1]))
    assert first.result(timeout=5) == "tick"
    assert first.history()[0].reason == f"fired by schedule every-minute for {FIRST.isoformat()}"
    info = row(nb, "every-minute")
    assert info["cron"] == "* * * * *" and info["tz"] == "UTC" and info["queue"] == "default"
    assert info["function"] == f"{__name__}:record"
    assert info["next_run"] == pd.Timestamp(FIRST + 2 * MINUTE)
    assert info["last_run"] == pd.Timestamp(FIRST + MINUTE)
    assert info["last_job_id"] == frame["id"].iloc[0] and info["last_state"] == "succeeded"
    assert (info["paused"], info["error"], info["missed"]) == (False, None, 0)
    assert str(nb.recurring_jobs()["next_run"].dtype).endswith("UTC]")


def test_an_interval_fires_every_so_many_seconds_of_real_time(
    nb: nbjobs.Engine, clock: nbjobs.ManualClock
) -> None:
    handle = nb.recurring("seven", timedelta(seconds=7), record, "s")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    first = epoch + timedelta(seconds=7 * ((T0 - epoch) // timedelta(seconds=7) + 1))
    assert handle.next_fire == first and first - T0 < timedelta(seconds=7)
    assert row(nb, "seven")["cron"] == "@every 7s"
    nb.start_server(**SERVER)
    settle(nb)
    for n in range(1, 4):
        clock.set(first + (n - 1) * timedelta(seconds=7))
        wait_for(lambda n=n: succeeded(nb, "seven", n))  # type: ignore[misc]
    assert fire_times(nb, "seven") == [first + k * timedelta(seconds=7) for k in range(3)]
    again = nb.recurring("seven", "@every 7s", record, "s")  # the same schedule: the plan is kept
    assert again.next_fire == first + 3 * timedelta(seconds=7)
    with pytest.raises(nbjobs.InvalidScheduleError, match="leave tz out"):
        nb.options(tz="Europe/Berlin").recurring("local", "@every 2h", record, "x")


def test_time_zone_and_six_field_seconds(nb: nbjobs.Engine, clock: nbjobs.ManualClock) -> None:
    berlin = nb.options(tz="Europe/Berlin", queue="reports").recurring("berlin", "0 9 * * MON", record, "b")
    assert berlin.next_fire == datetime(2026, 1, 5, 8, 0, tzinfo=UTC)  # 09:00 CET
    ticks = nb.recurring("ticks", "*/10 * * * * *", record, "t")  # seconds first
    assert ticks.next_fire == T0 + timedelta(seconds=10)
    nb.start_server(**SERVER)
    clock.set(T0 + timedelta(seconds=10))
    wait_for(lambda: succeeded(nb, "ticks", 1))
    clock.set(datetime(2026, 1, 5, 8, 0, tzinfo=UTC))
    wait_for(lambda: succeeded(nb, "berlin", 1))
    assert fire_times(nb, "berlin") == [datetime(2026, 1, 5, 8, 0, tzinfo=UTC)]
    assert jobs_of(nb, "berlin")[0]["queue"] == "reports"
    assert berlin.next_fire == datetime(2026, 1, 12, 8, 0, tzinfo=UTC)
    assert row(nb, "berlin")["tz"] == "Europe/Berlin"


def test_invalid_definitions_name_the_bad_part_and_store_nothing(nb: nbjobs.Engine) -> None:
    with pytest.raises(nbjobs.InvalidScheduleError, match="minute field '61'"):
        nb.recurring("bad", "61 * * * *", record, "x")
    with pytest.raises(nbjobs.InvalidScheduleError, match="unknown time zone 'Mars/Olympus'"):
        nb.options(tz="Mars/Olympus").recurring("bad", "* * * * *", record, "x")
    with pytest.raises(nbjobs.InvalidScheduleError, match="misfire policy 'sometimes'"):
        nb.options(misfire="sometimes")
    with pytest.raises(nbjobs.InvalidScheduleError, match="overlap policy"):
        nb.options(overlap="never")
    with pytest.raises(nbjobs.InvalidScheduleError, match="misfire_limit"):
        nb.options(misfire="all", misfire_limit=0)
    with pytest.raises(nbjobs.InvalidScheduleError, match="non-empty string id"):
        nb.recurring("  ", "* * * * *", record, "x")
    with pytest.raises(nbjobs.InvalidJobError, match="lambda"):
        nb.recurring("bad", "* * * * *", lambda: 1)
    with pytest.raises(nbjobs.InvalidJobError, match=r"\['tz'\] apply only to recurring jobs"):
        nb.options(tz="Europe/Berlin").enqueue(record, "x")
    assert nb.recurring_jobs().empty
    assert nb.jobs().empty


def test_a_window_starts_and_ends_the_fires_and_an_ended_definition_stays_listed(
    nb: nbjobs.Engine, clock: nbjobs.ManualClock
) -> None:
    start = T0 + timedelta(minutes=10)  # 07:10:30
    bounded = nb.options(start="10m", end="25m").recurring("window", "*/5 * * * *", record, "w")
    assert bounded.next_fire == datetime(2026, 1, 5, 7, 15, tzinfo=UTC)  # the first at or after start
    info = row(nb, "window")
    assert (info["start"], info["end"]) == (pd.Timestamp(start), pd.Timestamp(T0 + timedelta(minutes=25)))
    # an interval with a start counts from it: 07:10:30, 07:12:30, 07:14:30 (end inclusive)
    every = nb.options(start=start, end=start + 4 * MINUTE).recurring("every", "2m", record, "e")
    assert every.next_fire == start
    nb.start_server(**SERVER)
    settle(nb)
    for minute in (10, 12, 14, 15, 20, 25, 30):
        clock.set(datetime(2026, 1, 5, 7, minute, 30, tzinfo=UTC))
        settle(nb)
    wait_for(lambda: succeeded(nb, "window", 3) and succeeded(nb, "every", 3))
    assert fire_times(nb, "window") == [datetime(2026, 1, 5, 7, m, tzinfo=UTC) for m in (15, 20, 25)]
    assert fire_times(nb, "every") == [start, start + 2 * MINUTE, start + 4 * MINUTE]
    # past the end: nothing is planned, nothing more fires, and it says it has ended
    assert bounded.next_fire is None and every.next_fire is None
    assert repr(bounded).endswith("ended>") and pd.isna(row(nb, "window")["next_run"])
    clock.set(datetime(2026, 1, 6, tzinfo=UTC))
    settle(nb)
    assert len(jobs_of(nb, "window")) == 3
    assert nb.trigger("window").result(timeout=10) == "w"  # by hand it still runs
    # defined again with a later end, it fires again
    nb.options(end="1h").recurring("window", "*/5 * * * *", record, "w")
    assert bounded.next_fire == datetime(2026, 1, 6, 0, 5, tzinfo=UTC)


def test_a_resume_after_the_end_ends_it_and_bad_windows_are_refused(
    nb: nbjobs.Engine, clock: nbjobs.ManualClock
) -> None:
    handle = nb.options(end=T0 + timedelta(minutes=3)).recurring("short", "* * * * *", record, "s")
    handle.pause()
    clock.set(T0 + timedelta(hours=1))
    handle.resume()  # its end passed while paused: nothing is made up, and it has ended
    assert handle.next_fire is None and bool(row(nb, "short")["paused"]) is False
    nb.start_server(**SERVER)
    settle(nb)
    assert jobs_of(nb, "short") == []
    now = clock.now()
    with pytest.raises(nbjobs.InvalidScheduleError, match=r"end .* is before start"):
        nb.options(start="2h", end="1h")
    with pytest.raises(nbjobs.InvalidScheduleError, match="start 'someday' is not a time"):
        nb.options(start="someday")
    with pytest.raises(nbjobs.InvalidScheduleError, match="end: a delay must not be negative"):
        nb.options(end=-5)
    with pytest.raises(nbjobs.InvalidScheduleError, match=r"'0 9 \* \* \*' has no fire time between .* "
                       r"and its end .*: give a later end"):
        nb.options(end=now + timedelta(minutes=30)).recurring("never", "0 9 * * *", record, "n")
    with pytest.raises(nbjobs.InvalidScheduleError,
                       match=r"end 2026-01-04T08:00:30\+00:00 has passed: give a later end, or leave it out"):
        nb.options(end=now - timedelta(days=1)).recurring("past", "* * * * *", record, "n")
    clock.set(now + timedelta(microseconds=370000))  # a delay's window is in whole seconds, as fire times
    sharp = nb.options(start="10s", end=timedelta(minutes=1)).recurring("sharp", "@every 20s", record, "s")
    assert sharp.next_fire == now + timedelta(seconds=10)
    assert sharp.record().end == now + timedelta(minutes=1)
    sharp.remove()
    with pytest.raises(nbjobs.InvalidJobError, match=r"\['end', 'start'\] apply only to recurring jobs"):
        nb.options(start="1h", end="2h").enqueue(record, "x")
    assert sorted(nb.recurring_jobs()["id"]) == ["short"]  # nothing stored by a refusal


# -- trigger, pause, resume, remove ---------------------------------------------------------------------
def test_trigger_runs_now_and_leaves_the_schedule(nb: nbjobs.Engine, clock: nbjobs.ManualClock) -> None:
    nb.options(queue="q").recurring("report", "0 9 * * *", record, "now")
    before = row(nb, "report")["next_run"]
    nb.start_server(**SERVER)
    job = nb.trigger("report")
    wait_for(lambda: job.done)
    assert job.result() == "now"
    other = nb.enqueue(record, "not a run")
    assert list(nb.jobs(recurring="report")["id"]) == [job.id]  # its runs only, in the database
    assert other.id in set(nb.jobs()["id"]) and nb.jobs(recurring="nope").empty
    rec = job.record()
    assert (rec.recurring_id, rec.fire_time, rec.queue) == ("report", None, "q")
    assert job.history()[0].reason == "triggered by hand from schedule report"
    info = row(nb, "report")
    assert info["next_run"] == before and pd.isna(info["last_run"])
    assert info["last_job_id"] == job.id and info["last_state"] == "succeeded"
    assert job.then(record, "after").id > job.id  # the returned Job is an ordinary handle
    with pytest.raises(nbjobs.RecurringNotFoundError, match="no recurring job 'nope'"):
        nb.trigger("nope")


def test_pause_and_resume(nb: nbjobs.Engine, clock: nbjobs.ManualClock) -> None:
    nb.recurring("p", "* * * * *", record, "p")
    nb.start_server(**SERVER)
    nb.pause("p")
    assert bool(row(nb, "p")["paused"]) is True
    clock.set(FIRST + 30 * timedelta(seconds=1))
    settle(nb)
    assert jobs_of(nb, "p") == []  # paused: FIRST passed without a job
    nb.resume("p")
    info = row(nb, "p")
    assert bool(info["paused"]) is False
    assert info["next_run"] == pd.Timestamp(FIRST + MINUTE)  # from now on, not the missed past
    clock.set(FIRST + MINUTE)
    wait_for(lambda: succeeded(nb, "p", 1))
    assert fire_times(nb, "p") == [FIRST + MINUTE]
    nb.resume("p")  # not paused: no change
    assert row(nb, "p")["next_run"] == pd.Timestamp(FIRST + 2 * MINUTE)
    with pytest.raises(nbjobs.RecurringNotFoundError):
        nb.pause("nope")
    with pytest.raises(nbjobs.RecurringNotFoundError):
        nb.resume("nope")


def test_remove_stops_firing_and_keeps_jobs(nb: nbjobs.Engine, clock: nbjobs.ManualClock) -> None:
    nb.recurring("r", "* * * * *", record, "r")
    nb.start_server(**SERVER)
    clock.set(FIRST)
    wait_for(lambda: succeeded(nb, "r", 1))
    assert nb.remove_recurring("r") is True
    assert nb.remove_recurring("r") is False
    clock.set(FIRST + 2 * MINUTE)
    settle(nb)
    assert len(jobs_of(nb, "r")) == 1  # the job it made stays; no new one
    assert nb.recurring_jobs().empty
    with pytest.raises(nbjobs.RecurringNotFoundError):
        nb.trigger("r")


def test_the_handle_recurring_returns_triggers_pauses_resumes_and_removes(
    nb: nbjobs.Engine, clock: nbjobs.ManualClock
) -> None:
    """What a notebook keeps in a variable: `daily = nb.recurring(...)`, then `daily.pause()`."""
    daily = nb.options(tz="Europe/Berlin").recurring("daily", "0 9 * * *", record, "daily")
    assert repr(daily) == ("<Recurring 'daily' 0 9 * * * (Europe/Berlin) → "
                           "tests.server.test_recurring:record, next 2026-01-05T08:00:00+00:00>")
    assert daily.next_fire == datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    assert daily.pause() is daily and daily.record().paused
    assert repr(daily).endswith(", paused>")
    nb.start_server(**SERVER)
    job = daily.trigger()  # paused stops the schedule, not a run by hand
    assert job.result(timeout=20) == "daily" and job.record().recurring_id == "daily"
    assert daily.resume() is daily and not daily.record().paused
    assert daily.next_fire == datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    assert daily.remove() is True and daily.remove() is False
    assert repr(daily) == "<Recurring 'daily': removed>"
    with pytest.raises(nbjobs.RecurringNotFoundError):
        daily.trigger()


# -- missed runs, overlap ------------------------------------------------------------------------------
def test_misfire_policies_after_downtime(nb: nbjobs.Engine, clock: nbjobs.ManualClock) -> None:
    nb.options(misfire="once").recurring("once", "* * * * *", record, "once")
    nb.options(misfire="skip").recurring("skip", "* * * * *", record, "skip")
    nb.options(misfire="all").recurring("all", "* * * * *", record, "all")
    nb.options(misfire="all", misfire_limit=3).recurring("all3", "* * * * *", record, "all3")
    # a misfire grace (APScheduler's): fire times more than that late get no job, under any policy
    nb.options(misfire="all", misfire_grace="2m").recurring("all2m", "* * * * *", record, "all2m")
    nb.options(misfire_grace=timedelta(seconds=20)).recurring("once20s", "* * * * *", record, "once20s")
    nb.start_server(**SERVER)
    clock.set(FIRST)
    for rid in ("once", "skip", "all", "all3", "all2m", "once20s"):
        wait_for(lambda rid=rid: succeeded(nb, rid, 1))
    nb.stop_server()
    clock.set(FIRST + 5 * MINUTE + timedelta(seconds=30))  # 5 fire times pass with no server
    nb.start_server(**SERVER)
    wait_for(lambda: succeeded(nb, "once", 2))
    wait_for(lambda: succeeded(nb, "all", 6))
    wait_for(lambda: succeeded(nb, "all3", 4))
    wait_for(lambda: succeeded(nb, "all2m", 3))
    settle(nb)
    missed = [FIRST + k * MINUTE for k in range(1, 6)]
    assert fire_times(nb, "once") == [FIRST, missed[-1]]  # one run standing for the latest
    assert fire_times(nb, "skip") == [FIRST]  # none: the latest is 30 s late, not just due
    assert fire_times(nb, "all") == [FIRST, *missed]
    assert fire_times(nb, "all3") == [FIRST, *missed[-3:]]  # bounded by misfire_limit
    assert fire_times(nb, "all2m") == [FIRST, *missed[-2:]]  # 90 s and 30 s late, not 150 s
    assert fire_times(nb, "once20s") == [FIRST]  # the latest is 30 s late
    frame = nb.recurring_jobs().set_index("id")
    assert dict(frame["missed"]) == {"all": 0, "all3": 2, "once": 4, "skip": 5, "all2m": 3, "once20s": 5}
    assert "misfire='skip'" in frame.loc["skip", "last_skip"]
    assert frame.loc["once20s", "last_skip"].startswith("misfire='once', misfire_grace=20s: 5 fire times")
    for bad in (0, -5, "soon", float("nan"), True):
        with pytest.raises(nbjobs.InvalidScheduleError, match="misfire_grace must be a positive duration"):
            nb.options(misfire_grace=bad)
    assert set(frame["next_run"]) == {pd.Timestamp(FIRST + 6 * MINUTE)}


def test_overlap_skip_is_recorded(nb: nbjobs.Engine, clock: nbjobs.ManualClock) -> None:
    GATE.clear()
    nb.options(overlap="skip").recurring("slow", "* * * * *", blocked)
    nb.start_server(**SERVER)
    try:
        clock.set(FIRST)
        wait_for(lambda: [r["state"] for r in jobs_of(nb, "slow")] == ["processing"])
        clock.set(FIRST + MINUTE)
        settle(nb)
        assert len(jobs_of(nb, "slow")) == 1
        info = row(nb, "slow")
        assert info["missed"] == 1
        assert "still processing" in info["last_skip"] and info["last_state"] == "processing"
    finally:
        GATE.set()
    wait_for(lambda: succeeded(nb, "slow", 1))
    clock.set(FIRST + 2 * MINUTE)
    wait_for(lambda: succeeded(nb, "slow", 2))
    assert fire_times(nb, "slow") == [FIRST, FIRST + 2 * MINUTE]


# -- resilience ----------------------------------------------------------------------------------------
def test_unresolvable_function_is_an_error_and_the_scheduler_goes_on(
    nb: nbjobs.Engine, clock: nbjobs.ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb.recurring("renamed", "* * * * *", renamable)
    nb.recurring("healthy", "* * * * *", record, "ok")
    monkeypatch.delattr(sys.modules[__name__], "renamable")  # as if renamed in code
    nb.start_server(**SERVER)
    clock.set(FIRST)
    wait_for(lambda: succeeded(nb, "healthy", 1))
    wait_for(lambda: row(nb, "renamed")["error"] is not None)
    info = row(nb, "renamed")
    assert f"{__name__}:renamable cannot be found" in info["error"]
    assert "define recurring job 'renamed' again" in info["error"]
    assert info["missed"] == 1 and info["next_run"] == pd.Timestamp(FIRST + MINUTE)
    assert jobs_of(nb, "renamed") == []
    with pytest.raises(nbjobs.FunctionNotFoundError, match="recurring job 'renamed' cannot run"):
        nb.trigger("renamed")
    assert nb.server is not None and all(nb.server.alive_loops().values())
    monkeypatch.undo()  # the function is back
    clock.set(FIRST + MINUTE)
    wait_for(lambda: succeeded(nb, "renamed", 1))
    wait_for(lambda: succeeded(nb, "healthy", 2))
    assert row(nb, "renamed")["error"] is None


def test_definitions_survive_reopen_and_updates_keep_history(
    db_url: str, clock: nbjobs.ManualClock
) -> None:
    with nbjobs.connect(db_url, secret="test-secret", clock=clock) as nb:
        nb.recurring("keep", "* * * * *", record, "v1")
        nb.start_server(**SERVER)
        clock.set(FIRST)
        wait_for(lambda: succeeded(nb, "keep", 1))
        first_job = int(row(nb, "keep")["last_job_id"])
    with nbjobs.connect(db_url, secret="test-secret", clock=clock) as nb:
        info = row(nb, "keep")
        assert (info["last_job_id"], info["last_run"]) == (first_job, pd.Timestamp(FIRST))
        # Same schedule, new arguments and queue: history and the planned next fire stay.
        nb.options(queue="other").recurring("keep", "* * * * *", record, "v2")
        info = row(nb, "keep")
        assert (info["last_job_id"], info["last_run"], info["queue"]) == (
            first_job, pd.Timestamp(FIRST), "other",
        )
        assert info["next_run"] == pd.Timestamp(FIRST + MINUTE)
        nb.start_server(**SERVER)
        clock.set(FIRST + MINUTE)
        wait_for(lambda: succeeded(nb, "keep", 2))
        latest = nb.job(jobs_of(nb, "keep")[-1]["id"])
        assert latest.result() == "v2" and latest.record().queue == "other"
        # A new expression replaces the plan.
        nb.recurring("keep", "0 12 * * *", record, "v3")
        assert row(nb, "keep")["next_run"] == pd.Timestamp(datetime(2026, 1, 5, 12, tzinfo=UTC))
        assert row(nb, "keep")["last_run"] == pd.Timestamp(FIRST + MINUTE)


# -- never fired twice -----------------------------------------------------------------------------------
def test_three_servers_fire_each_second_exactly_once(db_url: str, clock: nbjobs.ManualClock) -> None:
    engines = [nbjobs.connect(db_url, secret="test-secret", clock=clock) for _ in range(3)]
    try:
        engines[0].recurring("tick", "* * * * * *", record, "s")
        for eng in engines:
            eng.start_server(**{**SERVER, "workers": 1})
        start = clock.now()
        for second in range(1, 61):  # one minute of a per-second schedule
            clock.advance(1)
            wait_for(lambda n=second: len(jobs_of(engines[0], "tick")) >= n)
        for eng in engines:
            settle(eng)
        times = Counter(fire_times(engines[0], "tick"))
        expected = {start.replace(microsecond=0) + timedelta(seconds=k) for k in range(1, 61)}
        assert set(times) == expected
        assert max(times.values()) == 1
        duties = [d for eng in engines for d in eng.server.config.duties  # type: ignore[union-attr]
                  if isinstance(d, RecurringDuty)]
        assert sum(d.stats.jobs for d in duties) == 60
        assert sum(1 for d in duties if d.stats.jobs) >= 2  # the servers really shared the firing
    finally:
        for eng in engines:
            eng.close()


def test_concurrent_duties_claim_each_fire_time_once(db_url: str, clock: nbjobs.ManualClock) -> None:
    """Four schedulers released at the same instant for every fire time: one job each time."""
    with nbjobs.connect(db_url, secret="test-secret", clock=clock) as nb:
        nb.options(misfire="all").recurring("race", "* * * * * *", record, "r")
    stores = [SqlStore(db_url) for _ in range(4)]
    duties = [RecurringDuty(s, clock) for s in stores]
    try:
        for _ in range(20):
            clock.advance(1)
            barrier = threading.Barrier(len(duties))
            results: list[int] = []

            def run(duty: RecurringDuty, barrier: threading.Barrier = barrier,
                    results: list[int] = results) -> None:
                barrier.wait()
                results.append(duty())

            threads = [threading.Thread(target=run, args=(d,)) for d in duties]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            assert sorted(results) == [0, 0, 0, 1]
        rows = stores[0].query(JobFilter(recurring_id="race", limit=None))
        assert len(rows) == 20 and len({r["fire_time"] for r in rows}) == 20
        assert sum(d.stats.claimed for d in duties) == 20
    finally:
        for s in stores:
            s.close()


def test_a_failing_duty_is_logged_and_the_others_and_promotion_go_on(
    nb: nbjobs.Engine, clock: nbjobs.ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """One duty raising (a bug, a definition it cannot read) must not stop due jobs or other duties."""
    later = nb.schedule(60, record, "due")
    ran: list[int] = []

    def broken() -> int:
        raise RuntimeError("duty broke")

    def counting() -> int:
        ran.append(1)
        return 0

    store = SqlStore(nb.url)
    try:
        scheduler = Scheduler(store=store, clock=clock, wake_dispatcher=threading.Event(),
                              changed=threading.Event(), duties=[broken, counting])
        clock.advance(61)
        with caplog.at_level("ERROR", logger="nbjobs.server"):
            assert scheduler.tick() == 1  # the due job was promoted
        assert later.state is JobState.ENQUEUED and ran == [1]
        assert "scheduler duty" in caplog.text and "duty broke" in caplog.text
        assert scheduler.wake_dispatcher.is_set()
    finally:
        store.close()


# -- CLI and module-level API -------------------------------------------------------------------------------
def test_cli_lists_triggers_pauses_and_resumes(db_url: str, nb: nbjobs.Engine) -> None:
    from click.testing import CliRunner

    from nbjobs.cli import cli

    nb.options(tz="Europe/Berlin").recurring("nightly", "0 2 * * *", record, "n")
    runner = CliRunner()
    listed = runner.invoke(cli, ["recurring", "--url", db_url])
    assert listed.exit_code == 0, listed.output
    assert "nightly" in listed.output and "0 2 * * *" in listed.output and "Europe/Berlin" in listed.output
    triggered = runner.invoke(cli, ["trigger", "--url", db_url, "nightly"])
    assert triggered.exit_code == 0, triggered.output
    job_id = int(triggered.output.split(": job ")[1].split()[0])
    assert nb.job(job_id).record().recurring_id == "nightly"
    nb.enqueue(record, "not a run")
    runs = runner.invoke(cli, ["jobs", "--url", db_url, "--recurring", "nightly", "--format", "json"])
    assert [row["id"] for row in json.loads(runs.output)] == [job_id]
    assert runner.invoke(cli, ["pause", "--url", db_url, "nightly"]).exit_code == 0
    assert bool(row(nb, "nightly")["paused"]) is True
    resumed = runner.invoke(cli, ["resume", "--url", db_url, "nightly"])
    assert resumed.exit_code == 0 and "resumed; next run 20" in resumed.output
    assert bool(row(nb, "nightly")["paused"]) is False
    missing = runner.invoke(cli, ["pause", "--url", db_url, "nope"])
    assert isinstance(missing.exception, nbjobs.RecurringNotFoundError)
    removed = runner.invoke(cli, ["remove-recurring", "--url", db_url, "nightly"])
    assert "'nightly' removed" in removed.output and nb.recurring_jobs().empty
    assert "start" not in runner.invoke(cli, ["recurring", "--url", db_url]).output  # no windows
    short = nb.options(end=nb.clock.now() + timedelta(minutes=3)).recurring("short", "* * * * *", record, "s")
    listed = runner.invoke(cli, ["recurring", "--url", db_url])
    header = listed.output.splitlines()[0]
    assert header.endswith(" end") and "start" not in header  # the window's column that is set
    short.pause()
    nb.clock.advance(3600)  # type: ignore[attr-defined]
    ended = runner.invoke(cli, ["resume", "--url", db_url, "short"])
    assert "'short' resumed, but it has ended: its end, 2026-01-05T07:03:30+00:00, has passed" in ended.output


def test_module_level_helpers_use_the_default_engine(nb: nbjobs.Engine) -> None:
    previous = nbjobs.set_default_engine(nb)
    try:
        handle = nbjobs.recurring("mod", "@daily", record, "m")
        assert handle.next_fire == datetime(2026, 1, 6, tzinfo=UTC)
        assert nbjobs.trigger("mod").record().recurring_id == "mod"
        nbjobs.pause("mod")
        assert bool(nbjobs.recurring_jobs().loc[0, "paused"]) is True
        nbjobs.resume("mod")
        assert nbjobs.remove_recurring("mod") is True
        assert nbjobs.recurring_jobs().empty
    finally:
        nbjobs.set_default_engine(previous)


# -- waking the scheduler -----------------------------------------------------------------------------------
def test_scheduler_wakes_at_the_next_fire_and_when_a_definition_changes(
    nb: nbjobs.Engine, clock: nbjobs.ManualClock
) -> None:
    # A long interval: only the wake-up at the next fire (and on change) can fire in time.
    nb.start_server(**SERVER, scheduler_interval=600.0)
    settle(nb)  # the scheduler now waits up to 600 manual seconds
    before = looks(nb)
    nb.recurring("soon", "*/5 * * * * *", record, "s")  # the change wakes it; it recomputes its wait
    wait_for(lambda: looks(nb) > before)
    clock.set(T0 + timedelta(seconds=5))
    wait_for(lambda: succeeded(nb, "soon", 1))
    clock.set(T0 + timedelta(seconds=10))
    wait_for(lambda: succeeded(nb, "soon", 2))
    assert fire_times(nb, "soon") == [T0 + timedelta(seconds=5), T0 + timedelta(seconds=10)]


def test_a_schedule_that_no_longer_reads_is_an_error_without_spinning(
    nb: nbjobs.Engine, clock: nbjobs.ManualClock
) -> None:
    from nbjobs.model import JobOptions
    from nbjobs.server.scheduler import Scheduler
    from nbjobs.storage.base import RecurringSpec

    # As if the zone vanished from the system's tz database after the definition was stored.
    nb.store.upsert_recurring(RecurringSpec(
        id="lost-zone", cron="* * * * *", tz="Atlantis/Capital", function=f"{__name__}:record",
        payload=nb.codec.encode_call(record, f"{__name__}:record", ("x",), {}, "pickle"),
        options=JobOptions(), next_fire=FIRST,
    ), clock.now())
    nb.recurring("fine", "* * * * *", record, "f")
    clock.set(FIRST)
    scheduler = Scheduler(store=nb.store, clock=clock, wake_dispatcher=threading.Event(),
                          changed=threading.Event(), interval=1.0, duties=[RecurringDuty(nb.store, clock)])
    assert scheduler.tick() == 1  # "fine" fired; "lost-zone" did not stop it
    assert "unknown time zone 'Atlantis/Capital'" in row(nb, "lost-zone")["error"]
    assert scheduler._timeout() == 1.0  # the stuck fire does not make the loop spin
    clock.advance(1)
    assert scheduler.tick() == 0 and scheduler._timeout() == 1.0


def test_a_job_function_can_recur(nb: nbjobs.Engine) -> None:
    fetch = nb.job(record, queue="io", retries=1)
    fetch.recurring("fetch", "@hourly", "u")
    info = row(nb, "fetch")
    assert (info["queue"], info["cron"], info["function"]) == ("io", "@hourly", f"{__name__}:record")
    assert nb.store.get_recurring("fetch").options.retries == 1  # type: ignore[union-attr]


def test_daylight_saving_days_fire_once(db_url: str) -> None:
    """Europe/Berlin 02:30: on the spring-forward day at 03:00 CEST; on the fall-back day only once."""
    clock = nbjobs.ManualClock(datetime(2026, 3, 28, 12, tzinfo=UTC))
    with nbjobs.connect(db_url, secret="test-secret", clock=clock) as nb:
        handle = nb.options(tz="Europe/Berlin").recurring("half-past-two", "30 2 * * *", record, "dst")
        spring = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 CEST: 02:30 does not exist
        assert handle.next_fire == spring
        nb.start_server(**SERVER, keep_succeeded=366 * 86400.0)
        clock.set(spring)
        wait_for(lambda: succeeded(nb, "half-past-two", 1))
        assert handle.next_fire == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)  # 02:30 CEST
        nb.stop_server()
        nb.resume("half-past-two")  # not paused: no change
        nb.pause("half-past-two")
        clock.set(datetime(2026, 10, 24, 12, tzinfo=UTC))
        nb.resume("half-past-two")
        fall = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST, the first of two 02:30s
        assert handle.next_fire == fall
        nb.start_server(**SERVER, keep_succeeded=366 * 86400.0)  # keep March's job past 7 months
        clock.set(fall)
        wait_for(lambda: succeeded(nb, "half-past-two", 2))
        clock.set(datetime(2026, 10, 25, 1, 30, tzinfo=UTC))  # 02:30 CET, the repeat: no fire
        settle(nb)
        assert fire_times(nb, "half-past-two") == [spring, fall]
        assert handle.next_fire == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)  # 02:30 CET
