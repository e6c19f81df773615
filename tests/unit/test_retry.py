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
