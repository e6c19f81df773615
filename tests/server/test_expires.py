"""`expires`: a job not started in time is deleted unrun (both databases, manual clock)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.errors import InvalidJobError, JobFailedError

from ..conftest import wait_for

RAN: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _fresh() -> None:
    RAN.clear()


def notify(tag: str) -> str:
    RAN[tag] += 1
    return tag


def test_a_job_claimed_after_it_expired_is_deleted_unrun(db_url: str) -> None:
    clock = nbjobs.ManualClock()
    with nbjobs.connect(db_url, clock=clock, secret="s") as engine:
        late = engine.options(expires=30).enqueue(notify, "late")
        follow = late.then(notify, "after late")
        in_time = engine.options(expires=timedelta(minutes=1)).enqueue(notify, "in time")
        forever = engine.enqueue(notify, "no expiry")
        clock.advance(45)  # no server meanwhile (a busy queue, a kernel that was down)
        engine.start_server(workers=2)
        assert in_time.result(timeout=10) == "in time" and forever.result(timeout=10) == "no expiry"
        wait_for(lambda: late.state is JobState.DELETED)
        assert late.history()[-1].reason == "expired: not started within 30s of being enqueued"
        with pytest.raises(JobFailedError, match="deleted"):
            late.result(timeout=0)
        assert follow.wait(timeout=0) is JobState.DELETED  # its continuation goes with it
        assert dict(RAN) == {"in time": 1, "no expiry": 1}


def test_the_window_counts_from_when_the_job_is_enqueued_again(db_url: str) -> None:
    """A requeued (or retried) job has its whole window again: `expires` bounds waiting, not age."""
    clock = nbjobs.ManualClock()
    with nbjobs.connect(db_url, clock=clock, secret="s") as engine:
        job = engine.options(expires=30).enqueue(notify, "again")
        clock.advance(31)
        engine.start_server(workers=1)
        wait_for(lambda: job.state is JobState.DELETED)
        clock.advance(3600)
        job.requeue()
        assert job.result(timeout=10) == "again" and RAN["again"] == 1


def test_bad_expiries_are_refused_at_enqueue(engine: nbjobs.Engine) -> None:
    for bad in (0, -5, float("nan"), float("inf"), "a minute", "0s", True):
        with pytest.raises(InvalidJobError, match="expires must be a positive number of seconds"):
            engine.options(expires=bad).enqueue(notify, "x")
    assert engine.jobs().empty
    assert engine.options(expires=timedelta(seconds=90)).enqueue(notify, "x").record().options.expires == 90.0
    assert engine.options(expires="2m").enqueue(notify, "x").record().options.expires == 120.0
