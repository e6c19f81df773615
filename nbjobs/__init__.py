"""nbjobs: a persistent background job engine for Jupyter and Python.

    import nbjobs
    nb = nbjobs.connect()                  # NBJOBS_URL, else ./nbjobs.db
    nb.start_server(workers=4)
    job = nb.enqueue(train, df, epochs=5)
    job.result()
"""

from __future__ import annotations

from .client import Client, Job, JobFunction
from .clock import ManualClock, SystemClock
from .context import JobContext, check_cancelled, current_job
from .engine import Engine, connect, default_url
from .errors import (
    ConfigurationError,
    FunctionNotFoundError,
    IllegalTransitionError,
    InvalidJobError,
    JobCancelled,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    NbJobsError,
    PayloadError,
    ResultTimeoutError,
    SchemaVersionError,
    UnknownStateError,
)
from .model import ContinueOn, JobState

__version__ = "0.1.0"

__all__ = [
    "Client", "ConfigurationError", "ContinueOn", "Engine", "FunctionNotFoundError",
    "IllegalTransitionError", "InvalidJobError", "Job", "JobCancelled", "JobContext", "JobFailedError",
    "JobFunction", "JobNotFoundError", "JobState", "JobTimeoutError", "ManualClock", "NbJobsError",
    "PayloadError", "ResultTimeoutError", "SchemaVersionError", "SystemClock", "UnknownStateError",
    "__version__", "check_cancelled", "connect", "current_job", "default_url",
]
