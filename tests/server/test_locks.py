"""`options(lock=…)`: jobs sharing a lock never run at once, on any server, and run in claim order;
on real SQLite and PostgreSQL, with real servers and worker threads."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

import nbjobs
from nbjobs import JobState
from nbjobs.cli import cli
from nbjobs.errors import InvalidJobError

from ..conftest import wait_for

_lock = threading.Lock()
#: (tag, event, lock, monotonic time) of every start and end, in order.
EVENTS: list[tuple[str, str, str | None, float]] = []
GATES: dict[str, threading.Event] = {}


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    EVENTS.clear()
    GATES.clear()
    yield
    for gate in GATES.values():  # never leave a worker blocked
        gate.set()


def gated(tag: str, lock: str | None = None, hold: float = 0.0) -> str:
    """Record start, wait for this tag's gate (if one was made) or `hold` seconds, record end."""
    with _lock:
        EVENTS.append((tag, "start", lock, time.monotonic()))
    gate = GATES.get(tag)
    if gate is not None:
        assert gate.wait(30), f"gate {tag} never opened"
    elif hold:
        threading.Event().wait(hold)  # stands for work, long enough for others to overlap
    with _lock:
        EVENTS.append((tag, "end", lock, time.monotonic()))
    return tag


def _overlaps(lock: str) -> list[tuple[str, str]]:
    """Pairs of jobs of `lock` that ran at the same time."""
    spans: dict[str, list[float]] = {}
    for tag, _event, name, at in EVENTS:
        if name == lock:
            spans.setdefault(tag, []).append(at)
    runs = sorted(spans.items(), key=lambda item: item[1][0])
    return [(a, b) for (a, (_, a_end)), (b, (b_start, _)) in itertools.pairwise(runs)
            if b_start < a_end]


def test_a_job_waits_while_another_holds_its_lock_and_others_go_on(engine: nbjobs.Engine) -> None:
    GATES["a"] = threading.Event()
    engine.start_server(workers=4)
    a = engine.options(lock="sales-table").enqueue(gated, "a", "sales-table")
    wait_for(lambda: a.state is JobState.PROCESSING)
    b = engine.options(lock="sales-table").enqueue(gated, "b", "sales-table")
    other = engine.options(lock="other-table").enqueue(gated, "other", "other-table")
    free = engine.enqueue(gated, "free")
    assert other.result(timeout=20) == "other" and free.result(timeout=20) == "free"
    assert b.state is JobState.ENQUEUED  # two workers idle, and still it waits
    GATES["a"].set()
    assert b.result(timeout=20) == "b"
    assert b.record().started_at >= a.record().finished_at  # type: ignore[operator]
    assert b.record().options.lock == "sales-table"
    listed = CliRunner().invoke(cli, ["jobs", "--url", engine.url, "--lock", "sales-table"])
    assert listed.exit_code == 0 and {int(line.split()[0]) for line in listed.output.splitlines()[1:]} == {
        a.id, b.id}


def test_jobs_of_one_lock_run_one_at_a_time_in_order(engine: nbjobs.Engine) -> None:
    jobs = [engine.options(lock="L").enqueue(gated, f"j{i}", "L", 0.02) for i in range(6)]
    urgent = engine.options(lock="L", priority=5).enqueue(gated, "urgent", "L", 0.02)
    engine.start_server(workers=4)
    engine.results([*jobs, urgent], timeout=30)
    assert _overlaps("L") == []
    starts = [tag for tag, event, _, _ in EVENTS if event == "start"]
    assert starts == ["urgent", *[f"j{i}" for i in range(6)]]  # priority first, then enqueue order


def test_no_two_servers_run_jobs_of_one_lock_at_once(db_url: str) -> None:
    engines = [nbjobs.connect(db_url, secret="s") for _ in range(3)]
    try:
        for eng in engines:
            eng.start_server(workers=3, poll_interval=0.02)
        client = engines[0]
        jobs = [client.options(lock=f"L{i % 3}").enqueue(gated, f"t{i}", f"L{i % 3}", 0.01)
                for i in range(30)]
        jobs += [client.enqueue(gated, f"free{i}", None, 0.01) for i in range(6)]
        assert len(client.results(jobs, timeout=60)) == 36
        for name in ("L0", "L1", "L2"):
            assert _overlaps(name) == []
            starts = [int(tag[1:]) for tag, event, lock, _ in EVENTS if event == "start" and lock == name]
            assert starts == sorted(starts)  # each lock's jobs in enqueue order
        assert all(eng.server is not None and eng.server.dispatcher.errors == 0 for eng in engines)
    finally:
        for eng in engines:
            eng.close()


def test_a_lock_is_refused_at_enqueue_unless_it_is_a_name(engine: nbjobs.Engine) -> None:
    with pytest.raises(InvalidJobError, match="lock must be a string"):
        engine.options(lock=7).enqueue(gated, "x")
    with pytest.raises(InvalidJobError, match="lock must be a non-empty name"):
        engine.options(lock="").enqueue(gated, "x")
    with pytest.raises(InvalidJobError, match="use at most 500"):
        engine.options(lock="x" * 501).enqueue(gated, "x")
    assert engine.counts()["enqueued"] == 0  # nothing was stored
