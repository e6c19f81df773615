"""8 worker threads over 5,000 jobs: each executed exactly once."""

from __future__ import annotations

import operator
import threading
from collections import Counter
from pathlib import Path

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.storage import dialects

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


def test_without_inotify_a_server_sees_another_engines_jobs_by_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS and Windows (or Linux with inotify's instance limit reached): no directory watch, so a
    server learns of another engine's or process's commits by polling `data_version`."""
    monkeypatch.setattr(dialects._DirectoryWatch, "open", classmethod(lambda cls, path: None))
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with nbjobs.connect(url, secret="s") as served, nbjobs.connect(url, secret="s") as other:
        served.start_server(workers=2)
        assert served.server is not None and served.server._listener._watch is None
        job = other.enqueue(operator.add, 2, 3)  # wakes nothing in `served`'s process but its poll
        assert job.result(timeout=10) == 5
        later = other.schedule(0.5, operator.mul, 2, 3)  # promoted by the server's scheduler
        assert later.result(timeout=10) == 6
