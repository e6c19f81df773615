"""Start and stop real `nbjobs server` processes for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nbjobs.storage import Store

from ..conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]  #: the repository, so `tests.integration.jobfuncs` imports
SECRET = "test-secret"


def _ignore_hangup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


class ServerProcess:
    """One `python -m nbjobs server` child with its log in a file."""

    def __init__(self, url: str, name: str, log_dir: Path, *args: str, ignore_hangup: bool = False) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "NBJOBS_SECRET": SECRET}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nbjobs", "server", "--url", url, "--name", name, *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
            preexec_fn=_ignore_hangup if ignore_hangup else None,  # as `nohup` starts it
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within 20 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@contextmanager
def servers(url: str, log_dir: Path, count: int, *args: str, store: Store,
            prefix: str = "srv") -> Iterator[list[ServerProcess]]:
    """`count` servers, registered before the body runs; all stopped afterwards."""
    procs = [ServerProcess(url, f"{prefix}{i}", log_dir, *args) for i in range(count)]
    try:
        wait_until_registered(store, procs)
        yield procs
    finally:
        for p in procs:
            p.stop()


def wait_until_registered(store: Store, procs: list[ServerProcess], timeout: float = 60) -> None:
    def ready() -> bool:
        for p in procs:
            if p.proc.poll() is not None:
                raise AssertionError(f"server {p.name} exited with {p.proc.returncode}:\n{p.log()}")
        names = {s.name for s in store.list_servers()}
        return all(p.name in names for p in procs)

    wait_for(ready, timeout=timeout, interval=0.05)


def lines(path: Path) -> list[tuple[int, int]]:
    """(tag, pid) per line of a file written by `jobfuncs.record`."""
    if not path.exists():
        return []
    return [(int(a), int(b)) for a, b in (ln.split() for ln in path.read_text().splitlines())]
