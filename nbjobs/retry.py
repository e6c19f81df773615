"""Pure retry policy: given an attempt and its exception, retry when, or give up."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from .model import JobOptions


def backoff_delay(
    attempt: int,
    *,
    base: float = 2.0,
    cap: float = 3600.0,
    jitter: float = 0.25,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` (1-based): base·2^(attempt-1), capped, ±jitter.

    Jitter spreads retries of jobs that failed together (e.g. an outage) so they do not return as a herd.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    raw = min(cap, base * (2.0 ** min(attempt - 1, 62)))
    spread = raw * jitter * (2.0 * rand() - 1.0)
    return max(0.0, min(cap, raw + spread))


def exception_names(exc_type: type[BaseException]) -> set[str]:
    """Every name an exception type answers to: its classes' names and dotted paths along the MRO."""
    names: set[str] = set()
    for klass in exc_type.__mro__:
        names.add(klass.__name__)
        names.add(f"{klass.__module__}.{klass.__qualname__}")
    return names


@dataclass(frozen=True, kw_only=True)
class RetryDecision:
    retry: bool
    run_at: datetime | None = None
    reason: str = ""


def decide(
    *,
    attempts: int,
    options: JobOptions,
    exc_type: type[BaseException] | None,
    now: datetime,
    asked_delay: float | None = None,
    rand: Callable[[], float] = random.random,
) -> RetryDecision:
    """Decide what follows failed attempt number `attempts` (1-based, counting the first run).

    `asked_delay`: the job raised `Retry(after=…)`: that delay instead of the backoff, and the
    exception filters do not apply (the job asked); the retries left still bound it.
    """
    if attempts > options.retries:
        asked = "" if asked_delay is None else "asked to be retried, but "
        return RetryDecision(retry=False, reason=f"{asked}no retries left after {attempts} attempt(s)")
    if asked_delay is not None:
        return RetryDecision(
            retry=True,
            run_at=now + timedelta(seconds=asked_delay),
            reason=f"retry {attempts} of {options.retries} in {asked_delay:.1f}s, as the job asked",
        )
    if exc_type is not None:
        names = exception_names(exc_type)
        if options.no_retry_on and names & set(options.no_retry_on):
            return RetryDecision(retry=False, reason=f"{exc_type.__name__} is in no_retry_on")
        if options.retry_on and not names & set(options.retry_on):
            return RetryDecision(retry=False, reason=f"{exc_type.__name__} is not in retry_on")
    delay = backoff_delay(attempts, base=options.retry_base, cap=options.retry_cap, rand=rand)
    return RetryDecision(
        retry=True,
        run_at=now + timedelta(seconds=delay),
        reason=f"retry {attempts} of {options.retries} in {delay:.1f}s",
    )
