"""`job.add_done_callback`: fires once, only for a final state, whoever finished the job."""

from __future__ import annotations

import threading

import nbjobs
from nbjobs import JobState
from tests.conftest import wait_for

_attempts: dict[str, int] = {}


def flaky_once(key: str) -> str:
    _attempts[key] = _attempts.get(key, 0) + 1
    if _attempts[key] == 1:
        raise RuntimeError("first attempt fails")
    return "second time lucky"


def add(a: int, b: int) -> int:
    return a + b


def _recorder() -> tuple[list[tuple[int, JobState]], threading.Event, object]:
    seen: list[tuple[int, JobState]] = []
    fired = threading.Event()

    def callback(job: nbjobs.Job) -> None:
        seen.append((job.id, job.state))
        fired.set()

    return seen, fired, callback


def test_callback_fires_once_after_retries_not_on_the_failed_attempt(engine: nbjobs.Engine) -> None:
    seen, fired, callback = _recorder()
    engine.start_server(workers=1, poll_interval=0.05)
    key = f"{engine.url}-retry"
    job = engine.options(retries=2, retry_base=0.05).enqueue(flaky_once, key)
    job.add_done_callback(callback)  # type: ignore[arg-type]
    assert fired.wait(30)
    assert job.result(timeout=5) == "second time lucky"
    assert _attempts[key] == 2
    wait_for(lambda: engine.notifier.done_callbacks is not None
             and engine.notifier.done_callbacks.pending() == 0)
    assert seen == [(job.id, JobState.SUCCEEDED)]


def test_callback_fires_for_a_job_another_process_finished(engine: nbjobs.Engine, db_url: str) -> None:
    seen, fired, callback = _recorder()
    job = engine.enqueue(add, 2, 3)  # this engine runs no server: someone else must
    job.add_done_callback(callback)  # type: ignore[arg-type]
    other = nbjobs.connect(db_url, secret="test-secret")
    try:
        other.start_server(workers=1, poll_interval=0.05)
        assert fired.wait(30)
    finally:
        other.close()
    assert seen == [(job.id, JobState.SUCCEEDED)]


def test_callback_of_a_finished_job_fires_at_once(engine: nbjobs.Engine) -> None:
    seen, fired, callback = _recorder()
    engine.start_server(workers=1, poll_interval=0.05)
    job = engine.enqueue(add, 1, 1)
    job.wait(30)
    job.add_done_callback(callback)  # type: ignore[arg-type]
    assert fired.is_set() and seen == [(job.id, JobState.SUCCEEDED)]


def test_a_callback_calling_sys_exit_does_not_stop_the_others(engine: nbjobs.Engine) -> None:
    seen, fired, callback = _recorder()

    def exits(job: nbjobs.Job) -> None:
        raise SystemExit(1)

    first = engine.enqueue(add, 1, 2)
    second = engine.enqueue(add, 3, 4)
    first.add_done_callback(exits)
    second.add_done_callback(callback)  # type: ignore[arg-type]
    engine.start_server(workers=1, poll_interval=0.05)
    first.wait(30)
    assert fired.wait(30)
    assert seen == [(second.id, JobState.SUCCEEDED)]
