from datetime import UTC, datetime, timedelta

import pytest

from nbjobs.model import JobOptions
from nbjobs.retry import backoff_delay, decide

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_backoff_doubles_without_jitter_and_is_capped() -> None:
    delays = [backoff_delay(n, base=2, cap=60, jitter=0) for n in range(1, 8)]
    assert delays == [2, 4, 8, 16, 32, 60, 60]


def test_jitter_stays_within_its_band() -> None:
    low = backoff_delay(3, base=2, jitter=0.25, rand=lambda: 0.0)
    high = backoff_delay(3, base=2, jitter=0.25, rand=lambda: 1.0)
    assert (low, high) == (6.0, 10.0)
    assert backoff_delay(3, base=2, jitter=0.25, rand=lambda: 0.5) == 8.0


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert backoff_delay(10_000, base=2, cap=3600, jitter=0) == 3600


def test_attempt_is_one_based() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0)


def test_decide_retries_until_attempts_run_out() -> None:
    opts = JobOptions(retries=2, retry_base=1)
    first = decide(attempts=1, options=opts, exc_type=ValueError, now=NOW, rand=lambda: 0.5)
    assert first.retry and first.run_at == NOW + timedelta(seconds=1)
    second = decide(attempts=2, options=opts, exc_type=ValueError, now=NOW, rand=lambda: 0.5)
    assert second.retry and second.run_at == NOW + timedelta(seconds=2)
    third = decide(attempts=3, options=opts, exc_type=ValueError, now=NOW)
    assert not third.retry and "no retries left" in third.reason


def test_retry_on_and_no_retry_on_match_base_classes() -> None:
    only_io = JobOptions(retries=3, retry_on=("OSError",))
    assert decide(attempts=1, options=only_io, exc_type=ConnectionError, now=NOW).retry
    assert not decide(attempts=1, options=only_io, exc_type=ValueError, now=NOW).retry
    never_key = JobOptions(retries=3, no_retry_on=("LookupError",))
    assert not decide(attempts=1, options=never_key, exc_type=KeyError, now=NOW).retry
    assert decide(attempts=1, options=never_key, exc_type=RuntimeError, now=NOW).retry


def test_zero_retries_fails_at_once() -> None:
    assert not decide(attempts=1, options=JobOptions(retries=0), exc_type=ValueError, now=NOW).retry


def test_a_retry_the_job_asks_for_takes_its_delay_and_ignores_the_filters() -> None:
    opts = JobOptions(retries=2, retry_base=2, no_retry_on=("Retry",), retry_on=("OSError",))
    first = decide(attempts=1, options=opts, exc_type=None, now=NOW, asked_delay=30.0)
    assert first.retry and first.run_at == NOW + timedelta(seconds=30)
    assert first.reason == "retry 1 of 2 in 30.0s, as the job asked"
    assert decide(attempts=2, options=opts, exc_type=None, now=NOW, asked_delay=0.0).run_at == NOW
    spent = decide(attempts=3, options=opts, exc_type=None, now=NOW, asked_delay=30.0)
    assert not spent.retry and spent.reason == "asked to be retried, but no retries left after 3 attempt(s)"


def test_retry_refuses_a_delay_it_cannot_wait() -> None:
    from nbjobs import Retry
    from nbjobs.errors import InvalidJobError

    assert Retry(after=timedelta(minutes=1)).after == 60.0
    assert str(Retry(5)) == "the job asked to be retried in 5s" and str(Retry(1, "HTTP 429")) == "HTTP 429"
    for bad in (-1, float("nan"), float("inf"), 1e300, "30", True):  # 1e300: past the calendar
        with pytest.raises(InvalidJobError, match=r"Retry\(after=…\) takes a number of seconds"):
            Retry(after=bad)  # type: ignore[arg-type]
