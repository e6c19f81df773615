"""Server behaviour the throughput work relies on: a schedule written by another engine is still seen
within a second though the scheduler sleeps long on SQLite, results of None cost nothing, a lone job
is picked up at once after a burst, and the dispatcher never waits longer than its pacing cap."""

from __future__ import annotations

import threading
import time

import nbjobs
from nbjobs import JobState

from ..conftest import wait_for

STARTED = threading.Event()


def nothing() -> None:
    return None


def mark() -> str:
    STARTED.set()
    return "ran"


def test_sqlite_scheduler_sleeps_long_but_sees_other_engines_schedules(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    with nbjobs.connect(url, secret="s") as server_side, nbjobs.connect(url, secret="s") as other:
        server = server_side.start_server(workers=1)
        assert server.scheduler.interval >= 30  # no per-second polling on SQLite
        # Let the scheduler settle into its long sleep, then schedule from another engine (as another
        # process would): its notifier cannot wake this server; only the database can.
        wait_for(lambda: server.scheduler.ticks >= 1, timeout=10)
        job = other.schedule(1.0, mark)
        due = time.monotonic() + 1.0
        assert job.wait(timeout=10) is JobState.SUCCEEDED
        assert time.monotonic() - due < 1.5  # promoted within about a second of its due time


def test_postgres_keeps_the_one_second_scheduler(db_url: str) -> None:
    with nbjobs.connect(db_url, secret="s") as eng:
        server = eng.start_server(workers=1)
        expected = 1.0 if db_url.startswith("postgresql") else 30.0
        assert server.scheduler.interval == expected


def test_none_results_are_not_stored_and_read_back_as_none(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=2)
    job = engine.enqueue(nothing)
    assert job.result(timeout=10) is None
    assert job.record().result is None


def test_a_lone_job_after_a_burst_is_picked_up_quickly(engine: nbjobs.Engine) -> None:
    server = engine.start_server(workers=4)
    jobs = engine.enqueue_many(nothing, [()] * 300)
    wait_for(lambda: all(j.done for j in jobs[-5:]), timeout=30, interval=0.02)
    gap = server.dispatcher._next_turn - time.monotonic()
    assert gap <= server.dispatcher.config.max_turn_gap  # pacing is bounded
    STARTED.clear()
    t0 = time.monotonic()
    engine.enqueue(mark)
    assert STARTED.wait(5)
    assert time.monotonic() - t0 < 1.0
