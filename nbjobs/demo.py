"""`nbjobs demo`: one job of each kind against the embedded default database, then their table."""

from __future__ import annotations

import asyncio
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


def summarize(pi: float, download: str) -> str:
    """Takes the results of two other jobs (they were passed as its arguments)."""
    return f"pi ~ {pi:.4f}; {download}"


async def fetch_async(name: str) -> str:
    """An `async def` job: runs on an event loop of its own in the worker."""
    await asyncio.sleep(0.05)  # e.g. an HTTP request
    return f"{name} fetched"


def alert(job_id: int) -> str:
    """A failure handler: runs only because job `job_id` failed (e.g. post to a team's chat)."""
    return f"alert: job {job_id} failed"


def always_fails() -> None:
    raise ValueError("this job fails on purpose; requeue it from the dashboard to try again")


def run_demo(engine: Engine, *, delay: float = 1.0) -> pd.DataFrame:
    """Enqueue one job of each kind, run them on an in-process server and return their table."""
    started = time.monotonic()
    engine.start_server(workers=4)
    try:
        pi = engine.options(name="estimate pi").enqueue(estimate_pi, 200_000)
        # A continuation: runs once pi succeeded.
        follow = engine.options(name="report (continuation)").then(pi, report_ready, "pi")
        later = engine.options(name="delayed reminder").schedule(
            timedelta(seconds=delay), reminder, "stand up"
        )
        retried = engine.options(name="flaky, retried", retries=3, retry_base=0.2).enqueue(flaky, "download")
        failed = engine.options(name="fails for good", retries=1, retry_base=0.1).enqueue(always_fails)
        # Jobs as arguments: runs once both succeeded, with their results in their places.
        summary = engine.options(name="summary (results of 1 and 4)").enqueue(summarize, pi, retried)
        fetched = engine.options(name="async fetch").enqueue(fetch_async, "prices")
        # A failure handler: runs only if `failed` fails (after its retry); a success would delete it.
        alerted = engine.options(name="alert (failure of 5)").then(failed, alert, failed.id,
                                                                   continue_on="failed")
        # A recurring definition (every second); wait for its first scheduled run, then remove it.
        engine.options(name="every second").recurring("demo-tick", "* * * * * *", reminder, "tick")
        jobs = [pi, follow, later, retried, failed, summary, fetched, alerted]
        engine.wait(jobs, timeout=60)  # all of them at once, as `nb.results(jobs)` would
        tick = _first_recurring_job(engine, "demo-tick", timeout=10)
        engine.remove_recurring("demo-tick")
        if tick is not None:
            jobs.append(engine.job(tick))
            jobs[-1].wait(timeout=60)
    finally:
        engine.stop_server()
    frame = engine.jobs(limit=None)
    ids = [j.id for j in jobs]
    frame = frame[frame["id"].isin(ids)].sort_values("id")
    frame.attrs["elapsed"] = time.monotonic() - started
    return frame[["id", "name", "function", "state", "attempts", "duration", "parent_id", "recurring_id",
                  "error_type"]]


def _first_recurring_job(engine: Engine, recurring_id: str, timeout: float) -> int | None:
    """The id of the first job a recurring definition created (polled: the demo has no callback)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Its jobs, not the definition's `last_job_id`: by the time the other jobs are done it may
        # have fired more than once, and the demo shows the first.
        frame = engine.jobs(limit=None)
        fired = frame[frame["recurring_id"] == recurring_id]
        if not fired.empty:
            return int(fired["id"].min())
        time.sleep(0.05)
    return None
