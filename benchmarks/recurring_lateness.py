"""Lateness of recurring fires on the real clock: scheduled fire time → the job's first line.

    python benchmarks/recurring_lateness.py                 # 120 s of "* * * * * *" on SQLite
    python benchmarks/recurring_lateness.py --seconds 30 --url postgresql://postgres@127.0.0.1/test

One engine with an in-process server (4 workers) and one per-second schedule. Each job records when
it started (wall clock, inside the job); lateness = start - the fire time the job stands for. The
scheduler sleeps until the next fire (never more than a second), claims it (one transaction: advance
the plan and insert the job) and wakes a worker in the same process; so lateness is the scheduler's
wake-up, the claim's commit and the worker's pickup. A fresh SQLite file is used unless --url is given
(then the definition is removed at the end; its jobs stay).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import nbjobs


def started_at() -> float:
    """The job: its start time as a POSIX timestamp (the result)."""
    return datetime.now(UTC).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the schedule runs")
    parser.add_argument("--url", default=None, help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'lateness.db'}"
        nb = nbjobs.connect(url, secret="benchmark")
        rid = f"lateness-{int(time.time())}"
        try:
            nb.start_server(workers=args.workers)
            nb.recurring(rid, "* * * * * *", started_at)
            time.sleep(args.seconds)  # the real clock is what is measured
            nb.pause(rid)
            frame = nb.jobs(limit=None)
            frame = frame[frame["recurring_id"] == rid]
            late: list[float] = []
            for job_id, fire in zip(frame["id"], frame["fire_time"], strict=True):
                start = nb.job(int(job_id)).result(timeout=30)
                late.append((start - fire.timestamp()) * 1000.0)
            info = nb.recurring_jobs().set_index("id").loc[rid]
            missed = int(info["missed"])
        finally:
            try:
                nb.remove_recurring(rid)
            finally:
                nb.close()
    if not late:
        print("no fires recorded", file=sys.stderr)
        return 1
    backend = url.split(":", 1)[0]
    print(f"recurring lateness on {backend}, '* * * * * *' for {args.seconds:.0f} s, "
          f"{args.workers} workers: {len(late)} fires, {missed} missed")
    print(f"fire time -> job start: p50 {statistics.median(late):.1f} ms, "
          f"p99 {percentile(late, 99):.1f} ms, max {max(late):.1f} ms, min {min(late):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
