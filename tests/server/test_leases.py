"""Leases and recovery at the server level, with a ManualClock: heartbeats keep long jobs, the reaper
returns jobs of silent or dead servers (one reaper at a time), expired finished jobs are pruned."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.model import ServerInfo
from nbjobs.server.reaper import HOST, Reaper

from ..conftest import wait_for

GATE = threading.Event()
STARTED = threading.Event()


def held(tag: str) -> str:
    STARTED.set()
    if not GATE.wait(30):
        raise TimeoutError("the test never opened the gate")
    return tag


def quick(x: int) -> int:
    return x


def fails(reason: str) -> None:
    raise ValueError(reason)


@pytest.fixture
def nb(db_url: str, manual_clock: nbjobs.ManualClock) -> Iterator[nbjobs.Engine]:
    GATE.clear()
    STARTED.clear()
    eng = nbjobs.connect(db_url, secret="test-secret", clock=manual_clock)
    yield eng
    GATE.set()
    eng.close()


def start(nb: nbjobs.Engine) -> nbjobs.Engine:
    nb.start_server(workers=2, heartbeat_interval=5, server_timeout=30, shutdown_timeout=5)
    return nb


def outcome(job: nbjobs.Job) -> object:
    """The job's result, waiting in real time (a ManualClock never lets `result(timeout=)` expire)."""
    wait_for(lambda: job.done, timeout=10)
    return job.result(timeout=0)


def foreign_server(nb: nbjobs.Engine, server_id: str, *, host: str = "elsewhere", pid: int = 1) -> None:
    now = nb.clock.now()
    nb.store.register_server(ServerInfo(id=server_id, name=server_id, host=host, pid=pid, workers=1,
                                        queues=("*",), started_at=now, heartbeat_at=now))


def test_claim_sets_a_lease_that_heartbeats_extend_for_a_long_job(db_url: str) -> None:
    """Real time, short settings: a job running two lease lengths is never taken from its server."""
    GATE.clear()
    STARTED.clear()
    with nbjobs.connect(db_url, secret="test-secret") as nb:
        server = nb.start_server(workers=1, heartbeat_interval=0.1, server_timeout=1.5)
        job = nb.enqueue(held, "long")
        assert STARTED.wait(10)
        rec = job.record()
        assert rec.server_id == server.id and rec.lease_until is not None and rec.started_at is not None
        assert rec.lease_until - rec.started_at >= timedelta(seconds=1.5)  # claim: now + timeout
        deadline = time.monotonic() + 3.0
        judged = 0
        while time.monotonic() < deadline:
            # What every other server's reaper does, as often as it likes.
            now = nb.clock.now()
            report = nb.store.reap(now, server_timeout=1.5)
            assert job.id not in report.returned_jobs and server.id not in report.dead_servers
            lease = job.record().lease_until
            assert lease is not None and lease > now
            judged += 1
            threading.Event().wait(0.05)
        assert judged > 10
        GATE.set()
        assert job.result(timeout=10) == "long"
        assert [c.state for c in job.history()].count(JobState.PROCESSING) == 1


def test_reaper_returns_jobs_of_a_silent_server_which_this_server_then_runs(
    nb: nbjobs.Engine, manual_clock: nbjobs.ManualClock
) -> None:
    foreign_server(nb, "silent")
    job = nb.enqueue(quick, 7)
    t0 = manual_clock.now()
    [claimed] = nb.store.acquire("silent", ["*"], 1, t0 + timedelta(seconds=30), t0)
    assert claimed.id == job.id
    server = start(nb).server
    assert server is not None
    assert job.state is JobState.PROCESSING  # the lease still runs: nobody touches it
    manual_clock.advance(31)
    assert outcome(job) == 7
    assert [s.id for s in nb.store.list_servers()] == [server.id]
    hist = job.history()
    assert [c.state for c in hist] == [JobState.ENQUEUED, JobState.PROCESSING, JobState.ENQUEUED,
                                      JobState.PROCESSING, JobState.SUCCEEDED]
    assert "returned to queue: its server stopped" in hist[2].reason and "silent" in hist[2].reason
    assert hist[1].server_id == "silent" and hist[3].server_id == server.id


def test_dead_process_on_this_host_is_recognised_at_once(
    nb: nbjobs.Engine, manual_clock: nbjobs.ManualClock
) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    foreign_server(nb, "crashed", host=HOST, pid=int(gone.stdout))
    job = nb.enqueue(quick, 9)
    t0 = manual_clock.now()
    nb.store.acquire("crashed", ["*"], 1, t0 + timedelta(hours=1), t0)
    start(nb)  # no time passes: the start-up reap sees that pid is gone
    assert outcome(job) == 9
    assert "crashed" in job.history()[2].reason
    assert "crashed" not in [s.id for s in nb.store.list_servers()]


def test_only_one_reaper_acts_at_a_time(nb: nbjobs.Engine, manual_clock: nbjobs.ManualClock) -> None:
    def reaper(name: str) -> Reaper:
        return Reaper(store=nb.store, clock=manual_clock, server_id=name, interval=5, server_timeout=30,
                      keep_succeeded=1e9, keep_deleted=1e9)

    a, b = reaper("a"), reaper("b")
    assert a.reap_once() is not None
    assert b.reap_once() is None  # a holds the lock for two intervals
    manual_clock.advance(5)
    assert a.reap_once() is not None and b.reap_once() is None
    manual_clock.advance(11)  # a went quiet: its lock expired
    assert b.reap_once() is not None and a.reap_once() is None


def test_paused_server_declared_dead_registers_again_and_drops_lost_jobs(
    nb: nbjobs.Engine, manual_clock: nbjobs.ManualClock
) -> None:
    server = start(nb).server
    assert server is not None
    job = nb.enqueue(held, "paused")
    assert STARTED.wait(10)
    # Another server's reaper declares this one dead (as after a long suspend of the laptop): it
    # judges at a time this server's own threads have not reached yet.
    report = nb.store.reap(manual_clock.now() + timedelta(seconds=31), server_timeout=30)
    assert report.dead_servers == (server.id,) and report.returned_jobs == (job.id,)
    beats = server.heartbeat.beats
    manual_clock.advance(5)
    wait_for(lambda: server.heartbeat.beats > beats, timeout=10)
    assert server.id in [s.id for s in nb.store.list_servers()]  # registered again
    GATE.set()
    # The job went back to the queue and was claimed again; the superseded attempt's outcome is
    # dropped, and the job ends Succeeded exactly once.
    assert outcome(job) == "paused"
    states = [c.state for c in job.history()]
    assert states.count(JobState.SUCCEEDED) == 1 and states.count(JobState.PROCESSING) == 2
    wait_for(lambda: not server.dispatcher.running_ids(), timeout=10)


def test_own_reaper_never_returns_its_own_jobs_after_a_pause(
    nb: nbjobs.Engine, manual_clock: nbjobs.ManualClock
) -> None:
    server = start(nb).server
    assert server is not None
    job = nb.enqueue(held, "mine")
    assert STARTED.wait(10)
    # Every thread wakes at once after a long pause; the reaper beats for its own server first.
    for _ in range(5):
        manual_clock.advance(40)
        report = server.reaper.reap_once()
        assert report is not None and job.id not in report.returned_jobs
        assert server.id not in report.dead_servers
    GATE.set()
    assert outcome(job) == "mine"
    assert [c.state for c in job.history()].count(JobState.PROCESSING) == 1


def test_expired_finished_jobs_are_pruned_by_the_reaper_in_batches(
    nb: nbjobs.Engine, manual_clock: nbjobs.ManualClock
) -> None:
    start(nb)
    ok = [nb.enqueue(quick, i) for i in range(7)]
    bad = nb.options(retries=0).enqueue(fails, "kept until someone deletes it")
    gone = nb.enqueue(quick, 0)
    for j in [*ok, gone]:
        outcome(j)
    wait_for(lambda: bad.done, timeout=10)
    nb.stop_server()
    deleted = nb.schedule(3600, quick, 1)
    deleted.delete()
    nb.store.append_logs(ok[0].id, [(manual_clock.now(), "stdout", "x")])
    reaper = Reaper(store=nb.store, clock=manual_clock, server_id="r", interval=5, server_timeout=30,
                    keep_succeeded=7 * 86400, keep_deleted=86400, prune_batch=3)
    manual_clock.advance(timedelta(days=2))
    report = reaper.reap_once()
    assert report is not None and report.pruned_jobs == 1  # only the deleted job (kept 1 day)
    manual_clock.advance(timedelta(days=6))
    report = reaper.reap_once()
    assert report is not None and report.pruned_jobs == 8  # three batches of at most 3
    left = nb.jobs()
    assert list(left["id"]) == [bad.id]  # Failed is kept until someone deletes it
    assert nb.store.history(ok[0].id) == [] and nb.store.read_logs(ok[0].id) == []
