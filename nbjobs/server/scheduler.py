"""The scheduler loop: promotes due Scheduled jobs and runs duties (e.g. `recurring.RecurringDuty`).

It checks at least once a second (SQLite: once every `interval`, as the listener reports every
commit), at the next scheduled job or recurring fire, and early when the client schedules something
or changes a recurring definition in this process, or another process commits: such a change costs
one read of the next due time, and a pass only if something is due sooner than planned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from ..clock import Clock
from ..storage import Store

log = logging.getLogger("nbjobs.server")

#: Shortest time between two ticks, in seconds (well inside the 1 s promotion promise).
MIN_TICK_GAP = 0.1

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
        self.peeks = 0  #: wake-ups that only re-read the next due time (nothing was due sooner)
        self.last_tick_at: datetime | None = None
        self._ticked_at = 0.0

    def tick(self) -> int:
        """One pass: promote what is due, run duties; returns jobs made ready."""
        return self._pass()[0]

    def _pass(self) -> tuple[int, datetime | None]:
        """`tick`, also returning the next due time it read (so the wait need not read it again)."""
        self._ticked_at = time.monotonic()
        now = self.last_tick_at = self.clock.now()
        ready = 0
        due = self.store.next_due()
        if due is not None and due <= now:
            ready += self.store.promote_due(now)
            due = self.store.next_due()
        for duty in self.duties:
            try:
                ready += duty()
            except Exception:
                log.exception("scheduler duty %r failed", duty)
        if ready:
            self.wake_dispatcher.set()
        self.ticks += 1
        return ready, due

    def _timeout(self, known_due: tuple[datetime | None] | None = None) -> float:
        """Seconds until the next scheduled job or recurring fire, at most `interval`.

        `known_due`: the next due time just read by `_pass`, if any (one query fewer per wake-up).
        """
        try:
            due = self.store.next_due() if known_due is None else known_due[0]
            fire = self.store.next_recurring_fire()
        except Exception:
            return self.interval
        return self._seconds_until(due, fire)

    def _seconds_until(self, due: datetime | None, fire: datetime | None) -> float:
        now = self.clock.now()
        timeout = self.interval
        if due is not None:
            timeout = min(timeout, (due - now).total_seconds())
        # A fire the last tick already saw due and left there is stuck (e.g. its schedule no longer
        # parses): waking for it would spin; it is retried at the interval.
        if fire is not None and (self.last_tick_at is None or fire > self.last_tick_at):
            timeout = min(timeout, (fire - now).total_seconds())
        return max(0.0, timeout)

    def stop(self) -> None:
        self.stop_event.set()
        self.changed.set()  # the loop waits on `changed`; setting it ends the wait at once

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                _, due = self._pass()
                # Read before the timeout is computed: time that passes until the wait starts
                # shortens the wait, so a fire due meanwhile is not waited past.
                started = self.clock.monotonic()
                timeout = self._timeout((due,))
            except Exception:
                log.exception("scheduler tick failed; retrying")
                started, timeout = self.clock.monotonic(), self.interval
            if self.stop_event.is_set():
                return
            self._sleep_until(started + timeout)

    def _sleep_until(self, deadline: float) -> None:
        """Wait until `deadline` (this clock's monotonic time) or until something new is due sooner.

        A change (a schedule written here, or any commit the listener saw) costs one read of the
        next wake-up time, not a whole pass: most changes (heartbeats, finished jobs) move nothing
        closer, and the wait simply goes on.
        """
        while True:
            woken = self.clock.wait(self.changed, max(0.0, deadline - self.clock.monotonic()))
            self.changed.clear()
            # A busy SQLite database reports many commits a second; ticks come at most this often
            # (real time, like the dispatcher's pacing: it is about CPU, not about the job clock).
            gap = self._ticked_at + MIN_TICK_GAP - time.monotonic()
            if gap > 0 and self.stop_event.wait(gap):
                return
            if not woken or self.stop_event.is_set():
                return
            try:
                self._ticked_at = time.monotonic()  # a look, as far as the pacing goes
                started = self.clock.monotonic()
                timeout = self._seconds_until(*self.store.next_wakeup())
            except Exception:
                return  # the pass that follows retries (and logs) what failed
            self.peeks += 1
            if timeout <= 0:
                return
            deadline = min(deadline, started + timeout)
