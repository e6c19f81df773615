"""One exception root for nbjobs; every message says what happened and how to fix it."""

from __future__ import annotations

import math
import os
import sys
from datetime import timedelta
from types import FrameType

#: The longest duration a job option or `Retry(after=…)` takes (a timeout, an expiry, a retry delay),
#: 100 years: nothing waits longer, and now plus it stays a date (datetime ends at year 9999).
LONGEST_SECONDS = 100 * 365 * 86400.0


def is_seconds(value: object, *, zero: bool = True) -> bool:
    """Whether `value` is a number of seconds nbjobs can wait: finite, from 0 (or above 0 when
    `zero` is False) to LONGEST_SECONDS, and not a bool (`True` is no duration)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return (value >= 0 if zero else value > 0) and value <= LONGEST_SECONDS


class NbJobsError(Exception):
    """Root of every error nbjobs raises on purpose."""


class ConfigurationError(NbJobsError, ValueError):
    """An option, URL or argument given to nbjobs is not valid."""


class InvalidScheduleError(ConfigurationError):
    """A cron expression, time zone or recurring-job policy is not valid; nothing was stored."""


class NotImportableHereWarning(UserWarning):
    """A job function named by text ("module:function") cannot be imported where it is enqueued; it
    is stored by name for the servers that can import it."""


class RunsOnlyHereWarning(UserWarning):
    """A notebook function could not be copied into its job (it uses objects that cannot be pickled,
    or too much of the notebook's data): its jobs run only on servers of this process."""


class NoParametersCellWarning(UserWarning):
    """A notebook job's parameters would be overwritten by the notebook's own code: it has no cell
    tagged `parameters` to set them after, and assigns them itself."""


class UnknownParameterWarning(UserWarning):
    """A notebook job is given a parameter its `parameters` cell does not declare (a typo, most
    often): the run gets the name set, and the notebook goes on using its own default."""


class DuplicateServerWarning(UserWarning):
    """A server starts in a process that already runs one on the same database, from another engine
    (typically a notebook cell with `connect()` and `start_server()` run again)."""


class InvalidJobError(NbJobsError, ValueError):
    """A job cannot be created as asked (bad target, argument, delay or option); nothing was stored."""


class UnknownStateError(InvalidJobError):
    """A state name that nbjobs does not know."""


class IllegalTransitionError(NbJobsError):
    """A state change the job state machine does not allow (e.g. requeue of a job that is running)."""


class JobNotFoundError(NbJobsError, LookupError):
    """No job with this id exists (it may have expired or been removed)."""

    @classmethod
    def of(cls, job_id: int) -> JobNotFoundError:
        """The error for a job id that names no stored job."""
        return cls(f"job {job_id} does not exist (it may have expired or been removed)")


class RecurringNotFoundError(NbJobsError, LookupError):
    """No recurring job with this id exists (`nb.recurring_jobs()` lists them)."""


class SchemaVersionError(NbJobsError):
    """The database was written by a newer nbjobs than the one running."""


class PayloadError(NbJobsError):
    """A stored payload cannot be read: bad signature, wrong key or unknown format."""


class FunctionNotFoundError(NbJobsError):
    """A stored function reference no longer resolves (renamed or removed in code)."""


#: What user code (a job, a done-callback) may raise that must not end the thread running it: any
#: exception at all. Uncaught, one would end a worker thread and leave its job Processing, its lease
#: kept alive by the heartbeat. `sys.exit()` (argparse on bad arguments), KeyboardInterrupt (a kernel
#: interrupt reaches the main thread only, so in a worker it is the code's own), GeneratorExit,
#: `asyncio.CancelledError` of the job's own tasks and libraries' own BaseException subclasses alike.
USER_CODE_ERRORS: tuple[type[BaseException], ...] = (BaseException,)


class JobCancelled(NbJobsError):
    """Raised inside a running job by `check_cancelled()` when the job was cancelled."""


class Retry(NbJobsError):
    """Raised by a job to be run again after `after` seconds (or a timedelta), e.g. when an API
    answers "too many requests, retry in 30 s": `raise nbjobs.Retry(after=30, reason="HTTP 429")`.

    The attempt counts against the job's `retries`, so a job that always asks cannot loop forever;
    `retry_on` and `no_retry_on` do not apply (the job asked). With no retries left the job fails.
    """

    def __init__(self, after: float | timedelta = 0.0, reason: str = "") -> None:
        seconds = after.total_seconds() if isinstance(after, timedelta) else after
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds) \
                or not 0 <= seconds <= LONGEST_SECONDS:
            raise InvalidJobError(
                f"Retry(after=…) takes a number of seconds from 0 to {LONGEST_SECONDS:,.0f} (100 years) or a "
                f"timedelta, got {after!r}"
            )
        self.after = float(seconds)
        self.reason = str(reason)
        super().__init__(self.reason or f"the job asked to be retried in {self.after:g}s")


class UnstorableError(NbJobsError):
    """The database refused the values written (too large for a field, a constraint): not a fault
    of the connection, so trying the same write again cannot help."""


class DatabaseUnavailableError(NbJobsError):
    """`connect()` could not reach the database (its server down or unreachable) in its tries."""


class StorageFullError(NbJobsError):
    """The database has no room for the write (its disk, or the PostgreSQL server's, is full): waiting
    a moment does not help, so it is not retried; the write was rolled back whole."""


class ResultUnavailableError(NbJobsError):
    """A job's result cannot be had: a job was given another job's result as an argument and that
    result is gone when it runs, or a result holds objects of code not importable where it is read."""


class JobTimeoutError(NbJobsError, TimeoutError):
    """The job ran longer than its `timeout=`."""


class WorkerCrashedError(NbJobsError):
    """A worker process died while running the job (killed, out of memory, a crash in native code).

    The attempt counts as failed and the job's retry policy applies; if it keeps happening, run the
    job with less data or on a machine with more memory, or on the thread executor to see the error.
    """


class NotebookError(NbJobsError):
    """A notebook job could not run to its end (kernel failed to start or died); the partial run is saved."""

    def __init__(self, message: str, *, output_path: str | None = None) -> None:
        super().__init__(message)
        self.output_path = output_path  #: where the (partially) executed notebook was saved

    def __reduce__(self) -> tuple[object, ...]:
        return type(self), (str(self),), self.__dict__


class NotebookCellError(NotebookError):
    """A cell of a notebook job raised: the cell index, the exception and its traceback are attached."""

    def __init__(
        self,
        message: str,
        *,
        cell_index: int = -1,
        ename: str = "",
        evalue: str = "",
        traceback: str = "",
        output_path: str | None = None,
    ) -> None:
        super().__init__(message, output_path=output_path)
        self.cell_index = cell_index  #: index of the failing cell in the saved (executed) notebook
        self.ename = ename  #: the exception type raised in the kernel, e.g. "ZeroDivisionError"
        self.evalue = evalue
        self.traceback = traceback  #: the kernel's traceback, without terminal colours


class NotebookCellTimeoutError(NotebookCellError, TimeoutError):
    """A cell of a notebook job ran longer than its `cell_timeout=`."""


class JobFailedError(NbJobsError):
    """`Job.result()` of a job that ended Failed or Deleted; carries the remote exception details."""

    def __init__(
        self,
        job_id: int,
        exc_type: str | None,
        message: str | None,
        traceback: str | None,
        state: str = "failed",
    ) -> None:
        self.job_id = job_id
        self.exc_type = exc_type
        self.remote_message = message
        self.remote_traceback = traceback
        self.state = state
        if state == "deleted":
            text = f"job {job_id} was deleted or cancelled before it produced a result"
        else:
            text = f"job {job_id} failed: {exc_type}: {message}"
        if traceback:
            text += "\n\nRemote traceback:\n" + traceback
        super().__init__(text)


class ResultTimeoutError(NbJobsError, TimeoutError):
    """`Job.result(timeout=…)` / `Job.wait(timeout=…)` expired before the job finished."""


def caller_stacklevel() -> int:
    """The `stacklevel` of `warnings.warn` that names the first frame outside nbjobs: the user's call,
    however many of our layers (module function, Engine, Client) lie between."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level
