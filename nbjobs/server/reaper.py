"""The reaper: returns jobs of dead servers to their queues and prunes expired finished jobs.

Every server runs one; a lease-lock in storage lets only one act at a time.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from ..clock import Clock
from ..processes import pid_alive
from ..storage import ReapReport, Store

log = logging.getLogger("nbjobs.server")

HOST = socket.gethostname()


class Reaper:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        server_id: str,
        interval: float,
        server_timeout: float,
        keep_succeeded: float,
        keep_deleted: float,
        prune_batch: int = 1000,
        prune_interval: float = 60.0,
        refresh_own: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.server_id = server_id
        self.interval = interval
        self.server_timeout = server_timeout
        self.keep_succeeded = keep_succeeded
        self.keep_deleted = keep_deleted
        self.prune_batch = prune_batch
        self.refresh_own = refresh_own
        #: Expiry is measured in days: pruning once a minute keeps an idle server's cost down.
        self.prune_interval = prune_interval
        self._last_prune: datetime | None = None
        self.stop_event = threading.Event()

    def dead_local_servers(self) -> list[str]:
        """Servers on this host whose process is gone: known dead at once, no need to wait."""
        return [
            s.id for s in self.store.list_servers()
            if s.host == HOST and s.id != self.server_id and not pid_alive(s.pid)
        ]

    def reap_once(self) -> ReapReport | None:
        now = self.clock.now()
        dead = self.dead_local_servers()
        # A dead server's lock is taken at once: its pass would otherwise hold the others off for up
        # to two intervals, and with them the return of its jobs that "at once" promises.
        until = now + timedelta(seconds=self.interval * 2)
        if not self.store.try_lock("reaper", self.server_id, until, now, taking_from=dead):
            return None
        if self.refresh_own is not None:
            # Beat for our own server first: after a pause (a suspended laptop) every thread wakes at
            # once, and a reaper that ran before its own heartbeat would return its own running jobs.
            self.refresh_own()
        report = self.store.reap(now, server_timeout=self.server_timeout, dead_server_ids=dead)
        if report.dead_servers or report.returned_jobs:
            log.warning("reaped servers %s; returned jobs %s to their queues",
                        list(report.dead_servers), list(report.returned_jobs))
        for queue in report.orphaned_queues:
            # Its process is gone (its kernel crashed or was killed): `%%job` cells run only there.
            gone = self.store.discard_queues(
                [queue], now, f"the process that owned private queue {queue} is gone; its jobs "
                "(cells run with %%job) could only run there")
            if gone:
                log.warning("deleted jobs %s of private queue %s: its process is gone", gone, queue)
        pruned = 0
        if self._last_prune is not None and (now - self._last_prune).total_seconds() < self.prune_interval:
            return ReapReport(dead_servers=report.dead_servers, returned_jobs=report.returned_jobs)
        self._last_prune = now
        while not self.stop_event.is_set():
            n = self.store.prune(now, keep_succeeded=self.keep_succeeded,
                                 keep_deleted=self.keep_deleted, batch=self.prune_batch)
            pruned += n
            if n < self.prune_batch:
                break
        return ReapReport(dead_servers=report.dead_servers, returned_jobs=report.returned_jobs,
                          pruned_jobs=pruned)

    def run(self) -> None:
        while not self.clock.wait(self.stop_event, self.interval):
            try:
                self.reap_once()
            except Exception:
                log.exception("reaper pass failed; retrying at the next interval")
