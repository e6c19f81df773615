"""A running job's context: cancel callbacks (how an async job's task is cancelled) and the loan of
its worker slot while it waits for other jobs."""

from __future__ import annotations

import pytest

from nbjobs.context import JobContext, Waiting, activate, deactivate
from nbjobs.errors import JobCancelled, NbJobsError


def _ctx() -> JobContext:
    return JobContext(id=1, attempt=1, function="m:f", queue="default")


def test_a_cancel_callback_runs_once_when_the_job_is_cancelled() -> None:
    ctx, calls = _ctx(), []
    ctx.on_cancel(lambda: calls.append("a"))
    ctx.on_cancel(lambda: calls.append("b"))
    ctx.request_cancel("by user")
    ctx.request_cancel("again")
    assert calls == ["a", "b"] and ctx.cancel_reason == "by user"


def test_a_callback_registered_after_the_cancel_runs_at_once() -> None:
    ctx, calls = _ctx(), []
    ctx.request_cancel("timeout")
    remove = ctx.on_cancel(lambda: calls.append("late"))
    assert calls == ["late"]
    remove()  # harmless


def test_a_removed_callback_is_not_called() -> None:
    ctx, calls = _ctx(), []
    remove = ctx.on_cancel(lambda: calls.append("gone"))
    ctx.on_cancel(lambda: calls.append("kept"))
    remove()
    ctx.request_cancel("by user")
    assert calls == ["kept"]


class RecordingLender:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def lend(self) -> None:
        self.calls.append("lend")

    def reclaim(self) -> None:
        self.calls.append("reclaim")


def _lending_ctx() -> tuple[JobContext, RecordingLender]:
    lender = RecordingLender()
    return JobContext(id=1, attempt=1, function="m:f", queue="default", slot_lender=lender), lender


def test_a_job_lends_its_slot_once_however_many_waits_overlap() -> None:
    ctx, lender = _lending_ctx()
    ctx.begin_wait()
    ctx.begin_wait()  # a second thread of the job, or a wait inside a wait
    ctx.end_wait()
    assert lender.calls == ["lend"]
    ctx.end_wait()
    ctx.end_wait()  # one too many: nothing to give back
    assert lender.calls == ["lend", "reclaim"]


def test_a_job_ending_mid_wait_gives_the_slot_back_and_lends_no_more() -> None:
    ctx, lender = _lending_ctx()
    ctx.begin_wait()
    ctx.end_loans()
    assert lender.calls == ["lend", "reclaim"]
    ctx.end_wait()  # the abandoned wait ends later, in a thread the job left behind
    ctx.begin_wait()
    ctx.end_loans()
    assert lender.calls == ["lend", "reclaim"]


def test_waiting_lends_at_the_first_block_only_and_reclaims_on_exit() -> None:
    ctx, lender = _lending_ctx()
    token = activate(ctx)
    try:
        with Waiting() as waiting:
            assert lender.calls == []  # a wait that never blocks lends nothing
            waiting.block()
            waiting.block()
            assert lender.calls == ["lend"]
            waiting.unblock()  # the caller's code runs (a generator yielded)
            waiting.block()
        assert lender.calls == ["lend", "reclaim", "lend", "reclaim"]
    finally:
        deactivate(token)


def test_a_cancelled_job_stops_waiting_at_its_next_block() -> None:
    ctx, lender = _lending_ctx()
    token = activate(ctx)
    try:
        with Waiting() as waiting:
            waiting.block()
            ctx.request_cancel("by user")
            with pytest.raises(JobCancelled, match="by user"):
                waiting.block()
        assert lender.calls == ["lend", "reclaim"]
        with pytest.raises(JobCancelled), Waiting() as waiting:
            waiting.block()  # already cancelled: refuses to start waiting at all
        assert lender.calls == ["lend", "reclaim"]
    finally:
        deactivate(token)


def test_waiting_outside_a_job_does_nothing() -> None:
    with Waiting() as waiting:
        waiting.block()
        waiting.unblock()


def test_a_context_made_by_hand_has_no_engine() -> None:
    ctx = _ctx()
    assert not ctx.has_engine
    with pytest.raises(NbJobsError, match="runs without an engine"):
        ctx.engine  # noqa: B018


def test_an_engine_opener_is_called_once() -> None:
    opened: list[object] = []

    def opener() -> object:
        opened.append(object())
        return opened[-1]

    ctx = JobContext(id=1, attempt=1, function="m:f", queue="default", engine_source=opener)
    assert ctx.engine is ctx.engine is opened[0] and len(opened) == 1
