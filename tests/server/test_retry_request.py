"""A job asking to be retried later (`raise nbjobs.Retry(after=…)`), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.errors import JobFailedError, ResultTimeoutError

from ..conftest import wait_for

ASKED: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    ASKED.clear()  # each backend's run counts from zero


def polite(tag: str, times: int, after: float) -> int:
    """Asks to be retried `times` times (as an API client told "429, retry in `after` s" would)."""
    ASKED[tag] += 1
    if ASKED[tag] <= times:
        raise nbjobs.Retry(after=after, reason=f"HTTP 429 #{ASKED[tag]}")
    return ASKED[tag]


def test_the_job_is_scheduled_for_the_delay_it_asked_for(db_url: str) -> None:
    clock = nbjobs.ManualClock()
    with nbjobs.connect(db_url, clock=clock, secret="s") as engine:
        engine.start_server(workers=1, scheduler_interval=1.0)
        # no_retry_on does not apply: the job asked for its retry.
        job = engine.options(retries=1, no_retry_on=["Retry"]).enqueue(polite, "later", 1, 90)
        wait_for(lambda: job.state is JobState.SCHEDULED)
        record = job.record()
        assert record.run_at == clock.now() + timedelta(seconds=90)
        assert (record.error_type, record.error_message) == ("nbjobs.errors.Retry", "HTTP 429 #1")
        assert job.history()[-1].reason == "retry 1 of 1 in 90.0s, as the job asked (HTTP 429 #1)"
        clock.advance(timedelta(seconds=89))
        with pytest.raises(ResultTimeoutError):
            job.wait(timeout=0.0)
        clock.advance(timedelta(seconds=2))
        assert job.result(timeout=10) == 2
        assert ASKED["later"] == 2


def test_asking_counts_against_retries_so_it_cannot_loop_forever(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    job = engine.options(retries=2).enqueue(polite, "always", 99, 0)
    assert job.wait(timeout=20) is JobState.FAILED
    assert ASKED["always"] == 3
    with pytest.raises(JobFailedError, match="HTTP 429 #3"):
        job.result()
    assert "asked to be retried, but no retries left after 3 attempt(s)" in job.history()[-1].reason
