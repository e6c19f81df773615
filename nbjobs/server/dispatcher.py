"""Claim jobs, hand them to worker threads, and write their outcomes back in batches.

One dispatcher thread does all job I/O for its server: each turn it flushes every finished attempt in
one transaction, then claims as many jobs as there are free slots in another (group commit). Workers
never touch the database for state changes, so N workers cost two transactions per batch, not per job.
The prefetch adapts: short jobs are claimed in larger batches, long ones one slot at a time, so a
server does not hoard long jobs that another server could start.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from .. import context
from ..clock import Clock
from ..errors import (
    USER_CODE_ERRORS,
    JobTimeoutError,
    PayloadError,
    ResultUnavailableError,
    StorageFullError,
    UnstorableError,
)
from ..executors.thread import RunResult, RunWrapper, failed_result, run_in_thread, with_results
from ..model import PRIVATE_QUEUE_MARK, ClaimedJob, NewJob, Outcome, OutcomeKind
from ..payload import Codec
from ..rates import Rate, RateWindow
from ..retry import decide
from ..storage import LocalClaim, Store

#: How often a dispatcher reads the shared quotas again, and looks for room in them (seconds).
SHARED_QUOTAS_EVERY = 1.0

log = logging.getLogger("nbjobs.server")

#: Runs a claimed job somewhere (this thread, a process pool, a notebook kernel) and reports back.
Executor = Callable[[ClaimedJob, context.JobContext], RunResult]


@dataclass(eq=False)
class Running:
    job: ClaimedJob
    ctx: context.JobContext
    deadline: float | None  #: monotonic time after which the job is cancelled as timed out
    started: bool = False
    timed_out: bool = False
    #: Monotonic time our lease on the job runs out, as far as this server knows (claim, then beats).
    lease_expires: float = float("inf")
    #: Set when the job is given back unstarted; its outcome is then "returned", not a failure.
    returned: str | None = None
    #: Set when the job was claimed after its `expires` ran out: it is deleted unrun, with this reason.
    expired: str | None = None


@dataclass
class DispatcherConfig:
    server_id: str
    queues: Sequence[str]
    workers: int
    lease_seconds: float
    poll_interval: float = 5.0  #: fallback wait when no notification arrives
    max_batch: int = 200  #: most jobs claimed in one transaction
    max_backoff: float = 5.0  #: longest wait between turns while the database fails
    short_job_seconds: float = 0.05  #: jobs shorter than this (on average) are prefetched in bulk
    #: Under load, wait this many times the last turn's duration before the next turn, so enqueuers
    #: get the (single-writer) database most of the time and each turn batches more jobs. An idle
    #: dispatcher turns at once, so pickup latency is unchanged.
    turn_spacing: float = 2.0
    max_turn_gap: float = 0.01  #: cap on that wait (seconds)
    #: Most jobs of a queue running at once on this server (a GPU, a rate-limited API).
    limits: Mapping[str, int] = field(default_factory=dict)
    #: Most jobs of a queue started in any period on this server (an API's quota).
    rates: Mapping[str, Rate] = field(default_factory=dict)


@dataclass
class _Stats:
    avg_duration: float | None = None
    executed: int = 0
    samples: list[float] = field(default_factory=list)


class Dispatcher:
    """The claim/run/report loop of one server."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        codec: Codec,
        config: DispatcherConfig,
        wake: threading.Event,
        executors: dict[str, Executor] | None = None,
        wrappers: Sequence[RunWrapper] = (),
        progress_sink: Callable[[int, float | None, str | None], None] | None = None,
        on_finished: Callable[[Sequence[int]], None] | None = None,
        engine: Any = None,
    ) -> None:
        self.store = store
        self.engine = engine  #: what jobs see as `current_job().engine`
        self.clock = clock
        self.codec = codec
        self.config = config
        self.wake = wake
        self.wrappers = tuple(wrappers)
        self.progress_sink = progress_sink
        self.on_finished = on_finished
        self.executors: dict[str, Executor] = {"thread": self._run_thread}
        self.executors.update(executors or {})
        self.running: dict[int, Running] = {}
        self._lock = threading.Lock()
        #: SimpleQueue: a C queue, a tenth of queue.Queue's cost per job handed to a worker.
        self._work: queue.SimpleQueue[Running | None] = queue.SimpleQueue()
        self._done: list[tuple[Running, RunResult | None]] = []
        self._intake = True
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._stats = _Stats()
        self.error: BaseException | None = None
        self.errors = 0  #: turns that failed (database unreachable) and were retried
        self._next_turn = 0.0  #: monotonic time before which a busy dispatcher does not turn again
        #: Free slots promised to claims in flight (this loop's turn, or enqueues claiming for us).
        self._reserved = 0
        self.claimed_by_enqueues = 0  #: jobs that enqueues in this process claimed for this server
        self.turns = 0  #: times the loop looked for work to report or claim
        self._windows = {queue: RateWindow(rate) for queue, rate in config.rates.items()}
        #: Queues that cap a claim (a concurrency limit or a rate): claimed in this loop's turns only.
        self._capped = bool(config.limits or config.rates)
        #: When a queue the last claim found out of room by its rate gets room again (monotonic).
        self._rate_room_at: float | None = None
        #: The queues with quotas all servers keep together (`Store.set_queue_rate`, `set_queue_limit`),
        #: as last read, and when to read them again (monotonic): a quota set elsewhere is seen within
        #: `SHARED_QUOTAS_EVERY`.
        self._shared: frozenset[str] = frozenset()
        self._shared_read_at = -math.inf
        #: Slots lent by jobs waiting for other jobs: each adds a worker thread and a slot to claim.
        self._lent = 0
        #: Worker threads to end after their current job: loans paid back (see `reclaim`).
        self._retiring = 0
        self._threads_started = 0

    # -- worker side ----------------------------------------------------------------------------
    def _run_thread(self, job: ClaimedJob, ctx: context.JobContext) -> RunResult:
        return run_in_thread(job, ctx, codec=self.codec, clock=self.clock, wrappers=self.wrappers)

    def start_workers(self) -> None:
        for _ in range(self.config.workers):
            self._new_worker().start()

    def _new_worker(self) -> threading.Thread:
        t = threading.Thread(target=self._worker, name=f"nbjobs-worker-{self._threads_started}", daemon=True)
        self._threads_started += 1
        self._workers.append(t)
        return t

    def lend(self) -> None:
        """A running job waits for other jobs: one more thread and one more slot while it does (a job
        that fans out and gathers cannot starve its own children of workers)."""
        thread = None
        with self._lock:
            self._lent += 1
            if self._retiring:  # a thread about to retire stays on instead
                self._retiring -= 1
            elif not self._stop.is_set():
                thread = self._new_worker()
        if thread is not None:
            thread.start()
        self.wake.set()  # claim for the new slot now

    def reclaim(self) -> None:
        """The wait ended and the job runs on: the slot goes back, and the first worker thread to end
        a job retires (until then the server runs one job more than its workers)."""
        with self._lock:
            self._lent -= 1
            self._retiring += 1

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            with self._lock:
                if self.running.get(item.job.id) is not item:  # returned or lost before it started
                    continue
                if self._lease_too_old(item):
                    # Our lease may run out before a heartbeat extends it (a stalled process, a slow
                    # database): another server could then run the job too. Give it back unstarted.
                    item.returned = "returned to queue unstarted: its lease was about to expire"
                    self._done.append((item, None))
                    self.wake.set()
                    continue
                item.started = True
            log.info("job %d %s started (attempt %d)", item.job.id, item.job.function, item.job.attempts,
                     extra={"action": "job_start", "job_id": item.job.id})
            executor = self.executors.get(item.job.options.executor, self._run_thread)
            try:
                job = self._with_results(item.job)
            except Exception as exc:  # a gone result or a bad signature: no retry helps; else (the
                # database unreachable a moment) the attempt fails and retries as any other would
                now = self.clock.now()
                retryable = not isinstance(exc, ResultUnavailableError | PayloadError)
                result = failed_result(exc, started=now, finished=now, retryable=retryable)
            else:
                try:
                    result = executor(job, item.ctx)
                except USER_CODE_ERRORS as exc:  # nothing may end a worker; the attempt fails instead,
                    # saying why (a worker process that cannot start: the script lacks a main guard)
                    log.exception("executor failed for job %d", item.job.id)
                    now = self.clock.now()
                    result = failed_result(exc, started=now, finished=now)
                item.ctx.end_loans()
            finish_progress = getattr(self.progress_sink, "finish", None)
            if finish_progress is not None:  # a rate-limited sink may hold the last value: store it first
                finish_progress(item.job.id)
            with self._lock:
                self._done.append((item, result))
                retire = self._retiring > 0
                if retire:
                    self._retiring -= 1
                    self._workers.remove(threading.current_thread())
            if not self.wake.is_set():  # still pending: the loop clears it before it takes `_done`
                self.wake.set()
            if retire:
                return

    def _with_results(self, job: ClaimedJob) -> ClaimedJob:
        """The job with the results of the jobs it was given as arguments in their places."""
        payload = with_results(job.payload, self.store, self.codec)
        return job if payload is job.payload else replace(job, payload=payload)

    def _lease_too_old(self, item: Running) -> bool:
        """True once half of the lease passed without a heartbeat extending it."""
        return self.clock.monotonic() >= item.lease_expires - self.config.lease_seconds / 2

    def extend_local_leases(self, job_ids: Sequence[int], until: float) -> None:
        """Record that a heartbeat extended these jobs' leases until `until` (monotonic)."""
        with self._lock:
            for job_id in job_ids:
                item = self.running.get(job_id)
                if item is not None and until > item.lease_expires:
                    item.lease_expires = until

    # -- dispatcher loop ------------------------------------------------------------------------
    def capacity(self) -> int:
        workers = self.config.workers + self._lent
        avg = self._stats.avg_duration
        if avg is not None and avg < self.config.short_job_seconds:
            return min(self.config.max_batch, workers * 50)
        return workers

    def run(self) -> None:
        """The loop; returns when `stop()` was called and everything was flushed.

        A database error (server restarted, connection killed) does not end the loop: it waits with
        backoff and tries again; unflushed outcomes stay queued, so no finished attempt is dropped.
        """
        backoff = 0.0
        try:
            while True:
                gap = self._next_turn - time.monotonic()
                if gap > 0:  # pacing is about CPU and the database, so real time even under a ManualClock
                    self._stop.wait(gap)
                self.wake.clear()
                self.turns += 1
                try:
                    self._check_timeouts()
                    flushed, claimed = self._turn()
                except Exception as exc:
                    backoff = min(max(backoff * 2, 0.05), self.config.max_backoff)
                    if isinstance(exc, StorageFullError):  # said in a line: no traceback every turn
                        log.error("dispatcher turn failed: %s; retrying in %.2fs", exc, backoff,
                                  extra={"action": "dispatcher_retry"})
                    else:
                        log.exception("dispatcher turn failed; retrying in %.2fs", backoff,
                                      extra={"action": "dispatcher_retry"})
                    self.errors += 1
                    # Wait on the stop flag, not `wake`: finishing workers must not cut the backoff short.
                    if self.clock.wait(self._stop, backoff):
                        break  # stopping: Server.stop() flushes once more, then leases take over
                    continue
                backoff = 0.0
                if self._stop.is_set():
                    break
                if flushed or claimed:
                    continue
                self.clock.wait_until(self.wake, self._wait_deadline())
        except BaseException as exc:
            self.error = exc
            log.exception("dispatcher stopped by an error")
            raise

    def _wait_deadline(self) -> float:
        """Until when (monotonic) an idle loop waits: the poll interval, cut short by a running job's
        timeout or by a rated queue getting room again (it may have jobs waiting)."""
        now = self.clock.monotonic()
        deadline = now + self.config.poll_interval
        with self._lock:
            deadlines = [r.deadline for r in self.running.values() if r.deadline and not r.timed_out]
        if self._rate_room_at is not None:
            deadlines.append(self._rate_room_at)
        if self._shared:  # room in a shared quota comes back without a word: look again soon
            deadlines.append(now + SHARED_QUOTAS_EVERY)
        return min([deadline, *deadlines])

    def _turn(self, claim: bool = True) -> tuple[int, int]:
        """Write finished attempts and claim jobs for the free slots in one transaction (group commit).

        Returns (attempts reported, jobs claimed). On a database error nothing changes: the finished
        attempts stay queued for the next turn.
        """
        done, stale = self._take_done()
        free = 0
        if claim and self._intake and not self._stop.is_set():
            with self._lock:  # the attempts reported now free their slots in the same transaction
                free = max(0, self.capacity() - (len(self.running) - len(done)) - self._reserved)
                self._reserved += free
        if not done and free <= 0:
            return stale, 0
        started = time.monotonic()
        now = self.clock.now()
        outcomes = [self._outcome_or_failure(item, result, now) for item, result in done]
        lease_until = now + timedelta(seconds=self.config.lease_seconds)
        rooms = self._rooms(done) if self._capped and free > 0 else None
        shared = self._shared_queues() if free > 0 else None
        try:
            lost, jobs = self.store.finish_and_acquire(
                self.config.server_id, outcomes, self.config.queues, free, lease_until, now, rooms, shared
            )
        except UnstorableError as exc:
            with self._lock:
                self._reserved -= free  # no claim this turn: the next one claims
            if not done:
                raise
            log.warning("the database refused this turn's writes (%s); writing its %d outcome(s) one by "
                        "one", exc, len(done))
            return self._write_alone(done, outcomes, now), 0
        except Exception:
            with self._lock:  # keep them, in order, for the next turn: an outcome is never dropped
                self._done[:0] = done
                self._reserved -= free
            raise
        if self._windows and jobs:
            self._count_starts(jobs)
        ended = time.monotonic()
        self._next_turn = ended + min(self.config.max_turn_gap, self.config.turn_spacing * (ended - started))
        if done:
            self._settle(done, outcomes, lost)
        self._start(jobs, reserved=free)
        return stale + len(done), len(jobs)

    def _write_alone(
        self, done: Sequence[tuple[Running, RunResult | None]], outcomes: Sequence[Outcome], now: datetime
    ) -> int:
        """Write each outcome in a transaction of its own, so that one the database refuses (too
        large, a value it cannot hold) holds up no other: that one is written as a failure saying
        why, and if even that is refused, left for its lease to run out. Returns how many were handled."""
        written: list[tuple[Running, RunResult | None]] = []
        kept: list[Outcome] = []
        lost: list[int] = []
        for (item, result), outcome in zip(done, outcomes, strict=True):
            try:
                lost += self._finish_or_explain(outcome, now)
            except UnstorableError as exc:
                log.error("job %d: its outcome cannot be stored (%s); its lease will return it", item.job.id,
                          exc, extra={"action": "outcome_unstorable", "job_id": item.job.id})
                with self._lock:
                    if self.running.get(item.job.id) is item:
                        del self.running[item.job.id]  # no longer extended: the reaper takes it back
                continue
            except Exception:  # the database is away: keep it for the next turn, as any outcome
                with self._lock:
                    self._done.append((item, result))
                continue
            written.append((item, result))
            kept.append(outcome)
        if written:
            self._settle(written, kept, lost)
        return len(done)

    def _finish_or_explain(self, outcome: Outcome, now: datetime) -> list[int]:
        try:
            return self.store.finish(self.config.server_id, [outcome], now)
        except UnstorableError as exc:
            failure = Outcome(
                job_id=outcome.job_id, kind=OutcomeKind.FAILED, started_at=outcome.started_at,
                finished_at=outcome.finished_at, error_type="nbjobs.errors.UnstorableError",
                error_message=f"the job ended, but the database refused its outcome: {exc}"[:2000],
                reason="failed: the database refused its outcome",
            )
            return self.store.finish(self.config.server_id, [failure], now)

    def _rooms(self, done: Sequence[tuple[Running, RunResult | None]]) -> dict[str, int]:
        """Free room of each capped queue: its limit less its running jobs (those reported in this
        turn's transaction no longer count), and no more than its rate lets start now."""
        finishing = {id(item) for item, _ in done}
        with self._lock:
            busy = [item.job.options.queue for item in self.running.values() if id(item) not in finishing]
        rooms = {queue: max(0, limit - busy.count(queue)) for queue, limit in self.config.limits.items()}
        now = self.clock.monotonic()
        self._rate_room_at = None
        for name, window in self._windows.items():
            rooms[name] = min(rooms.get(name, window.rate.count), window.room(now))
            self._note_room_back(window, now)
        return rooms

    def _shared_queues(self) -> frozenset[str] | None:
        """The queues with shared quotas, read again once `SHARED_QUOTAS_EVERY` has passed (one small
        read a second: no claim may count on a quota it has not read, and the claims leave such
        queues to the claims that name them, so a stale list only delays a new quota's jobs)."""
        now = self.clock.monotonic()
        if now - self._shared_read_at >= SHARED_QUOTAS_EVERY:
            try:
                self._shared = frozenset(self.store.queue_quotas())
            except Exception:  # the claim below meets the same fault and the loop handles it
                log.debug("could not read the shared quotas", exc_info=True)
            self._shared_read_at = now
        return self._shared or None

    def _count_starts(self, jobs: Sequence[ClaimedJob]) -> None:
        now = self.clock.monotonic()
        for job in jobs:
            window = self._windows.get(job.options.queue)
            if window is not None:
                window.record(now, 1)
                self._note_room_back(window, now)

    def _note_room_back(self, window: RateWindow, now: float) -> None:
        """If `window` is full at `now`, wait no longer than until it has room. Taken at the claim,
        not when the loop goes to sleep, so room that appears in between is not missed."""
        back = window.next_room(now)
        if back is not None and (self._rate_room_at is None or back < self._rate_room_at):
            self._rate_room_at = back

    # -- claims by enqueues in this process -------------------------------------------------------
    def reserve(self, specs: Sequence[NewJob], now: datetime) -> LocalClaim | None:
        """Free slots for an enqueue of `specs` to claim in its own transaction, or None.

        Only when a new job could be ours now (due, no parent, a queue we serve) and the server is
        idle: then the dispatcher's own claim transaction for it is saved. The claim takes up to all
        free slots, so a backlog left by it is one this server could not take anyway.
        """
        if not any(self._serves(spec.options.queue) and not spec.continues
                   and (spec.run_at is None or spec.run_at <= now) for spec in specs):
            return None
        # Only an idle server: a busy one claims in batches with its finished attempts (group
        # commit), which costs fewer commits per job than a claim in every enqueue. A busy server is
        # seen without the lock (workers take it for every job), then confirmed under it. A server
        # with queue limits or rates counts its rooms in its own turns only.
        if self.running or self._reserved or self._capped:
            return None
        with self._lock:
            if not self._intake or self._stop.is_set() or self.running or self._reserved:
                return None
            free = min(self.capacity(), self.config.max_batch)
            self._reserved += free
        return LocalClaim(server_id=self.config.server_id, queues=tuple(self.config.queues), limit=free,
                          lease_until=now + timedelta(seconds=self.config.lease_seconds))

    def _serves(self, queue: str) -> bool:
        queues = self.config.queues
        return queue in queues or ("*" in queues and PRIVATE_QUEUE_MARK not in queue)

    def accept(self, claim: LocalClaim, jobs: Sequence[ClaimedJob]) -> None:
        """An enqueue claimed `jobs` for us in its (committed) transaction: run them."""
        self._start(jobs, reserved=claim.limit)
        self.claimed_by_enqueues += len(jobs)
        if any(job.options.timeout for job in jobs):
            self.wake.set()  # the loop's wait must now end by their deadline

    def release(self, claim: LocalClaim) -> None:
        """The enqueue that reserved `claim` failed: nothing was claimed."""
        with self._lock:
            self._reserved -= claim.limit

    def _start(self, jobs: Sequence[ClaimedJob], reserved: int = 0) -> None:
        """Hand claimed jobs to the workers; their slots stop being `reserved` at the same moment."""
        mono = self.clock.monotonic()
        items = []
        for job in jobs:
            ctx = context.JobContext(
                id=job.id, attempt=job.attempts, function=job.function, queue=job.options.queue,
                recurring_id=job.recurring_id, progress_sink=self.progress_sink,
                log_sink=self.store.append_logs, slot_lender=self, engine_source=self.engine,
                database=self.store.database,
            )
            timeout = job.options.timeout
            items.append(Running(job=job, ctx=ctx, deadline=mono + timeout if timeout else None,
                                 lease_expires=mono + self.config.lease_seconds))
        expired = self._expired(items) if any(job.options.expires for job in jobs) else []
        replaced = []
        with self._lock:
            self._reserved -= reserved
            for item in items:
                old = self.running.get(item.job.id)
                self.running[item.job.id] = item
                if old is not None:
                    replaced.append(old)
            self._done.extend((item, None) for item in expired)  # reported by the next turn, unrun
        for old in replaced:  # our earlier attempt lost its lease and the job came back to us
            old.ctx.request_cancel("this server no longer holds the job")
        for item in items:
            if item.expired is None:
                self._work.put(item)
        if expired:
            self.wake.set()

    def _expired(self, items: Sequence[Running]) -> list[Running]:
        """The items whose job was claimed after its `expires` ran out, marked so."""
        now = self.clock.now()
        late = []
        for item in items:
            expires, enqueued_at = item.job.options.expires, item.job.enqueued_at
            if expires and enqueued_at is not None and now > enqueued_at + timedelta(seconds=expires):
                item.expired = f"expired: not started within {expires:g}s of being enqueued"
                late.append(item)
        return late

    def _check_timeouts(self) -> None:
        now = self.clock.monotonic()
        with self._lock:
            late = [r for r in self.running.values()
                    if r.started and r.deadline is not None and not r.timed_out and now >= r.deadline]
        for r in late:
            r.timed_out = True
            r.ctx.request_cancel(f"timeout of {r.job.options.timeout}s passed")
            log.warning("job %d exceeded its timeout of %ss; cancelling", r.job.id, r.job.options.timeout)

    def _flush(self) -> int:
        """Write finished attempts now, claiming nothing (shutdown)."""
        return self._turn(claim=False)[0]

    def _take_done(self) -> tuple[list[tuple[Running, RunResult | None]], int]:
        """The finished attempts to report, and how many stale ones were dropped."""
        with self._lock:
            done, self._done = self._done, []
            # An attempt this server already gave back (shutdown, lost lease and claimed anew) has
            # nothing left to report: its job is no longer this attempt's.
            stale = [item for item, _ in done if self.running.get(item.job.id) is not item]
            done = [(item, result) for item, result in done if self.running.get(item.job.id) is item]
        if stale:
            log.info("dropped the outcome of %d attempt(s) already returned: jobs %s", len(stale),
                     [item.job.id for item in stale])
        return done, len(stale)

    def _settle(
        self, done: Sequence[tuple[Running, RunResult | None]], outcomes: Sequence[Outcome], lost: list[int]
    ) -> None:
        """After the outcomes are committed: free the slots, log, tell local waiters."""
        if lost:
            log.warning("jobs %s were no longer held by this server; their outcome was dropped", lost)
        with self._lock:
            for item, result in done:
                if self.running.get(item.job.id) is item:
                    del self.running[item.job.id]
                if result is not None:
                    self._record_duration((result.finished_at - result.started_at).total_seconds())
        for o in outcomes:
            extra = {"action": "job_end", "job_id": o.job_id}
            if o.error_type is None:
                log.info("job %d %s", o.job_id, o.kind.value, extra=extra)
            elif o.retry_at is not None:
                log.info("job %d failed, retry at %s UTC: %s: %s", o.job_id, f"{o.retry_at:%H:%M:%S}",
                         o.error_type, _first_line(o.error_message), extra=extra)
            else:  # INFO, as every job's end: a notebook prints WARNING from any thread into a cell
                log.info("job %d %s: %s: %s", o.job_id, o.kind.value, o.error_type,
                         _first_line(o.error_message), extra=extra)
        if self.on_finished is not None:
            self.on_finished([o.job_id for o in outcomes])

    def _record_duration(self, seconds: float) -> None:
        avg = self._stats.avg_duration
        self._stats.avg_duration = seconds if avg is None else 0.8 * avg + 0.2 * seconds
        self._stats.executed += 1

    def _outcome_or_failure(self, item: Running, result: RunResult | None, now: object) -> Outcome:
        """`_outcome`, or, when a job's own values break its computation (options stored by hand or
        by another version, a retry date past the calendar), a failure of that job saying why: one
        job fails instead of every turn, which would run nothing else."""
        try:
            return self._outcome(item, result, now)
        except Exception as exc:
            log.exception("the outcome of job %d could not be computed; failing it", item.job.id)
            kind = type(exc).__name__
            return Outcome(
                job_id=item.job.id, kind=OutcomeKind.FAILED, finished_at=self.clock.now(), error_type=kind,
                error_message=f"nbjobs could not record this attempt: {kind}: {exc}",
                reason=f"failed: its outcome could not be computed ({kind}; not retried)",
            )

    def _outcome(self, item: Running, result: RunResult | None, now: object) -> Outcome:
        job = item.job
        finished = self.clock.now()
        if item.returned is not None:
            return Outcome(job_id=job.id, kind=OutcomeKind.RETURNED, finished_at=finished,
                           reason=item.returned)
        if item.expired is not None:
            return Outcome(job_id=job.id, kind=OutcomeKind.CANCELLED, finished_at=finished,
                           reason=item.expired)
        # Only returned and expired items come without a result (an executor's own failure is one).
        assert result is not None, f"job {job.id} ended without a result"
        if result.ok:
            return Outcome(job_id=job.id, kind=OutcomeKind.SUCCEEDED, started_at=result.started_at,
                           finished_at=result.finished_at, result=result.result)
        if item.timed_out:
            timeout_error = JobTimeoutError(f"job ran longer than its timeout of {job.options.timeout}s")
            exc_type: type[BaseException] | None = JobTimeoutError
            error_type: str | None = "nbjobs.errors.JobTimeoutError"
            message: str | None = str(timeout_error)
            traceback = result.error_traceback
        else:
            exc_type, error_type, message = result.exc_type, result.error_type, result.error_message
            traceback = result.error_traceback
        if result.cancelled and not item.timed_out:
            return Outcome(job_id=job.id, kind=OutcomeKind.CANCELLED, started_at=result.started_at,
                           finished_at=result.finished_at, error_type=error_type, error_message=message,
                           reason=f"cancelled while running ({item.ctx.cancel_reason})")
        retry_at = None
        reason = ""
        if result.retryable:
            decision = decide(attempts=job.attempts, options=job.options, exc_type=exc_type,
                              now=result.finished_at, asked_delay=result.retry_after)
            retry_at = decision.run_at if decision.retry else None
            reason = (f"{decision.reason} ({message})" if result.retry_after is not None
                      else f"failed with {error_type}: {decision.reason}")
        else:
            reason = f"failed with {error_type} (not retryable)"
        return Outcome(job_id=job.id, kind=OutcomeKind.FAILED, started_at=result.started_at,
                       finished_at=result.finished_at, error_type=error_type, error_message=message,
                       error_traceback=traceback, retry_at=retry_at, reason=reason)

    # -- control --------------------------------------------------------------------------------
    def request_cancel(self, job_id: int, reason: str) -> bool:
        with self._lock:
            item = self.running.get(job_id)
        if item is None:
            return False
        item.ctx.request_cancel(reason)
        return True

    def running_ids(self) -> list[int]:
        with self._lock:
            return list(self.running)

    def running_attempts(self) -> dict[int, Running]:
        """The attempts running now, by job id (a heartbeat's snapshot, for `forget`)."""
        with self._lock:
            return dict(self.running)

    def forget(self, job_ids: Sequence[int], seen: Mapping[int, Running] | None = None) -> None:
        """Jobs this server lost (reaped or deleted elsewhere): never start them; stop the running ones.

        With `seen` (the attempts a heartbeat reported), only those attempts: a job lost and already
        claimed again by this server since is held by its new attempt, which must go on.
        """
        forgotten = []
        with self._lock:
            for job_id in job_ids:
                item = self.running.get(job_id)
                if item is None or (seen is not None and seen.get(job_id) is not item):
                    continue
                forgotten.append(item)
                if not item.started:
                    del self.running[job_id]  # the worker that takes it from the queue skips it
        for item in forgotten:
            item.ctx.request_cancel("this server no longer holds the job")

    def stop_intake(self) -> None:
        self._intake = False
        self.wake.set()

    def return_unstarted(self) -> None:
        """Give back prefetched jobs no worker has started yet."""
        with self._lock:
            unstarted = [r for r in self.running.values() if not r.started]
            for r in unstarted:
                self.running.pop(r.job.id)
        self._return(unstarted, "returned to queue: server stopping before the job started")

    def return_running(self) -> None:
        """Give back jobs still running after the shutdown grace period (and ask them to stop)."""
        with self._lock:
            items = list(self.running.values())
            self.running.clear()
        for r in items:
            r.ctx.request_cancel("server stopped")
        self._return(items, "returned to queue: server stopped while the job was running")

    def _return(self, items: Sequence[Running], reason: str) -> None:
        if not items:
            return
        now = self.clock.now()
        try:
            self.store.finish(
                self.config.server_id,
                [Outcome(job_id=r.job.id, kind=OutcomeKind.RETURNED, finished_at=now, reason=reason)
                 for r in items],
                now,
            )
        except Exception:
            # Shutdown goes on; the leases run out and any server's reaper returns these jobs.
            log.exception("could not return jobs %s to their queue; they return when their lease expires",
                          [r.job.id for r in items])

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job is running (flushing as they finish) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                busy = bool(self.running)
            if not busy:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.wake.wait(min(remaining, 0.05))
            self.wake.clear()
            try:
                self._flush()
            except Exception:
                log.exception("flushing finished jobs failed during shutdown; retrying")

    def stop(self) -> None:
        """Stop the loop (after it flushes) and the workers."""
        self._stop.set()
        self.wake.set()

    def stop_workers(self, timeout: float = 1.0) -> None:
        with self._lock:
            workers = list(self._workers)
        for _ in workers:
            self._work.put(None)
        for t in workers:
            t.join(timeout)

    def flush(self) -> int:
        """Write finished attempts now (shutdown); on a database error they stay for the lease to expire."""
        try:
            return self._flush()
        except Exception:
            log.exception("could not record finished jobs while stopping; their leases will expire and "
                          "the reaper returns them to their queues")
            return 0


def _first_line(message: str | None, limit: int = 200) -> str:
    """A message as one log line: its first line, cut at `limit` characters."""
    line = (message or "").strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"
