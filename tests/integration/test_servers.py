"""Several real `nbjobs server` processes on one database: exactly once, kill -9 recovery, killed
database connections, graceful and immediate shutdown on signals."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.processes import pid_alive

from ..conftest import _reset_pg, wait_for
from . import jobfuncs
from .servers import SECRET, ServerProcess, lines, servers, wait_until_registered

FAST = ("--heartbeat-interval", "0.2", "--server-timeout", "1.5", "--poll-interval", "0.05")
#: The big runs: no line per job, and a server timeout a loaded 2-core machine cannot miss. A server
#: declared dead after a long pause has its jobs rerun elsewhere (at least once, by design), which
#: is not what these runs check: they check that no claim is ever shared.
QUIET = ("--heartbeat-interval", "0.2", "--server-timeout", "15", "--poll-interval", "0.05",
         "--log-level", "WARNING")


@pytest.fixture
def pg_url(pg_database: str) -> str:
    _reset_pg(pg_database)
    return pg_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def client(request: pytest.FixtureRequest) -> Iterator[nbjobs.Engine]:
    url = request.getfixturevalue(request.param)
    eng = nbjobs.connect(url, secret=SECRET)
    yield eng
    eng.close()


def succeeded(nb: nbjobs.Engine) -> int:
    return nb.store.counts()[JobState.SUCCEEDED]


def run_exactly_once(nb: nbjobs.Engine, tmp_path: Path, n_servers: int, n_jobs: int, workers: int) -> None:
    out = tmp_path / "runs.txt"
    with servers(nb.url, tmp_path, n_servers, "--workers", str(workers), *QUIET, store=nb.store) as procs:
        batch = 2000
        for first in range(0, n_jobs, batch):
            tags = range(first, min(n_jobs, first + batch))
            nb.enqueue_many(jobfuncs.record, [(str(out), i) for i in tags])
        wait_for(lambda: succeeded(nb) == n_jobs or any(p.proc.poll() is not None for p in procs),
                 timeout=150, interval=0.2)
        assert all(p.proc.poll() is None for p in procs), [p.log() for p in procs]
    runs = lines(out)
    tags = Counter(tag for tag, _ in runs)
    assert len(runs) == n_jobs, f"{len(runs)} executions for {n_jobs} jobs"
    assert sorted(tags) == list(range(n_jobs)) and max(tags.values()) == 1
    by_server = Counter(pid for _, pid in runs)
    assert len(by_server) > 1, f"only one server took work: {by_server}"
    assert set(by_server) <= {p.pid for p in procs}
    counts = nb.store.counts()
    assert counts[JobState.SUCCEEDED] == n_jobs and counts[JobState.PROCESSING] == 0
    assert nb.store.list_servers() == []  # each server unregistered on SIGTERM


@pytest.mark.slow
@pytest.mark.parametrize("client", ["pg_url"], indirect=True)
def test_four_servers_twenty_thousand_jobs_exactly_once_on_postgresql(
    client: nbjobs.Engine, tmp_path: Path
) -> None:
    run_exactly_once(client, tmp_path, n_servers=4, n_jobs=20_000, workers=4)


@pytest.mark.slow
@pytest.mark.parametrize("client", ["sqlite_url"], indirect=True)
def test_three_servers_five_thousand_jobs_exactly_once_on_sqlite(
    client: nbjobs.Engine, tmp_path: Path
) -> None:
    run_exactly_once(client, tmp_path, n_servers=3, n_jobs=5_000, workers=4)


@pytest.mark.slow
@pytest.mark.parametrize("client", ["pg_url", "sqlite_url"], indirect=True)
def test_kill_9_while_a_job_runs_a_second_server_completes_it(client: nbjobs.Engine, tmp_path: Path) -> None:
    nb = client
    out, release = tmp_path / "starts.txt", tmp_path / "release"
    victim = ServerProcess(nb.url, "victim", tmp_path, "--workers", "1", *FAST)
    rescuer: ServerProcess | None = None
    try:
        wait_until_registered(nb.store, [victim])
        job = nb.enqueue(jobfuncs.hold, str(out), str(release), 1)
        wait_for(lambda: lines(out), timeout=30)
        assert lines(out) == [(1, victim.pid)]
        victim_id = job.record().server_id
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        killed_at = time.monotonic()
        rescuer = ServerProcess(nb.url, "rescuer", tmp_path, "--workers", "1", *FAST)
        wait_for(lambda: len(lines(out)) == 2, timeout=60)
        assert lines(out)[1] == (1, rescuer.pid)
        release.touch()
        assert job.wait(timeout=30) is JobState.SUCCEEDED
        assert time.monotonic() - killed_at < 30
        assert lines(Path(str(out) + ".done")) == [(1, rescuer.pid)]  # completed once, by the rescuer
        hist = job.history()
        assert [c.state for c in hist] == [JobState.ENQUEUED, JobState.PROCESSING, JobState.ENQUEUED,
                                          JobState.PROCESSING, JobState.SUCCEEDED]
        assert hist[1].server_id == victim_id and victim_id is not None
        assert "its server stopped" in hist[2].reason and victim_id in hist[2].reason
        assert hist[3].server_id not in (None, victim_id)
        assert victim_id not in [s.id for s in nb.store.list_servers()]
    finally:
        victim.stop()
        if rescuer is not None:
            rescuer.stop()


@pytest.mark.parametrize("client", ["sqlite_url"], indirect=True)
def test_a_killed_servers_worker_processes_stop_with_what_their_job_started(
    client: nbjobs.Engine, tmp_path: Path
) -> None:
    """Its job goes back to the queue for another server: left running, it would run twice at once."""
    nb = client
    victim = ServerProcess(nb.url, "victim", tmp_path, "--workers", "1", *FAST)
    try:
        wait_until_registered(nb.store, [victim])
        pids = tmp_path / "pids"
        nb.options(executor="process").enqueue(jobfuncs.pool_pids_then_sleep, str(pids), 120)
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, timeout=60)
        pool = [int(p) for p in pids.read_text().split()]
        worker = psutil.Process(pool[0]).ppid()  # the worker process running the job
        assert all(pid_alive(p) for p in [worker, *pool])
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        wait_for(lambda: not any(pid_alive(p) for p in [worker, *pool]), timeout=15)
    finally:
        victim.stop()


@pytest.mark.slow
@pytest.mark.parametrize("client", ["pg_url"], indirect=True)
def test_pg_terminate_backend_on_server_connections_loses_nothing(
    client: nbjobs.Engine, tmp_path: Path
) -> None:
    nb, n = client, 3000
    out = tmp_path / "runs.txt"
    dsn = nb.url.replace("postgresql+psycopg://", "postgresql://")
    with servers(nb.url, tmp_path, 2, "--workers", "4", *QUIET, store=nb.store) as procs, \
            psycopg.connect(dsn, autocommit=True) as admin:
        nb.enqueue_many(jobfuncs.record, [(str(out), i) for i in range(n)])
        terminated = 0
        for _ in range(4):
            seen = len(lines(out))
            wait_for(lambda seen=seen: len(lines(out)) > seen + 100 or succeeded(nb) == n, timeout=60)
            terminated += len(admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall())
        assert terminated >= 4
        wait_for(lambda: succeeded(nb) == n, timeout=90, interval=0.2)
        assert all(p.proc.poll() is None for p in procs)
        assert {s.name for s in nb.store.list_servers()} == {p.name for p in procs}
    tags = Counter(tag for tag, _ in lines(out))
    assert sorted(tags) == list(range(n))  # nothing lost (a claim lost with its connection may rerun)
    assert nb.store.counts()[JobState.PROCESSING] == 0


@pytest.mark.parametrize("client", ["sqlite_url"], indirect=True)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])  # SIGHUP: the terminal was closed
def test_sigterm_lets_the_running_job_finish_and_unregisters(
    client: nbjobs.Engine, tmp_path: Path, sig: signal.Signals
) -> None:
    nb = client
    out, release = tmp_path / "starts.txt", tmp_path / "release"
    srv = ServerProcess(nb.url, "graceful", tmp_path, "--workers", "1", "--shutdown-timeout", "30", *FAST)
    try:
        wait_until_registered(nb.store, [srv])
        job = nb.enqueue(jobfuncs.hold, str(out), str(release), 1)
        waiting = nb.enqueue(jobfuncs.record, str(out), 2)
        wait_for(lambda: lines(out), timeout=30)
        srv.signal(sig)
        wait_for(lambda: "draining" in srv.log(), timeout=10)
        assert srv.proc.poll() is None  # still draining: the job runs on
        release.touch()
        assert srv.wait(30) == 0
        assert job.state is JobState.SUCCEEDED
        assert waiting.state is JobState.ENQUEUED  # never started here; left for the next server
        assert nb.store.list_servers() == []
    finally:
        srv.stop()


@pytest.mark.parametrize("client", ["sqlite_url"], indirect=True)
def test_a_server_started_under_nohup_outlives_the_hangup(client: nbjobs.Engine, tmp_path: Path) -> None:
    nb = client
    srv = ServerProcess(nb.url, "nohup", tmp_path, "--workers", "1", *FAST, ignore_hangup=True)
    try:
        wait_until_registered(nb.store, [srv])
        srv.signal(signal.SIGHUP)
        assert nb.enqueue(jobfuncs.whoami).result(timeout=30) == srv.pid  # served after the hangup
        assert srv.proc.poll() is None and "draining" not in srv.log()
    finally:
        srv.stop()


@pytest.mark.parametrize("client", ["sqlite_url", "pg_url"], indirect=True)
def test_a_job_on_a_server_process_enqueues_into_the_servers_database(
    client: nbjobs.Engine, tmp_path: Path
) -> None:
    nb = client
    srv = ServerProcess(nb.url, "fan-out", tmp_path, "--workers", "1", *FAST)
    try:
        wait_until_registered(nb.store, [srv])
        found = nb.options(retries=0).enqueue(jobfuncs.fan_out_here, 3).result(timeout=60)
        # its children ran on the same server, which lent them the one worker the parent waited in
        assert found["pid"] == srv.pid and found["kids"] == [srv.pid] * 3
        assert found["url"] == nb.url and found["default_engine"] is False  # no ./nbjobs.db opened
        assert len(nb.jobs()) == 4
    finally:
        srv.stop()


@pytest.mark.parametrize("client", ["sqlite_url"], indirect=True)
def test_second_signal_returns_the_running_job_at_once(client: nbjobs.Engine, tmp_path: Path) -> None:
    nb = client
    out, release = tmp_path / "starts.txt", tmp_path / "release"
    srv = ServerProcess(nb.url, "impatient", tmp_path, "--workers", "1", "--shutdown-timeout", "60", *FAST)
    try:
        wait_until_registered(nb.store, [srv])
        job = nb.enqueue(jobfuncs.hold, str(out), str(release), 1)
        wait_for(lambda: lines(out), timeout=30)
        srv.signal(signal.SIGINT)
        wait_for(lambda: "draining" in srv.log(), timeout=10)
        srv.signal(signal.SIGINT)
        assert srv.wait(10) == 130
        assert job.state is JobState.ENQUEUED
        assert "server stopped while the job was running" in job.history()[-1].reason
        assert nb.store.list_servers() == []
    finally:
        release.touch()
        srv.stop()
