"""Waiting for many jobs: `wait`, `as_completed` and `results`, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

import nbjobs
from nbjobs import JobState
from nbjobs.cli import cli
from nbjobs.errors import InvalidJobError, JobFailedError, JobNotFoundError, ResultTimeoutError

#: Gates by tag: a `gated` job returns once its gate is opened by the test.
GATES: dict[str, threading.Event] = {}


@pytest.fixture(autouse=True)
def _open_gates() -> Iterator[None]:
    GATES.clear()
    yield
    for gate in GATES.values():  # never leave a worker blocked behind a failed test
        gate.set()


def gate(tag: str) -> threading.Event:
    return GATES.setdefault(tag, threading.Event())


def gated(tag: str) -> str:
    gate(tag).wait(30)
    return tag


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


def test_results_come_in_the_order_given_whatever_the_order_of_completion(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=3)
    slow, fast = engine.enqueue(gated, "slow"), engine.enqueue(gated, "fast")
    squares = engine.enqueue_many(square, [(i,) for i in range(20)])
    gate("fast").set()
    threading.Timer(0.05, gate("slow").set).start()  # opens while `results` waits
    assert engine.results([slow, fast, *squares], timeout=20) == ["slow", "fast", *[i * i for i in range(20)]]
    # Ids and a jobs() frame are taken as well; a job given twice is there twice.
    assert engine.results([fast.id, str(fast.id), slow], timeout=5) == ["fast", "fast", "slow"]
    frame = engine.jobs(function=f"{__name__}:square")
    assert sorted(engine.results(frame, timeout=5)) == sorted(i * i for i in range(20))


def test_as_completed_order_follows_completions(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=3)
    jobs = {tag: engine.enqueue(gated, tag) for tag in ("a", "b", "c")}
    order = ["b", "c", "a"]
    gate(order[0]).set()
    seen: list[str] = []
    given = [*jobs.values(), jobs["b"]]  # a job given twice is yielded once
    for job in engine.as_completed(given, timeout=20):
        seen.append(job.result(timeout=0))
        if len(seen) < len(order):
            gate(order[len(seen)]).set()  # the next one can end only after this one was seen
    assert seen == order


def test_already_finished_jobs_come_first_in_the_order_given(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=2)
    done = [engine.enqueue(square, i) for i in (3, 1, 2)]
    for job in done:
        job.wait(timeout=10)
    waiting = engine.enqueue(gated, "later")
    threading.Timer(0.05, gate("later").set).start()
    assert [j.id for j in engine.as_completed([waiting, *done], timeout=20)] == [
        done[0].id, done[1].id, done[2].id, waiting.id]


def test_wait_first_completed_first_exception_and_all(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=3)
    blocked, quick = engine.enqueue(gated, "blocked"), engine.enqueue(square, 4)
    done, pending = engine.wait([blocked, quick], return_when=nbjobs.FIRST_COMPLETED, timeout=20)
    assert (done, pending) == ([quick], [blocked])

    failing = engine.options(retries=0).enqueue(fail, "bad input")
    done, pending = engine.wait([blocked, quick, failing], return_when="FIRST_EXCEPTION", timeout=20)
    assert done == [quick, failing] and pending == [blocked]
    assert failing.state is JobState.FAILED

    # ALL_COMPLETED with a timeout: not an error; what is unfinished comes back as pending.
    done, pending = engine.wait([blocked, quick], timeout=0.05)
    assert (done, pending) == ([quick], [blocked])
    gate("blocked").set()
    result = engine.wait([blocked, quick, failing], timeout=20)
    assert result.done == [blocked, quick, failing] and result.pending == []


def test_results_raise_the_first_failure_at_once_or_keep_it_in_place(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=3)
    blocked = engine.enqueue(gated, "blocked")
    failing = engine.options(retries=0).enqueue(fail, "no such column")
    # The failure is raised while `blocked` still runs: no waiting for the rest.
    with pytest.raises(JobFailedError, match="no such column") as info:
        engine.results([blocked, failing], timeout=20)
    assert info.value.job_id == failing.id
    assert blocked.state is JobState.PROCESSING
    gate("blocked").set()
    values = engine.results([blocked, failing, engine.enqueue(square, 5)], timeout=20, return_exceptions=True)
    assert values[0] == "blocked" and values[2] == 25
    assert isinstance(values[1], JobFailedError) and values[1].exc_type == "ValueError"


def test_deleted_jobs_count_as_final_and_not_succeeded(engine: nbjobs.Engine) -> None:
    # No server: nothing runs, so the deleted job is the only one final.
    kept, dropped = engine.enqueue(square, 1), engine.enqueue(square, 2)
    dropped.delete()
    done, pending = engine.wait([kept, dropped], return_when=nbjobs.FIRST_EXCEPTION, timeout=5)
    assert (done, pending) == ([dropped], [kept])
    with pytest.raises(JobFailedError, match="deleted"):
        engine.results([dropped], timeout=5)


def test_timeouts_name_what_is_unfinished(engine: nbjobs.Engine) -> None:
    jobs = engine.enqueue_many(square, [(i,) for i in range(12)])  # no server: they stay enqueued
    with pytest.raises(ResultTimeoutError, match=r"12 of 12 jobs are unfinished after 0\.05s \(ids 1, 2,"):
        list(engine.as_completed(jobs, timeout=0.05))
    with pytest.raises(ResultTimeoutError, match="12 of 12 jobs are unfinished after 0s"):
        engine.results(jobs, timeout=0)
    assert engine.wait(jobs, timeout=0).pending == jobs


def test_jobs_finished_by_another_process_engine_are_seen(db_url: str, tmp_path: Path) -> None:
    """The waiting engine has no server: completions reach it only through the database."""
    with nbjobs.connect(db_url, secret="s") as worker, nbjobs.connect(db_url, secret="s") as waiter:
        jobs = waiter.enqueue_many(square, [(i,) for i in range(50)])
        worker.start_server(workers=2)
        assert waiter.results(jobs, timeout=30) == [i * i for i in range(50)]
        assert len(list(waiter.as_completed(jobs, timeout=5))) == 50


def test_a_sweep_is_gathered_again_by_name_after_a_restart(db_url: str) -> None:
    """The Job handles die with the kernel; the jobs and their name stay in the database."""
    with nbjobs.connect(db_url, secret="s") as before:
        before.options(name="sweep-3").enqueue_many(square, [(i,) for i in range(8)])
        before.options(name="sweep-30").enqueue(square, 100)  # a name that merely starts the same
        before.enqueue(square, 99)
    with nbjobs.connect(db_url, secret="s") as after:
        after.start_server(workers=2)
        sweep = after.jobs(name="sweep-3").sort_values("id")
        assert len(sweep) == 8
        assert after.results(sweep, timeout=30) == [i * i for i in range(8)]
        result = CliRunner().invoke(cli, ["jobs", "--url", db_url, "--name", "sweep-30"])
        assert result.exit_code == 0 and result.output.count("sweep-30") == 1


def test_bad_input_is_refused_at_the_call(engine: nbjobs.Engine, tmp_path: Path) -> None:
    job = engine.enqueue(square, 2)
    # A NaN timeout waited forever, a string failed mid-wait, a negative one timed out at once.
    waits = (job.result, job.wait, lambda timeout: engine.results([job], timeout=timeout),
             lambda timeout: engine.wait([job], timeout=timeout),
             lambda timeout: engine.as_completed([job], timeout=timeout))
    for bad in (float("nan"), -1, "soon", "-5s", True):
        for wait in waits:
            with pytest.raises(InvalidJobError, match=r"timeout must be a number of seconds ≥ 0 \(or a "
                                                      r"duration such as '10m'\), or None"):
                wait(timeout=bad)
    for not_an_id in (4.2, True, [1]):
        with pytest.raises(InvalidJobError, match="a job id is a whole number such as 42"):
            engine.job(not_an_id)  # it said "is not callable", as if a decorator
    with pytest.raises(InvalidJobError, match=r"expected several jobs .* for one job use job\.wait\(\)"):
        engine.wait(job)  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="return_when must be one of ALL_COMPLETED, FIRST_COMPLETED"):
        engine.wait([job], return_when="ANY")
    with pytest.raises(InvalidJobError, match="a job id is a whole number"):
        engine.results([job, 2.5])
    with pytest.raises(InvalidJobError, match="needs an `id` column"):
        engine.results(engine.jobs()[["state"]])
    with pytest.raises(JobNotFoundError, match=r"1 of the jobs waited for do not exist \(ids 999\)"):
        engine.results([job, 999], timeout=1)
    with nbjobs.connect(f"sqlite:///{tmp_path / 'other.db'}", secret="s") as other, \
            pytest.raises(InvalidJobError, match="belongs to another database"):
        engine.results([other.enqueue(square, 3)])
    assert engine.wait([], timeout=0) == ([], []) and engine.results([]) == []
    engine.start_server(workers=1)  # a duration as text or a timedelta, as everywhere
    assert job.result(timeout="30s") == 4 and engine.results([job], timeout=timedelta(seconds=30)) == [4]


def test_progress_shows_a_bar_of_the_jobs_that_ended(
    engine: nbjobs.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    engine.start_server(workers=2)
    jobs = engine.enqueue_many(square, [(i,) for i in range(6)])
    assert engine.results(jobs, timeout=20, progress=True) == [i * i for i in range(6)]
    err = capsys.readouterr().err
    assert "jobs ended: 100%" in err and "6/6" in err
    blocked = engine.enqueue(gated, "blocked")
    done, pending = engine.wait([*jobs, blocked], timeout=0.05, progress=True)
    assert (len(done), pending) == (6, [blocked])
    err = capsys.readouterr().err
    assert "6/7" in err  # the bar stopped where the wait did
    gate("blocked").set()


def test_module_functions_use_the_default_engine(engine: nbjobs.Engine) -> None:
    nbjobs.set_default_engine(engine)
    try:
        engine.start_server(workers=2)
        jobs = [nbjobs.enqueue(square, i) for i in range(5)]
        assert nbjobs.results(jobs, timeout=20) == [0, 1, 4, 9, 16]
        assert {j.id for j in nbjobs.as_completed(jobs, timeout=5)} == {j.id for j in jobs}
        assert nbjobs.wait(jobs, timeout=5).pending == []
    finally:
        nbjobs.set_default_engine(None)
