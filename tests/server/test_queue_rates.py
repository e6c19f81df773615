"""Per-queue rates on a server (`start_server(rates={"api": "3/m"})`), on both databases, on a
manual clock: the window is seen to hold jobs back, then to let them go as it slides. And the
quotas all servers keep together: shared rates and shared limits, two engines standing for two
machines."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pandas as pd
import pytest

import nbjobs
from nbjobs import JobState

from ..conftest import wait_for


def call_api(n: int) -> int:
    return n


def _succeeded(jobs: Sequence[nbjobs.Job]) -> int:
    return sum(job.state is JobState.SUCCEEDED for job in jobs)


def _turns_pass(engine: nbjobs.Engine, turns: int = 3) -> None:
    """Make the dispatcher look for work a few times (each would claim what its rooms allow)."""
    assert engine.server is not None
    dispatcher = engine.server.dispatcher
    for _ in range(turns):
        seen = dispatcher.turns
        engine.notifier.work.set()
        wait_for(lambda seen=seen: dispatcher.turns > seen)


def test_a_rate_holds_a_queue_to_its_starts_per_period_and_other_queues_run_freely(db_url: str) -> None:
    clock = nbjobs.ManualClock()
    with nbjobs.connect(db_url, clock=clock, secret="s") as engine:
        api = [engine.options(queue="api").enqueue(call_api, i) for i in range(7)]
        others = [engine.enqueue(call_api, 100 + i) for i in range(20)]
        engine.start_server(workers=4, rates={"api": "3/m"})
        wait_for(lambda: _succeeded(others) == 20)  # (a manual clock never ends a result() timeout)
        wait_for(lambda: _succeeded(api) == 3)
        _turns_pass(engine)
        assert _succeeded(api) == 3 and [job.state for job in api[3:]] == [JobState.ENQUEUED] * 4
        assert [job.state for job in api[:3]] == [JobState.SUCCEEDED] * 3  # oldest first

        clock.advance(59)  # still inside the minute of the first three starts
        _turns_pass(engine)
        assert _succeeded(api) == 3
        clock.advance(1.5)  # the window slid past them: three more, no fourth
        wait_for(lambda: _succeeded(api) == 6)
        _turns_pass(engine)
        assert api[6].state is JobState.ENQUEUED
        clock.advance(60)  # the loop waits for exactly this moment: nothing wakes it but the clock
        wait_for(lambda: api[6].state is JobState.SUCCEEDED)


def test_jobs_enqueued_to_an_idle_server_are_held_too(db_url: str) -> None:
    """An idle server lets an enqueue claim for it in the same transaction; not for a rated queue."""
    clock = nbjobs.ManualClock()
    with nbjobs.connect(db_url, clock=clock, secret="s") as engine:
        engine.start_server(workers=4, queues=["api", "default"], limits={"api": 1}, rates={"api": "2/30s"})
        api = []
        for i in range(4):
            api.append(engine.options(queue="api").enqueue(call_api, i))
            _turns_pass(engine, 1)
        wait_for(lambda: _succeeded(api) == 2)
        _turns_pass(engine)
        assert _succeeded(api) == 2
        assert engine.server is not None and engine.server.dispatcher.claimed_by_enqueues == 0
        clock.advance(30)
        wait_for(lambda: _succeeded(api) == 4)


GATE = threading.Event()
STARTED: list[int] = []


def hold(n: int) -> int:
    STARTED.append(n)
    GATE.wait(30)
    return n


def test_the_loop_wakes_when_the_window_slides_though_nothing_else_happens(db_url: str) -> None:
    """Its jobs still running and no poll due for ages: only the window's own deadline wakes it."""
    GATE.clear()
    STARTED.clear()
    clock = nbjobs.ManualClock()
    try:
        with nbjobs.connect(db_url, clock=clock, secret="s") as engine:
            jobs = [engine.options(queue="api").enqueue(hold, i) for i in range(3)]
            engine.start_server(workers=4, rates={"api": "2/m"}, poll_interval=10_000,
                                scheduler_idle_interval=10_000)
            wait_for(lambda: len(STARTED) == 2)
            _turns_pass(engine)
            assert len(STARTED) == 2 and jobs[2].state is JobState.ENQUEUED
            clock.advance(60)
            wait_for(lambda: len(STARTED) == 3)
            GATE.set()
            wait_for(lambda: _succeeded(jobs) == 3)
    finally:
        GATE.set()


def test_a_shared_rate_holds_every_server_together(db_url: str) -> None:
    """`set_queue_rate`: two servers (two engines, as on two machines) start 3 a minute between them,
    where a server's own `rates=` would let each start 3; other queues run freely."""
    clock = nbjobs.ManualClock()
    with nbjobs.connect(db_url, clock=clock, secret="s") as one, \
            nbjobs.connect(db_url, clock=clock, secret="s") as two:
        assert one.set_queue_rate("api", "3/m") is True
        assert two.queue_rates() == {"api": "3/m"}
        api = [one.options(queue="api").enqueue(call_api, i) for i in range(8)]
        others = [two.enqueue(call_api, 100 + i) for i in range(6)]
        one.start_server(workers=4)
        two.start_server(workers=4)
        wait_for(lambda: _succeeded(others) == 6)
        wait_for(lambda: _succeeded(api) == 3)
        _turns_pass(one)
        _turns_pass(two)
        assert _succeeded(api) == 3 and [job.state for job in api[3:]] == [JobState.ENQUEUED] * 5
        frame = one.queues().set_index("queue")
        assert frame.loc["api", "rate"] == "3/m" and frame.loc["api", "enqueued"] == 5
        clock.advance(61)  # the window slid past the first three starts: three more, whichever server
        wait_for(lambda: _succeeded(api) == 6)
        _turns_pass(one)
        _turns_pass(two)
        assert _succeeded(api) == 6
        assert two.set_queue_rate("api", None) is True  # no rate: the rest run at once
        wait_for(lambda: _succeeded(api) == 8)
        with pytest.raises(nbjobs.ConfigurationError, match="is not a rate"):
            one.set_queue_rate("api", "fast")
        with pytest.raises(nbjobs.ConfigurationError, match="private queue"):
            one.set_queue_rate("default@kernel-1", "1/s")


ACTIVE = {"now": 0, "most": 0}
ACTIVE_LOCK = threading.Lock()


def use_gpu(n: int) -> int:
    with ACTIVE_LOCK:
        ACTIVE["now"] += 1
        ACTIVE["most"] = max(ACTIVE["most"], ACTIVE["now"])
    try:
        GATE.wait(30)
    finally:
        with ACTIVE_LOCK:
            ACTIVE["now"] -= 1
    return n


def test_a_shared_limit_holds_every_server_together(db_url: str) -> None:
    """`set_queue_limit`: two servers (two engines, as on two machines) with four workers each run two
    `gpu` jobs at a time between them, where a server's own `limits=` would let each run two; a place
    freed on either is taken by either; other queues run freely."""
    GATE.clear()
    ACTIVE.update(now=0, most=0)
    try:
        with nbjobs.connect(db_url, secret="s") as one, nbjobs.connect(db_url, secret="s") as two:
            assert one.set_queue_limit("gpu", 2) is True
            assert two.queue_limits() == {"gpu": 2} and two.queue_rates() == {}
            gpu = [one.options(queue="gpu").enqueue(use_gpu, i) for i in range(6)]
            others = [two.enqueue(call_api, 100 + i) for i in range(6)]
            one.start_server(workers=4)
            two.start_server(workers=4)
            wait_for(lambda: _succeeded(others) == 6)
            wait_for(lambda: ACTIVE["now"] == 2)
            _turns_pass(one)
            _turns_pass(two)
            assert ACTIVE["now"] == 2
            assert sorted(job.state for job in gpu).count(JobState.ENQUEUED) == 4
            frame = one.queues().set_index("queue")
            assert (frame.loc["gpu", "limit"], frame.loc["gpu", "processing"]) == (2, 2)
            assert pd.isna(frame.loc["gpu", "rate"])
            GATE.set()  # each ends at once now: the next two start, on whichever server looks first
            wait_for(lambda: _succeeded(gpu) == 6)
            assert ACTIVE["most"] == 2
            for bad in (0, -1, True, 2.5, "two"):
                with pytest.raises(nbjobs.ConfigurationError, match="is not a number of jobs; give a whole"):
                    one.set_queue_limit("gpu", bad)  # type: ignore[arg-type]
            with pytest.raises(nbjobs.ConfigurationError, match="private queue"):
                one.set_queue_limit("default@kernel-1", 1)
            assert one.queue_limits() == {"gpu": 2}  # a refusal changes nothing
            assert two.set_queue_limit("gpu", None) is True and one.queue_limits() == {}
    finally:
        GATE.set()
