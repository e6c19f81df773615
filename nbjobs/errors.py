"""One exception root for nbjobs; every message says what happened and how to fix it."""

from __future__ import annotations


class NbJobsError(Exception):
    """Root of every error nbjobs raises on purpose."""


class ConfigurationError(NbJobsError, ValueError):
    """An option, URL or argument given to nbjobs is not valid."""


class InvalidJobError(NbJobsError, ValueError):
    """A job cannot be created as asked (bad target, argument, delay or option); nothing was stored."""


class UnknownStateError(InvalidJobError):
    """A state name that nbjobs does not know."""


class IllegalTransitionError(NbJobsError):
    """A state change the job state machine does not allow (e.g. requeue of a job that is running)."""


class JobNotFoundError(NbJobsError, LookupError):
    """No job with this id exists (it may have expired or been removed)."""


class SchemaVersionError(NbJobsError):
    """The database was written by a newer nbjobs than the one running."""


class PayloadError(NbJobsError):
    """A stored payload cannot be read: bad signature, wrong key or unknown format."""


class FunctionNotFoundError(NbJobsError):
    """A stored function reference no longer resolves (renamed or removed in code)."""


class JobCancelled(NbJobsError):  # noqa: N818 - reads as an event, raised inside the job
    """Raised inside a running job by `check_cancelled()` when the job was cancelled."""


class JobTimeoutError(NbJobsError, TimeoutError):
    """The job ran longer than its `timeout=`."""


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
