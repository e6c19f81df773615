"""The process's default engine, behind `nbjobs.enqueue(...)`, `nbjobs.jobs()` and the magics.

Created on first use (or by `%load_ext nbjobs`) from the environment and `%nbjobs config`:
NBJOBS_URL (else ./nbjobs.db), NBJOBS_WORKERS (4), NBJOBS_QUEUES (comma-separated, default "*") and
NBJOBS_SERVER ("0" for a client-only engine that leaves the work to `nbjobs server` processes).
It starts a server in this process, so `nbjobs.enqueue(f).result()` just works in a notebook.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ALL_COMPLETED
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from . import private_queues
from .client import Client, InJob, Job, JobFunction, NotebookJob, check_options
from .context import current_job_or_none
from .engine import Engine, connect, discard_private_jobs
from .errors import ConfigurationError
from .executors.notebook import read_parameters
from .gather import DoneAndPending, JobsView
from .history import TimeFilter
from .model import ContinueOn, When
from .payload import Target
from .recurring_client import Recurring
from .server import ServerConfig

log = logging.getLogger("nbjobs")


_lock = threading.RLock()
_engine: Engine | None = None
_owned = False  # True when we created the engine (and so may close it)
_settings: dict[str, Any] = {}

_SERVER_KEYS = set(ServerConfig.__dataclass_fields__) - {"duties"}  # workers, queues, timeouts, …
_ENGINE_KEYS = {"max_payload", "max_function_copy"}  # `connect()` settings: a change makes a new engine
KNOWN_SETTINGS = frozenset({"url", "server", "secret"} | _ENGINE_KEYS | _SERVER_KEYS)


def env_settings() -> dict[str, Any]:
    """Settings from the environment (NBJOBS_URL, NBJOBS_WORKERS, NBJOBS_QUEUES, NBJOBS_SERVER)."""
    out: dict[str, Any] = {}
    if os.environ.get("NBJOBS_URL"):
        out["url"] = os.environ["NBJOBS_URL"]
    if os.environ.get("NBJOBS_WORKERS"):
        try:
            out["workers"] = int(os.environ["NBJOBS_WORKERS"])
        except ValueError:
            raise ConfigurationError(
                f"NBJOBS_WORKERS must be a whole number, got {os.environ['NBJOBS_WORKERS']!r}"
            ) from None
    if os.environ.get("NBJOBS_QUEUES"):
        out["queues"] = [q.strip() for q in os.environ["NBJOBS_QUEUES"].split(",") if q.strip()]
    if os.environ.get("NBJOBS_SERVER"):
        out["server"] = os.environ["NBJOBS_SERVER"].strip().lower() not in ("0", "false", "no", "off")
    return out


def settings() -> dict[str, Any]:
    """The effective settings: environment, overridden by `configure()` / `%nbjobs config`."""
    return {**env_settings(), **_settings}


def _server_settings(conf: dict[str, Any]) -> dict[str, Any]:
    """The server's share of `conf`, queues as a list (it adds this process's private queues)."""
    server_conf = {k: v for k, v in conf.items() if k in _SERVER_KEYS}
    queues = server_conf.pop("queues", None) or ["*"]
    if isinstance(queues, str):
        queues = [q.strip() for q in queues.split(",") if q.strip()]
    server_conf["queues"] = list(queues)
    return server_conf


def _check(conf: dict[str, Any]) -> None:
    """Refuse settings a server cannot start with, before anything running is stopped."""
    server_conf = _server_settings(conf)
    workers = server_conf.pop("workers", 4)
    queues = tuple(server_conf.pop("queues"))
    ServerConfig(workers=workers, queues=queues, **server_conf).validate()


def _start(engine: Engine, conf: dict[str, Any]) -> None:
    server = engine.start_server(**_server_settings(conf))
    log.info("default engine %s: server %s started", engine.url, server.name,
             extra={"action": "default_engine_start"})


def _connect(conf: dict[str, Any]) -> Engine:
    extra = {key: conf[key] for key in _ENGINE_KEYS if key in conf}
    return connect(conf.get("url"), secret=conf.get("secret"), **extra)


def default_engine() -> Engine:
    """The default engine, created (and its server started) on first use.

    Inside a job, the engine of the database the job came from (`current_job().engine`): a job
    that calls `nbjobs.enqueue(...)` adds to its own database, whatever server runs it (`nbjobs
    server --url …`, a worker process), and never opens another database or starts a server there.
    """
    job = current_job_or_none()
    if job is not None and job.has_engine:
        engine: Engine = job.engine
        return engine
    global _engine, _owned
    with _lock:
        if _engine is None or _engine._closed:
            conf = settings()
            _engine = _connect(conf)
            _owned = True
            if conf.get("server", True):
                _start(_engine, conf)
        return _engine


InJob.process_default = default_engine


def set_default_engine(engine: Engine | None) -> Engine | None:
    """Make `engine` the default (None forgets it); returns the previous one, left running."""
    global _engine, _owned
    with _lock:
        previous, _engine, _owned = _engine, engine, False
        return previous


def current_default() -> Engine | None:
    """The default engine if one exists; never creates it."""
    return _engine


def configure(**changes: Any) -> Engine:
    """Change default-engine settings (`%nbjobs config key=value`); restarts what they affect.

    Settings that cannot work are refused before anything changes: the running server and engine
    stay as they were, and the refused values are not kept for the next start.
    """
    unknown = set(changes) - KNOWN_SETTINGS
    if unknown:
        raise ConfigurationError(
            f"unknown nbjobs setting(s) {sorted(unknown)}; known: {sorted(KNOWN_SETTINGS)}"
        )
    global _engine, _owned
    with _lock:
        conf = {**settings(), **changes}
        if conf.get("server", True):
            _check(conf)
        engine = _engine
        if engine is None or engine._closed:
            fresh = _connect(conf)
        elif ({"url", "secret"} | _ENGINE_KEYS) & set(changes) and _owned:
            fresh = _connect(conf)  # a URL that cannot work fails here, the old engine still running
            close_default()
        else:
            _settings.update(changes)
            if engine.server is not None:
                engine.stop_server()
            if conf.get("server", True):
                _start(engine, conf)
            return engine
        _settings.update(changes)
        _engine, _owned = fresh, True
        if conf.get("server", True):
            _start(fresh, conf)
        return fresh


def close_default(timeout: float | None = None) -> None:
    """Stop the default engine's server (running jobs get `timeout` s) and close it if we made it."""
    global _engine, _owned
    with _lock:
        engine, owned = _engine, _owned
        _engine, _owned = None, False
    if engine is None:
        return
    engine.stop_server(timeout)
    discard_private_jobs(engine, "nbjobs stopped in its kernel (%unload_ext, or the kernel's end): only "
                                 "that kernel could run it")
    if owned:
        engine.close()


def private_queue(name: str = "default") -> str:
    """This process's private queue for `name` (`private_queues.private_queue`); starts the default
    engine, whose server serves it, if nothing runs yet."""
    queue = private_queues.private_queue(name)
    default_engine()
    return queue


# -- module-level API on the default engine --------------------------------------------------------


def enqueue(fn: Target, /, *args: Any, **kwargs: Any) -> Job:
    """`nbjobs.enqueue(fn, *args)`: run `fn` in the background on the default engine."""
    return default_engine().enqueue(fn, *args, **kwargs)


def enqueue_many(fn: Target, arg_list: Any) -> list[Job]:
    """Many calls of `fn` in one transaction, on the default engine (see `Engine.enqueue_many`)."""
    return default_engine().enqueue_many(fn, arg_list)


def schedule(when: When, fn: Target, /, *args: Any,
             **kwargs: Any) -> Job:
    """`nbjobs.schedule(60, fn, *args)`: run `fn` later on the default engine."""
    return default_engine().schedule(when, fn, *args, **kwargs)


def after(parents: Iterable[int | Job], fn: Target, /, *args: Any,
          continue_on: ContinueOn | str = ContinueOn.SUCCEEDED, **kwargs: Any) -> Job:
    """`nbjobs.after([a, b, c], combine)`: run `combine` once all of them succeeded (default engine)."""
    return default_engine().after(parents, fn, *args, continue_on=continue_on, **kwargs)


def wait(jobs: Iterable[int | Job] | pd.DataFrame, timeout: float | None = None,
         return_when: str = ALL_COMPLETED, progress: bool = False) -> DoneAndPending:
    """`nbjobs.wait(runs)`: wait for many jobs on the default engine; (done, pending)."""
    return default_engine().wait(jobs, timeout, return_when, progress)


def as_completed(jobs: Iterable[int | Job] | pd.DataFrame, timeout: float | None = None,
                 progress: bool = False) -> Iterator[Job]:
    """`for job in nbjobs.as_completed(runs)`: each job as it becomes final (default engine)."""
    return default_engine().as_completed(jobs, timeout, progress)


def results(jobs: Iterable[int | Job] | pd.DataFrame, timeout: float | None = None,
            return_exceptions: bool = False, progress: bool = False) -> list[Any]:
    """`nbjobs.results(runs, progress=True)`: every job's return value, in order (default engine)."""
    return default_engine().results(jobs, timeout, return_exceptions, progress)


def watch(jobs: Iterable[int | Job] | pd.DataFrame) -> JobsView:
    """`nbjobs.watch(runs)` as a cell's last line: a live view of many jobs (default engine)."""
    return default_engine().watch(jobs)


def enqueue_notebook(path: str | os.PathLike[str], parameters: dict[str, Any] | None = None,
                     **kwargs: Any) -> NotebookJob:
    """`nbjobs.enqueue_notebook("report.ipynb", {"region": "EMEA"})` on the default engine."""
    return default_engine().enqueue_notebook(path, parameters, **kwargs)


def options(**opts: Any) -> Client:
    """`nbjobs.options(queue="io", retries=5).enqueue(fn)` on the default engine."""
    return default_engine().options(**opts)


class _LazyJobFunction(JobFunction):
    """`@nbjobs.job` at import time: binds to the default engine only when first enqueued."""

    def __init__(self, fn: Callable[..., Any], opts: dict[str, Any]) -> None:
        self._opts = opts
        super().__init__(fn, None)  # type: ignore[arg-type]

    @property  # type: ignore[override]
    def client(self) -> Client:
        engine = default_engine()
        return engine.options(**self._opts) if self._opts else engine.client

    @client.setter
    def client(self, value: Client | None) -> None:
        pass  # the default engine is looked up at each use

    def _with_function(self, fn: Callable[..., Any]) -> JobFunction:
        return _LazyJobFunction(fn, self._opts)  # a method called directly opens no engine


def job(target: Any = None, /, **opts: Any) -> Any:
    """`nbjobs.job(42)` → that Job; `@nbjobs.job` / `@nbjobs.job(queue=…)` → a job function."""
    if target is not None and not callable(target):  # 42 or "42"; "abc" or 4.2 is refused as an id
        return default_engine().job(target)
    check_options(opts)  # at the decorator, not at the first enqueue
    if target is None:
        return lambda fn: _LazyJobFunction(fn, opts)
    return _LazyJobFunction(target, opts)


def jobs(state: Any = None, queue: Any = None, **filters: Any) -> pd.DataFrame:
    """Jobs of the default engine as a DataFrame (filters run in the database)."""
    return default_engine().jobs(state, queue, **filters)


def requeue(jobs: Any, /) -> Any:
    """Requeue a finished job, or many (ids, Jobs or a `jobs()` frame: a frame of outcomes)."""
    return default_engine().requeue(jobs)


def delete(jobs: Any, /) -> Any:
    """Delete a job, or many as `requeue` takes them."""
    return default_engine().delete(jobs)


def cancel(jobs: Any, /) -> Any:
    """Cancel an unfinished job, or many as `requeue` takes them."""
    return default_engine().cancel(jobs)


def counts() -> dict[str, int]:
    """How many jobs are in each state."""
    return default_engine().counts()


def notebook_form(path: str | os.PathLike[str], **run_options: Any) -> Any:
    """A form running the notebook at `path` with its parameters on the default engine."""
    return default_engine().notebook_form(path, **run_options)


def notebook_parameters(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The parameters a notebook declares in its `parameters` cell, one row each: name, default (as
    written), value (the default when a literal), type (its annotation), help (its comment); what
    `enqueue_notebook(path, {...})` can set. Needs no engine."""
    rows = [{"name": p.name, "default": p.default, "value": p.value if p.literal else None,
             "type": p.annotation, "help": p.help} for p in read_parameters(path)]
    return pd.DataFrame(rows, columns=["name", "default", "value", "type", "help"], dtype=object)


def dashboard(**kwargs: Any) -> Any:
    """The dashboard widget of the default engine (`%jobs` shows it)."""
    return default_engine().dashboard(**kwargs)


def history(job_id: int | Job) -> pd.DataFrame:
    return default_engine().history(job_id)


def servers() -> pd.DataFrame:
    return default_engine().servers()


def queues() -> pd.DataFrame:
    """Per queue: unfinished jobs by state, the longest wait, paused (default engine)."""
    return default_engine().queues()


def recurring(
    recurring_id: str, cron: str | timedelta, fn: Target, /, *args: Any, **kwargs: Any
) -> Recurring:
    """`nbjobs.recurring("nightly", "0 2 * * *", fn)`: add or update a recurring job on the default engine."""
    return default_engine().recurring(recurring_id, cron, fn, *args, **kwargs)


def recurring_notebook(recurring_id: str, cron: str | timedelta, path: str | os.PathLike[str],
                       parameters: dict[str, Any] | None = None, **kwargs: Any) -> Recurring:
    """`nbjobs.recurring_notebook("daily", "0 7 * * *", "report.ipynb", {...})` on the default engine."""
    return default_engine().recurring_notebook(recurring_id, cron, path, parameters, **kwargs)


def trigger(recurring_id: str) -> Job:
    return default_engine().trigger(recurring_id)


def pause(recurring_id: str) -> None:
    default_engine().pause(recurring_id)


def resume(recurring_id: str) -> None:
    default_engine().resume(recurring_id)


def pause_queue(queue: str) -> bool:
    """No server starts a job of `queue` until `resume_queue` (see `Engine.pause_queue`)."""
    return default_engine().pause_queue(queue)


def resume_queue(queue: str) -> bool:
    return default_engine().resume_queue(queue)


def paused_queues() -> dict[str, datetime]:
    return default_engine().paused_queues()


def set_queue_rate(queue: str, rate: Any) -> bool:
    """At most so many starts of `queue` on all servers together (see `Engine.set_queue_rate`)."""
    return default_engine().set_queue_rate(queue, rate)


def queue_rates() -> dict[str, str]:
    return default_engine().queue_rates()


def set_queue_limit(queue: str, running: Any) -> bool:
    """At most so many `queue` jobs running on all servers together (see `Engine.set_queue_limit`)."""
    return default_engine().set_queue_limit(queue, running)


def queue_limits() -> dict[str, int]:
    return default_engine().queue_limits()


def remove_recurring(recurring_id: str) -> bool:
    return default_engine().remove_recurring(recurring_id)


def recurring_jobs() -> pd.DataFrame:
    return default_engine().recurring_jobs()


def stats(freq: str = "1min", since: TimeFilter = None) -> pd.DataFrame:
    return default_engine().stats(freq=freq, since=since)
