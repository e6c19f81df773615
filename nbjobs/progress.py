"""Progress of running jobs: `nbjobs.progress(iterable)` and the rate-limited sink behind `set_progress`.

A tight loop may report progress millions of times; storage sees at most one write per job per
`interval` (the first report at once, later ones coalesced into a single delayed write), and the last
value is always written when the job ends. Each step is also a cancellation point (the loop raises
`JobCancelled` before the next item once the job is cancelled or timed out), so the usual way to
write a long loop is the cancellable one. Outside a job `progress()` just iterates.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .context import JobContext, current_job_or_none

log = logging.getLogger("nbjobs.progress")
T = TypeVar("T")

#: Writes one job's progress to storage: (job id, fraction or None, message or None).
ProgressWriter = Callable[[int, float | None, str | None], None]

_UNSET: Any = object()


@dataclass
class _JobProgress:
    last_write: float = float("-inf")
    pending: Any = _UNSET  #: (fraction, message) not yet written
    timer: threading.Timer | None = None


class ProgressThrottle:
    """The engine's progress sink: at most one storage write per job every `interval` seconds."""

    def __init__(self, write: ProgressWriter, *, interval: float = 0.5,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._write = write
        self.interval = interval
        self._monotonic = monotonic
        self._jobs: dict[int, _JobProgress] = {}
        self._lock = threading.Lock()

    def __call__(self, job_id: int, fraction: float | None, message: str | None) -> None:
        now = self._monotonic()
        with self._lock:
            state = self._jobs.setdefault(job_id, _JobProgress())
            wait = state.last_write + self.interval - now
            if wait > 0 or state.timer is not None:
                state.pending = (fraction, message)
                if state.timer is None:
                    state.timer = threading.Timer(max(wait, 0.0), self._flush_due, (job_id,))
                    state.timer.daemon = True
                    state.timer.start()
                return
            state.last_write = now
        self._safe_write(job_id, fraction, message)

    def _flush_due(self, job_id: int) -> None:
        with self._lock:
            state = self._jobs.get(job_id)
            if state is None:
                return
            state.timer = None
            value, state.pending = state.pending, _UNSET
            state.last_write = self._monotonic()
        if value is not _UNSET:
            self._safe_write(job_id, *value)

    def finish(self, job_id: int) -> None:
        """The job ended: write the last pending value now and forget the job."""
        with self._lock:
            state = self._jobs.pop(job_id, None)
        if state is None:
            return
        if state.timer is not None:
            state.timer.cancel()
        if state.pending is not _UNSET:
            self._safe_write(job_id, *state.pending)

    @contextlib.contextmanager
    def wrap(self, ctx: JobContext) -> Iterator[None]:
        """RunWrapper: make sure the last reported value is stored when the job ends."""
        try:
            yield
        finally:
            self.finish(ctx.id)

    def _safe_write(self, job_id: int, fraction: float | None, message: str | None) -> None:
        try:
            self._write(job_id, fraction, message)
        except Exception:  # progress is advisory: never fail the job for it
            log.exception("could not store progress of job %d", job_id)

    def close(self) -> None:
        with self._lock:
            ids = list(self._jobs)
        for job_id in ids:
            self.finish(job_id)


class Progress(Generic[T]):
    """Iterate and report progress to the running job (tqdm-like); a plain iterator outside jobs."""

    def __init__(self, iterable: Iterable[T], total: int | None = None, desc: str | None = None) -> None:
        self.iterable = iterable
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total = total
        self.desc = desc
        self.n = 0
        self._ctx: JobContext | None = current_job_or_none()

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("this progress has no known total; pass total=")
        return self.total

    def __iter__(self) -> Iterator[T]:
        ctx = self._ctx or current_job_or_none()
        if ctx is None:
            yield from self.iterable
            return
        self._ctx = ctx
        self._report()
        for item in self.iterable:
            # A cancellation point: a loop written with progress() stops at the next item when the
            # job is cancelled, deleted or times out, without calling check_cancelled() itself.
            ctx.check_cancelled()
            yield item
            self.update()
        self._report()

    def update(self, n: int = 1) -> None:
        """Count `n` more items done (for manual use without iterating)."""
        self.n += n
        self._report()

    def _report(self) -> None:
        ctx = self._ctx or current_job_or_none()
        if ctx is None:
            return
        label = f"{self.desc}: " if self.desc else ""
        if self.total:
            fraction: float | None = min(self.n / self.total, 1.0)
            message = f"{label}{self.n}/{self.total}"
        else:
            fraction, message = None, f"{label}{self.n} it"
        ctx.set_progress(fraction, message)


def progress(iterable: Iterable[T], total: int | None = None, desc: str | None = None) -> Progress[T]:
    """Wrap an iterable so each step reports progress to the running job: `for x in progress(xs)`."""
    return Progress(iterable, total=total, desc=desc)
