"""`job.run_here()`: a stored job's function run again in the caller's thread with its arguments, its
exception raised there (for `%debug`), nothing recorded; on real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.errors import PayloadError, ResultUnavailableError


def divide(a: float, b: float) -> float:
    return a / b


def add(a: int, b: int) -> int:
    return a + b


def who_am_i() -> tuple[int, str]:
    return nbjobs.current_job().id, threading.current_thread().name


async def later(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


def test_a_failed_job_fails_again_here_with_its_own_frames(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    job = engine.options(retries=0).enqueue(divide, 1, 0)
    assert job.wait(timeout=20) is JobState.FAILED
    history = job.history()
    with pytest.raises(ZeroDivisionError) as err:
        job.run_here()
    assert err.traceback[-1].name == "divide"  # %debug opens in the job's function
    assert job.state is JobState.FAILED and job.history() == history  # nothing was recorded


def test_runs_without_a_server_and_leaves_the_job_waiting(engine: nbjobs.Engine) -> None:
    job = engine.enqueue(who_am_i)
    assert job.run_here() == (job.id, threading.current_thread().name)
    assert job.state is JobState.ENQUEUED and len(job.history()) == 1
    assert engine.enqueue(later, 21).run_here() == 42


def test_results_given_as_arguments_are_read_from_storage(engine: nbjobs.Engine) -> None:
    first = engine.enqueue(add, 1, 2)
    second = engine.enqueue(add, first, 10)  # waits for first's result
    with pytest.raises(ResultUnavailableError, match=f"job {first.id}, whose result is an argument"):
        second.run_here()
    engine.start_server(workers=1)
    assert second.result(timeout=20) == 13
    assert second.run_here() == 13


def test_an_async_job_runs_here_where_an_event_loop_already_runs(engine: nbjobs.Engine) -> None:
    job = engine.enqueue(later, 5)

    async def in_a_notebook_cell() -> int:  # a kernel's thread runs its loop, as here
        return job.run_here()  # type: ignore[no-any-return]

    assert asyncio.run(in_a_notebook_cell()) == 10


def test_a_tampered_payload_is_never_run(engine: nbjobs.Engine) -> None:
    from sqlalchemy import update

    from nbjobs.storage.schema import jobs

    job = engine.enqueue(add, 1, 2)
    with engine.store.engine.begin() as conn:  # type: ignore[attr-defined]
        payload = conn.execute(jobs.select().where(jobs.c.id == job.id)).one().payload
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(payload=payload[:-1] + b"x"))
    with pytest.raises(PayloadError):
        job.run_here()
