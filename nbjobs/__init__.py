"""nbjobs: a persistent background job engine for Jupyter and Python.

    import nbjobs
    nb = nbjobs.connect()                  # NBJOBS_URL, else ./nbjobs.db
    nb.start_server(workers=4)
    job = nb.enqueue(train, df, epochs=5)
    job.result()
"""

from __future__ import annotations

from typing import Any

from .client import Client, Job, JobFunction, NotebookJob
from .clock import ManualClock, SystemClock
from .context import JobContext, check_cancelled, current_job
from .default import (
    after,
    as_completed,
    cancel,
    counts,
    dashboard,
    default_engine,
    delete,
    enqueue,
    enqueue_many,
    enqueue_notebook,
    history,
    job,
    jobs,
    notebook_form,
    notebook_parameters,
    options,
    pause,
    pause_queue,
    paused_queues,
    queue_limits,
    queue_rates,
    queues,
    recurring,
    recurring_jobs,
    recurring_notebook,
    remove_recurring,
    requeue,
    results,
    resume,
    resume_queue,
    schedule,
    servers,
    set_default_engine,
    set_queue_limit,
    set_queue_rate,
    stats,
    trigger,
    wait,
    watch,
)
from .engine import Engine, connect, default_url, engines
from .errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    DuplicateServerWarning,
    FunctionNotFoundError,
    IllegalTransitionError,
    InvalidJobError,
    InvalidScheduleError,
    JobCancelled,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    NbJobsError,
    NoParametersCellWarning,
    NotebookCellError,
    NotebookCellTimeoutError,
    NotebookError,
    NotImportableHereWarning,
    PayloadError,
    RecurringNotFoundError,
    ResultTimeoutError,
    ResultUnavailableError,
    Retry,
    RunsOnlyHereWarning,
    SchemaVersionError,
    StorageFullError,
    UnknownParameterWarning,
    UnknownStateError,
)
from .gather import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, DoneAndPending, JobsView
from .model import ContinueOn, JobState
from .progress import progress
from .recurring_client import Recurring
from .ui import display as _display  # noqa: F401 - installs Job's rich display

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext nbjobs`: start the default engine in this kernel and register the magics."""
    from .ui.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """`%unload_ext nbjobs`: stop the default engine's server gracefully."""
    from .ui.magics import unload_ipython_extension as unload

    unload(ipython)

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Client",
    "ConfigurationError",
    "ContinueOn",
    "DatabaseUnavailableError",
    "DoneAndPending",
    "DuplicateServerWarning",
    "Engine",
    "FunctionNotFoundError",
    "IllegalTransitionError",
    "InvalidJobError",
    "InvalidScheduleError",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobFailedError",
    "JobFunction",
    "JobNotFoundError",
    "JobState",
    "JobTimeoutError",
    "JobsView",
    "ManualClock",
    "NbJobsError",
    "NoParametersCellWarning",
    "NotImportableHereWarning",
    "NotebookCellError",
    "NotebookCellTimeoutError",
    "NotebookError",
    "NotebookJob",
    "PayloadError",
    "Recurring",
    "RecurringNotFoundError",
    "ResultTimeoutError",
    "ResultUnavailableError",
    "Retry",
    "RunsOnlyHereWarning",
    "SchemaVersionError",
    "StorageFullError",
    "SystemClock",
    "UnknownParameterWarning",
    "UnknownStateError",
    "__version__",
    "after",
    "as_completed",
    "cancel",
    "check_cancelled",
    "connect",
    "counts",
    "current_job",
    "dashboard",
    "default_engine",
    "default_url",
    "delete",
    "engines",
    "enqueue",
    "enqueue_many",
    "enqueue_notebook",
    "history",
    "job",
    "jobs",
    "load_ipython_extension",
    "notebook_form",
    "notebook_parameters",
    "options",
    "pause",
    "pause_queue",
    "paused_queues",
    "progress",
    "queue_limits",
    "queue_rates",
    "queues",
    "recurring",
    "recurring_jobs",
    "recurring_notebook",
    "remove_recurring",
    "requeue",
    "results",
    "resume",
    "resume_queue",
    "schedule",
    "servers",
    "set_default_engine",
    "set_queue_limit",
    "set_queue_rate",
    "stats",
    "trigger",
    "unload_ipython_extension",
    "wait",
    "watch",
]
