"""Async jobs: an `async def` function runs to completion on an event loop of its own in the worker.

A worker (thread or process) has no running loop, so each async job gets a fresh one (`asyncio.run`).
Objects bound to the notebook's own loop (a client session created in a cell) cannot be used from it;
create them inside the job. Cancelling the job, or its timeout passing, cancels its task: an async job
stops at its next `await` without having to call `check_cancelled()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable
from typing import Any

from ..context import JobContext
from ..errors import JobCancelled


def complete(value: Any, ctx: JobContext) -> Any:
    """`value` itself, or, when the job's function returned an awaitable, what awaiting it returns."""
    if not inspect.isawaitable(value):
        return value
    return asyncio.run(_until_done(value, ctx))


async def _until_done(awaitable: Awaitable[Any], ctx: JobContext) -> Any:
    task = asyncio.ensure_future(awaitable)
    loop = asyncio.get_running_loop()

    def cancel() -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: the job is over anyway
            loop.call_soon_threadsafe(task.cancel)

    remove = ctx.on_cancel(cancel)
    try:
        return await task
    except asyncio.CancelledError:
        # A BaseException: let none escape to the worker, which expects the job's errors as Exceptions.
        if ctx.cancelled:
            raise JobCancelled(f"job {ctx.id} was cancelled ({ctx.cancel_reason})") from None
        raise RuntimeError("the job's coroutine was cancelled by the job itself") from None
    finally:
        remove()
