"""The heartbeat loop: keeps the server row fresh and extends the leases of running jobs.

It runs on its own thread, never a job's, so a job that holds the GIL in C code for a while or
blocks on I/O keeps its lease however long it runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from ..clock import Clock
from ..storage import Store
from .dispatcher import Dispatcher

log = logging.getLogger("nbjobs.server")


class Heartbeat:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        dispatcher: Dispatcher,
        server_id: str,
        interval: float,
        lease_seconds: float,
        reregister: Callable[[], None],
    ) -> None:
        self.store = store
        self.clock = clock
        self.dispatcher = dispatcher
        self.server_id = server_id
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.reregister = reregister
        self.stop_event = threading.Event()
        self.beats = 0
        # The heartbeat thread and the reaper (which beats first) may beat at once; one at a time, each
        # reading the clock inside, so an older beat never overwrites a newer one in storage.
        self._beat_lock = threading.Lock()
        self.last_beat: datetime | None = None  #: wall-clock time of the last successful beat

    def beat(self) -> None:
        with self._beat_lock:
            self._beat()

    def beat_if_older(self, seconds: float) -> None:
        """Beat unless a beat succeeded within `seconds` (wall clock: it also runs while suspended)."""
        with self._beat_lock:
            last = self.last_beat
            if last is None or (self.clock.now() - last).total_seconds() >= seconds:
                self._beat()

    def _beat(self) -> None:
        now = self.clock.now()
        sent = self.clock.monotonic()  # the new leases count from before the call, to be safe
        attempts = self.dispatcher.running_attempts()
        running = list(attempts)
        reply = self.store.heartbeat(
            self.server_id, running, now + timedelta(seconds=self.lease_seconds), now
        )
        self.dispatcher.extend_local_leases(
            [i for i in running if i not in reply.lost], sent + self.lease_seconds
        )
        if not reply.registered:
            log.warning("server row was missing (declared dead after a long pause?); registering again")
            self.reregister()
        for job_id in reply.cancel_requested:
            self.dispatcher.request_cancel(job_id, "cancelled by request")
        if reply.lost:
            self.dispatcher.forget(list(reply.lost), seen=attempts)
        self.last_beat = now
        self.beats += 1

    def run(self) -> None:
        # Fixed rate, not fixed delay: the time a beat takes (a slow database) does not push every
        # later beat back, so a lease is never older than one interval plus one beat.
        next_at = self.clock.monotonic() + self.interval
        while not self.clock.wait(self.stop_event, max(0.0, next_at - self.clock.monotonic())):
            try:
                self.beat()
            except Exception:  # the database may be briefly unreachable: keep beating
                log.exception("heartbeat failed; retrying at the next interval")
            next_at = max(next_at + self.interval, self.clock.monotonic())
