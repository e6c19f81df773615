"""The process executor: real worker processes (forkserver), by-value notebook functions, hard
timeouts, crashes that fail the attempt, cancellation by termination, output capture."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.errors import JobFailedError
from nbjobs.processes import pid_alive

from ..conftest import wait_for
from . import jobfuncs


def notebook_function() -> object:
    """A function defined 'in a notebook': its module is __main__, so it only exists by value."""
    ns: dict[str, object] = {"__name__": "__main__"}
    exec("import os\ndef cube(x):\n    return (x ** 3, os.getpid())\n", ns)
    return ns["cube"]


def test_runs_in_another_process_and_captures_output(nb: nbjobs.Engine) -> None:
    proc = nb.options(executor="process")
    assert proc.enqueue(jobfuncs.whoami).result(timeout=30) != os.getpid()
    job = proc.enqueue(jobfuncs.shout, "hello")
    assert job.result(timeout=30) == "HELLO"
    logs = nb.store.read_logs(job.id)
    assert [(stream, text) for _, stream, text in logs] == [("stdout", "hello\n"), ("stderr", "to stderr\n")]


def test_a_process_job_output_is_stored_while_it_runs(nb: nbjobs.Engine, tmp_path: Path) -> None:
    release = tmp_path / "release"
    job = nb.options(executor="process").enqueue(jobfuncs.print_then_hold, str(release))

    def printed() -> list[tuple[str, str]]:
        return [(stream, text) for _, stream, text in nb.store.read_logs(job.id)]

    wait_for(lambda: ("stderr", "a warning\n") in printed(), timeout=30)
    assert job.state is JobState.PROCESSING and printed() == [
        ("stdout", "working on it\n"), ("stderr", "a warning\n")]
    release.touch()
    assert job.result(timeout=30) == "held"
    assert "".join(text for _, text in printed()) == "working on it\na warning\ndone\n"  # nothing twice


def test_a_timed_out_process_job_keeps_what_it_printed(nb: nbjobs.Engine, tmp_path: Path) -> None:
    job = nb.options(executor="process", timeout=1, retries=0).enqueue(
        jobfuncs.print_then_hold, str(tmp_path / "never"))
    assert job.wait(timeout=30) is JobState.FAILED
    assert job.record().error_type == "nbjobs.errors.JobTimeoutError"
    assert "working on it\na warning\n" in job.logs()  # what it printed before it was terminated


def test_notebook_function_is_shipped_by_value(nb: nbjobs.Engine) -> None:
    cube = notebook_function()
    job = nb.options(executor="process").enqueue(cube, 3)  # type: ignore[arg-type]
    assert job.record().function == "__main__:cube"
    value, pid = job.result(timeout=30)
    assert value == 27 and pid != os.getpid()


def test_a_worker_process_job_can_ask_to_be_retried(nb: nbjobs.Engine, tmp_path: Path) -> None:
    job = nb.options(executor="process", retries=1).enqueue(jobfuncs.retry_once, str(tmp_path / "marker"))
    assert job.result(timeout=30) != f"ran in {os.getpid()}"
    reasons = [change.reason for change in job.history()]
    assert "retry 1 of 1 in 0.1s, as the job asked (not yet)" in reasons


def test_timeout_terminates_the_process(nb: nbjobs.Engine, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    job = nb.options(executor="process", timeout=0.5, retries=0).enqueue(
        jobfuncs.write_pid_and_sleep, str(pidfile), 60)
    assert job.wait(timeout=30) is JobState.FAILED
    rec = job.record()
    assert rec.error_type == "nbjobs.errors.JobTimeoutError"
    assert not pid_alive(int(pidfile.read_text()))
    # The slot starts a fresh process for the next job.
    next_pid = nb.options(executor="process").enqueue(jobfuncs.whoami).result(timeout=30)
    assert next_pid != int(pidfile.read_text())


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_process_job_may_start_processes_of_its_own(nb: nbjobs.Engine) -> None:
    # Worker processes were daemonic, and a daemonic process may have no children: a job using a
    # multiprocessing Pool or a ProcessPoolExecutor failed ("daemonic processes are not allowed to
    # have children").
    assert nb.options(executor="process").enqueue(jobfuncs.pool_sum, 10).result(timeout=60) == 285


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_timed_out_process_job_takes_the_processes_it_started_with_it(
    nb: nbjobs.Engine, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    job = nb.options(executor="process", timeout=2, retries=0).enqueue(
        jobfuncs.pool_pids_then_sleep, str(pidfile), 60)
    assert job.wait(timeout=30) is JobState.FAILED
    pool_pids = [int(pid) for pid in pidfile.read_text().split()]
    assert len(pool_pids) == 2
    wait_for(lambda: not any(_running(pid) for pid in pool_pids), timeout=10)


def test_crashed_process_fails_the_attempt_and_retries_apply(nb: nbjobs.Engine) -> None:
    job = nb.options(executor="process", retries=1, retry_base=0).enqueue(jobfuncs.kill_self)
    assert job.wait(timeout=30) is JobState.FAILED
    assert job.record().attempts == 2
    assert job.record().error_type == "nbjobs.errors.WorkerCrashedError"
    assert "SIGKILL" in (job.record().error_message or "")
    states = [c.state for c in job.history()]
    assert states.count(JobState.PROCESSING) == 2 and JobState.SCHEDULED in states
    with pytest.raises(JobFailedError, match="WorkerCrashedError"):
        job.result(timeout=1)


def test_job_errors_keep_their_type_for_retry_rules(nb: nbjobs.Engine) -> None:
    job = nb.options(executor="process", retries=3, no_retry_on=["KeyError"]).enqueue(
        jobfuncs.fail_with, "KeyError")
    assert job.wait(timeout=30) is JobState.FAILED
    assert job.record().attempts == 1 and job.record().error_type == "KeyError"


def test_cancel_terminates_a_running_process_job(nb: nbjobs.Engine, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    job = nb.options(executor="process").enqueue(jobfuncs.write_pid_and_sleep, str(pidfile), 60)
    wait_for(lambda: pidfile.exists() and pidfile.read_text(), timeout=30)
    job.cancel()
    assert job.wait(timeout=30) is JobState.DELETED
    wait_for(lambda: not pid_alive(int(pidfile.read_text())), timeout=10)


@pytest.mark.parametrize("executor", ["process", "thread"])
def test_gil_holding_job_leaves_this_process_responsive_only_in_a_process(
    nb: nbjobs.Engine, tmp_path: Path, executor: str
) -> None:
    # A ticker thread stands for the notebook: it wants to run every 10 ms while the job runs.
    ticks: list[float] = [time.perf_counter()]
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.01):
            ticks.append(time.perf_counter())

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        # One C call holds the GIL for about a second: in a thread it freezes every other thread.
        job = nb.options(executor=executor).enqueue(jobfuncs.hog_gil, str(tmp_path / "flag"), 60_000_000)
        assert job.result(timeout=60) > 0
    finally:
        stop.set()
        ticker.join()
    ticks.append(time.perf_counter())
    worst = max(b - a for a, b in itertools.pairwise(ticks))
    if executor == "process":
        assert worst < 0.3, f"the notebook thread stalled {worst * 1000:.0f} ms while a process job ran"
    else:  # the contrast that makes the process executor worth having
        assert worst > 0.3, f"a GIL-holding thread job did not stall other threads ({worst * 1000:.0f} ms)"


def test_idle_worker_killed_from_outside_is_replaced(nb: nbjobs.Engine) -> None:
    proc = nb.options(executor="process")
    first = proc.enqueue(jobfuncs.whoami).result(timeout=30)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not pid_alive(first), timeout=10)
    pids = {proc.enqueue(jobfuncs.whoami).result(timeout=30) for _ in range(3)}
    assert first not in pids and os.getpid() not in pids


def test_an_async_job_runs_in_a_worker_process(nb: nbjobs.Engine) -> None:
    job = nb.options(executor="process").enqueue(jobfuncs.async_whoami, 7)
    value, pid = job.result(timeout=30)
    assert value == 14 and pid != os.getpid()


def test_a_process_job_receives_the_result_of_a_job_given_as_its_argument(nb: nbjobs.Engine) -> None:
    first = nb.enqueue(jobfuncs.async_whoami, 5)
    second = nb.options(executor="process").enqueue(jobfuncs.async_whoami, 1)
    summed = nb.options(executor="process").enqueue(jobfuncs.add_pairs, first, second)
    total, pid = summed.result(timeout=30)
    assert total == 12 and pid != os.getpid()


def test_sys_exit_in_a_process_job_fails_the_job_not_the_worker_process(nb: nbjobs.Engine) -> None:
    proc = nb.options(executor="process", retries=0)
    with pytest.raises(JobFailedError, match="SystemExit: 4"):
        proc.enqueue(jobfuncs.exits, 4).result(timeout=30)
    with pytest.raises(JobFailedError, match="LibraryAbort: abort in a worker process"):
        proc.enqueue(jobfuncs.aborts).result(timeout=30)
    assert proc.enqueue(jobfuncs.async_whoami, 1).result(timeout=30)[0] == 2


@pytest.mark.parametrize("children", ["thread", "process"])
def test_a_process_job_gathers_its_children_on_a_server_with_one_worker(
    tmp_path: Path, children: str
) -> None:
    # The child process tells its worker thread that it waits: the slot is lent (one more worker
    # thread), and a process child run there gets a one-off worker process of its own.
    url = f"sqlite:///{tmp_path / 'one.db'}"
    eng = nbjobs.connect(url, secret="test-secret")
    try:
        eng.start_server(workers=1)
        parent = eng.options(executor="process", retries=0).enqueue(jobfuncs.fan_out, 2, children)
        parent_pid, *kid_pids = parent.result(timeout=60)
        assert parent_pid != os.getpid() and len(kid_pids) == 2
        if children == "thread":
            assert set(kid_pids) == {os.getpid()}
        else:
            assert parent_pid not in kid_pids and os.getpid() not in kid_pids
        pool = eng._process_pool
        assert pool is not None
        wait_for(lambda: not pool._extra)  # the one-off worker processes were stopped
        dispatcher = eng.server.dispatcher  # type: ignore[union-attr]
        wait_for(lambda: dispatcher._lent == 0 and len(dispatcher._workers) == 1)
    finally:
        eng.close()


def test_worker_processes_are_replaced_after_max_jobs_or_above_max_memory(tmp_path: Path) -> None:
    with nbjobs.connect(f"sqlite:///{tmp_path / 'jobs.db'}", secret="test-secret") as nb:
        nb.start_server(workers=1, process_max_jobs=2)
        proc = nb.options(executor="process")
        pids = [proc.enqueue(jobfuncs.whoami).result(timeout=30) for _ in range(5)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
        nb.stop_server()
        nb.start_server(workers=1, process_max_memory_mb=250)  # a child holds ~80 MB
        small = [proc.enqueue(jobfuncs.keep_memory, 10).result(timeout=30) for _ in range(2)]
        assert small[0] == small[1]  # well below: kept
        leaky = proc.enqueue(jobfuncs.keep_memory, 300).result(timeout=30)
        assert leaky == small[0]
        after = proc.enqueue(jobfuncs.whoami).result(timeout=30)
        assert after != leaky and not pid_alive(leaky)  # it held 300 MB more after its job: replaced
    for bad in (0, 1.5, True):
        with nbjobs.connect(f"sqlite:///{tmp_path / 'jobs.db'}") as nb, \
                pytest.raises(nbjobs.ConfigurationError, match="process_max_jobs must be a whole number"):
            nb.start_server(process_max_jobs=bad)
    with nbjobs.connect(f"sqlite:///{tmp_path / 'jobs.db'}") as nb, \
            pytest.raises(nbjobs.ConfigurationError, match="process_max_memory_mb must be a positive number"):
        nb.start_server(process_max_memory_mb=float("nan"))


def test_a_process_job_enqueues_into_its_servers_database_after_the_notebook_changed_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative SQLite URL names this folder's file for good: a worker process reopening the
    database by URL, from the folder the notebook moved to since (`%cd`), used to create another."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    with nbjobs.connect("sqlite:///rel.db", secret="test-secret") as nb:
        assert nb.url == f"sqlite:///{tmp_path / 'rel.db'}"
        nb.start_server(workers=2)
        monkeypatch.chdir(tmp_path / "elsewhere")
        child = nb.options(executor="process").enqueue(jobfuncs.enqueue_echo, 5).result(timeout=30)
        assert nb.job(child).result(timeout=30) == 5
    assert not (tmp_path / "elsewhere" / "rel.db").exists()


@pytest.mark.parametrize("name", ["report?v2.db", "100% done.db", "é #1.db"])
def test_a_bare_path_names_that_very_file_whatever_its_characters(tmp_path: Path, name: str) -> None:
    """`connect("/data/report?v2.db")` opened `/data/report` (the rest read as a URL's query), and
    `%41` in a file name as `A`: a bare path is a path. Worker processes reopen it by the URL."""
    path = tmp_path / name
    with nbjobs.connect(str(path), secret="test-secret") as nb:
        nb.start_server(workers=1)
        assert nb.options(executor="process").enqueue(jobfuncs.enqueue_echo, 3).result(timeout=30)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [name]
    with nbjobs.connect(path, secret="test-secret") as again:  # a pathlib.Path, the same file
        assert len(again.jobs()) == 2
