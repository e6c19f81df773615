"""A prefetched job whose lease ran half out before a worker took it is given back, never started:
otherwise the reaper could hand it to another server while this one still runs it."""

from __future__ import annotations

import threading
from datetime import timedelta

import nbjobs
from nbjobs import JobState
from nbjobs.server.dispatcher import Dispatcher, DispatcherConfig

RAN: list[int] = []


def note(i: int) -> None:
    RAN.append(i)


def _dispatcher(engine: nbjobs.Engine, clock: nbjobs.ManualClock, workers: int = 1) -> Dispatcher:
    return Dispatcher(
        store=engine.store, clock=clock, codec=engine.codec, wake=threading.Event(),
        config=DispatcherConfig(server_id="s1", queues=("*",), workers=workers, lease_seconds=10.0),
    )


def _drain_worker(d: Dispatcher) -> None:
    d._work.put(None)
    t = threading.Thread(target=d._worker)
    t.start()
    t.join(10)


def test_stale_prefetched_job_is_returned_unstarted(db_url: str) -> None:
    RAN.clear()
    clock = nbjobs.ManualClock()
    with nbjobs.connect(db_url, clock=clock, secret="s") as engine:
        job = engine.enqueue(note, 1)
        d = _dispatcher(engine, clock)
        d._turn()  # claims the job and queues it for a worker
        assert job.state is JobState.PROCESSING
        clock.advance(timedelta(seconds=6))  # more than half the 10 s lease, and no heartbeat
        _drain_worker(d)
        d._turn(claim=False)
        assert RAN == []
        assert job.state is JobState.ENQUEUED
        assert "lease was about to expire" in job.history()[-1].reason
        assert job.record().attempts == 0


def test_heartbeat_extension_lets_the_job_start(db_url: str) -> None:
    RAN.clear()
    clock = nbjobs.ManualClock()
    with nbjobs.connect(db_url, clock=clock, secret="s") as engine:
        job = engine.enqueue(note, 2)
        d = _dispatcher(engine, clock)
        d._turn()
        clock.advance(timedelta(seconds=6))
        d.extend_local_leases([job.id], clock.monotonic() + 10.0)  # what a heartbeat does
        _drain_worker(d)
        d._turn(claim=False)
        assert RAN == [2]
        assert job.state is JobState.SUCCEEDED


def test_lost_unstarted_job_is_never_started(db_url: str) -> None:
    RAN.clear()
    clock = nbjobs.ManualClock()
    with nbjobs.connect(db_url, clock=clock, secret="s") as engine:
        engine.enqueue(note, 3)
        d = _dispatcher(engine, clock)
        d._turn()
        d.forget(d.running_ids())  # a heartbeat said another server holds it now
        _drain_worker(d)
        assert RAN == []


def test_a_lost_job_claimed_again_keeps_its_new_attempt(db_url: str) -> None:
    """A heartbeat reports a job lost (reaped while this server was paused); before its reply is
    applied, this server has claimed the job again. Only the attempt the heartbeat saw is dropped:
    the new one runs, where it used to be dropped too and the job sat Processing until its lease
    ran out."""
    RAN.clear()
    clock = nbjobs.ManualClock()
    with nbjobs.connect(db_url, clock=clock, secret="s") as engine:
        job = engine.enqueue(note, 4)
        d = _dispatcher(engine, clock, workers=2)  # a free slot for the job's second claim
        d._turn()
        seen = d.running_attempts()  # what the heartbeat sends
        report = engine.store.reap(clock.now() + timedelta(seconds=11), server_timeout=30)
        assert job.id in report.returned_jobs and job.state is JobState.ENQUEUED
        d._turn()  # claimed again: a new attempt
        assert d.running_attempts()[job.id] is not seen[job.id]
        d.forget([job.id], seen=seen)  # the heartbeat's reply: job lost (its first attempt)
        assert d.running_ids() == [job.id] and not d.running_attempts()[job.id].ctx.cancelled
        _drain_worker(d)
        d._turn(claim=False)
        assert RAN == [4]
        assert job.state is JobState.SUCCEEDED
        assert job.record().attempts == 2
