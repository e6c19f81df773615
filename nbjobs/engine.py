"""The Engine a user holds: storage, client, an optional in-process server and pandas views, wired."""

from __future__ import annotations

import atexit
import functools
import importlib
import itertools
import logging
import multiprocessing.util  # noqa: F401  # registers its exit handler before ours (see _close_process_pools)
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, overload

import pandas as pd

from . import context, gather, private_queues
from . import history as views  # type: ignore[no-redef]  # `nbjobs.history` is also a function
from .capture import OutputCapture
from .client import (
    Client,
    InJob,
    Job,
    JobFunction,
    NotebookJob,
    Notifier,
    check_queue,
    check_timeout,
)
from .clock import Clock, SystemClock
from .copies import FUNCTION_COPY_MAX
from .errors import ConfigurationError, DuplicateServerWarning, NbJobsError, caller_stacklevel
from .model import PAYLOAD_CEILING, PAYLOAD_MAX, PRIVATE_QUEUE_MARK, ContinueOn, JobState, StateChange, When
from .payload import Codec, Signer, Target
from .progress import ProgressThrottle
from .rates import Rate, check_running_limit, parse_rate
from .recurring_client import Recurring
from .redact import DEFAULT_PATTERNS, Redactor, arguments_text, call_arguments
from .server import Server, ServerConfig
from .server.recurring import RecurringDuty
from .storage import SqlStore, Store
from .storage.dialects import absolute_sqlite

log = logging.getLogger("nbjobs")

DEFAULT_DB = "nbjobs.db"
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_created = itertools.count()  #: orders `engines()`


def default_url() -> str:
    """NBJOBS_URL, else ./nbjobs.db (SQLite in WAL mode)."""
    return os.environ.get("NBJOBS_URL") or f"sqlite:///{os.path.abspath(DEFAULT_DB)}"


class Engine:
    """Storage + client + server + history: everything `nbjobs.connect()` returns."""

    def __init__(
        self,
        url: str | None = None,
        *,
        clock: Clock | None = None,
        synchronous: str | None = None,
        secret: str | bytes | None = None,
        store: Store | None = None,
        max_payload: int = PAYLOAD_MAX,
        max_function_copy: int | None = None,
    ) -> None:
        if isinstance(max_payload, bool) or not isinstance(max_payload, int) or not (
                1 <= max_payload <= PAYLOAD_CEILING):  # before anything is opened
            raise ConfigurationError(
                f"max_payload must be a number of bytes from 1 to {PAYLOAD_CEILING:,} (a database field "
                f"holds about 1 GB), got {max_payload!r}"
            )
        if max_function_copy is None:  # 250 kB (`copies.FUNCTION_COPY_MAX`), within max_payload
            max_function_copy = min(FUNCTION_COPY_MAX, max_payload)
        if isinstance(max_function_copy, bool) or not isinstance(max_function_copy, int) or not (
                0 <= max_function_copy <= max_payload):
            raise ConfigurationError(
                f"max_function_copy must be a number of bytes from 0 (no notebook function is copied: "
                f"their jobs stay in this process) to max_payload ({max_payload:,}), "
                f"got {max_function_copy!r}"
            )
        if isinstance(url, os.PathLike):
            url = os.fspath(url)  # a path to a SQLite file, as a plain string path is taken
        if url is not None and not isinstance(url, str):
            raise ConfigurationError(
                f"url must be a database URL such as 'sqlite:///jobs.db' or 'postgresql://user@host/db', "
                f"or None for NBJOBS_URL or ./nbjobs.db; got {url!r}"
            )
        if secret is not None and (not isinstance(secret, str | bytes) or not secret):
            raise ConfigurationError(
                f"secret must be a non-empty string or bytes (every server of this database is given the "
                f"same), or None for NBJOBS_SECRET or the key file; got {secret!r}"
            )
        self.url = absolute_sqlite(url or default_url())  # a relative path: this folder's file, for good
        self.clock: Clock = clock or SystemClock()
        sync = self.synchronous = synchronous or os.environ.get("NBJOBS_SQLITE_SYNCHRONOUS", "FULL")
        self.store: Store = store or SqlStore(self.url, synchronous=sync)
        # An engine dropped without close() (a notebook cell with `nb = nbjobs.connect()`, run again)
        # releases its connections when collected: SQLAlchemy keeps a checked-out connection (the
        # writer's) alive by itself, so each one left two database file handles open for good.
        self._release = weakref.finalize(self, self.store.close)
        self._release.atexit = False  # at exit `_close_all` stops the servers first
        key = secret.encode() if isinstance(secret, str) else secret
        self.codec = Codec(Signer(key), max_bytes=max_payload, copy_max=max_function_copy)
        self.notifier = Notifier()
        self.notifier.local_cancel = self._local_cancel
        self.client = Client(self.store, self.codec, self.clock, self.notifier)
        self.server: Server | None = None
        self.output = OutputCapture(self.store, self.clock)
        self.progress_throttle = ProgressThrottle(self.store.set_progress)
        self._process_pool: Any = None
        self._lock = threading.Lock()
        self._closed = False
        self._created = next(_created)
        _engines.add(self)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """A notebook function's copy that uses this engine (`nb.enqueue(...)` in its body, `nb` a
        notebook variable) runs in other processes: there it stands for the engine of the job that
        runs it (`InJob`), not for a connection made again (which would carry the URL, password
        included, in every job)."""
        return (InJob, (None,))

    def __repr__(self) -> str:
        server = f"server {self.server.name} running" if self.server and self.server.running else "no server"
        return f"<nbjobs.Engine {self.url} ({server})>"

    # -- server ---------------------------------------------------------------------------------
    def start_server(
        self,
        workers: int | None = None,
        queues: Sequence[str] | None = None,
        **settings: Any,
    ) -> Server:
        """Start a server in background threads of this process: `workers` threads (4 by default)
        serving `queues` (all by default). While one runs, returns it (warning about any setting
        given that it does not have)."""
        if isinstance(queues, str):  # tuple("default") would serve queues "d", "e", "f", …
            raise ConfigurationError(
                f"queues takes a list of queue names, e.g. queues=[{queues!r}]; got the string {queues!r}"
            )
        with self._lock:
            if self.server is not None and self.server.running:
                self._warn_if_other_settings(workers, queues, settings)
                return self.server
            known = set(ServerConfig.__dataclass_fields__) - {"workers", "queues"}
            unknown = set(settings) - known
            if unknown:
                raise ConfigurationError(
                    f"unknown server setting(s) {sorted(unknown)}; known: {sorted(known)}"
                )
            workers = 4 if workers is None else workers
            config = ServerConfig(workers=workers, queues=tuple(queues or ("*",)), **settings)
            config.validate()  # before the executors are sized from it
            self._warn_if_another_server_here()
            # Every server fires recurring jobs; the storage claim keeps each fire time to one job.
            config.duties = [*config.duties, RecurringDuty(self.store, self.clock)]
            self.server = Server(
                store=self.store, clock=self.clock, codec=self.codec, config=config,
                wake=self.notifier.work, schedule_changed=self.notifier.schedule_changed,
                executors=self._executors(config), wrappers=self._wrappers(),
                progress_sink=self._progress_sink(), on_finished=self.notifier.finished, engine=self,
            )
            self.server.start()
            self.notifier.intake = self.server.dispatcher
            return self.server

    def _executors(self, config: ServerConfig) -> dict[str, Any]:
        """Extra executors by name (process, notebook); filled in by their modules when present."""
        from .executors.process import ProcessExecutor

        if self._process_pool is not None:
            self._process_pool.close()
        # Children start lazily, so a server that never runs a process job starts no process.
        self._process_pool = ProcessExecutor(
            size=config.workers, signer=self.codec.signer, clock=self.clock, max_payload=self.codec.max_bytes,
            engine_opener=functools.partial(connect, self.url, synchronous=self.synchronous),
            max_jobs=config.process_max_jobs, max_memory_mb=config.process_max_memory_mb,
        )
        return {"process": self._process_pool}

    def _wrappers(self) -> list[Any]:
        """Around every run in a worker thread: per-job output capture, then the last progress write."""
        return [self.output.wrap, self.progress_throttle.wrap]

    def _warn_if_other_settings(
        self, workers: int | None, queues: Sequence[str] | None, settings: dict[str, Any]
    ) -> None:
        """`start_server` while one runs returns it; settings given that it does not have would be
        ignored silently, so say so."""
        assert self.server is not None
        config = self.server.config
        # The private queues it serves besides are this process's, not asked for (`private_queues`).
        asked_for = tuple(q for q in config.queues if not private_queues.is_private_here(q))
        running = {**vars(config), "queues": asked_for}
        asked = {**settings, **({} if workers is None else {"workers": workers}),
                 **({} if queues is None else {"queues": tuple(queues)})}
        differ = sorted(name for name, value in asked.items() if running.get(name, value) != value)
        if differ:
            now = ", ".join(f"{name}={running[name]!r}" for name in differ)
            warnings.warn(
                f"a server already runs in this engine ({now}); it goes on as it is. To change "
                f"{', '.join(differ)}, call stop_server() first", stacklevel=3,
            )

    def _warn_if_another_server_here(self) -> None:
        """A cell with `nb = nbjobs.connect(); nb.start_server(workers=1)` run again starts a second
        server beside the first, whose engine the notebook no longer holds: twice the workers, each
        server's `limits` apart, so two "one at a time" jobs run at once. Say so, and how to stop it."""
        others = [engine.server.name for engine in list(_engines)
                  if engine is not self and engine.server is not None and engine.server.running
                  and engine.store.database == self.store.database]
        if others:
            warnings.warn(
                f"this process already runs a server on {self.store.database} ({', '.join(others)}), "
                "from another engine (a cell that connects and starts a server, run again?): both serve "
                "its queues now, each with its own workers and limits. To keep only this one: "
                "`for other in nbjobs.engines(): other is nb or other.close()`",
                DuplicateServerWarning, stacklevel=caller_stacklevel(),
            )

    def _progress_sink(self) -> Callable[[int, float | None, str | None], None] | None:
        return self.progress_throttle

    def stop_server(self, timeout: float | None = None) -> None:
        """Stop the in-process server: running jobs get `timeout` s (None: the server's
        `shutdown_timeout`), then return to their queue."""
        # Checked before anything stops: "5" failed half-way through, and NaN waited as for ever.
        check_timeout(timeout, "for the server's shutdown_timeout")
        self._refuse_stopping_from_own_job()
        with self._lock:
            server, self.server = self.server, None
            self.notifier.intake = None
        if server is not None:
            server.stop(timeout)
        pool, self._process_pool = self._process_pool, None
        if pool is not None:
            pool.close()

    def _refuse_stopping_from_own_job(self) -> None:
        """A job of this server stopping it would wait for itself until the shutdown timeout, then be
        put back in its queue, unfinished, to stop the next server that runs it: refuse at once."""
        ctx, server = context.current_job_or_none(), self.server
        if ctx is None or server is None:
            return
        if any(ctx.is_job(job_id, self.store.database) for job_id in server.dispatcher.running_ids()):
            raise ConfigurationError(
                f"job {ctx.id} runs on this engine's server, so stopping that server from inside it would "
                "wait for the job itself (and then put it back in its queue); stop the server from "
                "outside its jobs, or pause the queue from the job (nbjobs.pause_queue(...))"
            )

    def _local_cancel(self, job_id: int, reason: str) -> bool:
        server = self.server
        return server.request_cancel(job_id, reason) if server is not None else False

    def close(self) -> None:
        """Stop the server (if any) and release the database."""
        if self._closed:
            return
        self.stop_server()
        self.output.close()
        self.progress_throttle.close()
        self.notifier.close()
        self._release()  # store.close(), once
        self._closed = True

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- client ---------------------------------------------------------------------------------
    def enqueue(self, fn: Target, /, *args: Any, **kwargs: Any) -> Job:
        """Run `fn(*args, **kwargs)` in the background; returns at once."""
        return self.client.enqueue(fn, *args, **kwargs)

    def enqueue_many(self, fn: Target, arg_list: Any) -> list[Job]:
        return self.client.enqueue_many(fn, arg_list)

    def schedule(
        self, when: When, fn: Target, /, *args: Any, **kwargs: Any
    ) -> Job:
        """Run `fn` at `when`: a datetime (naive = local time), an ISO string such as
        "2026-12-01 07:00", a date (its local midnight), a timedelta or seconds from now."""
        return self.client.schedule(when, fn, *args, **kwargs)

    def after(
        self,
        parents: Iterable[int | Job],
        fn: Target,
        /,
        *args: Any,
        continue_on: ContinueOn | str = ContinueOn.SUCCEEDED,
        **kwargs: Any,
    ) -> Job:
        """Run `fn` once all `parents` succeeded (continue_on="finished": once all ended) — fan-in."""
        return self.client.after(parents, fn, *args, continue_on=continue_on, **kwargs)

    # -- many jobs at once ----------------------------------------------------------------------
    def wait(self, jobs: Iterable[int | Job] | pd.DataFrame, timeout: float | None = None,
             return_when: str = gather.ALL_COMPLETED, progress: bool = False) -> gather.DoneAndPending:
        """Wait for many jobs (Jobs, ids or a `jobs()` frame): all final, the first final
        (FIRST_COMPLETED) or the first not succeeded (FIRST_EXCEPTION); (done, pending) lists.
        `progress=True` shows a bar of the jobs that ended (here and in `as_completed`, `results`)."""
        return gather.wait(self.client, jobs, timeout, return_when, progress)

    def as_completed(self, jobs: Iterable[int | Job] | pd.DataFrame, timeout: float | None = None,
                     progress: bool = False) -> Iterator[Job]:
        """Yield each job as it becomes final, earliest first (`for job in nb.as_completed(runs)`)."""
        return gather.as_completed(self.client, jobs, timeout, progress)

    def watch(self, jobs: Iterable[int | Job] | pd.DataFrame) -> gather.JobsView:
        """Many jobs as one live view in a notebook (a bar of those that ended, counts by state),
        refreshed in the background while the notebook goes on; `.counts()` anywhere."""
        return gather.watch(self.client, jobs)

    def results(self, jobs: Iterable[int | Job] | pd.DataFrame, timeout: float | None = None,
                return_exceptions: bool = False, progress: bool = False) -> list[Any]:
        """Every job's return value in the order given; the first failure raises (or, with
        `return_exceptions=True`, stands in the list)."""
        return gather.results(self.client, jobs, timeout, return_exceptions, progress)

    def enqueue_notebook(
        self,
        path: str | os.PathLike[str],
        parameters: Mapping[str, Any] | None = None,
        *,
        kernel_name: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        cell_timeout: float | str | timedelta | None = None,
        export: str | Sequence[str] | None = None,
        hide_code: bool = False,
        latest: bool = False,
        snapshot: bool = False,
        at: When | None = None,
        **options: Any,
    ) -> NotebookJob:
        """Run a notebook with `parameters` as a job in a fresh kernel; `result()` is the executed run.
        `export="html"` (any nbconvert format, or a list) also writes the run as a report beside it
        (`hide_code=True`: its outputs only); `latest=True` copies a successful run to `*.latest.*`;
        `snapshot=True` runs the notebook as it is now, whatever is saved to the file before the run;
        `at` runs it later ("22:00", "2h", a datetime)."""
        return self.client.enqueue_notebook(path, parameters, kernel_name=kernel_name, cwd=cwd,
                                            output_dir=output_dir, cell_timeout=cell_timeout, export=export,
                                            hide_code=hide_code, latest=latest, snapshot=snapshot,
                                            at=at, **options)

    def options(self, **options: Any) -> Client:
        """A client with these job options: queue, priority, retries, timeout, key, name, …"""
        return self.client.options(**options)

    @overload
    def job(self, target: int | str, /) -> Job: ...
    @overload
    def job(self, target: Callable[..., Any], /, **options: Any) -> JobFunction: ...
    @overload
    def job(self, target: None = None, /, **options: Any) -> Callable[[Callable[..., Any]], JobFunction]: ...

    def job(self, target: Any = None, /, **options: Any) -> Any:
        """`nb.job(42)` → the Job with id 42; `@nb.job` or `@nb.job(queue=…)` → a job function."""
        if target is not None and not callable(target):  # 42 or "42"; "abc" or 4.2 is refused as an id
            return self.client.job(target)
        client = self.client.options(**options) if options else self.client  # checked now, not at use
        if target is None:
            return client.job_function
        return client.job_function(target)

    def recurring(
        self, recurring_id: str, cron: str | timedelta, fn: Target, /, *args: Any, **kwargs: Any
    ) -> Recurring:
        """Add or update (by id) a recurring job; options (tz, misfire, overlap, queue…) via
        `nb.options(...).recurring(...)`. Checked now: a bad expression or zone stores nothing."""
        return self.client.recurring(recurring_id, cron, fn, *args, **kwargs)

    def recurring_notebook(
        self,
        recurring_id: str,
        cron: str | timedelta,
        path: str | os.PathLike[str],
        parameters: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Recurring:
        """Add or update (by id) a notebook run on a cron schedule; takes enqueue_notebook's options."""
        return self.client.recurring_notebook(recurring_id, cron, path, parameters, **kwargs)

    def trigger(self, recurring_id: str) -> Job:
        """Run a recurring job once now; its schedule is unchanged."""
        return self.client.trigger(recurring_id)

    def pause(self, recurring_id: str) -> None:
        self.client.pause(recurring_id)

    def resume(self, recurring_id: str) -> None:
        """Fire again from the next fire time after now."""
        self.client.resume(recurring_id)

    def remove_recurring(self, recurring_id: str) -> bool:
        """Delete a recurring definition (its jobs stay); False if there was none."""
        return self.client.remove_recurring(recurring_id)

    @overload
    def requeue(self, jobs: int | str | Job, /) -> JobState: ...
    @overload
    def requeue(self, jobs: Iterable[int | Job] | pd.DataFrame, /) -> pd.DataFrame: ...

    def requeue(self, jobs: Any, /) -> Any:
        """Put a job that is not running back in its queue now. Given many (ids, Jobs, or a frame
        from `jobs()`, e.g. `nb.requeue(nb.jobs(state="failed"))`): a frame of id, state, error."""
        return self._change(self.client.requeue, jobs)

    @overload
    def delete(self, jobs: int | str | Job, /) -> JobState: ...
    @overload
    def delete(self, jobs: Iterable[int | Job] | pd.DataFrame, /) -> pd.DataFrame: ...

    def delete(self, jobs: Any, /) -> Any:
        """Delete a job (a running one is asked to stop); many as `requeue` takes them."""
        return self._change(self.client.delete, jobs)

    @overload
    def cancel(self, jobs: int | str | Job, /) -> JobState: ...
    @overload
    def cancel(self, jobs: Iterable[int | Job] | pd.DataFrame, /) -> pd.DataFrame: ...

    def cancel(self, jobs: Any, /) -> Any:
        """Cancel an unfinished job; many as `requeue` takes them."""
        return self._change(self.client.cancel, jobs)

    def _change(self, change: Callable[[int], JobState], jobs: Any) -> Any:
        """One change for one job (errors raise); for many, each in its own transaction and a frame
        saying what became of each (a job that cannot change is reported, not raised)."""
        if isinstance(jobs, int | str | Job):
            return change(self.client.job_id(jobs))
        ids = [job.id for job in gather.jobs_of(self.client, jobs)]  # all checked before any changes
        rows: list[tuple[int, str | None, str | None]] = []
        for job_id in ids:
            try:
                rows.append((job_id, change(job_id).value, None))
            except NbJobsError as exc:
                rows.append((job_id, None, str(exc)))
        return pd.DataFrame(rows, columns=["id", "state", "error"])

    # -- views ----------------------------------------------------------------------------------
    def jobs(self, state: Any = None, queue: Any = None, *, function: str | None = None,
             name: str | None = None, since: views.TimeFilter = None, until: views.TimeFilter = None,
             limit: int | None = views.DEFAULT_LIMIT, args: bool = False,
             redact: Sequence[str] = DEFAULT_PATTERNS, lock: str | None = None,
             recurring: str | None = None) -> pd.DataFrame:
        """Jobs as a DataFrame, newest first; filters run in the database. `args=True` adds an `args`
        column (decoded payloads, one read per job) where arguments named like `redact` show as ***.
        `name` selects the jobs given that exact name, e.g. a sweep enqueued with
        `options(name="sweep-3")`, to gather again after a restart: `nb.results(nb.jobs(name=…))`.
        `lock` selects the jobs of that lock: `nb.jobs("processing", lock="results.csv")` holds it.
        `recurring` the runs of that recurring definition (fired or triggered), however busy the rest.
        `since`/`until` (creation time) take a datetime (naive = local time), a date, an ISO string or
        a timedelta: `nb.jobs(since=timedelta(hours=1))` lists the last hour's."""
        frame = views.jobs_frame(self.store, state=state, queue=queue, function=function, name=name,
                                 since=since, until=until, limit=limit, lock=lock, recurring=recurring)
        if args:
            redactor = Redactor(redact)
            texts = []
            for job_id in frame["id"]:
                record = self.store.get(int(job_id))
                texts.append(None if record is None else arguments_text(
                    call_arguments(self.codec, redactor, record.function, record.payload)))
            frame["args"] = pd.array(texts, dtype="string")
        return frame

    def history(self, job_id: int | Job) -> pd.DataFrame:
        """A job's state transitions as a DataFrame."""
        return views.history_frame(self.store, self.client.job_id(job_id))

    def history_list(self, job_id: int) -> list[StateChange]:
        return self.store.history(self.client.job_id(job_id))

    def servers(self) -> pd.DataFrame:
        return views.servers_frame(self.store)

    def queues(self) -> pd.DataFrame:
        """Queues with unfinished jobs (or paused, or with a shared quota): counts by state, how long
        the oldest Enqueued job has waited (`longest_wait`: is the queue keeping up?), paused or not,
        and its shared rate and limit (`set_queue_rate`, `set_queue_limit`)."""
        return views.queues_frame(self.store, self.clock.now())

    def recurring_jobs(self) -> pd.DataFrame:
        """Recurring definitions: schedule, next and last run, last job and its state, pause, error."""
        return views.recurring_frame(self.store)

    def stats(self, freq: str = "1min", since: views.TimeFilter = None) -> pd.DataFrame:
        return views.stats_frame(self.store, freq=freq, since=since)

    def notebook_form(self, path: str | os.PathLike[str], **run_options: Any) -> Any:
        """A form to run the notebook at `path` as a job: one field per parameter of its `parameters`
        cell, with its default, and a Run button. `run_options` go to `enqueue_notebook` (queue=,
        export="html", hide_code=, …). Display it, or use `.run()`; `.jobs` holds the runs."""
        module = importlib.import_module("nbjobs.ui.notebook_form")  # ui sits above engine
        return module.NotebookForm(self, path, **run_options)

    def dashboard(
        self,
        read_only: bool = False,
        authorize: Callable[[str, Any], bool] | None = None,
        refresh: float | None = 2.0,
        redact: Sequence[str] | None = None,
        **options: Any,
    ) -> Any:
        """The ipywidgets dashboard. `read_only` hides every action; `authorize(action, job) -> bool`
        decides each one; arguments whose names match `redact` patterns show as ***."""
        # ui sits above engine: imported by name at call time, so `import nbjobs` stays free of it.
        module = importlib.import_module("nbjobs.ui.dashboard")
        kwargs: dict[str, Any] = {"read_only": read_only, "authorize": authorize, "refresh": refresh}
        if redact is not None:
            kwargs["redact"] = redact
        return module.Dashboard(self, **kwargs, **options)

    def counts(self) -> dict[str, int]:
        return {s.value: n for s, n in self.store.counts().items()}

    # -- queues ---------------------------------------------------------------------------------
    def pause_queue(self, queue: str) -> bool:
        """No server (on any machine) starts a job of `queue` until `resume_queue`; jobs running go on
        and new ones wait Enqueued. False if it was paused already."""
        return self.store.pause_queue(check_queue(queue), self.clock.now())

    def resume_queue(self, queue: str) -> bool:
        """Servers start the jobs of `queue` again (woken at once); False if it was not paused."""
        resumed = self.store.resume_queue(check_queue(queue))
        if resumed:
            self.notifier.work.set()  # this process's server, which a commit of ours does not wake
        return resumed

    def paused_queues(self) -> dict[str, datetime]:
        """The paused queues and when each was paused (UTC)."""
        return self.store.paused_queues()

    def set_queue_rate(self, queue: str, rate: str | Rate | None) -> bool:
        """Start at most so many jobs of `queue` in any period on all servers together: "60/m" (an
        API's quota, shared by every machine that calls it); None removes it. A server's own
        `rates=` is per server. Servers see it within a second; False if nothing changed."""
        queue = self._shared_queue(queue, "a shared rate")
        return self._quota_changed(self.store.set_queue_rate(
            queue, None if rate is None else parse_rate(rate), self.clock.now()))

    def set_queue_limit(self, queue: str, running: int | None) -> bool:
        """Run at most `running` jobs of `queue` at once on all servers together (a GPU box's memory,
        a database's connections, a licence's seats); None removes it. A server's own `limits=` is
        per server. Servers see it within a second; False if nothing changed."""
        queue = self._shared_queue(queue, "a shared limit")
        return self._quota_changed(self.store.set_queue_limit(
            queue, None if running is None else check_running_limit(running, queue), self.clock.now()))

    def _shared_queue(self, queue: str, what: str) -> str:
        queue = check_queue(queue)
        if PRIVATE_QUEUE_MARK in queue:
            raise ConfigurationError(f"queue {queue!r} is a kernel's private queue; {what} is for "
                                     "the queues servers share")
        return queue

    def _quota_changed(self, changed: bool) -> bool:
        if changed:
            self.notifier.work.set()  # this process's server: a quota removed or raised frees jobs
        return changed

    def queue_rates(self) -> dict[str, str]:
        """The shared rates by queue, as "60/m"."""
        return {queue: str(quota.rate) for queue, quota in self.store.queue_quotas().items() if quota.rate}

    def queue_limits(self) -> dict[str, int]:
        """The shared limits by queue: the most jobs running at once on all servers together."""
        return {queue: quota.running for queue, quota in self.store.queue_quotas().items()
                if quota.running is not None}


def connect(url: str | None = None, **kwargs: Any) -> Engine:
    """Open (and create on first use) a job database: NBJOBS_URL, else ./nbjobs.db."""
    server_settings = sorted(set(kwargs) & {"workers", "queues", *ServerConfig.__dataclass_fields__})
    if server_settings:  # a common slip: connect(url, workers=4)
        raise ConfigurationError(
            f"{', '.join(server_settings)} {'is a setting' if len(server_settings) == 1 else 'are settings'} "
            f"of the server, not of the database: nb = nbjobs.connect(url); "
            f"nb.start_server({', '.join(f'{k}=…' for k in server_settings)})"
        )
    return Engine(url, **kwargs)


def engines() -> list[Engine]:
    """The engines of this process not yet closed, oldest first (a notebook's earlier `connect()`s,
    the default engine): to find and close one whose variable was reassigned."""
    return sorted((e for e in list(_engines) if not e._closed), key=lambda e: e._created)


@atexit.register
def _close_process_pools() -> None:
    """Run after `_close_all` (registered before it) and before multiprocessing's exit handler
    (registered before this, by the import of multiprocessing.util above), which would wait for
    worker processes left open (they are not daemonic) for as long as they live."""
    process = sys.modules.get("nbjobs.executors.process")
    if process is not None:
        process.close_open_pools()


def discard_private_jobs(
    engine: Engine, reason: str = "its process ended: only that process could run it"
) -> int:
    """Delete the unfinished jobs of this process's private queues: no other process can ever run
    them (`private_queues`), so at exit they would wait for ever."""
    queues = private_queues.registered()
    if not queues or engine._closed:
        return 0
    unfinished = [s for s in JobState if not s.is_final and s is not JobState.PROCESSING]
    frame = engine.jobs(state=unfinished, queue=queues, limit=None)
    for job_id in frame["id"]:
        try:
            engine.client.delete(int(job_id), reason)
        except Exception:
            log.exception("could not delete job %d, which only this process could run", job_id)
    return len(frame)


@atexit.register
def _close_all() -> None:
    for engine in list(_engines):
        try:
            engine.stop_server(timeout=5.0)
            discard_private_jobs(engine)
        except Exception:
            log.exception("stopping the server at exit failed")
