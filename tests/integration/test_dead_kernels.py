"""A kernel killed with `%%job` cells pending: on its host, the next server starts and finds it dead
at once (its process gone, even as a zombie its parent has not collected), returns its jobs, and
deletes those of its private queue, which no other process can ever run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import nbjobs
from nbjobs import JobState

from .servers import SECRET

#: Stands in for a kernel: its default engine serves a private queue (as `%%job` cells use).
KERNEL = """
import time
import nbjobs
from nbjobs import default

def hold(seconds):
    time.sleep(seconds)

queue = default.private_queue()
engine = default.default_engine()
running = engine.options(queue=queue).enqueue(hold, 120)
waiting = engine.options(queue=queue, priority=-1).enqueue(hold, 120)
later = engine.options(queue=queue).schedule(3600, hold, 1)
after = running.then(hold, 1)
print(running.id, waiting.id, later.id, after.id, flush=True)
while running.state is not nbjobs.JobState.PROCESSING:
    time.sleep(0.01)
print("running", flush=True)
time.sleep(120)
"""


def test_a_killed_kernels_private_jobs_are_deleted_by_the_next_server_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = {**os.environ, "NBJOBS_URL": url, "NBJOBS_SECRET": SECRET, "NBJOBS_WORKERS": "1",
           "NBJOBS_HOME": str(tmp_path / "home")}
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert kernel.stdout is not None
        ids = [int(i) for i in kernel.stdout.readline().split()]
        assert kernel.stdout.readline() == "running\n"
        kernel.send_signal(signal.SIGKILL)
        os.waitid(os.P_PID, kernel.pid, os.WEXITED | os.WNOWAIT)  # dead, not collected: a zombie
        with nbjobs.connect(url, secret=SECRET) as nb:
            nb.start_server(workers=1)  # its first reap, before it takes work: no waiting for a lock
            assert [nb.job(i).state for i in ids] == [JobState.DELETED] * 4
            reasons = [change.reason for change in nb.history(ids[1]).itertuples()]
            assert "its jobs (cells run with %%job) could only run there" in reasons[-1]
            assert nb.servers()["pid"].tolist() == [os.getpid()]
    finally:
        kernel.kill()
        kernel.wait(10)
        if kernel.stdout is not None:
            kernel.stdout.close()
