"""The running job as seen from inside it: `nbjobs.current_job()`.

A context variable, so every worker thread (and the code it calls) sees its own job. The server
gives each context a progress sink; writes are rate-limited there, not here.

A job that waits for other jobs (`job.result()`, `nbjobs.results(...)`, `await job`) lends its
worker slot to its server while it waits (`Waiting`): a job can fan out and gather without taking
the workers its children need. Celery forbids `result.get()` inside a task for that deadlock; Dask
has `secede`/`rejoin`; here the waiting functions do it themselves.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol

from .errors import JobCancelled, NbJobsError

#: Guards every context's cancel callbacks and wait count (held for a few instructions: one lock for
#: all, none made per job).
_callbacks_lock = threading.Lock()

_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("nbjobs_job", default=None)

#: Context managers entered around every job a worker thread of this process runs, after the
#: server's own wrappers: how a layer above (the notebook's `ui.cells`) takes part without the
#: servers knowing it.
RUN_HOOKS: list[Callable[[JobContext], AbstractContextManager[None]]] = []


class SlotLender(Protocol):
    """Where a waiting job's worker slot goes: its server runs another job in it meanwhile."""

    def lend(self) -> None: ...

    def reclaim(self) -> None: ...


@dataclass(kw_only=True, eq=False)
class JobContext:
    """What a running job can ask and tell nbjobs."""

    id: int
    attempt: int
    function: str
    queue: str
    recurring_id: str | None = None
    _cancelled: bool = field(default=False, repr=False)
    #: Made by the first `wait_cancelled` only: most jobs never wait for a cancellation, and an Event
    #: (a Condition and its locks) per job was a measurable part of a server's work per short job.
    _cancel_event: threading.Event | None = field(default=None, repr=False)
    cancel_reason: str | None = None
    _on_cancel: list[Callable[[], None]] | None = field(default=None, repr=False)
    progress_sink: Callable[[int, float | None, str | None], None] | None = field(default=None, repr=False)
    #: Stores (time, stream, text) chunks as the job's captured output (the server sets it to its store).
    log_sink: Callable[[int, Sequence[tuple[datetime, str, str]]], None] | None = field(
        default=None, repr=False
    )
    #: The server's pool, lent this job's slot while the job waits for other jobs (None: no lending).
    slot_lender: SlotLender | None = field(default=None, repr=False)
    #: The Engine whose server runs this job, or a function opening one on its database (in a worker
    #: process, on first use). Typed Any: engines sit above this module.
    engine_source: Any = field(default=None, repr=False)
    #: Which database the job is in (`Store.database`), to know a Job handle of this very job.
    database: str | None = field(default=None, repr=False)
    _waits: int = field(default=0, repr=False)  #: waits in progress (threads, nested calls)
    _loans_ended: bool = field(default=False, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once someone cancelled this job or its timeout passed; stop soon."""
        return self._cancelled

    def request_cancel(self, reason: str) -> None:
        with _callbacks_lock:
            if self._cancelled:
                return
            self.cancel_reason = reason
            self._cancelled = True
            event, callbacks, self._on_cancel = self._cancel_event, self._on_cancel or [], None
        if event is not None:
            event.set()
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (in the cancelling thread) when the job is cancelled, at once if it already
        was; returns a function that unregisters it. How an async job's task gets cancelled."""
        with _callbacks_lock:
            if not self._cancelled:
                if self._on_cancel is None:
                    self._on_cancel = []
                self._on_cancel.append(callback)

                def remove() -> None:
                    with _callbacks_lock:
                        if self._on_cancel is not None and callback in self._on_cancel:
                            self._on_cancel.remove(callback)

                return remove
        callback()
        return lambda: None

    def check_cancelled(self) -> None:
        """Raise JobCancelled if the job was cancelled; call it in loops of long jobs."""
        if self._cancelled:
            raise JobCancelled(f"job {self.id} was cancelled ({self.cancel_reason})")

    def wait_cancelled(self, timeout: float | None) -> bool:
        """Sleep up to `timeout` s, waking early on cancellation (a cancellable time.sleep)."""
        with _callbacks_lock:
            if self._cancelled:
                return True
            if self._cancel_event is None:
                self._cancel_event = threading.Event()
            event = self._cancel_event
        return event.wait(timeout)

    @property
    def engine(self) -> Any:
        """An Engine on the database this job came from (its server's own, in its process): for
        enqueueing follow-up jobs and waiting for them. Inside a job, `nbjobs.enqueue(...)` and the
        other module functions use it too."""
        source = self.engine_source
        if callable(source):  # an opener (an Engine is not callable): open it once
            source = self.engine_source = source()
        if source is None:
            raise NbJobsError(f"job {self.id} runs without an engine (a context made by hand)")
        return source

    @property
    def has_engine(self) -> bool:
        return self.engine_source is not None

    def is_job(self, job_id: int, database: str) -> bool:
        """Whether `job_id` of `database` is this job (which waiting for would never end)."""
        return job_id == self.id and database == self.database

    def begin_wait(self) -> None:
        """The job is about to block until other jobs end: lend its slot (once, however many of its
        threads wait) and see a cancellation, since a wait is where a waiting job can stop."""
        self.check_cancelled()
        with _callbacks_lock:
            if self._loans_ended:
                return
            self._waits += 1
            first = self._waits == 1
        if first and self.slot_lender is not None:
            self.slot_lender.lend()

    def end_wait(self) -> None:
        """A wait ended: take the slot back when the last one does."""
        with _callbacks_lock:
            if self._loans_ended or self._waits == 0:
                return
            self._waits -= 1
            last = self._waits == 0
        if last and self.slot_lender is not None:
            self.slot_lender.reclaim()

    def end_loans(self) -> None:
        """The job ended (its server calls this): a wait still open, in a thread the job left behind
        or an abandoned generator, gives the slot back now, and later waits lend nothing."""
        with _callbacks_lock:
            lent = self._waits > 0 and not self._loans_ended
            self._loans_ended, self._waits = True, 0
        if lent and self.slot_lender is not None:
            self.slot_lender.reclaim()

    def append_logs(self, chunks: Sequence[tuple[datetime, str, str]]) -> None:
        """Add (time, stream, text) chunks to this job's captured output (dropped without a sink)."""
        if chunks and self.log_sink is not None:
            self.log_sink(self.id, chunks)

    def set_progress(self, fraction: float | None, message: str | None = None) -> None:
        """Report progress (0..1) and an optional message; stored at a bounded rate."""
        if fraction is not None:
            if not 0.0 <= float(fraction) <= 1.0:
                raise ValueError(f"progress fraction must be between 0 and 1, got {fraction}")
            fraction = float(fraction)
        if self.progress_sink is not None:
            self.progress_sink(self.id, fraction, message)


def current_job() -> JobContext:
    """The job running in this thread; raises outside a job."""
    ctx = _current.get()
    if ctx is None:
        raise NbJobsError("current_job() was called outside a running nbjobs job")
    return ctx


def current_job_or_none() -> JobContext | None:
    return _current.get()


def activate(ctx: JobContext | None) -> contextvars.Token[JobContext | None]:
    return _current.set(ctx)


def deactivate(token: contextvars.Token[JobContext | None]) -> None:
    _current.reset(token)


class Waiting:
    """Around a loop that waits for jobs: the first `block()` lends the current job's slot, `unblock()`
    (and leaving the block) takes it back. Outside a job it does nothing."""

    __slots__ = ("_ctx", "_lent")

    def __init__(self) -> None:
        self._ctx = _current.get()
        self._lent = False

    def __enter__(self) -> Waiting:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.unblock()

    def block(self) -> None:
        """Call before each wait; raises JobCancelled once the current job is cancelled."""
        if self._ctx is None:
            return
        if self._lent:
            self._ctx.check_cancelled()
            return
        self._ctx.begin_wait()
        self._lent = True

    def unblock(self) -> None:
        """The job runs its own code again (a generator handing out what it waited for)."""
        if self._lent:
            self._lent = False
            assert self._ctx is not None
            self._ctx.end_wait()


def check_cancelled() -> None:
    """Raise JobCancelled if the current job was cancelled (no-op outside a job)."""
    ctx = _current.get()
    if ctx is not None:
        ctx.check_cancelled()
