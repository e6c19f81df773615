"""Text a job produces may hold NUL characters (binary data printed, a C library's message), which
PostgreSQL text cannot store: it is stored escaped, and never wedges a server; on both databases."""

from __future__ import annotations

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.errors import InvalidJobError, InvalidScheduleError


def noisy() -> None:
    print("out\x00put")
    nbjobs.current_job().set_progress(0.5, "half\x00way")
    raise ValueError("a\x00b")


def asks_again() -> str:
    raise nbjobs.Retry(after=3600, reason="busy\x00server")


def ok() -> int:
    return 1


def test_a_job_whose_error_output_and_progress_hold_nul_fails_and_the_server_goes_on(
    engine: nbjobs.Engine,
) -> None:
    engine.start_server(workers=1)
    job = engine.options(retries=0).enqueue(noisy)
    assert job.wait(timeout=20) is JobState.FAILED  # before: its outcome could never be written
    record = job.record()
    assert record.error_message == "a\\x00b" and "ValueError: a\\x00b" in (record.error_traceback or "")
    assert record.progress_message == "half\\x00way"
    assert job.logs() == "out\\x00put\n"
    retried = engine.options(retries=1).enqueue(asks_again)  # its retry is an hour away
    assert engine.enqueue(ok).result(timeout=20) == 1  # ran after it, on the one worker
    assert engine.server.dispatcher.errors == 0  # type: ignore[union-attr]
    reasons = [change.reason for change in retried.history()]
    assert any("busy\\x00server" in reason for reason in reasons), reasons


def test_names_holding_nul_are_refused_at_the_call(engine: nbjobs.Engine) -> None:
    for option in ("name", "key", "lock", "queue"):
        with pytest.raises(InvalidJobError, match=f"{option} 'a\\\\x00b' contains a NUL character"):
            engine.options(**{option: "a\x00b"}).enqueue(ok)
    with pytest.raises(InvalidScheduleError, match="contains a NUL character"):
        engine.recurring("a\x00b", "@daily", ok)
    assert engine.counts()["enqueued"] == 0
