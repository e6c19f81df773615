"""A per-second recurring job fired by three real `nbjobs server` processes on one database (real clock):
every fire time gets exactly one job, and each job runs once."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest

import nbjobs
from nbjobs.storage import JobFilter

from ..conftest import wait_for
from . import jobfuncs
from .servers import SECRET, lines, servers

pytestmark = pytest.mark.timeout(120)

FIRES = 5  #: seconds of schedule to watch


def test_three_server_processes_fire_each_second_once(db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "runs.txt"
    with nbjobs.connect(db_url, secret=SECRET) as nb:
        args = ("--workers", "2", "--poll-interval", "0.05", "--log-level", "WARNING")
        with servers(nb.url, tmp_path, 3, *args, store=nb.store, prefix="cron"):
            # misfire="all": a scheduler that lags still owes every second, so gaps would show.
            nb.options(misfire="all").recurring("tick", "* * * * * *", jobfuncs.record, str(out), 1)

            def jobs() -> list[dict[str, object]]:
                return nb.store.query(JobFilter(recurring_id="tick", newest_first=False, limit=None))

            wait_for(lambda: len(jobs()) >= FIRES and all(j["state"] == "succeeded" for j in jobs()),
                     timeout=60, interval=0.1)
            nb.pause("tick")
            wait_for(lambda: all(j["state"] == "succeeded" for j in jobs()), timeout=30, interval=0.1)
        rows = jobs()
    fires = Counter(row["fire_time"] for row in rows)
    assert max(fires.values()) == 1, fires
    ordered = sorted(fires)
    assert all(b - a == timedelta(seconds=1) for a, b in pairwise(ordered)), ordered
    assert len(lines(out)) == len(rows)  # each job ran once
