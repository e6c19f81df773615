"""One server: registers itself, runs the dispatcher, heartbeat, scheduler, reaper and listener loops,
watches them, and shuts down in order.

Shutdown: stop claiming; give back prefetched jobs; let running jobs finish within the grace period
while heartbeats go on; return the rest to their queues; unregister. `stop()` is idempotent and
callable from any thread.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import private_queues, tqdm_progress
from ..clock import Clock, seconds_of
from ..executors.thread import RunWrapper
from ..model import PRIVATE_QUEUE_MARK, SERVER_NAME_MAX, ServerInfo, padded_queue, unstorable_character
from ..payload import Codec
from ..rates import Rate, parse_rate
from ..storage import Store
from .dispatcher import Dispatcher, DispatcherConfig, Executor
from .heartbeat import Heartbeat
from .reaper import HOST, Reaper
from .scheduler import Duty, Scheduler

log = logging.getLogger("nbjobs.server")

DAY = 86400.0

#: Settings in seconds, and whether 0 is meaningful for each (keep nothing, wait for nothing); none
#: may be negative, NaN or beyond LONGEST_SECONDS, which overflowed or spun the loops that wait on them.
_DURATIONS = (
    ("heartbeat_interval", False), ("server_timeout", False), ("shutdown_timeout", True),
    ("poll_interval", False), ("scheduler_interval", False), ("scheduler_idle_interval", False),
    ("keep_succeeded", True), ("keep_deleted", True),
)


@dataclass
class ServerConfig:
    """Server settings; defaults suit a notebook kernel."""

    workers: int = 4
    queues: Sequence[str] = ("*",)  #: in priority order; "*" is every queue
    name: str | None = None
    heartbeat_interval: float = 5.0
    server_timeout: float = 30.0  #: a server silent this long is dead; also the job lease length
    shutdown_timeout: float = 10.0  #: grace for running jobs when stopping
    poll_interval: float = 0.25  #: cross-process check for new work when no notification exists
    scheduler_interval: float = 1.0
    #: Longest dispatcher and scheduler sleep when the database reports every change (SQLite), which
    #: wakes them sooner.
    scheduler_idle_interval: float = 30.0
    keep_succeeded: float = 7 * DAY
    keep_deleted: float = 7 * DAY
    max_batch: int = 200
    #: Most jobs of a queue running at once on this server, e.g. {"gpu": 1}; other queues share the
    #: workers freely. Per server: two servers with {"gpu": 1} may run two such jobs in all.
    limits: Mapping[str, int] = field(default_factory=dict)
    #: Most jobs of a queue started in any period on this server, e.g. {"openai": "60/m"} (an API's
    #: quota); "N/s", "N/m", "N/h", "N/d" or "N/30s". Per server, as `limits`.
    rates: Mapping[str, str | Rate] = field(default_factory=dict)
    duties: list[Duty] = field(default_factory=list)
    #: Worker processes (`executor="process"`) are replaced after this many jobs, or once a job leaves
    #: one holding more than this many MB: memory a library keeps (caches, leaks) goes with it.
    process_max_jobs: int | None = None
    process_max_memory_mb: float | None = None

    def validate(self) -> None:
        """Refuse a bad setting, naming it; durations given as text or a timedelta become seconds."""
        from ..errors import LONGEST_SECONDS, ConfigurationError, is_seconds

        if isinstance(self.workers, bool) or not isinstance(self.workers, int):
            raise ConfigurationError(f"workers must be a whole number such as 4, got {self.workers!r}")
        if self.workers < 1:
            raise ConfigurationError(f"workers must be at least 1, got {self.workers}")
        jobs = self.process_max_jobs
        if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
            raise ConfigurationError(f"process_max_jobs must be a whole number of at least 1 (or None), "
                                     f"got {jobs!r}")
        memory = self.process_max_memory_mb
        if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int | float)
                                   or not 0 < memory < float("inf")):
            raise ConfigurationError(f"process_max_memory_mb must be a positive number of MB (or None), "
                                     f"got {memory!r}")
        if self.name is not None and len(self.name) > SERVER_NAME_MAX:
            raise ConfigurationError(
                f"server name {self.name[:40]!r}… is {len(self.name)} characters; "
                f"use at most {SERVER_NAME_MAX}"
            )
        if not self.queues:
            raise ConfigurationError("queues must name at least one queue (or '*' for all)")
        for queue in self.queues:
            if isinstance(queue, str) and (padding := padded_queue(queue)) is not None:
                raise ConfigurationError(padding)
        for what, text in [("server name", self.name), *(("queue", q) for q in self.queues)]:
            bad = unstorable_character(text) if isinstance(text, str) else None
            if bad is not None:
                raise ConfigurationError(f"{what} {text!r} contains {bad}, which the database cannot store; "
                                         "remove it")
        running_at_once = "the most jobs of each running at once, e.g. {'gpu': 1}"
        for queue, most in self._per_queue("limits", running_at_once):
            if isinstance(most, bool) or not isinstance(most, int) or most < 1:
                raise ConfigurationError(
                    f"limits: queue {queue!r} needs a whole number of jobs of at least 1, got {most!r} "
                    "(to run none, leave the queue out of `queues`)"
                )
        for queue, rate in self._per_queue("rates", "the most jobs of each started in a period, e.g. "
                                           "{'openai': '60/m'}"):
            parse_rate(rate, queue)
        for setting, zero in _DURATIONS:
            seconds = seconds_of(getattr(self, setting))  # '30d', '10s' or a timedelta, as job options
            if not is_seconds(seconds, zero=zero):
                least = "from 0" if zero else "above 0"
                raise ConfigurationError(
                    f"{setting} must be a number of seconds {least} to {LONGEST_SECONDS:,.0f} (100 years) "
                    f"or a duration such as '30s', got {getattr(self, setting)!r}; leave it out for the "
                    f"default ({getattr(ServerConfig, setting):g})"
                )
            setattr(self, setting, float(seconds))
        batch = self.max_batch
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigurationError(f"max_batch must be a whole number of jobs of at least 1, got {batch!r}")
        if self.server_timeout <= self.heartbeat_interval:
            raise ConfigurationError(
                "server_timeout must be longer than heartbeat_interval (e.g. 30 and 5 seconds)"
            )


    def _per_queue(self, setting: str, meaning: str) -> list[tuple[str, Any]]:
        """The items of `limits` or `rates`, each naming one queue this server serves."""
        from ..errors import ConfigurationError

        value = getattr(self, setting)
        if not isinstance(value, Mapping):
            raise ConfigurationError(f"{setting} maps queue names to {meaning}; got {type(value).__name__}")
        for queue in value:
            if not isinstance(queue, str) or not queue or queue == "*":
                raise ConfigurationError(
                    f"{setting}: {queue!r} is not a queue name; name one queue per entry"
                )
            if queue not in self.queues and ("*" not in self.queues or PRIVATE_QUEUE_MARK in queue):
                raise ConfigurationError(
                    f"{setting}: this server does not serve queue {queue!r} (queues={list(self.queues)}); "
                    f"add it to `queues` or drop its entry"
                )
        return list(value.items())

    def parsed_rates(self) -> dict[str, Rate]:
        return {queue: parse_rate(rate, queue) for queue, rate in self.rates.items()}


class Server:
    """A job server living in this process."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        codec: Codec,
        config: ServerConfig,
        wake: threading.Event,
        schedule_changed: threading.Event,
        executors: dict[str, Executor] | None = None,
        wrappers: Sequence[RunWrapper] = (),
        progress_sink: Callable[[int, float | None, str | None], None] | None = None,
        on_finished: Callable[[Sequence[int]], None] | None = None,
        engine: Any = None,
    ) -> None:
        config.validate()
        self.store = store
        self.clock = clock
        self.config = config
        self.id = uuid.uuid4().hex
        self.name = config.name or f"{HOST}:{os.getpid()}:{self.id[:6]}"
        self.wake = wake
        self._listener = store.listener()
        # When the listener sees every commit (SQLite), new work and a schedule written by any process
        # wake the dispatcher and the scheduler within one poll, and due times are waited for exactly:
        # neither need look on its own every few seconds.
        dispatcher_poll = max(config.poll_interval, 5.0)
        scheduler_interval = config.scheduler_interval
        if self._listener.sees_every_commit:
            dispatcher_poll = max(dispatcher_poll, config.scheduler_idle_interval)
            scheduler_interval = max(scheduler_interval, config.scheduler_idle_interval)
        self.dispatcher = Dispatcher(
            store=store, clock=clock, codec=codec, wake=wake, executors=executors, wrappers=wrappers,
            progress_sink=progress_sink, on_finished=on_finished, engine=engine,
            config=DispatcherConfig(
                server_id=self.id, queues=tuple(config.queues), workers=config.workers,
                lease_seconds=config.server_timeout, poll_interval=dispatcher_poll,
                max_batch=config.max_batch, limits=dict(config.limits), rates=config.parsed_rates(),
            ),
        )
        self.heartbeat = Heartbeat(
            store=store, clock=clock, dispatcher=self.dispatcher, server_id=self.id,
            interval=config.heartbeat_interval, lease_seconds=config.server_timeout,
            reregister=self._register,
        )
        self.scheduler = Scheduler(
            store=store, clock=clock, wake_dispatcher=wake, changed=schedule_changed,
            interval=scheduler_interval, duties=config.duties,
        )
        # A server is dead after `server_timeout` of silence; looking three times in that span finds
        # it soon enough (a dead server on this host is found by its pid at once), and an idle
        # server's reaper passes, each a few commits, stay rare.
        self.reaper = Reaper(
            store=store, clock=clock, server_id=self.id,
            interval=max(config.heartbeat_interval, config.server_timeout / 3),
            server_timeout=config.server_timeout, keep_succeeded=config.keep_succeeded,
            keep_deleted=config.keep_deleted,
            # Our own beat must be fresh enough not to look dead to this pass: half the timeout is.
            refresh_own=lambda: self.heartbeat.beat_if_older(config.server_timeout / 2),
        )
        self._listen_stop = threading.Event()
        self.listener_reports = 0  #: changes the listener reported (handled by the time it counts)
        self._threads: dict[str, threading.Thread] = {}
        self._started = False
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------
    def _register(self) -> None:
        now = self.clock.now()
        self.store.register_server(ServerInfo(
            id=self.id, name=self.name, host=HOST, pid=os.getpid(), workers=self.config.workers,
            queues=tuple(self.config.queues), started_at=now, heartbeat_at=now,
        ))

    def start(self) -> Server:
        if self._started:
            return self
        private_queues.serve_here(self)  # jobs that only this process can run
        tqdm_progress.install()  # tqdm bars in this process's jobs report their progress
        self._register()
        # Recover what a crashed server on this host left behind before taking new work.
        try:
            self.reaper.reap_once()
        except Exception:
            log.exception("initial reap failed")
        try:  # before the dispatcher's first look: nothing committed after that look goes unseen
            self._listener.open()
        except Exception as exc:
            log.warning("could not start listening for new work (%s); the listener retries", exc)
        self.dispatcher.start_workers()
        loops: dict[str, Callable[[], None]] = {
            "dispatcher": self.dispatcher.run,
            "heartbeat": self.heartbeat.run,
            "scheduler": self.scheduler.run,
            "reaper": self.reaper.run,
            "listener": self._listen,
        }
        for name, target in loops.items():
            t = threading.Thread(target=self._supervised(name, target), name=f"nbjobs-{name}", daemon=True)
            self._threads[name] = t
            t.start()
        self._started = True
        log.info("server %s started: %d workers, queues %s", self.name, self.config.workers,
                 list(self.config.queues), extra={"action": "server_start"})
        return self

    def _supervised(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException:
                if not self._stopped.is_set():
                    log.critical("server loop %r died; stopping the server so no job is left behind", name)
                    threading.Thread(target=self.stop, name="nbjobs-emergency-stop", daemon=True).start()
                raise

        return run

    def _listen(self) -> None:
        """Turn notifications from other processes (or SQLite's change counter) into wake-ups."""
        while not self._listen_stop.is_set():
            if self._listener.wait(self._listen_stop, self.config.poll_interval):
                if self._listener.work_pending():
                    self.wake.set()
                if self._listener.sees_every_commit and self._listener.due_times_changed():
                    self.scheduler.changed.set()
                self.listener_reports += 1

    @property
    def running(self) -> bool:
        return self._started and not self._stopped.is_set()

    def alive_loops(self) -> dict[str, bool]:
        return {name: t.is_alive() for name, t in self._threads.items()}

    def stop(self, timeout: float | None = None) -> None:
        """Drain and stop; running jobs get `timeout` (default: shutdown_timeout) to finish."""
        with self._stop_lock:
            if self._stopped.is_set() or not self._started:
                self._stopped.set()
                return
            grace = self.config.shutdown_timeout if timeout is None else timeout
            private_queues.stop_serving(self)
            log.info("server %s stopping (grace %.1fs)", self.name, grace, extra={"action": "server_stop"})
            d = self.dispatcher
            d.stop_intake()
            d.stop()
            self._join("dispatcher")
            d.return_unstarted()
            if not d.wait_idle(grace):
                d.return_running()
            d.flush()
            self._stopped.set()
            self.heartbeat.stop_event.set()
            self.scheduler.stop()
            self.reaper.stop_event.set()
            self._listen_stop.set()
            self._listener.interrupt()
            for name in ("heartbeat", "scheduler", "reaper", "listener"):
                self._join(name)
            self._listener.close()
            d.stop_workers(timeout=0.5)
            try:
                self.store.unregister_server(self.id)
            except Exception:
                log.exception("could not unregister server %s", self.id)
            log.info("server %s stopped", self.name, extra={"action": "server_stopped"})

    def _join(self, name: str) -> None:
        t = self._threads.get(name)
        if t is not None and t is not threading.current_thread():
            t.join(timeout=30)

    def request_cancel(self, job_id: int, reason: str) -> bool:
        return self.dispatcher.request_cancel(job_id, reason)

    def add_queue(self, queue: str, *, first: bool = True) -> None:
        """Serve one more queue from now on (a private `%%job` queue of this kernel, say)."""
        if queue in self.config.queues:
            return
        queues = (queue, *self.config.queues) if first else (*self.config.queues, queue)
        self.config.queues = queues
        self.dispatcher.config.queues = queues  # read at every claim
        if self.running:
            self._register()
        self.wake.set()
