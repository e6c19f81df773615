"""Per-queue limits on a server (`start_server(limits={"gpu": 1})`), on both databases; bad limits
and rates refused before a server starts."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

import nbjobs
from nbjobs.errors import ConfigurationError

_lock = threading.Lock()
RUNNING: defaultdict[str, int] = defaultdict(int)
PEAK: defaultdict[str, int] = defaultdict(int)


def occupy(tag: str) -> str:
    """Holds a worker a moment and records how many jobs of `tag` ran at once."""
    with _lock:
        RUNNING[tag] += 1
        PEAK[tag] = max(PEAK[tag], RUNNING[tag])
    time.sleep(0.03)
    with _lock:
        RUNNING[tag] -= 1
    return tag


def test_a_limited_queue_never_runs_more_than_its_limit_while_others_share_the_workers(
    engine: nbjobs.Engine,
) -> None:
    tag = f"gpu-{engine.store.dialect_name}"
    cpu = f"cpu-{engine.store.dialect_name}"
    gpu_jobs = [engine.options(queue="gpu").enqueue(occupy, tag) for _ in range(6)]
    cpu_jobs = [engine.enqueue(occupy, cpu) for _ in range(12)]
    engine.start_server(workers=4, limits={"gpu": 1})
    for job in gpu_jobs + cpu_jobs:
        assert job.result(timeout=30) in (tag, cpu)
    assert PEAK[tag] == 1  # one at a time, though 4 workers were there
    assert PEAK[cpu] >= 2  # the other queues still ran side by side


def test_a_limit_on_a_queue_named_in_the_list_and_jobs_enqueued_while_it_runs(engine: nbjobs.Engine) -> None:
    tag = f"io-{engine.store.dialect_name}"
    engine.start_server(workers=4, queues=["io", "default"], limits={"io": 2})
    jobs = [engine.options(queue="io").enqueue(occupy, tag) for _ in range(10)]  # server already idle
    for job in jobs:
        assert job.result(timeout=30) == tag
    assert PEAK[tag] == 2


@pytest.mark.parametrize(
    ("setting", "value", "queues", "message"),
    [
        ("limits", {"gpu": 0}, None, "at least 1"),
        ("limits", {"gpu": "1"}, None, "whole number"),
        ("limits", {"*": 1}, None, "not a queue name"),
        ("limits", {"gpu": 1}, ["default"], "does not serve queue 'gpu'"),
        ("limits", [("gpu", 1)], None, "limits maps queue names"),
        ("rates", {"api": "0/m"}, None, "allows no job"),
        ("rates", {"api": "fast"}, None, "'fast' is not a rate; write N/UNIT"),
        ("rates", {"api": 60}, None, "60 is not a rate"),
        ("rates", {"*": "1/s"}, None, "not a queue name"),
        ("rates", {"api": "1/s"}, ["default"], "does not serve queue 'api'"),
        ("rates", [("api", "1/s")], None, "rates maps queue names"),
    ],
)
def test_bad_limits_and_rates_are_refused_before_the_server_starts(
    engine: nbjobs.Engine, setting: str, value: object, queues: list[str] | None, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        engine.start_server(workers=2, queues=queues, **{setting: value})
    assert engine.server is None or not engine.server.running
