"""The scheduler loop: promotes due Scheduled jobs (and, through hooks, fires recurring jobs).

It checks at least once a second and wakes early when the client schedules something in this process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..clock import Clock
from ..storage import Store

log = logging.getLogger("nbjobs.server")

#: A periodic duty run on the scheduler's tick (e.g. recurring fires); returns jobs enqueued.
Duty = Callable[[], int]


class Scheduler:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        wake_dispatcher: threading.Event,
        changed: threading.Event,
        interval: float = 1.0,
        duties: list[Duty] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.wake_dispatcher = wake_dispatcher
        self.changed = changed
        self.interval = interval
        self.duties: list[Duty] = list(duties or [])
        self.stop_event = threading.Event()
        self.ticks = 0

    def tick(self) -> int:
        """One pass: promote what is due, run duties; returns jobs made ready."""
        now = self.clock.now()
        ready = 0
        due = self.store.next_due()
        if due is not None and due <= now:
            ready += self.store.promote_due(now)
        for duty in self.duties:
            try:
                ready += duty()
            except Exception:
                log.exception("scheduler duty %r failed", duty)
        if ready:
            self.wake_dispatcher.set()
        self.ticks += 1
        return ready

    def _timeout(self) -> float:
        try:
            due = self.store.next_due()
        except Exception:
            return self.interval
        if due is None:
            return self.interval
        return max(0.0, min(self.interval, (due - self.clock.now()).total_seconds()))

    def stop(self) -> None:
        self.stop_event.set()
        self.changed.set()  # the loop waits on `changed`; setting it ends the wait at once

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.tick()
                timeout = self._timeout()
            except Exception:
                log.exception("scheduler tick failed; retrying")
                timeout = self.interval
            if self.stop_event.is_set():
                return
            self.clock.wait(self.changed, timeout)
            self.changed.clear()
