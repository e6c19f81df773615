"""Continuations of several jobs (`after`, fan-in), on real SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.errors import InvalidJobError, JobNotFoundError
from nbjobs.storage.base import JobFilter

RUNS: Counter[str] = Counter()
_lock = threading.Lock()


def square(x: int) -> int:
    return x * x


def boom(x: int) -> None:
    raise ValueError(f"bad {x}")


def record(tag: str, *more: object) -> str:
    with _lock:
        RUNS[tag] += 1
    return " ".join([tag, *map(str, more)])


def test_runs_once_all_parents_succeeded_and_not_before(engine: nbjobs.Engine) -> None:
    parents = [engine.enqueue(square, i) for i in range(1, 4)]
    child = engine.after(parents, record, "all-three")
    assert child.state is JobState.AWAITING
    assert [p.id for p in child.parents()] == [p.id for p in parents]
    assert child.history()[0].reason == f"continuation of jobs {', '.join(str(p.id) for p in parents)}"
    engine.start_server(workers=3)
    assert child.result(timeout=20) == "all-three"
    last_parent_end = max(p.record().finished_at for p in parents)  # type: ignore[type-var]
    assert child.record().started_at >= last_parent_end  # type: ignore[operator]
    assert child.history()[1].reason == f"parents {', '.join(str(p.id) for p in parents)} finished"
    # each parent lists it among its continuations (the dashboard's detail page)
    for parent in parents:
        assert [r["id"] for r in engine.store.query(JobFilter(parent_id=parent.id))] == [child.id]


def test_a_failed_parent_deletes_the_continuation_at_once(engine: nbjobs.Engine) -> None:
    ok = engine.enqueue(square, 2)
    bad = engine.options(retries=0).enqueue(boom, 1)
    child = engine.after([ok, bad], record, "never")
    after_child = child.then(record, "never either")  # a continuation of the continuation
    engine.start_server(workers=2)
    assert child.wait(timeout=20) is JobState.DELETED
    assert child.history()[-1].reason == f"parent {bad.id} failed; continuation not run"
    assert after_child.wait(timeout=20) is JobState.DELETED  # the deletion goes down the chain
    assert ok.wait(timeout=20) is JobState.SUCCEEDED  # the other parent still ran
    assert child.record().started_at is None and after_child.record().started_at is None


def test_continue_on_finished_runs_after_all_parents_ended_in_any_way(engine: nbjobs.Engine) -> None:
    bad = engine.options(retries=0).enqueue(boom, 1)
    ok = engine.enqueue(square, 3)
    child = engine.after([bad, ok], record, "cleanup", continue_on="finished")
    engine.start_server(workers=2)
    assert child.result(timeout=20) == "cleanup"
    assert bad.state is JobState.FAILED


def test_a_failure_handler_runs_only_when_a_parent_failed(engine: nbjobs.Engine) -> None:
    bad = engine.options(retries=1, retry_base=0.01).enqueue(boom, 1)
    oks = [engine.enqueue(square, i) for i in range(2)]
    alert = bad.then(record, "alert", bad.id, continue_on="failed")  # Celery's link_error
    spared = oks[0].then(record, "spared", continue_on="failed")
    sweep_alert = engine.after([bad, *oks], record, "sweep alert", continue_on="failed")
    sweep_spared = engine.after(oks, record, "sweep spared", continue_on="failed")
    assert {j.state for j in (alert, spared, sweep_alert, sweep_spared)} == {JobState.AWAITING}
    engine.start_server(workers=2)
    assert alert.result(timeout=20) == f"alert {bad.id}"  # after the last retry, not the first failure
    assert bad.state is JobState.FAILED and bad.record().attempts == 2
    assert sweep_alert.result(timeout=20) == "sweep alert"
    assert spared.wait(timeout=20) is JobState.DELETED
    assert spared.history()[-1].reason == f"parent {oks[0].id} succeeded; continuation not run"
    assert sweep_spared.wait(timeout=20) is JobState.DELETED
    assert sweep_spared.history()[-1].reason.startswith(
        f"parents {oks[0].id}, {oks[1].id} ended and none failed")
    # a parent already ended decides at once
    assert bad.then(record, "late", continue_on="failed").result(timeout=20) == "late"
    assert oks[1].then(record, "never", continue_on="failed").state is JobState.DELETED
    assert RUNS["spared"] == RUNS["sweep spared"] == RUNS["never"] == 0


def test_parents_already_finished_decide_at_once(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=2)
    done = [engine.enqueue(square, i) for i in range(3)]
    for job in done:
        job.wait(timeout=20)
    assert engine.after(done, record, "late").result(timeout=20) == "late"
    failed = engine.options(retries=0).enqueue(boom, 2)
    failed.wait(timeout=20)
    assert engine.after([*done, failed], record, "never").state is JobState.DELETED


def test_a_continuation_of_continuations_of_several_jobs(engine: nbjobs.Engine) -> None:
    a, b, c = (engine.enqueue(square, i) for i in (2, 3, 4))
    left = engine.after([a, b], record, "left")
    right = engine.after([b, c], record, "right")
    top = engine.after([left, right], record, "top")
    engine.start_server(workers=3)
    assert top.result(timeout=20) == "top"
    assert left.state is right.state is JobState.SUCCEEDED


def test_parents_finishing_together_release_the_continuation_exactly_once(
    engine: nbjobs.Engine, db_url: str
) -> None:
    # Two servers finish parents in overlapping transactions; whichever commits last must see the
    # other's finish (PostgreSQL: the continuation's row lock orders them), and only one releases it.
    other = nbjobs.connect(db_url, secret="test-secret")
    try:
        engine.start_server(workers=3)
        other.start_server(workers=3)
        takers: Counter[str | None] = Counter()
        for round_ in range(8):
            # Held until the continuation exists: on a fast server all 30 parents could otherwise end
            # before `after` reads them, and the continuation would be born Enqueued (seen once in CI).
            engine.pause_queue("default")
            parents = [engine.enqueue(square, i) for i in range(30)]
            tag = f"round-{round_}-{engine.store.dialect_name}"
            child = engine.after(parents, record, tag)
            engine.resume_queue("default")
            assert child.result(timeout=30) == tag
            assert RUNS[tag] == 1
            assert [h.state for h in child.history()] == [
                JobState.AWAITING, JobState.ENQUEUED, JobState.PROCESSING, JobState.SUCCEEDED]
            takers.update(next(h.server_id for h in p.history() if h.state is JobState.PROCESSING)
                          for p in parents)
        assert len(engine.jobs(state="succeeded")) == 8 * 31
    finally:
        other.close()
    assert len(takers) == 2  # both servers finished parents: their transactions did overlap


def test_bad_parents_are_refused_and_nothing_is_stored(engine: nbjobs.Engine) -> None:
    job = engine.enqueue(square, 1)
    with pytest.raises(InvalidJobError, match="list of jobs"):
        engine.after(job, record, "x")  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="at least one parent"):
        engine.after([], record, "x")
    with pytest.raises(InvalidJobError, match="continue_on must be one of"):
        engine.after([job, job.id + 1], record, "x", continue_on="sometimes")
    with pytest.raises(JobNotFoundError, match=f"parent job {job.id + 7} does not exist"):
        engine.after([job, job.id + 7], record, "x")
    with pytest.raises(InvalidJobError, match="a job id is a whole number"):
        engine.after([job, "abc"], record, "x")
    assert len(engine.jobs()) == 1
    # one distinct parent is a plain continuation of it
    single = engine.after([job, job.id], record, "single")
    assert single.record().parent_id == job.id and single.parents() == [job]


def total(*values: int) -> int:
    return sum(values)


def test_a_fan_in_over_thousands_of_jobs_runs_once_and_past_the_limit_is_refused(
        engine: nbjobs.Engine) -> None:
    """A sweep of a few thousand runs gathered by one job (the limit was 1,000)."""
    runs = engine.enqueue_many(square, list(range(2_500)))
    tag = f"sweep-{engine.url}"
    best = engine.after(runs, record, tag)
    summed = engine.enqueue(total, *runs[:1_500])  # Jobs as arguments: their results, in order
    with pytest.raises(InvalidJobError, match="a job can wait for at most 10,000 jobs, got 10,001"):
        engine.after([*runs, *range(runs[-1].id + 1, runs[-1].id + 7_502)], record, "x")
    engine.start_server(workers=4)
    assert best.result(timeout=120) == tag and RUNS[tag] == 1
    assert summed.result(timeout=60) == sum(x * x for x in range(1_500))


def test_parents_from_another_database_are_refused(engine: nbjobs.Engine, tmp_path: Path) -> None:
    other = nbjobs.connect(f"sqlite:///{tmp_path / 'other.db'}", secret="test-secret")
    try:
        foreign = other.enqueue(square, 2)
        local = engine.enqueue(square, 3)  # the same id, perhaps: it must not be taken for the other
        with pytest.raises(InvalidJobError, match="belongs to another database"):
            engine.after([local, foreign], record, "x")
        with pytest.raises(InvalidJobError, match="belongs to another database"):
            engine.client.then(foreign, record, "x")
    finally:
        other.close()
    assert len(engine.jobs()) == 1
