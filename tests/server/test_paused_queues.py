"""`pause_queue`: no server starts a job of a paused queue until it is resumed; on real SQLite and
PostgreSQL, with real servers (two engines: the pause is in the database, not in one process)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

import nbjobs
from nbjobs import JobState
from nbjobs.cli import cli
from nbjobs.errors import InvalidJobError

from ..conftest import wait_for

GATE = threading.Event()


@pytest.fixture(autouse=True)
def _open_gate() -> Iterator[None]:
    GATE.clear()
    yield
    GATE.set()


def tag(name: str) -> str:
    return name


def held() -> str:
    GATE.wait(30)
    return "held"


def turns_pass(engine: nbjobs.Engine, n: int = 3) -> None:
    """Wait until the server's dispatcher has looked for work `n` more times."""
    dispatcher = engine.server.dispatcher  # type: ignore[union-attr]
    target = dispatcher.turns + n

    def looked() -> bool:
        engine.notifier.work.set()  # wake it: an idle dispatcher would sleep until its next poll
        return dispatcher.turns >= target

    wait_for(looked)


def test_a_paused_queue_waits_on_every_server_and_runs_when_resumed(db_url: str) -> None:
    with nbjobs.connect(db_url, secret="s") as first, nbjobs.connect(db_url, secret="s") as second:
        first.start_server(workers=2)
        second.start_server(workers=2)
        running = first.options(queue="reports").enqueue(held)
        wait_for(lambda: running.state is JobState.PROCESSING)
        assert first.pause_queue("reports") is True and first.pause_queue("reports") is False
        assert list(second.paused_queues()) == ["reports"]
        waiting = [first.options(queue="reports").enqueue(tag, f"r{i}") for i in range(3)]
        other = first.enqueue(tag, "default queue")
        assert other.result(timeout=20) == "default queue"  # idle workers on both servers …
        turns_pass(first)
        turns_pass(second)
        assert {job.state for job in waiting} == {JobState.ENQUEUED}  # … and still they wait
        GATE.set()
        assert running.result(timeout=20) == "held"  # what was running went on
        assert second.resume_queue("reports") is True and second.resume_queue("reports") is False
        assert first.results(waiting, timeout=20) == ["r0", "r1", "r2"]
        assert first.paused_queues() == {}


def test_queue_names_are_checked_and_the_cli_pauses_and_resumes(engine: nbjobs.Engine) -> None:
    with pytest.raises(InvalidJobError, match="queue must be a non-empty name"):
        engine.pause_queue("")
    result = CliRunner().invoke(cli, ["pause-queue", "--url", engine.url, "gpu"])
    assert result.exit_code == 0 and "queue 'gpu' paused" in result.output
    assert list(engine.paused_queues()) == ["gpu"]
    engine.start_server(workers=1)
    job = engine.options(queue="gpu").enqueue(tag, "g")  # an idle server: the enqueue's own claim
    turns_pass(engine)  # skips the paused queue, as the server's turns do
    assert job.state is JobState.ENQUEUED
    result = CliRunner().invoke(cli, ["resume-queue", "--url", engine.url, "gpu"])
    assert result.exit_code == 0 and "queue 'gpu' resumed" in result.output
    assert job.result(timeout=20) == "g"
