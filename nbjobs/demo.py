"""`nbjobs demo`: one job of each kind against the embedded default database, then their table."""

from __future__ import annotations

import math
import time
from datetime import timedelta

import pandas as pd

from .engine import Engine

_flaky_calls: dict[str, int] = {}


def estimate_pi(samples: int) -> float:
    """A small CPU job: the Leibniz series."""
    return 4 * math.fsum((-1) ** k / (2 * k + 1) for k in range(samples))


def report_ready(what: str) -> str:
    return f"{what} is ready"


def reminder(text: str) -> str:
    return f"reminder: {text}"


def flaky(tag: str) -> str:
    """Fails on its first attempt, succeeds when retried."""
    _flaky_calls[tag] = _flaky_calls.get(tag, 0) + 1
    if _flaky_calls[tag] == 1:
        raise ConnectionError("upstream not ready (first attempt fails on purpose)")
    return f"{tag} ok after {_flaky_calls[tag]} attempts"


def always_fails() -> None:
    raise ValueError("this job fails on purpose; requeue it from the dashboard to try again")


def run_demo(engine: Engine, *, delay: float = 1.0) -> pd.DataFrame:
    """Enqueue one job of each kind, run them on an in-process server and return their table."""
    started = time.monotonic()
    server = engine.start_server(workers=4)
    try:
        pi = engine.options(name="estimate pi").enqueue(estimate_pi, 200_000)
        follow = pi.then(report_ready, "pi")  # continuation: runs once pi succeeded
        later = engine.options(name="delayed reminder").schedule(
            timedelta(seconds=delay), reminder, "stand up"
        )
        retried = engine.options(name="flaky, retried", retries=3, retry_base=0.2).enqueue(flaky, "download")
        failed = engine.options(name="fails for good", retries=1, retry_base=0.1).enqueue(always_fails)
        jobs = [pi, follow, later, retried, failed]
        for job in jobs:
            job.wait(timeout=60)
    finally:
        engine.stop_server()
    del server
    frame = engine.jobs(limit=None)
    ids = [j.id for j in jobs]
    frame = frame[frame["id"].isin(ids)].sort_values("id")
    frame.attrs["elapsed"] = time.monotonic() - started
    return frame[["id", "name", "function", "state", "attempts", "duration", "parent_id", "error_type"]]
