"""`nbjobs server --burst`: run what is ready (and what it leads to), then stop; and the store's
answer to "has this server anything left to do?" that it waits for."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import nbjobs
from nbjobs.clock import ManualClock
from nbjobs.model import JobOptions, NewJob, Outcome, OutcomeKind
from nbjobs.storage import SqlStore

from ..integration import jobfuncs

SECRET = "test-secret"


def spec(queue: str = "default", run_at: object = None) -> NewJob:
    return NewJob(function="tests.fake:fn", payload=b"x", options=JobOptions(queue=queue),
                  run_at=run_at)  # type: ignore[arg-type]


def test_has_work_counts_held_ready_and_due_jobs_of_the_queues_served(store: SqlStore) -> None:
    clock = ManualClock()
    now = clock.now()
    lease = now + timedelta(seconds=60)
    assert not store.has_work("s1", ["*"], now)
    (later,) = store.enqueue([spec(run_at=now + timedelta(minutes=5))], now)
    assert not store.has_work("s1", ["*"], now)  # scheduled for later: left for later
    assert store.has_work("s1", ["*"], now + timedelta(minutes=5))  # due
    store.enqueue([spec("reports"), spec("default@kernel-1")], now)
    assert store.has_work("s1", ["*"], now)
    assert store.has_work("s1", ["reports"], now)
    assert not store.has_work("s1", ["gpu"], now)  # not a queue it serves
    store.pause_queue("reports", now)
    assert store.has_work("s1", ["default@kernel-1"], now)  # a private queue, named
    assert not store.has_work("s1", ["*"], now)  # "*" skips private queues; reports is paused
    store.resume_queue("reports")
    (claimed,) = store.acquire("s1", ["reports"], 10, lease, now)
    assert not store.has_work("s2", ["reports"], now)  # held by another server
    assert store.has_work("s1", ["reports"], now)  # held: its outcome is not written yet
    store.finish("s1", [Outcome(job_id=claimed.id, kind=OutcomeKind.SUCCEEDED, started_at=now,
                                finished_at=now)], now)
    assert not store.has_work("s1", ["reports"], now)
    assert later.id != claimed.id


def test_a_burst_server_runs_what_is_ready_then_exits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    marks = tmp_path / "marks"
    with nbjobs.connect(url, secret=SECRET) as nb:
        ready = [nb.enqueue(jobfuncs.record, str(marks), i) for i in range(20)]
        follow = ready[0].then(jobfuncs.record, str(marks), 100)  # enqueued when its parent ends
        later = nb.schedule(timedelta(hours=1), jobfuncs.record, str(marks), 200)
        elsewhere = nb.options(queue="gpu").enqueue(jobfuncs.record, str(marks), 300)
        env = {**os.environ, "NBJOBS_SECRET": SECRET}
        done = subprocess.run(
            [sys.executable, "-m", "nbjobs", "server", "--url", url, "--burst", "--queues", "default",
             "--poll-interval", "0.05"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "burst: nothing left to run; stopping" in done.stderr
        assert all(job.state is nbjobs.JobState.SUCCEEDED for job in [*ready, follow])
        assert sorted(tag for tag, _ in _lines(marks)) == [*range(20), 100]  # each once
        assert later.state is nbjobs.JobState.SCHEDULED and elsewhere.state is nbjobs.JobState.ENQUEUED
        assert nb.servers().empty  # it unregistered


def test_a_burst_server_with_nothing_to_do_exits_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    done = subprocess.run([sys.executable, "-m", "nbjobs", "server", "--url", url, "--burst"],
                          env={**os.environ, "NBJOBS_SECRET": SECRET}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "nothing left to run" in done.stderr


def _lines(path: Path) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (ln.split() for ln in path.read_text().splitlines())]
