"""Run one server in the foreground until a signal stops it (what `nbjobs server` does), or, in a
burst (`--burst`, for cron lines and CI), until nothing it could run is left.

The first SIGTERM, SIGINT or SIGHUP (a terminal closing; unless `nohup` ignores it) drains gracefully
through `Server.stop()`: no new claims, prefetched jobs go back at once, running jobs get the shutdown
timeout, whatever still runs then returns to its queue, and the server unregisters. A second signal
while draining stops at once: running jobs are returned to their queues immediately (their threads
are abandoned; the process exits).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from .server import Server

log = logging.getLogger("nbjobs.server")

HANDLED = (signal.SIGTERM, signal.SIGINT)
#: Drained for too (a terminal closing), unless ignored when the server started: `nohup` ignores it
#: so that the server outlives the terminal, and it must go on doing so.
HANGUP = getattr(signal, "SIGHUP", None)


class Runner:
    """Owns the signal handlers and the main thread's wait for one server."""

    def __init__(self, start: Callable[[], Server], *, burst: bool = False, check_every: float = 0.5) -> None:
        self._start = start
        #: Stop (gracefully, exit 0) once the server has nothing left to run (`nbjobs server --burst`).
        self.burst = burst
        self.check_every = check_every
        self.server: Server | None = None
        self.signals = 0
        self._stop_requested = threading.Event()
        self._drained = threading.Event()
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals == 1:
            log.info("%s received: draining (a second signal stops at once)", name,
                     extra={"action": "server_drain"})
            self._stop_requested.set()
        else:
            log.warning("%s received again: returning running jobs to their queues and exiting", name,
                        extra={"action": "server_abort"})
            if self.server is not None:
                self._abort(self.server)
            self._drained.set()

    @staticmethod
    def _abort(server: Server) -> None:
        # Runs in the main thread between bytecodes while the drain runs on another thread; both
        # only take the dispatcher's short lock, so this cannot deadlock with it.
        try:
            server.dispatcher.stop_intake()
            server.dispatcher.return_unstarted()
            server.dispatcher.return_running()
            server.store.unregister_server(server.id)
        except Exception:
            log.exception("returning running jobs failed; the reaper returns them once their lease expires")

    def install(self) -> None:
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        if HANGUP is not None and signal.getsignal(HANGUP) is not signal.SIG_IGN:
            self._previous[HANGUP] = signal.signal(HANGUP, self._on_signal)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @staticmethod
    def _has_work(server: Server) -> bool:
        try:
            return server.store.has_work(server.id, server.config.queues, server.clock.now())
        except Exception:  # the database away a moment: go on serving, ask again next time
            log.exception("burst: could not tell whether work is left")
            return True

    def _drain(self, server: Server) -> None:
        try:
            server.stop()
        finally:
            self._drained.set()

    def run(self) -> int:
        """Start the server, block until stopped; returns a process exit code (0: clean)."""
        self.install()
        try:
            server = self.server = self._start()
            # Wake twice a second (or as often as a burst checks) so signal handlers run promptly and
            # a dead server is noticed.
            while not self._stop_requested.wait(self.check_every):
                if not server.running:
                    log.error("server stopped on its own (a loop died); exiting")
                    return 1
                if self.burst and not self._has_work(server):
                    log.info("burst: nothing left to run; stopping", extra={"action": "server_burst_done"})
                    break
            threading.Thread(target=self._drain, args=(server,), name="nbjobs-drain", daemon=True).start()
            while not self._drained.wait(0.5):
                pass
            return 0 if self.signals < 2 else 130
        finally:
            self.uninstall()


def run_until_stopped(start: Callable[[], Server], *, burst: bool = False, check_every: float = 0.5) -> int:
    """Start a server with `start()` and block this (main) thread until SIGTERM/SIGINT stop it, or,
    with `burst`, until it has nothing left to run (jobs scheduled later are left for later)."""
    return Runner(start, burst=burst, check_every=check_every).run()
