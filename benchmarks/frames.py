"""How fast the pandas views are on a big job table: `jobs(limit=100_000)` over 1,000,000 jobs.

    python benchmarks/frames.py                  # 1,000,000 jobs on a temporary SQLite file
    python benchmarks/frames.py --rows 200000    # smaller
    python benchmarks/frames.py --db /tmp/big.db # keep (and reuse) the database

The rows are bulk-inserted with the storage's own SQLAlchemy table (one executemany, no per-job
client work), so building the table takes seconds, not the hours a million `enqueue` calls would.
Each figure is the best of `--runs` runs (the first warms SQLite's page cache like a user's second
call would); the cold first run is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select

import nbjobs
from nbjobs.model import JobOptions
from nbjobs.storage.schema import jobs

STATES = ["succeeded"] * 80 + ["failed"] * 8 + ["deleted"] * 4 + ["enqueued"] * 4 + ["scheduled"] * 4
QUEUES = ["default", "io", "critical", "reports"]
FUNCTIONS = ["etl:load", "etl:transform", "ml:train", "reports:daily", "__main__:fetch"]


def fill(engine: nbjobs.Engine, rows: int, batch: int = 50_000) -> float:
    """Insert `rows` finished-looking jobs spread over the last 30 days; return seconds taken."""
    rnd = random.Random(42)
    options = {q: json.dumps(JobOptions(queue=q).to_dict()) for q in QUEUES}
    start = datetime.now(UTC) - timedelta(days=30)
    step = timedelta(days=30) / rows
    began = time.perf_counter()
    with engine.store.engine.begin() as conn:  # type: ignore[attr-defined]
        for offset in range(0, rows, batch):
            values: list[dict[str, Any]] = []
            for i in range(offset, min(rows, offset + batch)):
                state = rnd.choice(STATES)
                queue = rnd.choice(QUEUES)
                created = start + step * i
                ran = state in ("succeeded", "failed", "deleted")
                values.append({
                    "state": state, "queue": queue, "priority": 0, "name": None,
                    "function": rnd.choice(FUNCTIONS), "options": options[queue], "payload": b"",
                    "attempts": 1 if ran else 0, "created_at": created, "enqueued_at": created,
                    "run_at": created + timedelta(hours=1) if state == "scheduled" else None,
                    "started_at": created + timedelta(seconds=1) if ran else None,
                    "finished_at": created + timedelta(seconds=1 + rnd.random() * 60) if ran else None,
                    "server_id": "bench" if ran else None,
                    "progress": 1.0 if state == "succeeded" else None,
                    "error_type": "ValueError" if state == "failed" else None,
                    "error_message": "bad row" if state == "failed" else None,
                    "has_children": False, "cancel_requested": False,
                })
            conn.execute(insert(jobs), values)
    return time.perf_counter() - began


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, float, float, Any]:
    """(cold first run, best run, CPU time of the best run, last result) in seconds.

    CPU time is reported too because wall time on a shared machine includes other processes' turns.
    """
    times: list[tuple[float, float]] = []
    result = None
    for _ in range(runs):
        began, cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append((time.perf_counter() - began, time.process_time() - cpu))
    best = min(times)
    return times[0][0], best[0], best[1], result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--db", default=None, help="SQLite file to use (kept); default a temp file")
    args = parser.parse_args()
    tmp = None
    if args.db is None:
        tmp = tempfile.TemporaryDirectory()
        path = os.path.join(tmp.name, "frames.db")
    else:
        path = args.db
    engine = nbjobs.connect(f"sqlite:///{path}", secret="bench", synchronous="NORMAL")
    try:
        with engine.store.engine.connect() as conn:  # type: ignore[attr-defined]
            have = conn.execute(select(func.count()).select_from(jobs)).scalar_one()
        if have < args.rows:
            took = fill(engine, args.rows - have)
            print(f"inserted {args.rows - have:,} jobs in {took:.1f}s")
        print(f"database: {path} ({os.path.getsize(path) / 1e6:.0f} MB, {max(have, args.rows):,} jobs)")
        since = datetime.now(UTC) - timedelta(days=3)
        cases: list[tuple[str, Callable[[], Any]]] = [
            ("jobs(limit=100_000)", lambda: engine.jobs(limit=100_000)),
            ("jobs() (default limit 1000)", lambda: engine.jobs()),
            ("jobs(state='failed', limit=100_000)", lambda: engine.jobs(state="failed", limit=100_000)),
            ("jobs(queue='io', function='ml', limit=10_000)",
             lambda: engine.jobs(queue="io", function="ml", limit=10_000)),
            ("jobs(since=3 days ago, limit=None)", lambda: engine.jobs(since=since, limit=None)),
            ("stats(freq='1h', since=3 days ago)", lambda: engine.stats(freq="1h", since=since)),
        ]
        for label, fn in cases:
            cold, best, cpu, frame = timed(fn, args.runs)
            print(f"{label:<48} rows {len(frame):>7,}  cold {cold * 1000:6.0f} ms  "
                  f"best {best * 1000:6.0f} ms (cpu {cpu * 1000:5.0f} ms)")
    finally:
        engine.close()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
