"""Server behaviour the throughput work relies on: a schedule written by another engine is still seen
within a second though the scheduler sleeps long on SQLite, results of None cost nothing, a lone job
is picked up at once after a burst, the dispatcher never waits longer than its pacing cap, and an
enqueue claims for an idle server in this process in its own transaction (never past its free slots)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.storage import SqlStore

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


# -- an enqueue claims for an idle server in this process -------------------------------------------
RUNS: list[int] = []
RUNS_LOCK = threading.Lock()
GATE = threading.Event()


def record(i: int) -> int:
    with RUNS_LOCK:
        RUNS.append(i)
    return i


def held() -> str:
    STARTED.set()
    if not GATE.wait(30):
        raise TimeoutError("the test never opened the gate")
    return "done"


@pytest.fixture
def quiet(db_url: str, manual_clock: nbjobs.ManualClock) -> Iterator[nbjobs.Engine]:
    """An engine whose server does nothing on its own (the clock stands still: no heartbeats)."""
    with nbjobs.connect(db_url, secret="s", clock=manual_clock) as eng:
        yield eng


def _settled(server: nbjobs.Server) -> nbjobs.Server:
    """Wait until the dispatcher is idle: no claim in flight, nothing running, nothing to do."""
    d = server.dispatcher
    wait_for(lambda: d._reserved == 0 and not d.running_ids() and not d.wake.is_set(), timeout=10)
    return server


def test_an_enqueue_claims_for_an_idle_local_server_in_its_own_transaction(quiet: nbjobs.Engine) -> None:
    server = _settled(quiet.start_server(workers=2))
    STARTED.clear()
    job = quiet.enqueue(mark)
    assert server.dispatcher.claimed_by_enqueues == 1  # claimed before enqueue returned
    assert STARTED.wait(5)
    assert job.wait(timeout=10) is JobState.SUCCEEDED
    processing = next(c for c in job.history() if c.state is JobState.PROCESSING)
    assert processing.server_id == server.id and processing.reason == "claimed (attempt 1)"
    _settled(server)


def test_a_busy_server_claims_for_itself_in_batches(quiet: nbjobs.Engine) -> None:
    server = _settled(quiet.start_server(workers=2))
    GATE.clear()
    STARTED.clear()
    blocker = quiet.enqueue(held)
    try:
        assert STARTED.wait(10)
        # A job is running: the enqueue does not claim; the dispatcher does, in its own turn.
        second = quiet.enqueue(mark)
        assert second.wait(timeout=10) is JobState.SUCCEEDED
        assert server.dispatcher.claimed_by_enqueues == 1  # the blocker only
    finally:
        GATE.set()
    assert blocker.wait(timeout=10) is JobState.SUCCEEDED
    _settled(server)


def test_jobs_the_server_cannot_run_now_are_not_claimed_at_enqueue(quiet: nbjobs.Engine) -> None:
    server = _settled(quiet.start_server(workers=2, queues=["default"]))
    later = quiet.schedule(3600, mark)
    elsewhere = quiet.options(queue="elsewhere").enqueue(mark)
    assert later.state is JobState.SCHEDULED
    assert elsewhere.state is JobState.ENQUEUED
    assert server.dispatcher.claimed_by_enqueues == 0
    _settled(server)


def test_reservations_never_exceed_the_free_slots(quiet: nbjobs.Engine) -> None:
    dispatcher = _settled(quiet.start_server(workers=2)).dispatcher
    spec = quiet.client.new_job(mark, (), {})
    now = quiet.clock.now()
    first = dispatcher.reserve([spec], now)
    assert first is not None and first.limit == dispatcher.capacity()
    assert dispatcher.reserve([spec], now) is None  # the slots are promised to the first claim
    dispatcher.release(first)
    assert dispatcher._reserved == 0
    again = dispatcher.reserve([spec], now)
    assert again is not None
    dispatcher.accept(again, [])
    assert dispatcher._reserved == 0


class _ClaimFailsInThisThread(SqlStore):
    """The real store; the claim part of an enqueue fails (mid-transaction) in one chosen thread."""

    failing_thread: int | None = None

    def _acquire(self, conn, *args, **kwargs):  # type: ignore[no-untyped-def]
        if threading.get_ident() == self.failing_thread:
            raise RuntimeError("claim failed")
        return super()._acquire(conn, *args, **kwargs)


def test_a_failed_enqueue_transaction_stores_nothing_and_frees_its_reservation(
    db_url: str, manual_clock: nbjobs.ManualClock
) -> None:
    store = _ClaimFailsInThisThread(db_url)
    with nbjobs.connect(db_url, secret="s", store=store, clock=manual_clock) as eng:
        server = _settled(eng.start_server(workers=2))
        store.failing_thread = threading.get_ident()
        with pytest.raises(RuntimeError, match="claim failed"):
            eng.enqueue(mark)
        store.failing_thread = None
        assert eng.jobs().empty  # the job row went with the failed transaction
        _settled(server)  # the reservation was given back
        job = eng.enqueue(mark)
        assert server.dispatcher.claimed_by_enqueues == 1
        assert job.wait(timeout=10) is JobState.SUCCEEDED
        _settled(server)


def test_enqueuing_threads_and_the_server_run_every_job_once(quiet: nbjobs.Engine) -> None:
    server = _settled(quiet.start_server(workers=2))
    RUNS.clear()

    def enqueue_range(start: int) -> None:
        for i in range(start, start + 100):
            quiet.enqueue(record, i)

    threads = [threading.Thread(target=enqueue_range, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wait_for(lambda: quiet.counts().get("succeeded", 0) == 400, timeout=60, interval=0.02)
    assert sorted(RUNS) == list(range(400))
    assert server.dispatcher.claimed_by_enqueues > 0  # the first, at least: both paths were taken
    _settled(server)


def test_a_change_that_moves_nothing_closer_costs_the_scheduler_one_read_not_a_pass(
    quiet: nbjobs.Engine, manual_clock: nbjobs.ManualClock
) -> None:
    scheduler = quiet.start_server(workers=1).scheduler
    wait_for(lambda: scheduler.ticks >= 1)
    ticks, peeks = scheduler.ticks, scheduler.peeks
    far = quiet.schedule(3600, mark)  # wakes the scheduler: nothing is due sooner than planned
    wait_for(lambda: scheduler.peeks > peeks)
    assert scheduler.ticks == ticks
    STARTED.clear()
    soon = quiet.schedule(5, mark)  # sooner than the planned wake-up: the wait is shortened
    wait_for(lambda: scheduler.peeks > peeks + 1)
    assert scheduler.ticks == ticks and soon.state is JobState.SCHEDULED
    manual_clock.advance(5)
    assert STARTED.wait(10)
    assert soon.wait(timeout=10) is JobState.SUCCEEDED
    assert scheduler.ticks > ticks and far.state is JobState.SCHEDULED


def test_sqlite_commits_that_bring_no_work_wake_neither_dispatcher_nor_scheduler(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    with nbjobs.connect(url, secret="s") as eng, nbjobs.connect(url, secret="s") as other:
        server = _settled(eng.start_server(workers=1))
        scheduler, dispatcher = server.scheduler, server.dispatcher
        wait_for(lambda: scheduler.ticks >= 1)
        turns, looks, reports = dispatcher.turns, scheduler.ticks + scheduler.peeks, server.listener_reports
        server.heartbeat.beat()  # a commit that brings no work (as are the reaper's, finished jobs, …)
        wait_for(lambda: server.listener_reports > reports)
        assert dispatcher.turns == turns
        assert scheduler.ticks + scheduler.peeks == looks
        # What another process commits that does bring work wakes the one that takes it.
        STARTED.clear()
        other.enqueue(mark)
        assert STARTED.wait(5)
        assert dispatcher.turns > turns
        other.schedule(3600, mark)
        wait_for(lambda: scheduler.ticks + scheduler.peeks > looks)
