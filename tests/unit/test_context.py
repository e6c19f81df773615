"""Cancel callbacks of a running job's context (how an async job's task is cancelled)."""

from __future__ import annotations

from nbjobs.context import JobContext


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
