"""Database faults while a server runs (real PostgreSQL): killed connections and a database that
errors for a while. The server keeps running, no outcome is dropped, nothing stays Processing."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest

import nbjobs
from nbjobs import JobState

from ..conftest import _reset_pg, wait_for

GATE = threading.Event()
STARTED = threading.Event()
RUNS: Counter[int] = Counter()
RUNS_LOCK = threading.Lock()


def held() -> str:
    STARTED.set()
    if not GATE.wait(30):
        raise TimeoutError("the test never opened the gate")
    return "done"


def tick(i: int) -> int:
    with RUNS_LOCK:
        RUNS[i] += 1
    threading.Event().wait(0.002)
    return i


@pytest.fixture
def pg_url(pg_database: str) -> str:
    _reset_pg(pg_database)
    return pg_database


@pytest.fixture
def admin(pg_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def kill_other_connections(admin: psycopg.Connection) -> int:
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    return len(rows)


def test_killed_connections_mid_run_lose_nothing(pg_url: str, admin: psycopg.Connection) -> None:
    RUNS.clear()
    with nbjobs.connect(pg_url, secret="test-secret") as nb:
        server = nb.start_server(workers=4, heartbeat_interval=0.2, server_timeout=2.0)
        jobs = nb.enqueue_many(tick, [(i,) for i in range(600)])
        killed = 0
        for _ in range(5):
            seen = len(RUNS)
            wait_for(lambda seen=seen: len(RUNS) > seen, timeout=30)
            # The pool's, the listener's, the heartbeat's. Jobs claimed earlier may have run with
            # no connection open yet since the last kill: then wait for the server to open one.
            killed += wait_for(lambda: kill_other_connections(admin), timeout=30)
        assert killed >= 5
        wait_for(lambda: admin.execute(
            "SELECT count(*) FROM nbjobs_jobs WHERE state <> 'succeeded'").fetchone()[0] == 0, timeout=60)
        assert server.running and all(server.alive_loops().values())
        assert set(RUNS) == set(range(600)) and all(j.state is JobState.SUCCEEDED for j in jobs[:20])
        # At least once: a claim whose commit was lost with its connection may run again after its
        # lease, but nothing is lost and nothing stays Processing.
        # The listener reconnected: a new job is still picked up.
        assert nb.enqueue(tick, 1000).result(timeout=30) == 1000


def test_dispatcher_survives_a_failing_database_and_keeps_the_outcome(
    pg_url: str, admin: psycopg.Connection
) -> None:
    GATE.clear()
    STARTED.clear()
    with nbjobs.connect(pg_url, secret="test-secret") as nb:
        server = nb.start_server(workers=2, heartbeat_interval=0.2, server_timeout=30)
        job = nb.enqueue(held)
        assert STARTED.wait(10)
        # Every statement on the jobs table now fails (not a transient error, no retry inside _tx).
        admin.execute("ALTER TABLE nbjobs_jobs RENAME TO nbjobs_jobs_away")
        try:
            GATE.set()  # the job finishes while its outcome cannot be written
            wait_for(lambda: server.dispatcher.errors >= 2, timeout=30)
            assert server.running and all(server.alive_loops().values())
        finally:
            admin.execute("ALTER TABLE nbjobs_jobs_away RENAME TO nbjobs_jobs")
        assert job.result(timeout=30) == "done"
        assert [c.state for c in job.history()].count(JobState.PROCESSING) == 1
        assert nb.enqueue(tick, 7).result(timeout=30) == 7
        assert nb.counts()["processing"] == 0
