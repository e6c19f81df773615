"""Output capture and progress through a real engine and server (SQLite file and PostgreSQL)."""

from __future__ import annotations

import io
import itertools
import logging
import sys
import threading
import time

import pytest

import nbjobs
from nbjobs import JobState, capture


def chatty(i: int, lines: int) -> int:
    for k in range(lines):
        print(f"job {i} line {k}")
    logging.getLogger("user.chatty").warning("job %d finished printing", i)
    return i


def counted(n: int) -> str:
    total = 0
    for x in nbjobs.progress(range(n), desc="items"):
        total += x
    nbjobs.current_job().set_progress(1.0, "all done")
    return "ok"


def test_concurrent_jobs_capture_their_own_output_while_the_main_thread_prints(
    engine: nbjobs.Engine,
) -> None:
    saved = sys.stdout
    main_out = io.StringIO()
    sys.stdout = main_out
    try:
        engine.start_server(workers=4, poll_interval=0.05)
        jobs = [engine.enqueue(chatty, i, 200) for i in range(4)]
        k = 0
        while not all(j.done for j in jobs):
            print(f"main {k}")
            k += 1
        assert [j.result(timeout=30) for j in jobs] == [0, 1, 2, 3]
    finally:
        sys.stdout = saved
        capture.uninstall()
    assert main_out.getvalue() == "".join(f"main {n}\n" for n in range(k))
    for i, job in enumerate(jobs):
        logs = job.logs()
        printed = "".join(f"job {i} line {n}\n" for n in range(200))
        assert logs.startswith(printed)
        assert f"WARNING user.chatty: job {i} finished printing" in logs
        assert "job " + str((i + 1) % 4) + " line" not in logs


def test_progress_is_stored_with_the_job_and_shown_in_jobs(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1, poll_interval=0.05)
    try:
        job = engine.enqueue(counted, 100_000)
        assert job.result(timeout=30) == "ok"
    finally:
        capture.uninstall()
    record = job.record()
    assert (record.progress, record.progress_message) == (1.0, "all done")
    frame = engine.jobs()
    assert frame.loc[frame["id"] == job.id, "progress"].item() == 1.0


STEPPING = threading.Event()


def endless(step: float) -> None:
    for _ in nbjobs.progress(itertools.count(), desc="forever"):
        STEPPING.set()
        time.sleep(step)  # work that never calls check_cancelled() itself


@pytest.mark.parametrize("stop", ["cancel", "delete", "timeout"])
def test_a_loop_over_progress_stops_when_its_job_is_cancelled_or_times_out(
        engine: nbjobs.Engine, stop: str) -> None:
    engine.start_server(workers=1)
    STEPPING.clear()
    job = engine.options(timeout=0.5 if stop == "timeout" else None, retries=0).enqueue(endless, 0.01)
    assert STEPPING.wait(10)
    if stop == "cancel":
        job.cancel()
    elif stop == "delete":
        job.delete()
    expected = JobState.FAILED if stop == "timeout" else JobState.DELETED
    assert job.wait(timeout=10) is expected
    if stop == "timeout":
        assert job.record().error_type == "nbjobs.errors.JobTimeoutError"


def in_a_process(n: int) -> int:
    import os

    for _ in nbjobs.progress(range(n), desc="steps"):
        pass
    print("hello from pid", os.getpid())
    logging.getLogger("user.proc").warning("careful")
    return os.getpid()


def test_output_and_progress_of_worker_process_jobs_are_stored(engine: nbjobs.Engine) -> None:
    import os

    engine.start_server(workers=1, poll_interval=0.05)
    job = engine.options(executor="process").enqueue(in_a_process, 1000)
    pid = job.result(timeout=60)
    assert pid != os.getpid()
    logs = job.logs()
    assert f"hello from pid {pid}\n" in logs
    assert "careful" in logs
    record = job.record()
    assert (record.progress, record.progress_message) == (1.0, "steps: 1000/1000")
