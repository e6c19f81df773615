"""8 worker threads over 5,000 jobs: each executed exactly once."""

from __future__ import annotations

import threading
from collections import Counter

import nbjobs
from nbjobs import JobState

from ..conftest import wait_for

SEEN: Counter[int] = Counter()
LOCK = threading.Lock()


def record(i: int) -> None:
    with LOCK:
        SEEN[i] += 1


def test_eight_workers_five_thousand_jobs_exactly_once(engine: nbjobs.Engine) -> None:
    SEEN.clear()
    n = 5000
    engine.enqueue_many(record, range(n // 2))
    engine.start_server(workers=8)
    for i in range(n // 2, n):
        engine.enqueue(record, i)
    wait_for(lambda: engine.counts()["succeeded"] == n, timeout=90, interval=0.1)
    assert len(SEEN) == n and set(SEEN.values()) == {1}
    counts = engine.counts()
    assert counts[JobState.PROCESSING.value] == 0 and counts[JobState.ENQUEUED.value] == 0


def test_two_engines_share_one_database_without_double_runs(db_url: str) -> None:
    SEEN.clear()
    a = nbjobs.connect(db_url, secret="s")
    b = nbjobs.connect(db_url, secret="s")
    try:
        a.enqueue_many(record, range(1000))
        a.start_server(workers=4)
        b.start_server(workers=4)
        wait_for(lambda: a.counts()["succeeded"] == 1000, timeout=60, interval=0.1)
    finally:
        a.close()
        b.close()
    assert len(SEEN) == 1000 and set(SEEN.values()) == {1}
