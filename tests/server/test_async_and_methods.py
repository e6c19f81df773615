"""Jobs from `async def` functions, bound methods, callable objects and partials, on both databases."""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.errors import InvalidJobError, JobFailedError, ResultTimeoutError

from ..conftest import wait_for

STARTED = threading.Event()


async def double_later(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


async def whoami_async() -> tuple[int, bool]:
    job = nbjobs.current_job()
    print("inside", job.id)
    await asyncio.sleep(0)
    return job.id, job.cancelled


async def sleeps_until_cancelled() -> str:
    STARTED.set()
    await asyncio.sleep(60)
    return "not cancelled"


async def cancels_itself() -> None:
    raise asyncio.CancelledError()


def countdown(n: int):  # type: ignore[no-untyped-def]
    yield from range(n, 0, -1)


class Counter:
    def __init__(self, start: int) -> None:
        self.start = start

    def add(self, x: int) -> int:
        return self.start + x

    def __call__(self, x: int) -> int:
        return self.start * x


def test_an_async_job_runs_to_completion_and_returns_its_value(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=2)
    assert engine.enqueue(double_later, 21).result(timeout=10) == 42
    job = engine.enqueue(whoami_async)
    assert job.result(timeout=10) == (job.id, False)
    assert "inside" in wait_for(lambda: job.logs())  # its output is captured like a plain job's


def test_cancelling_a_running_async_job_cancels_its_task(engine: nbjobs.Engine) -> None:
    STARTED.clear()
    engine.start_server(workers=1)
    job = engine.enqueue(sleeps_until_cancelled)
    assert STARTED.wait(10)
    wait_for(lambda: job.state is JobState.PROCESSING)
    cancelled_at = time.monotonic()
    job.cancel()
    # the task stops at its await: no check_cancelled() in the job, no wait for its 60 s sleep
    assert job.wait(timeout=10) is JobState.DELETED
    assert time.monotonic() - cancelled_at < 5
    assert "cancelled while running" in job.history()[-1].reason


def test_an_async_job_past_its_timeout_fails_with_a_timeout_error(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    started = time.monotonic()
    job = engine.options(timeout=0.3, retries=0).enqueue(sleeps_until_cancelled)
    with pytest.raises(JobFailedError, match="JobTimeoutError"):
        job.result(timeout=10)
    assert time.monotonic() - started < 5


def test_a_coroutine_that_cancels_itself_fails_the_job_and_the_worker_goes_on(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    with pytest.raises(JobFailedError, match="cancelled by the job itself"):
        engine.options(retries=0).enqueue(cancels_itself).result(timeout=10)
    assert engine.enqueue(double_later, 1).result(timeout=10) == 2  # the one worker is still alive


def test_bound_methods_callable_objects_and_partials_run_with_their_state(engine: nbjobs.Engine) -> None:
    counter = Counter(10)
    method_job = engine.enqueue(counter.add, 5)
    object_job = engine.enqueue(counter, 3)
    partial_job = engine.enqueue(functools.partial(counter.add, 1))
    async_partial_job = engine.enqueue(functools.partial(double_later, 4))
    # the instance is stored with the job when it is enqueued, like any argument: a later change to
    # it does not reach the stored job
    counter.start = 100
    engine.start_server(workers=2)
    assert method_job.record().function.endswith(":Counter.add")
    assert object_job.record().function.endswith(":Counter.__call__")
    assert method_job.result(timeout=10) == 15
    assert object_job.result(timeout=10) == 30
    assert partial_job.result(timeout=10) == 11
    assert async_partial_job.result(timeout=10) == 8
    with pytest.raises(InvalidJobError, match="cannot be called with these arguments"):
        engine.enqueue(counter.add, 1, 2)  # checked against the method's own parameters


def test_a_generator_function_is_refused_at_enqueue_and_nothing_is_stored(engine: nbjobs.Engine) -> None:
    for call in (lambda: engine.enqueue(countdown, 3), lambda: engine.enqueue_many(countdown, [1, 2]),
                 lambda: engine.recurring("gen", "* * * * *", countdown, 3)):
        with pytest.raises(InvalidJobError, match="generator function"):
            call()
    assert engine.jobs().empty and engine.recurring_jobs().empty


def test_awaiting_a_job_keeps_the_event_loop_running(engine: nbjobs.Engine) -> None:
    STARTED.clear()
    engine.start_server(workers=2)
    slow = engine.enqueue(sleeps_until_cancelled)
    quick = engine.enqueue(double_later, 5)
    failing = engine.options(retries=0).enqueue(cancels_itself)

    async def notebook() -> tuple[int, int, list[int]]:
        ticks = 0

        async def ticker() -> None:  # what a notebook's widgets and other tasks need
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        value = await quick  # `await job` in a notebook cell
        with pytest.raises(ResultTimeoutError, match=r"still processing after 0\.3s"):
            await slow.result_async(timeout=0.3)
        with pytest.raises(JobFailedError, match="cancelled by the job itself"):
            await failing
        both = await asyncio.gather(engine.enqueue(double_later, 1), engine.enqueue(double_later, 2))
        tick_task.cancel()
        return value, ticks, both

    value, ticks, both = asyncio.run(notebook())
    assert value == 10 and both == [2, 4]
    assert ticks >= 10  # the loop ran on while the jobs were awaited
    slow.cancel()
    assert slow.wait(timeout=10) is JobState.DELETED
