"""The client: creates jobs (validated at the call, before anything is stored) and the `Job` handle."""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextvars
import dataclasses
import functools
import inspect
import math
import os
import sys
import threading
import warnings
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import context, notebooks, private_queues, recurring_client
from .callbacks import DoneCallbacks
from .capture import as_shown
from .clock import Clock, seconds_of
from .copies import BOUND_FIX, NOT_COPIED
from .errors import (
    InvalidJobError,
    JobFailedError,
    JobNotFoundError,
    NbJobsError,
    ResultTimeoutError,
    ResultUnavailableError,
    RunsOnlyHereWarning,
    caller_stacklevel,
    is_seconds,
)
from .executors.coroutines import complete
from .executors.notebook import NOTEBOOK_FUNCTION, notebook_call, run_notebook
from .executors.thread import with_results
from .model import (
    FINAL_STATES,
    KEY_MAX,
    LONGEST_SECONDS,
    NAME_MAX,
    PRIORITY_MAX,
    PRIORITY_MIN,
    PRIVATE_QUEUE_MARK,
    QUEUE_MAX,
    ClaimedJob,
    ContinueOn,
    JobOptions,
    JobRecord,
    JobResult,
    JobState,
    NewJob,
    StateChange,
    When,
    padded_queue,
    resolve_when,
    unstorable_character,
)
from .payload import SERIALIZERS, Codec, ResultOf, Target, function_ref
from .redact import short_repr
from .storage import LocalClaim, Store

if TYPE_CHECKING:  # nbformat (with jsonschema) loads on first use: `import nbjobs` stays fast
    from nbformat import NotebookNode

EXECUTORS = ("thread", "process")
#: Options a job accepts; anything else is refused at the call with this list.
JOB_OPTIONS = frozenset(JobOptions.__dataclass_fields__)
#: Rich display of a Job ("html" → str, "display" → shows it), installed by `nbjobs.ui.display`
#: (a higher layer) when nbjobs is imported.
DISPLAY_HOOKS: dict[str, Callable[[Job], Any]] = {}
#: Called with the jobs of every `submit` in this process, in the submitting thread, once stored:
#: `ui.cells` notes which notebook cell each was enqueued from.
SUBMIT_HOOKS: list[Callable[[Sequence[Job]], None]] = []


def _exception_names(value: Any, option: str) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple | set | frozenset) else [value]
    names: list[str] = []
    for item in items:
        if isinstance(item, type) and issubclass(item, BaseException):
            names.append(item.__name__)
        elif isinstance(item, str) and item:
            names.append(_exception_name(item, option))
        else:
            raise InvalidJobError(f"{option} takes exception classes or their names, got {item!r}")
    return tuple(names)


def _exception_name(name: str, option: str) -> str:
    """`name` as retries match it, checked as far as this process can: a name that can never match
    would silently turn retries off (`retry_on`) or leave them on (`no_retry_on`)."""
    if not all(part.isidentifier() for part in name.split(".")):
        raise InvalidJobError(
            f"{option} entry {name!r} is not an exception name; give a list of names or classes, "
            f"e.g. {option}=['ValueError', 'requests.exceptions.Timeout']"
        )
    if "." not in name:
        found = getattr(builtins, name, None)
        if found is not None and not (isinstance(found, type) and issubclass(found, BaseException)):
            raise InvalidJobError(f"{option} entry {name!r} is a built-in but not an exception class")
        return name  # any class of that name matches, wherever it is defined
    # A dotted name matches the module where the class is defined: `requests.Timeout` is re-exported
    # from `requests.exceptions`, so it is stored as that. Only modules already imported are looked
    # in (the job's own imports), so checking never imports anything.
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        found = module
        for attribute in parts[cut:]:
            found = getattr(found, attribute, None)
        if not (isinstance(found, type) and issubclass(found, BaseException)):
            raise InvalidJobError(
                f"{option} entry {name!r}: module {module.__name__} has no exception class "
                f"{'.'.join(parts[cut:])}; check the name, or pass the class itself"
            )
        return f"{found.__module__}.{found.__qualname__}"
    return name  # its module is not imported here: the servers' may know it


def check_queue(queue: object) -> str:
    """A queue name as a job's `queue` option takes it, else InvalidJobError naming the fix."""
    build_options({}, {"queue": queue})
    assert isinstance(queue, str)
    return queue


def build_options(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> JobOptions:
    """Merge and validate job options; raise InvalidJobError naming the bad one and the fix."""
    unknown = set(overrides) - JOB_OPTIONS
    if unknown:
        raise InvalidJobError(
            f"unknown job option(s) {sorted(unknown)}; known options are {sorted(JOB_OPTIONS)}"
        )
    merged = {**defaults, **overrides}
    queue = merged.get("queue", "default")
    if not isinstance(queue, str) or not queue.strip() or queue == "*":
        raise InvalidJobError(f"queue must be a non-empty name (not '*'), got {queue!r}")
    if (padding := padded_queue(queue)) is not None:
        raise InvalidJobError(padding)
    for name in ("priority", "retries"):
        value = merged.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidJobError(f"{name} must be an integer, got {value!r}")
    if not PRIORITY_MIN <= merged.get("priority", 0) <= PRIORITY_MAX:
        raise InvalidJobError(
            f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}, got {merged['priority']}; "
            "small numbers such as 1 or 10 are enough to order jobs"
        )
    if merged.get("retries", 0) < 0:
        raise InvalidJobError(f"retries must be 0 or more, got {merged['retries']}")
    for name in ("timeout", "expires"):
        seconds = seconds_of(merged.get(name))
        if seconds is None:
            continue
        if not is_seconds(seconds, zero=False):
            raise InvalidJobError(
                f"{name} must be a positive number of seconds (at most {LONGEST_SECONDS:,.0f}, 100 years), "
                f"a duration such as '10m' or a timedelta, got {merged[name]!r}; leave it out for no limit"
            )
        merged[name] = float(seconds)
    for name in ("retry_base", "retry_cap"):
        value = seconds_of(merged.get(name))
        if value is not None and not is_seconds(value):
            raise InvalidJobError(
                f"{name} must be a number of seconds from 0 to {LONGEST_SECONDS:,.0f} (100 years), "
                f"a duration such as '30s' or a timedelta, got {merged[name]!r}"
            )
        if value is not None:
            merged[name] = value
    if merged.get("executor", "thread") not in EXECUTORS:
        raise InvalidJobError(f"executor must be one of {EXECUTORS}, got {merged['executor']!r}")
    if merged.get("serializer", "pickle") not in SERIALIZERS:
        raise InvalidJobError(f"serializer must be one of {SERIALIZERS}, got {merged['serializer']!r}")
    for name, longest in (("name", NAME_MAX), ("key", KEY_MAX), ("lock", KEY_MAX), ("queue", QUEUE_MAX)):
        value = merged.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidJobError(f"{name} must be a string, got {value!r}")
        bad = None if value is None else unstorable_character(value)
        if bad is not None:
            raise InvalidJobError(f"{name} {value!r} contains {bad}, which the database cannot store; "
                                  "remove it")
        if value is not None and len(value) > longest:
            raise InvalidJobError(
                f"{name} {value[:40]!r}… is {len(value)} characters; use at most {longest}"
                + (f" (a hash of a long {name} is as unique)" if name in ("key", "lock") else "")
            )
    if merged.get("lock") == "":
        raise InvalidJobError("lock must be a non-empty name, e.g. lock='sales-table'; leave it out for none")
    for name in ("retry_on", "no_retry_on"):
        if merged.get(name):
            merged[name] = _exception_names(merged[name], name)
    return JobOptions(**merged)


def check_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], JobOptions]:
    """Options split and checked as a `Client` keeps them: the job options as given, the
    recurring-only ones (tz, misfire, misfire_limit, misfire_grace, overlap, start, end), and the job
    options validated. Needs no engine, so decorators check theirs where they decorate, long before the
    first enqueue."""
    job_defaults = dict(options)
    recurring = recurring_client.split_options(job_defaults)  # takes out and checks the recurring ones
    return job_defaults, recurring, build_options({}, job_defaults)


#: Longest single wait of `Job.wait_async` on its worker thread (seconds).
_ASYNC_ROUND = 0.25
#: Most parents a continuation may wait for (`after`, or Jobs as arguments): one statement lists
#: them all (SQLite takes 32,766 values in one, PostgreSQL 65,535), and each batch of finishing
#: parents reads the states of all of them: 10,000 no-op parents take 1.9x as long with the fan-in
#: as without on SQLite, 2.0x on PostgreSQL (`python benchmarks/fan_in.py [--url …]`).
MAX_PARENTS = 10_000
#: A history reason is shown in tables; a long list of parents is cut.
REASON_MAX = 500


def _run_here_only(ref: str, opts: JobOptions, why: str) -> JobOptions:
    """Options for a job only this process can run (its notebook function could not be copied into
    it): its queue's private queue here, which only this process's servers serve, so no other server
    takes it and fails it."""
    queue = opts.queue if PRIVATE_QUEUE_MARK in opts.queue else private_queues.private_queue(opts.queue)
    if why == NOT_COPIED:  # asked for: nothing to warn about
        return dataclasses.replace(opts, queue=queue)
    idle = "" if private_queues.serving() else " No server runs in this process now: start one, or they wait."
    warnings.warn(
        f"function {ref} is not copied into its jobs: it {why}. They run only on this process's own "
        f"servers (queue {queue!r}).{idle} {BOUND_FIX}",
        RunsOnlyHereWarning, stacklevel=caller_stacklevel(),
    )
    return dataclasses.replace(opts, queue=queue)


def _has_job(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    for value in args:
        if isinstance(value, Job):
            return True
    return any(isinstance(value, Job) for value in kwargs.values()) if kwargs else False


def _continue_on(value: ContinueOn | str) -> ContinueOn:
    try:
        return ContinueOn(value)
    except ValueError:
        raise InvalidJobError(
            f"continue_on must be one of {[c.value for c in ContinueOn]}, got {value!r}"
        ) from None


#: Job ids are 64-bit: anything larger (or below 1) cannot name a stored job.
_LARGEST_ID = 2**63 - 1


def job_id_of(value: object) -> int:
    """A job id from an int, a digit string or a Job; InvalidJobError for anything else, and
    JobNotFoundError for a number no job can have (so huge ids fail as clearly as unknown ones)."""
    if isinstance(value, Job):
        return value.id
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidJobError(f"a job id is a whole number such as 42, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise InvalidJobError(f"a job id is a whole number such as 42, got {value!r}") from None
    if not 1 <= number <= _LARGEST_ID:
        raise JobNotFoundError(f"job {number} does not exist (job ids run from 1)")
    return number


class LocalIntake(Protocol):
    """The in-process server's side of an enqueue that claims for it (`Store.enqueue_and_acquire`)."""

    def reserve(self, specs: Sequence[NewJob], now: datetime) -> LocalClaim | None: ...
    def accept(self, claim: LocalClaim, jobs: Sequence[ClaimedJob]) -> None: ...
    def release(self, claim: LocalClaim) -> None: ...


class Notifier:
    """In-process wake-ups: new work for the local server, finished jobs for local waiters."""

    def __init__(self) -> None:
        #: The running in-process server's free workers, claimed by enqueues in their own transaction.
        self.intake: LocalIntake | None = None
        self.work = threading.Event()  #: set on enqueue: the local dispatcher wakes at once
        self.schedule_changed = threading.Event()  #: set on schedule: the scheduler recomputes
        self._finished = threading.Condition()
        self._lock = threading.Lock()
        self.local_cancel: Callable[[int, str], bool] | None = None
        self.done_callbacks: DoneCallbacks | None = None  #: created with the first callback

    def finished(self, job_ids: Sequence[int]) -> None:
        """Outcomes of `job_ids` were stored here (final or not): wake waiters and the callback watcher."""
        with self._finished:
            self._finished.notify_all()
        if self.done_callbacks is not None:
            self.done_callbacks.poke(job_ids)

    def callbacks_for(self, store: Store, clock: Clock) -> DoneCallbacks:
        with self._lock:
            if self.done_callbacks is None:
                self.done_callbacks = DoneCallbacks(store, clock)
            return self.done_callbacks

    def close(self) -> None:
        if self.done_callbacks is not None:
            self.done_callbacks.close()

    def wait_finished(self, timeout: float) -> None:
        with self._finished:
            self._finished.wait(timeout)


class Client:
    """Creates and changes jobs. `options(...)` returns a client with other defaults."""

    def __init__(
        self,
        store: Store,
        codec: Codec,
        clock: Clock,
        notifier: Notifier,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.codec = codec
        self.clock = clock
        self.notifier = notifier
        #: `recurring_defaults`: tz, misfire, misfire_limit, misfire_grace, overlap, start, end, for
        #: `recurring` only, kept apart from job options. `job_options`: this client's options,
        #: validated now (unknown names are checked in overrides) and shared by its jobs that add none
        #: of their own (frozen).
        self.defaults, self.recurring_defaults, self.job_options = check_options(defaults or {})

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """In a notebook function's copy (`nb.options(queue="io")` kept in a variable, or the client
        of an `@nb.job` function it calls): these options on the running job's engine (`InJob`)."""
        return (InJob, (self.defaults,))

    def options(self, **options: Any) -> Client:
        """A client whose jobs use these options (validated now): queue, retries, timeout, key, …;
        for recurring definitions also tz, misfire, misfire_limit, misfire_grace, overlap, start and
        end."""
        merged = {**self.defaults, **self.recurring_defaults, **options}
        return type(self)(self.store, self.codec, self.clock, self.notifier, merged)

    # -- creating jobs --------------------------------------------------------------------------
    def new_job(
        self,
        fn: Target,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        run_at: datetime | None = None,
        parent_id: int | None = None,
        parent_ids: tuple[int, ...] = (),
        continue_on: ContinueOn = ContinueOn.SUCCEEDED,
        options: Mapping[str, Any] | None = None,
        reason: str = "created",
    ) -> NewJob:
        """Validate and serialize one job (raises before anything is stored).

        A `Job` among the arguments stands for its result: the new job waits for that job to
        succeed (a continuation of it, with any parents given) and receives its return value there.
        """
        recurring_client.refuse_options(self.recurring_defaults)
        opts = build_options(self.defaults, options) if options else self.job_options
        if _has_job(args, kwargs):
            if run_at is not None:
                raise InvalidJobError(
                    "a scheduled job cannot take another job's result (an argument is a Job): enqueue "
                    "it now, and it runs when that job has succeeded"
                )
            if continue_on is not ContinueOn.SUCCEEDED:
                raise InvalidJobError(
                    f'continue_on="{continue_on.value}" with a Job as an argument: its result exists only '
                    'if it succeeds, so such a continuation uses continue_on="succeeded"'
                )
            if opts.serializer == "json":
                raise InvalidJobError(
                    "a Job as an argument (its result, passed when it runs) needs serializer='pickle'"
                )
            args, kwargs, results = self._results_in(args, kwargs)
            waits = tuple(dict.fromkeys([*([parent_id] if parent_id else []), *parent_ids, *results]))
            parent_id, parent_ids = (waits[0], ()) if len(waits) == 1 else (None, waits)
            if reason == "created":
                reason = f"waits for the result of job {', '.join(map(str, results))}"[:REASON_MAX]
        if len(parent_ids) > MAX_PARENTS:
            raise InvalidJobError(
                f"a job can wait for at most {MAX_PARENTS:,} jobs, got {len(parent_ids):,}; chain smaller "
                "groups (a continuation after each group, then one after those continuations)"
            )
        bound: list[str] = []  # why the function could not be copied into the job, if it could not
        ref, payload = self.codec.encode(fn, args, kwargs, opts.serializer,
                                         on_bound=bound.append if opts.executor == "thread" else None)
        if bound:
            opts = _run_here_only(ref, opts, bound[0])
        return NewJob(function=ref, payload=payload, options=opts, run_at=run_at, parent_id=parent_id,
                      parent_ids=parent_ids, continue_on=continue_on, reason=reason)

    def job_id(self, job: object) -> int:
        """`job_id_of` for this client's database: a Job of another one is refused, since its id
        would name another job here (a continuation's parent, a result argument, a requeue)."""
        if isinstance(job, Job) and job.client.store.database != self.store.database:
            raise InvalidJobError(
                f"job {job.id} belongs to another database; use a job of this one (or, as an "
                "argument, its result: job.result())"
            )
        return job_id_of(job)

    def _results_in(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], list[int]]:
        """Jobs among the arguments replaced by `ResultOf` place-holders, and their ids."""
        ids: list[int] = []

        def stand_in(value: Any) -> Any:
            if not isinstance(value, Job):
                return value
            ids.append(self.job_id(value))
            return ResultOf(value.id)

        new_args = tuple(stand_in(a) for a in args)
        new_kwargs = {k: stand_in(v) for k, v in kwargs.items()}
        return new_args, new_kwargs, list(dict.fromkeys(ids))

    def submit(self, specs: Sequence[NewJob]) -> list[Job]:
        """Store prepared jobs in one transaction and start or wake local workers.

        With a free worker in this process the same transaction claims for it: the job starts when
        this returns, and the server saves a transaction. Otherwise the local dispatcher is woken.
        """
        now = self.clock.now()
        intake = self.notifier.intake
        claim = intake.reserve(specs, now) if intake is not None else None
        if intake is None or claim is None:
            stored = self.store.enqueue(specs, now)
        else:
            try:
                stored, claimed = self.store.enqueue_and_acquire(specs, now, claim)
            except BaseException:
                intake.release(claim)
                raise
            intake.accept(claim, claimed)
        # A claim took all free slots, or all there was; else wake the dispatcher. A continuation
        # locked its parent's row for a moment, and a claim may have skipped that row. A wake-up
        # still pending needs no lock: the dispatcher clears it before it looks.
        wake = (claim is None and any(s.state is JobState.ENQUEUED for s in stored)) or any(
            j.continues for j in specs)
        if wake and not self.notifier.work.is_set():
            self.notifier.work.set()
        if any(s.state is JobState.SCHEDULED for s in stored):
            self.notifier.schedule_changed.set()
        made = [Job(self, s.id) for s in stored]
        for hook in SUBMIT_HOOKS:
            hook(made)
        return made

    def enqueue(self, fn: Target, /, *args: Any, **kwargs: Any) -> Job:
        """Run `fn(*args, **kwargs)` in the background as soon as a worker is free."""
        return self.submit([self.new_job(fn, args, kwargs)])[0]

    def enqueue_many(self, fn: Target, arg_list: Iterable[Any]) -> list[Job]:
        """Enqueue one job per item (a tuple is spread as positional arguments) in one transaction."""
        if isinstance(arg_list, str | bytes) or not isinstance(arg_list, Iterable):
            raise InvalidJobError(
                f"enqueue_many takes a list with one item of arguments per job, e.g. [1, 2, 3] or "
                f"[(1, 'a'), (2, 'b')]; got {type(arg_list).__name__} {arg_list!r:.40} (for one job, "
                "wrap it in a list or use enqueue)"
            )
        specs = []
        for index, item in enumerate(arg_list):
            try:
                specs.append(self.new_job(fn, item if isinstance(item, tuple) else (item,), {}))
            except InvalidJobError as exc:  # which of thousands: nothing is stored
                raise InvalidJobError(
                    f"item {index} ({short_repr(item)}): {exc}; nothing was enqueued"
                ) from exc
        return self.submit(specs)

    def schedule(
        self, when: When, fn: Target, /, *args: Any, **kwargs: Any
    ) -> Job:
        """Run `fn(*args, **kwargs)` at `when`: a datetime, a timedelta or seconds from now."""
        run_at = resolve_when(when, self.clock.now())
        return self.submit([self.new_job(fn, args, kwargs, run_at=run_at)])[0]

    def then(
        self,
        parent: int | Job,
        fn: Target,
        /,
        *args: Any,
        continue_on: ContinueOn | str = ContinueOn.SUCCEEDED,
        **kwargs: Any,
    ) -> Job:
        """A continuation: run `fn` when `parent` succeeds (or, with continue_on="finished", ends; with
        "failed", only if it failed: a failure handler, deleted when the parent succeeds)."""
        parent_id = self.job_id(parent)
        spec = self.new_job(fn, args, kwargs, parent_id=parent_id, continue_on=_continue_on(continue_on),
                            reason=f"continuation of job {parent_id}")
        return self.submit([spec])[0]

    def after(
        self,
        parents: Iterable[int | Job],
        fn: Target,
        /,
        *args: Any,
        continue_on: ContinueOn | str = ContinueOn.SUCCEEDED,
        **kwargs: Any,
    ) -> Job:
        """A continuation of several jobs (fan-in): run `fn` once all `parents` succeeded (or, with
        continue_on="finished", ended in any way; with "failed", ended and one of them failed). With
        "succeeded", a parent that fails or is deleted deletes the continuation at once; with
        "failed", parents that all ended without a failure delete it."""
        if isinstance(parents, Job | int | str) or not isinstance(parents, Iterable):
            raise InvalidJobError(
                f"after takes a list of jobs (or job ids), got {type(parents).__name__}; for one "
                "parent use job.then(fn)"
            )
        ids = tuple(dict.fromkeys(self.job_id(p) for p in parents))
        if not ids:
            raise InvalidJobError("after needs at least one parent job; to run now use enqueue")
        on = _continue_on(continue_on)
        if len(ids) == 1:
            return self.then(ids[0], fn, *args, continue_on=on, **kwargs)
        spec = self.new_job(fn, args, kwargs, parent_ids=ids, continue_on=on,
                            reason=f"continuation of jobs {', '.join(map(str, ids))}"[:REASON_MAX])
        return self.submit([spec])[0]

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
        """Run a notebook with `parameters` as a job (fresh kernel); checked now, saved when it runs.

        `options` are job options (queue, retries, timeout, name, …); `timeout` bounds the whole run,
        `cell_timeout` each cell. The run is saved to `<output_dir>/<name>.<job id>.ipynb`
        (default output_dir: `nbjobs-runs/` beside the notebook), and with `export="html"` (or
        ["html", "pdf"], any nbconvert format) also as `<name>.<job id>.html` beside it;
        `hide_code=True` leaves the code out of those reports (outputs only); `latest=True` also
        copies a successful run and its reports to `<name>.latest.ipynb` / `.html`, names to link to.
        `snapshot=True` stores the notebook with the job, so a later run or a retry executes it as it
        is now, whatever is saved to the file meanwhile (by default a run reads the file when it starts).
        `at` runs it later, once: a time ("2026-12-08 22:00", local), a delay ("2h") or a datetime.
        """
        run_at = None if at is None else resolve_when(at, self.clock.now(), "at")
        args, kwargs = notebook_call(path, parameters, kernel_name=kernel_name, cwd=cwd,
                                     output_dir=output_dir, cell_timeout=cell_timeout, export=export,
                                     hide_code=hide_code, latest=latest, snapshot=snapshot)
        if "name" not in options and self.defaults.get("name") is None:
            options["name"] = Path(args[0]).name
        job = self.submit([self.new_job(run_notebook, args, kwargs, options=options, run_at=run_at)])[0]
        return NotebookJob(self, job.id)

    def job(self, job_id: int | str) -> Job:
        """A handle on an existing job (a NotebookJob for notebook runs); JobNotFoundError if none."""
        number = self.job_id(job_id)
        record = self.store.get(number)
        if record is None:
            raise JobNotFoundError.of(number)
        if record.function == NOTEBOOK_FUNCTION:
            return NotebookJob(self, number)
        return Job(self, number)

    # -- recurring jobs (see nbjobs.recurring_client) -------------------------------------------
    def recurring(
        self, recurring_id: str, cron: str | timedelta, fn: Target, /, *args: Any, **kwargs: Any
    ) -> recurring_client.Recurring:
        """Add or update (by id) a recurring job: `fn(*args, **kwargs)` at each fire time of `cron`."""
        options = self.job_options
        return recurring_client.define(self, recurring_id, cron, fn, args, kwargs, options)

    def recurring_notebook(
        self,
        recurring_id: str,
        cron: str | timedelta,
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
        **options: Any,
    ) -> recurring_client.Recurring:
        """Add or update (by id) a recurring notebook run: `path` with `parameters` at each fire of `cron`.

        Checked now like `enqueue_notebook`; each fire is a notebook job saved under its own job id.
        `snapshot=True` runs the notebook as it is now at every fire (by default each fire reads the
        file as it is then).
        """
        args, kwargs = notebook_call(path, parameters, kernel_name=kernel_name, cwd=cwd,
                                     output_dir=output_dir, cell_timeout=cell_timeout, export=export,
                                     hide_code=hide_code, latest=latest, snapshot=snapshot)
        if "name" not in options and self.defaults.get("name") is None:
            options["name"] = Path(args[0]).name
        client = self.options(**options) if options else self
        return client.recurring(recurring_id, cron, run_notebook, *args, **kwargs)

    def trigger(self, recurring_id: str, /) -> Job:
        """Run a recurring job once now (a NotebookJob for a notebook); its schedule is unchanged."""
        job_id = recurring_client.trigger(self, recurring_id)
        return type(self)(self.store, self.codec, self.clock, self.notifier, self.defaults).job(job_id)

    def pause(self, recurring_id: str, /) -> None:
        recurring_client.pause(self, recurring_id)

    def resume(self, recurring_id: str, /) -> None:
        recurring_client.resume(self, recurring_id)

    def remove_recurring(self, recurring_id: str, /) -> bool:
        return recurring_client.remove(self, recurring_id)

    # -- changing jobs --------------------------------------------------------------------------
    def requeue(self, job_id: int, reason: str = "requeued by user") -> JobState:
        job_id = self.job_id(job_id)
        self._refuse_if_unservable(job_id)
        state = self.store.requeue(job_id, self.clock.now(), reason)
        self.notifier.work.set()
        return state

    def _refuse_if_unservable(self, job_id: int) -> None:
        """A job of another process's private queue (a `%%job` cell, a notebook function that could
        not be copied) runs only there: requeued once no server of that process is left, it would
        wait for ever."""
        record = self.store.get(job_id)
        if record is None or PRIVATE_QUEUE_MARK not in record.queue:
            return
        if private_queues.is_private_here(record.queue):
            return
        if any(record.queue in server.queues for server in self.store.list_servers()):
            return
        raise InvalidJobError(
            f"job {job_id} can run only in the kernel or process that enqueued it (its queue "
            f"{record.queue!r} is that process's own), and no server of it is running: requeued, it "
            "would wait for ever. Enqueue it again from a running notebook instead"
        )

    def delete(self, job_id: int, reason: str = "deleted by user", *, cancel_only: bool = False) -> JobState:
        job_id = self.job_id(job_id)
        state = self.store.delete(job_id, self.clock.now(), reason, cancel_only=cancel_only)
        if state is JobState.PROCESSING and self.notifier.local_cancel is not None:
            self.notifier.local_cancel(job_id, reason)
        return state

    def cancel(self, job_id: int, reason: str = "cancelled by user") -> JobState:
        return self.delete(job_id, reason, cancel_only=True)

    # -- decorator ------------------------------------------------------------------------------
    def job_function(self, fn: Callable[..., Any], **options: Any) -> JobFunction:
        return JobFunction(fn, self.options(**options) if options else self)


class InJob:
    """What an engine or client a notebook function uses becomes in its copy (`Engine.__reduce__`,
    `Client.__reduce__`): the engine of the job running the copy (`default.default_engine()`), with
    the client's options, found at first use. Unpickling it costs nothing and opens nothing (a
    dashboard decoding a call to show its arguments never uses it)."""

    def __init__(self, defaults: Mapping[str, Any] | None) -> None:
        self._defaults = None if defaults is None else dict(defaults)

    #: The process's default engine, outside a job (`default.default_engine`, which sets this: it
    #: sits above this module).
    process_default: Callable[[], Any] | None = None

    def _target(self) -> Any:
        job = context.current_job_or_none()
        if job is not None and job.has_engine:
            engine = job.engine
        elif InJob.process_default is not None:
            engine = InJob.process_default()
        else:
            raise NbJobsError("no engine to stand for: import nbjobs first")
        return engine if self._defaults is None else engine.client.options(**self._defaults)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_defaults", "process_default"):  # as pickling looks
            raise AttributeError(name)
        return getattr(self._target(), name)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (InJob, (self._defaults,))

    def __repr__(self) -> str:
        return "<nbjobs engine of the running job>" if self._defaults is None else (
            f"<nbjobs client of the running job's engine, options {self._defaults}>")


class JobFunction:
    """A function decorated with `@nb.job(...)`: call it directly, or `.enqueue` / `.schedule` it."""

    def __init__(self, fn: Callable[..., Any], client: Client) -> None:
        function_ref(fn)  # refuse lambdas and closures at decoration time
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.client = client

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> JobFunction:
        """A decorated method: `model.fit` is the method bound to `model`, to call or enqueue (the
        instance is stored with the arguments), as the undecorated method would be."""
        if instance is None:
            return self
        return self._with_function(self.fn.__get__(instance, owner))

    def _with_function(self, fn: Callable[..., Any]) -> JobFunction:
        """This job function's settings around another callable (the method bound to an instance)."""
        return JobFunction(fn, self.client)

    def enqueue(self, *args: Any, **kwargs: Any) -> Job:
        return self.client.enqueue(self.fn, *args, **kwargs)

    def schedule(self, when: When, *args: Any, **kwargs: Any) -> Job:
        return self.client.schedule(when, self.fn, *args, **kwargs)

    def options(self, **options: Any) -> JobFunction:
        return JobFunction(self.fn, self.client.options(**options))

    def recurring(
        self, recurring_id: str, cron: str | timedelta, /, *args: Any, **kwargs: Any
    ) -> recurring_client.Recurring:
        """Run this function on a cron schedule with the decorator's options (see `Client.recurring`)."""
        return self.client.recurring(recurring_id, cron, self.fn, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<nbjobs job function {function_ref(self.fn)}>"


def _awaited(awaitable: Any, ctx: context.JobContext) -> Any:
    """Run an async job's coroutine to its end: here, or, where this thread already runs an event loop
    (a notebook's), on a thread of its own, whose exception is re-raised here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return complete(awaitable, ctx)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nbjobs-run-here") as pool:
        return pool.submit(contextvars.copy_context().run, complete, awaitable, ctx).result()


def html_via(hooks: Mapping[str, Callable[[Any], Any]], obj: object) -> str | None:
    """`obj`'s HTML from the hook `nbjobs.ui.display` installs (None without the ui layer)."""
    render = hooks.get("html")
    return render(obj) if render is not None else None  # type: ignore[no-any-return]


def display_via(hooks: Mapping[str, Callable[[Any], Any]], obj: object) -> None:
    """Show `obj` with the installed widget hook, else as its text."""
    show = hooks.get("display")
    if show is not None:
        show(obj)
        return
    from IPython.display import display

    display({"text/plain": repr(obj)}, raw=True)  # type: ignore[no-untyped-call]


def check_timeout(timeout: Any, none_means: str = "to wait as long as it takes") -> float | None:
    """A wait's `timeout` in seconds: None (or infinity) waits as long as it takes. A NaN waited
    forever and a string failed mid-wait; both, and a negative one, are refused at the call."""
    if timeout is None:
        return None
    seconds = seconds_of(timeout)  # "10m" or a timedelta, as every duration
    if (isinstance(seconds, bool) or not isinstance(seconds, int | float) or math.isnan(seconds)
            or seconds < 0):
        raise InvalidJobError(
            f"timeout must be a number of seconds ≥ 0 (or a duration such as '10m'), or None {none_means}; "
            f"got {timeout!r}"
        )
    return None if math.isinf(seconds) else seconds  # as given: messages say "after 5s"


def refuse_waiting_for_itself(job_ids: Iterable[int], store: Store) -> None:
    """Inside a job, waiting for that same job, or for a continuation of it (which starts only once
    the job ends), would never end: refuse it, naming the fix."""
    ctx = context.current_job_or_none()
    if ctx is None:
        return
    wanted = list(job_ids)
    if any(ctx.is_job(job_id, store.database) for job_id in wanted):
        raise InvalidJobError(
            f"job {ctx.id} waits for itself, which never ends; wait for the jobs it started, or return "
            "and let a continuation (job.then(...)) run after it"
        )
    if ctx.database != store.database:
        return
    after_it = store.awaiting_descendants(ctx.id).intersection(wanted)
    if after_it:
        first = min(after_it)
        raise InvalidJobError(
            f"job {ctx.id} waits for job {first}, which starts only after job {ctx.id} ends (a "
            f"continuation of it), so the wait would never end; return instead, and let job {first} "
            "run after it"
        )


class Job:
    """A handle on one stored job. Cheap: it holds the id and reads storage when asked."""

    def __init__(self, client: Client, job_id: int) -> None:
        self.client = client
        self.id = int(job_id)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Job) and other.id == self.id
                and other.client.store.database == self.client.store.database)

    def __copy__(self) -> Job:
        return Job(self.client, self.id)

    def __deepcopy__(self, memo: dict[int, Any]) -> Job:  # a handle: copies name the same job
        return Job(self.client, self.id)

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a Job handle (job {self.id}) cannot be stored; a Job given directly as an argument of "
            "enqueue, then or after stands for its result, anywhere else pass its id (job.id)"
        )

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        record = self.client.store.get(self.id)
        if record is None:
            return f"<Job {self.id}: gone>"
        name = record.options.name or record.function
        return f"<Job {self.id} {name} [{record.queue}] {record.state.value}>"

    def _repr_html_(self) -> str | None:
        return html_via(DISPLAY_HOOKS, self)

    def _ipython_display_(self) -> None:
        """In a notebook: a widget that updates while the job runs (HTML and text elsewhere)."""
        display_via(DISPLAY_HOOKS, self)

    # -- reading --------------------------------------------------------------------------------
    def record(self) -> JobRecord:
        record = self.client.store.get(self.id)
        if record is None:
            raise JobNotFoundError.of(self.id)
        return record

    @property
    def state(self) -> JobState:
        states = self.client.store.states_of([self.id])
        if self.id not in states:
            raise JobNotFoundError.of(self.id)
        return states[self.id]

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    def history(self) -> list[StateChange]:
        return self.client.store.history(self.id)

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the job reaches a final state; return it. Raises ResultTimeoutError on timeout."""
        timeout = check_timeout(timeout)
        refuse_waiting_for_itself([self.id], self.client.store)
        clock = self.client.clock
        deadline = None if timeout is None else clock.monotonic() + timeout
        delay = 0.002
        with context.Waiting() as waiting:  # inside a job: its slot runs other jobs meanwhile
            while True:
                state = self.state
                if state in FINAL_STATES:
                    return state
                remaining = None if deadline is None else deadline - clock.monotonic()
                if remaining is not None and remaining <= 0:
                    raise self._still(state, timeout)
                waiting.block()
                # Local completions wake us at once; jobs finished elsewhere are seen by polling.
                self.client.notifier.wait_finished(delay if remaining is None else min(delay, remaining))
                delay = min(delay * 1.5, 0.5)

    def result(self, timeout: float | None = None) -> Any:
        """The return value; raises JobFailedError with the remote traceback if the job failed."""
        self.wait(timeout)
        return self.final_result()

    def final_result(self) -> Any:
        """`result` for a job seen final: one read instead of two (one that was requeued since
        is waited for, as `result` would)."""
        found = self.client.store.results_of([self.id]).get(self.id)
        if found is None:
            raise JobNotFoundError.of(self.id)
        if found.state not in FINAL_STATES:
            return self.result()
        return self.value_of(found)

    def value_of(self, found: JobResult) -> Any:
        """The return value in `found` (this job's final result, read in a batch), or its error; for
        a notebook run, the executed notebook, however the handle was made (an id, a frame row)."""
        if found.state is JobState.SUCCEEDED:
            if found.result is None:
                return None
            try:
                value = self.client.codec.loads(found.result)
            except (ImportError, AttributeError) as exc:  # unpickling found no such module or class
                raise ResultUnavailableError(
                    f"job {self.id} succeeded, but its result cannot be loaded in this process: it holds "
                    f"an object of code not importable here ({exc}); import or install that code here, "
                    "or have the job return plain data (numbers, text, lists, dicts, DataFrames)"
                ) from exc
            if found.function == NOTEBOOK_FUNCTION:
                return notebooks.read_notebook(value["output_path"])
            return value
        raise JobFailedError(self.id, found.error_type, found.error_message, found.error_traceback,
                             state=found.state.value)

    def _still(self, state: JobState, timeout: float | None) -> ResultTimeoutError:
        return ResultTimeoutError(
            f"job {self.id} is still {state.value} after {timeout}s; wait longer or check that a "
            "server listens to its queue"
        )

    async def wait_async(self, timeout: float | None = None) -> JobState:
        """`wait` for asyncio: the event loop (a notebook's, with its widgets) runs on meanwhile.

        The waiting happens in short rounds on a worker thread, so cancelling the awaiting task
        leaves at most one round (0.25 s) behind.
        """
        timeout = check_timeout(timeout)
        clock = self.client.clock
        deadline = None if timeout is None else clock.monotonic() + timeout
        # One loan for all rounds (each round's thread sees this job's context and lends nothing more).
        with context.Waiting() as waiting:
            while True:
                remaining = None if deadline is None else max(0.0, deadline - clock.monotonic())
                try:
                    return await asyncio.to_thread(self.wait, _ASYNC_ROUND if remaining is None
                                                   else min(_ASYNC_ROUND, remaining))
                except ResultTimeoutError:
                    if deadline is not None and clock.monotonic() >= deadline:
                        raise self._still(self.state, timeout) from None
                waiting.block()

    async def result_async(self, timeout: float | None = None) -> Any:
        """`result` for asyncio; `await job` is the same with no timeout."""
        await self.wait_async(timeout)
        return await asyncio.to_thread(self.result, 0)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result_async().__await__()

    def run_here(self) -> Any:
        """Run this job's function with its stored arguments now, in this thread, and return its value.

        Its exception propagates with the function's own frames, so `%debug` (or pdb) opens where a
        job that failed in the background went wrong, with the very arguments it had (results of jobs
        it was given read from storage, a notebook's function as stored). Nothing is recorded: the
        stored job, its state and history stay as they are (`requeue()` runs it again for real).
        Inside, `current_job()` answers for this job; its progress is not stored.
        """
        record = self.record()
        codec = self.client.codec
        call = codec.decode_call(with_results(record.payload, self.client.store, codec))
        fn = codec.load_function(record.function, call, prefer_live=True)
        ctx = context.JobContext(id=self.id, attempt=record.attempts, function=record.function,
                                 queue=record.queue, recurring_id=record.recurring_id,
                                 database=self.client.store.database)
        token = context.activate(ctx)
        try:
            value = fn(*call.args, **call.kwargs)
            if inspect.isawaitable(value):
                value = _awaited(value, ctx)
            return value
        finally:
            context.deactivate(token)

    def logs(self, tail: int | None = None, raw: bool = False) -> str:
        """Everything the job printed or logged, as one string, as a terminal shows it: a line
        redrawn with carriage returns (a progress bar) as last drawn. `raw`: every write as made."""
        text = "".join(text for _, _, text in self.client.store.read_logs(self.id, tail))
        return text if raw else as_shown(text)

    # -- changing -------------------------------------------------------------------------------
    def requeue(self) -> Job:
        self.client.requeue(self.id)
        return self

    def delete(self) -> Job:
        self.client.delete(self.id)
        return self

    def cancel(self) -> Job:
        self.client.cancel(self.id)
        return self

    def parents(self) -> list[Job]:
        """The jobs this continuation waits for (or waited for); [] for other jobs."""
        return [Job(self.client, i) for i in self.client.store.parents(self.id)]

    def then(self, fn: Target, /, *args: Any, **kwargs: Any) -> Job:
        """A continuation of this job (same queue and options; its own name and key)."""
        client = self.client
        if client.defaults.get("name") is not None or client.defaults.get("key") is not None:
            client = client.options(name=None, key=None)
        return client.then(self, fn, *args, **kwargs)

    def add_done_callback(self, fn: Callable[[Job], None]) -> None:
        """Call `fn(job)` in this process once the job is final, whoever runs it (at once if it
        already is). A failed attempt that will be retried is not final. Callbacks run in a
        background thread of this process; an exception in one is logged."""
        if self.done:
            fn(self)
            return
        notifier = self.client.notifier
        notifier.callbacks_for(self.client.store, self.client.clock).add(self, fn)


class NotebookJob(Job):
    """A notebook run as a job: `result()` is the executed notebook, `output_path` where it is saved."""

    @property
    def output_path(self) -> Path:
        """Where this run is (or will be) saved; a failed or cancelled run leaves its partial run there."""
        return self._saved_at()[0]

    @property
    def exports(self) -> dict[str, Path]:
        """Where this run's reports (`export=`) are, or will be, written, by format."""
        run, formats = self._saved_at()
        return {name: notebooks.export_path(run, name) for name in formats}

    def _saved_at(self) -> tuple[Path, Sequence[str]]:
        """The run's path and its export formats, from the stored call."""
        call = self.client.codec.decode_call(self.record().payload)
        run = notebooks.output_path(call.args[0], call.kwargs.get("output_dir"), self.id)
        return run, call.kwargs.get("export", ())

    def result(self, timeout: float | None = None) -> NotebookNode:
        """The executed notebook (an nbformat NotebookNode); raises JobFailedError like `Job.result`."""
        notebook: NotebookNode = super().result(timeout)
        return notebook

    def notebook(self) -> NotebookNode | None:
        """The saved run as it is now (also a failed run's partial notebook); None before it ran."""
        path = self.output_path
        if not path.exists():
            return None
        return notebooks.read_notebook(path)
