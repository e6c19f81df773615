"""An exception whose message holds a whole dataset (`raise ValueError(f"bad rows: {rows}")`) is
stored cut, its start and end kept: every read of the jobs table copies the stored text, once per
attempt. On both databases."""

from __future__ import annotations

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.errors import JobFailedError
from nbjobs.model import ERROR_MESSAGE_MAX, ERROR_TRACEBACK_MAX, clip_middle


def fails_loudly(n: int) -> None:
    raise ValueError("START" + "x" * n + "END")


def test_a_huge_exception_message_is_stored_cut_keeping_its_start_and_end(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    job = engine.options(retries=0).enqueue(fails_loudly, 5_000_000)
    assert job.wait(timeout=30) is JobState.FAILED
    record = job.record()
    message, traceback = record.error_message or "", record.error_traceback or ""
    assert len(message) == ERROR_MESSAGE_MAX and len(traceback) == ERROR_TRACEBACK_MAX
    assert message.startswith("START") and message.endswith("END")
    assert "characters cut by nbjobs" in message
    assert "fails_loudly" in traceback and traceback.rstrip().endswith("END")
    with pytest.raises(JobFailedError, match="ValueError: STARTxxx") as caught:
        job.result()
    assert len(str(caught.value)) < ERROR_MESSAGE_MAX + ERROR_TRACEBACK_MAX + 1000
    frame = engine.jobs(state="failed")
    assert len(frame.loc[frame["id"] == job.id, "error_message"].iloc[0]) == ERROR_MESSAGE_MAX


def test_a_message_within_the_limit_is_stored_whole(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    job = engine.options(retries=0).enqueue(fails_loudly, ERROR_MESSAGE_MAX - len("STARTEND"))
    assert job.wait(timeout=30) is JobState.FAILED
    assert job.record().error_message == "START" + "x" * (ERROR_MESSAGE_MAX - 8) + "END"


@pytest.mark.parametrize("length", [0, 50, 99, 100, 101, 1000, 10**6])
def test_clip_middle_keeps_the_limit_and_both_ends(length: int) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(length))
    clipped = clip_middle(text, 100)
    assert clipped is not None
    if length <= 100:
        assert clipped == text
        return
    assert len(clipped) == 100
    note = f"\n[… {length - 100:,} characters cut by nbjobs …]\n"
    head, tail = clipped.split(note)
    assert text.startswith(head) and text.endswith(tail) and abs(len(head) - len(tail)) <= 1
    assert clip_middle(None, 100) is None
