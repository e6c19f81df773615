"""A Job passed as an argument stands for its result: the new job waits for it (both databases)."""

from __future__ import annotations

from pathlib import Path

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.errors import InvalidJobError, JobFailedError


def load(n: int) -> list[int]:
    return list(range(n))


def total(values: list[int], *, scale: int = 1) -> int:
    return sum(values) * scale


def merge(left: list[int], right: list[int]) -> list[int]:
    return left + right


def boom() -> list[int]:
    raise ValueError("no data")


def test_a_job_argument_is_replaced_by_its_result_when_the_job_runs(engine: nbjobs.Engine) -> None:
    data = engine.enqueue(load, 4)
    summed = engine.enqueue(total, data, scale=10)
    assert summed.state is JobState.AWAITING  # waits for `data`, as a continuation of it
    assert summed.parents() == [data]
    assert summed.history()[0].reason == f"waits for the result of job {data.id}"
    by_keyword = engine.enqueue(total, values=data)
    engine.start_server(workers=2)
    assert summed.result(timeout=20) == 60
    assert by_keyword.result(timeout=20) == 6


def test_several_job_arguments_and_an_explicit_parent_are_all_waited_for(engine: nbjobs.Engine) -> None:
    left, right = engine.enqueue(load, 2), engine.enqueue(load, 3)
    gate = engine.enqueue(load, 0)
    merged = gate.then(merge, left, right)
    assert sorted(p.id for p in merged.parents()) == sorted([gate.id, left.id, right.id])
    chained = engine.enqueue(total, merged)  # a chain: each step gets the previous result
    engine.start_server(workers=2)
    assert merged.result(timeout=20) == [0, 1, 0, 1, 2]
    assert chained.result(timeout=20) == 4


def test_a_failed_job_argument_deletes_the_job_that_needed_its_result(engine: nbjobs.Engine) -> None:
    bad = engine.options(retries=0).enqueue(boom)
    needs = engine.enqueue(total, bad)
    engine.start_server(workers=1)
    assert needs.wait(timeout=20) is JobState.DELETED
    assert needs.history()[-1].reason == f"parent {bad.id} failed; continuation not run"


def test_a_result_gone_before_the_job_runs_fails_it_with_the_reason(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    data = engine.enqueue(load, 3)
    assert data.result(timeout=20) == [0, 1, 2]
    engine.stop_server()
    needs = engine.enqueue(total, data)
    assert needs.state is JobState.ENQUEUED  # the result exists now
    data.delete()  # … and is gone when it runs
    engine.start_server(workers=1)
    with pytest.raises(JobFailedError, match=f"job {data.id}, whose result is an argument of this job, "
                                             "is deleted") as failed:
        needs.result(timeout=20)
    assert failed.value.exc_type == "nbjobs.errors.ResultUnavailableError"
    assert needs.record().attempts == 1  # not retried: no retry brings the result back


def test_job_arguments_that_cannot_work_are_refused_and_nothing_is_stored(
    engine: nbjobs.Engine, tmp_path: Path
) -> None:
    data = engine.enqueue(load, 1)
    with pytest.raises(InvalidJobError, match="scheduled job cannot take another job's result"):
        engine.schedule(60, total, data)
    with pytest.raises(InvalidJobError, match='uses continue_on="succeeded"'):
        engine.client.then(data, total, data, continue_on="finished")
    with pytest.raises(InvalidJobError, match="needs serializer='pickle'"):
        engine.options(serializer="json").enqueue(total, data)
    with pytest.raises(InvalidJobError, match="cannot be stored; a Job given directly as an argument"):
        engine.enqueue(total, [data])  # inside a list: not a result place-holder
    with pytest.raises(InvalidJobError, match="cannot be stored"):
        engine.recurring("every-minute", "* * * * *", total, data)
    other = nbjobs.connect(f"sqlite:///{tmp_path / 'other.db'}", secret="test-secret")
    try:
        with pytest.raises(InvalidJobError, match="belongs to another database"):
            engine.enqueue(total, other.enqueue(load, 1))
    finally:
        other.close()
    assert len(engine.jobs()) == 1 and engine.recurring_jobs().empty


def test_listings_show_a_result_argument_as_the_job_it_comes_from(engine: nbjobs.Engine) -> None:
    data = engine.enqueue(load, 2)
    needs = engine.enqueue(total, data, scale=3)
    frame = engine.jobs(args=True)
    assert frame.set_index("id").loc[needs.id, "args"] == f"values=<result of job {data.id}>, scale=3"


def test_a_job_handle_copies_but_never_pickles(engine: nbjobs.Engine) -> None:
    import copy
    import pickle

    job = engine.enqueue(load, 1)
    assert copy.copy(job) == job and copy.deepcopy({"j": job})["j"] == job
    with pytest.raises(TypeError, match="pass its id"):
        pickle.dumps(job)


def test_a_tampered_payload_with_result_arguments_fails_its_job_and_the_worker_goes_on(
    engine: nbjobs.Engine,
) -> None:
    from sqlalchemy import update

    from nbjobs.storage.schema import jobs

    data = engine.enqueue(load, 2)
    needs = engine.enqueue(total, data)
    payload = needs.record().payload
    with engine.store.engine.begin() as conn:  # a database writer without the key changes the call
        conn.execute(update(jobs).where(jobs.c.id == needs.id).values(payload=payload[:-1] + b"\x00"))
    engine.start_server(workers=1)
    with pytest.raises(JobFailedError, match="does not verify"):
        needs.result(timeout=20)
    assert needs.record().attempts == 1  # not retried
    assert engine.enqueue(total, data).result(timeout=20) == 1  # the one worker is still alive
