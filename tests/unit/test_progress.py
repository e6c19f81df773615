"""The progress sink's rate limit and the `progress()` iterator."""

from __future__ import annotations

import threading
import time

from nbjobs import context
from nbjobs.context import JobContext
from nbjobs.progress import ProgressThrottle, progress


class Recorder:
    def __init__(self) -> None:
        self.writes: list[tuple[int, float | None, str | None]] = []
        self.changed = threading.Event()

    def __call__(self, job_id: int, fraction: float | None, message: str | None) -> None:
        self.writes.append((job_id, fraction, message))
        self.changed.set()


def test_a_tight_loop_causes_few_writes_and_the_last_value_lands() -> None:
    rec = Recorder()
    throttle = ProgressThrottle(rec, interval=0.05)
    started = time.monotonic()
    n = 200_000
    for i in range(n):
        throttle(1, i / n, f"{i}")
    elapsed = time.monotonic() - started
    throttle(1, 1.0, "done")
    throttle.finish(1)
    assert rec.writes[0] == (1, 0.0, "0")
    assert rec.writes[-1] == (1, 1.0, "done")
    assert len(rec.writes) <= elapsed / 0.05 + 3


def test_a_pending_value_is_written_after_the_interval_without_further_calls() -> None:
    rec = Recorder()
    throttle = ProgressThrottle(rec, interval=0.05)
    throttle(3, 0.1, "a")
    rec.changed.clear()
    throttle(3, 0.2, "b")  # within the interval: held back, then written by the timer
    assert rec.changed.wait(5)
    assert rec.writes == [(3, 0.1, "a"), (3, 0.2, "b")]
    throttle.finish(3)
    assert len(rec.writes) == 2  # nothing pending any more


def test_jobs_are_throttled_independently() -> None:
    rec = Recorder()
    throttle = ProgressThrottle(rec, interval=60)
    throttle(1, 0.5, None)
    throttle(2, 0.5, None)
    throttle(1, 0.6, None)
    assert [w[0] for w in rec.writes] == [1, 2]
    throttle.close()
    assert rec.writes[-1] == (1, 0.6, None)


def test_progress_reports_to_the_running_job() -> None:
    reports: list[tuple[float | None, str | None]] = []
    ctx = JobContext(id=1, attempt=1, function="m:f", queue="q",
                     progress_sink=lambda _id, f, m: reports.append((f, m)))
    token = context.activate(ctx)
    try:
        items = list(progress(range(4), desc="epochs"))
        unknown = list(progress(iter("ab")))
    finally:
        context.deactivate(token)
    assert items == [0, 1, 2, 3]
    assert unknown == ["a", "b"]
    assert reports[:5] == [(0.0, "epochs: 0/4"), (0.25, "epochs: 1/4"), (0.5, "epochs: 2/4"),
                           (0.75, "epochs: 3/4"), (1.0, "epochs: 4/4")]
    assert reports[-1] == (None, "2 it")


def test_progress_outside_a_job_just_iterates() -> None:
    wrapped = progress([1, 2, 3], desc="x")
    assert len(wrapped) == 3
    assert list(wrapped) == [1, 2, 3]
