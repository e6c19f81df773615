"""Jobs that wait for other jobs lend their worker slot meanwhile (fan out and gather inside a job),
on real SQLite and PostgreSQL with real worker threads. The jobs use the module functions
(`nbjobs.enqueue`, `nbjobs.results`), which inside a job act on the job's own database."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

import nbjobs
from nbjobs import JobState, default

from ..conftest import wait_for

_lock = threading.Lock()
_running = {"now": 0, "most": 0}
_release = threading.Event()


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    _running.update(now=0, most=0)
    _release.clear()
    yield
    _release.set()
    assert default.current_default() is None  # the jobs' nbjobs.enqueue opened no default engine


def square(x: int) -> int:
    return x * x


def counted(x: int) -> int:
    """A child that records how many children run at once."""
    with _lock:
        _running["now"] += 1
        _running["most"] = max(_running["most"], _running["now"])
    try:
        _release.wait(0.05)  # stands for work, long enough for siblings to overlap
        return x
    finally:
        with _lock:
            _running["now"] -= 1


def gather_squares(n: int) -> int:
    kids = [nbjobs.enqueue(square, i) for i in range(n)]
    return sum(nbjobs.results(kids, timeout=15))


def one_by_one(n: int) -> list[int]:
    kids = nbjobs.enqueue_many(square, [(i,) for i in range(n)])
    return [kid.result(timeout=15) for kid in kids]


def first_come(n: int) -> list[int]:
    kids = [nbjobs.enqueue(square, i) for i in range(n)]
    return sorted(kid.result() for kid in nbjobs.as_completed(kids, timeout=15))


def two_levels(n: int) -> int:
    return sum(nbjobs.results([nbjobs.enqueue(gather_squares, n) for _ in range(2)], timeout=15))


async def awaits_children(n: int) -> int:
    nb = nbjobs.current_job().engine
    kids = [nb.enqueue(square, i) for i in range(n)]
    return sum([await kid for kid in kids])


def gather_counted(n: int) -> int:
    return sum(nbjobs.results([nbjobs.enqueue(counted, i) for i in range(n)], timeout=15))


def waits_for_nobody() -> None:
    nbjobs.schedule(3600, square, 1).result()  # due in an hour


@pytest.mark.parametrize(("parent", "expected"), [
    (gather_squares, 0 + 1 + 4 + 9),
    (one_by_one, [0, 1, 4, 9]),
    (first_come, [0, 1, 4, 9]),
    (awaits_children, 0 + 1 + 4 + 9),
    (two_levels, 2 * (0 + 1 + 4 + 9)),
])
def test_a_job_gathers_its_children_on_a_server_with_one_worker(
    engine: nbjobs.Engine, parent: object, expected: object
) -> None:
    # Without the loan the only worker waits for children that need it: the parent would time out.
    engine.start_server(workers=1)
    job = engine.options(retries=0).enqueue(parent, 4)  # type: ignore[arg-type]
    assert job.result(timeout=30) == expected
    assert job.record().attempts == 1
    dispatcher = engine.server.dispatcher  # type: ignore[union-attr]
    # every loan was paid back: one worker thread again, nothing lent
    wait_for(lambda: len(dispatcher._workers) == 1 and dispatcher._lent == 0 and not dispatcher._retiring)


def test_parents_filling_every_worker_all_finish(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=2)
    parents = [engine.options(retries=0).enqueue(gather_squares, 3) for _ in range(5)]
    assert engine.results(parents, timeout=30) == [5] * 5
    dispatcher = engine.server.dispatcher  # type: ignore[union-attr]
    wait_for(lambda: len(dispatcher._workers) == 2 and dispatcher._lent == 0)


def test_a_waiting_job_lends_its_slot_and_no_more(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=2)
    parent = engine.options(retries=0).enqueue(gather_counted, 8)
    assert parent.result(timeout=30) == sum(range(8))
    # the parent waited in one worker: its slot and the other worker ran the children, never more
    assert _running["most"] == 2


def test_a_waiting_job_sees_its_cancellation_and_gives_its_slot_back(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    dispatcher = engine.server.dispatcher  # type: ignore[union-attr]
    parent = engine.options(retries=0).enqueue(waits_for_nobody)
    wait_for(lambda: dispatcher._lent == 1)  # waiting for a child due in an hour
    job = engine.enqueue(square, 7)
    assert job.result(timeout=20) == 49  # the lent slot runs other work meanwhile
    parent.cancel()
    assert parent.wait(timeout=20) is JobState.DELETED
    wait_for(lambda: dispatcher._lent == 0 and len(dispatcher._workers) == 1)


def test_a_waiting_job_that_overruns_its_timeout_fails_with_it(db_url: str) -> None:
    clock = nbjobs.ManualClock()
    with nbjobs.connect(db_url, clock=clock, secret="s") as engine:
        engine.start_server(workers=1)
        dispatcher = engine.server.dispatcher  # type: ignore[union-attr]
        parent = engine.options(retries=0, timeout=10).enqueue(waits_for_nobody)
        wait_for(lambda: dispatcher._lent == 1)
        clock.advance(11)
        assert parent.wait(timeout=20) is JobState.FAILED
        assert parent.record().error_type.endswith("JobTimeoutError")  # type: ignore[union-attr]
        wait_for(lambda: dispatcher._lent == 0)


def test_parents_and_children_spread_over_two_servers_all_finish(db_url: str) -> None:
    engines = [nbjobs.connect(db_url, secret="s") for _ in range(2)]
    try:
        for eng in engines:
            eng.start_server(workers=1, poll_interval=0.02)
        parents = [engines[0].options(retries=0).enqueue(gather_squares, 4) for _ in range(6)]
        assert engines[1].results(parents, timeout=60) == [14] * 6
        assert len(engines[0].jobs(limit=None)) == 6 * 5
        for eng in engines:  # every loan paid back, no turn failed
            dispatcher = eng.server.dispatcher  # type: ignore[union-attr]
            wait_for(lambda d=dispatcher: d._lent == 0 and len(d._workers) == 1)  # type: ignore[misc]
            assert dispatcher.errors == 0
    finally:
        for eng in engines:
            eng.close()


def waits_for_itself(how: str) -> None:
    me = nbjobs.job(nbjobs.current_job().id)
    if how == "result":
        me.result(timeout=10)
    elif how == "results":
        nbjobs.results([nbjobs.enqueue(square, 2), me], timeout=10)
    elif how == "as_completed":
        list(nbjobs.as_completed([me], timeout=10))
    else:
        nbjobs.wait([me], timeout=10)


@pytest.mark.parametrize("how", ["result", "results", "as_completed", "wait"])
def test_a_job_waiting_for_itself_is_refused_at_once(engine: nbjobs.Engine, how: str) -> None:
    job = _refused_at_once(engine, waits_for_itself, how)
    assert f"job {job.id} waits for itself, which never ends" in (job.record().error_message or "")


def _refused_at_once(engine: nbjobs.Engine, fn: Callable[[str], None], how: str) -> nbjobs.Job:
    """Run `fn(how)` as a job on one worker: it fails with InvalidJobError before its own 10 s wait."""
    engine.start_server(workers=1)
    job = engine.options(retries=0).enqueue(fn, how)
    assert job.wait(timeout=8) is JobState.FAILED  # not after its own 10 s timeout
    error_type = job.record().error_type
    assert error_type is not None and error_type.endswith("InvalidJobError")
    return job


def waits_for_what_runs_after_it(how: str) -> None:
    me = nbjobs.job(nbjobs.current_job().id)
    if how == "then":
        waited = me.then(square, 3)
    elif how == "grandchild":
        waited = me.then(square, 3).then(square, 4)
    elif how == "after":
        waited = nbjobs.after([nbjobs.enqueue(square, 2), me], square, 5)
    else:  # this job given as an argument: the new job waits for its result
        waited = nbjobs.enqueue(square, me)
    nbjobs.results([nbjobs.enqueue(square, 1), waited], timeout=10)


@pytest.mark.parametrize("how", ["then", "grandchild", "after", "argument"])
def test_a_job_waiting_for_a_job_that_starts_after_it_is_refused_at_once(
    engine: nbjobs.Engine, how: str
) -> None:
    job = _refused_at_once(engine, waits_for_what_runs_after_it, how)
    assert f"which starts only after job {job.id} ends" in (job.record().error_message or "")
    # the continuation then goes as continuations of a failed job do
    assert engine.jobs(state="awaiting").empty


def gathers_its_earlier_continuation_parent(n: int) -> int:
    # Waiting for jobs that are continuations of *other* jobs is fine, even while Awaiting.
    first = nbjobs.enqueue(square, n)
    return int(nbjobs.results([first.then(square, n + 1)], timeout=20)[0])


def test_a_job_may_wait_for_continuations_of_other_jobs(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    job = engine.options(retries=0).enqueue(gathers_its_earlier_continuation_parent, 3)
    assert job.result(timeout=20) == 16


def gather_with_a_bar(n: int) -> int:
    return sum(nbjobs.results(nbjobs.enqueue_many(square, [(i,) for i in range(n)]), progress=True))


def test_a_job_gathering_with_a_bar_reports_it_as_its_progress(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    parent = engine.enqueue(gather_with_a_bar, 4)
    assert parent.result(timeout=30) == 14
    record = parent.record()
    assert (record.progress, record.progress_message) == (1.0, "jobs ended: 4/4")
    assert "jobs ended: 100%" in parent.logs()  # the bar itself went to the job's output


def test_stopping_a_server_while_a_job_waits_returns_the_job_and_ends_every_thread(
    engine: nbjobs.Engine,
) -> None:
    server = engine.start_server(workers=1, shutdown_timeout=0.5)
    dispatcher = server.dispatcher
    parent = engine.options(retries=0).enqueue(waits_for_nobody)
    wait_for(lambda: dispatcher._lent == 1)
    threads = list(dispatcher._workers)
    assert len(threads) == 2  # its own and the one its wait lent
    engine.stop_server()
    assert parent.state is JobState.ENQUEUED  # returned to its queue for the next server
    assert not any(t.is_alive() for t in threads)
