"""The running job as seen from inside it: `nbjobs.current_job()`.

A context variable, so every worker thread (and the code it calls) sees its own job. The server
gives each context a progress sink; writes are rate-limited there, not here.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .errors import JobCancelled, NbJobsError

#: Guards every context's cancel callbacks (registered rarely: one lock for all, none per job).
_callbacks_lock = threading.Lock()

_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("nbjobs_job", default=None)


@dataclass(kw_only=True, eq=False)
class JobContext:
    """What a running job can ask and tell nbjobs."""

    id: int
    attempt: int
    function: str
    queue: str
    recurring_id: str | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    cancel_reason: str | None = None
    _on_cancel: list[Callable[[], None]] | None = field(default=None, repr=False)
    progress_sink: Callable[[int, float | None, str | None], None] | None = field(default=None, repr=False)
    #: Stores (time, stream, text) chunks as the job's captured output (the server sets it to its store).
    log_sink: Callable[[int, Sequence[tuple[datetime, str, str]]], None] | None = field(
        default=None, repr=False
    )

    @property
    def cancelled(self) -> bool:
        """True once someone cancelled this job or its timeout passed; stop soon."""
        return self._cancel.is_set()

    def request_cancel(self, reason: str) -> None:
        if not self._cancel.is_set():
            self.cancel_reason = reason
            self._cancel.set()
            with _callbacks_lock:
                callbacks, self._on_cancel = self._on_cancel or [], None
            for callback in callbacks:
                callback()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (in the cancelling thread) when the job is cancelled, at once if it already
        was; returns a function that unregisters it. How an async job's task gets cancelled."""
        with _callbacks_lock:
            if not self._cancel.is_set():
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
        if self._cancel.is_set():
            raise JobCancelled(f"job {self.id} was cancelled ({self.cancel_reason})")

    def wait_cancelled(self, timeout: float | None) -> bool:
        """Sleep up to `timeout` s, waking early on cancellation (a cancellable time.sleep)."""
        return self._cancel.wait(timeout)

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


def check_cancelled() -> None:
    """Raise JobCancelled if the current job was cancelled (no-op outside a job)."""
    ctx = _current.get()
    if ctx is not None:
        ctx.check_cancelled()
