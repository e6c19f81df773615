"""Run a claimed job in the calling worker thread (the in-kernel executor)."""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import context
from ..clock import Clock
from ..errors import (
    USER_CODE_ERRORS,
    FunctionNotFoundError,
    JobCancelled,
    PayloadError,
    ResultUnavailableError,
    Retry,
)
from ..model import ClaimedJob, JobState
from ..payload import Codec
from ..storage import Store
from .coroutines import complete

log = logging.getLogger("nbjobs.executor")

#: Wraps one run (output capture, tracing); entered in the worker thread around the call.
RunWrapper = Callable[[context.JobContext], AbstractContextManager[Any]]


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What happened in one attempt, before any retry decision."""

    started_at: datetime
    finished_at: datetime
    ok: bool
    result: bytes | None = None
    exc_type: type[BaseException] | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    cancelled: bool = False
    retryable: bool = True  #: False for errors no retry can fix (bad payload, missing function)
    retry_after: float | None = None  #: seconds the job asked to wait before its retry (`Retry`)


def failed_result(
    exc: BaseException, *, started: datetime, finished: datetime, retryable: bool = True
) -> RunResult:
    """The RunResult of an attempt that raised `exc`."""
    exc_type = type(exc)
    return RunResult(
        started_at=started,
        finished_at=finished,
        ok=False,
        exc_type=exc_type,
        error_type=f"{exc_type.__module__}.{exc_type.__qualname__}"
        if exc_type.__module__ not in ("builtins", "__main__")
        else exc_type.__qualname__,
        error_message=_text(exc),
        error_traceback="".join(traceback.format_exception(exc)),
        retryable=retryable,
        retry_after=exc.after if isinstance(exc, Retry) else None,
    )


def with_results(payload: bytes, store: Store, codec: Codec) -> bytes:
    """`payload` with the stored results of the jobs it was given as arguments in their places."""
    if not codec.refers_results(payload):
        return payload
    return codec.resolve_results(payload, lambda job_id: stored_result(store, codec, job_id))


def stored_result(store: Store, codec: Codec, job_id: int) -> Any:
    """The return value of job `job_id`, an argument of another job; ResultUnavailableError when it
    is gone or no longer succeeded (no retry brings it back)."""
    record = store.results_of([job_id]).get(job_id)
    if record is None:
        raise ResultUnavailableError(
            f"job {job_id}, whose result is an argument of this job, no longer exists (expired or "
            "removed); requeue it, or enqueue this job again with the value"
        )
    if record.state is not JobState.SUCCEEDED:
        raise ResultUnavailableError(
            f"job {job_id}, whose result is an argument of this job, is {record.state.value} (it was "
            "requeued or changed after it succeeded); wait for it, then requeue this job"
        )
    return None if record.result is None else codec.loads(record.result)


def _text(exc: BaseException) -> str:
    """`str(exc)`, or a stand-in when the exception's own `__str__` fails."""
    try:
        return str(exc)
    except USER_CODE_ERRORS:
        return f"<{type(exc).__name__} whose str() failed>"


@contextlib.contextmanager
def _wrapped(wrappers: Sequence[RunWrapper], ctx: context.JobContext) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for wrap in wrappers:
            stack.enter_context(wrap(ctx))
        for hook in context.RUN_HOOKS:
            stack.enter_context(hook(ctx))
        yield


def run_in_thread(
    job: ClaimedJob,
    ctx: context.JobContext,
    *,
    codec: Codec,
    clock: Clock,
    wrappers: Sequence[RunWrapper] = (),
) -> RunResult:
    """Decode, run and encode one job in this thread; never raises for the job's own errors."""
    started = clock.now()
    try:
        call = codec.decode_call(job.payload)
        fn = codec.load_function(job.function, call, prefer_live=True)
    except (PayloadError, FunctionNotFoundError) as exc:
        return failed_result(exc, started=started, finished=clock.now(), retryable=False)
    except Exception as exc:  # a broken pickle, a module that fails to import
        return failed_result(exc, started=started, finished=clock.now(), retryable=False)
    token = context.activate(ctx)
    try:
        with _wrapped(wrappers, ctx):
            value = complete(fn(*call.args, **call.kwargs), ctx)
    except JobCancelled as exc:
        result = failed_result(exc, started=started, finished=clock.now())
        return RunResult(**{**result.__dict__, "cancelled": True})
    except USER_CODE_ERRORS as exc:
        return failed_result(exc, started=started, finished=clock.now())
    finally:
        context.deactivate(token)
    if value is None:  # most background jobs return nothing: store no result (reads back as None)
        return RunResult(started_at=started, finished_at=clock.now(), ok=True, result=None)
    try:
        encoded = codec.dumps(value, job.options.serializer, what="the job's return value")
    except USER_CODE_ERRORS as exc:  # pickling runs the value's own code (__reduce__)
        return failed_result(exc, started=started, finished=clock.now(), retryable=False)
    return RunResult(started_at=started, finished_at=clock.now(), ok=True, result=encoded)
