"""`job.add_done_callback(fn)`: call `fn(job)` in this process once the job is final.

Whoever finishes the job — this process's server, another kernel, an `nbjobs server` on another
machine — the callback fires once, and only for a final state (a failed attempt that will be retried
is not the end). One watcher thread exists only while callbacks are pending: it is woken at once by
local completions and otherwise polls the states of the watched jobs (one query for all of them).
Callbacks run in that thread, never in the server's dispatcher, so a slow callback delays no job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .clock import Clock
from .errors import USER_CODE_ERRORS
from .storage import Store

if TYPE_CHECKING:
    from .client import Job

log = logging.getLogger("nbjobs.callbacks")


class DoneCallbacks:
    """Pending done-callbacks of one engine and the watcher thread that fires them."""

    def __init__(self, store: Store, clock: Clock, *, poll_interval: float = 0.5) -> None:
        self.store = store
        self.clock = clock
        self.poll_interval = poll_interval
        self._pending: dict[int, list[tuple[Job, Callable[[Job], Any]]]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, job: Job, fn: Callable[[Job], Any]) -> None:
        with self._lock:
            self._pending.setdefault(job.id, []).append((job, fn))
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._run, name="nbjobs-callbacks", daemon=True)
                self._thread.start()
        self._wake.set()

    def poke(self, job_ids: Sequence[int]) -> None:
        """Jobs changed state in this process: check them now rather than at the next poll."""
        if self._pending and any(i in self._pending for i in job_ids):
            self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._pending.values())

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.clear()
            with self._lock:
                ids = list(self._pending)
                if not ids:
                    self._thread = None
                    return
            try:
                states = self.store.states_of(ids)
            except Exception:
                log.exception("could not read job states for done-callbacks; retrying")
                states = {}
                ids = []
            # A job that no longer exists (pruned, removed) is done too: its callbacks fire.
            done = [i for i in ids if i not in states or states[i].is_final]
            with self._lock:
                todo = [cb for i in done for cb in self._pending.pop(i, [])]
            for job, fn in todo:
                try:
                    fn(job)
                except USER_CODE_ERRORS:  # sys.exit() in a callback must not end the watcher
                    log.exception("done-callback %r of job %d raised", fn, job.id)
            self.clock.wait(self._wake, self.poll_interval)
        with self._lock:
            self._thread = None

    def close(self) -> None:
        """Stop watching; callbacks still pending are dropped."""
        self._closed.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
