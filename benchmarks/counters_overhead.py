"""What the per-state counter triggers cost writers: enqueue, claim and finish with and without them.

    python benchmarks/counters_overhead.py [--db sqlite|postgresql|both] [--runs 5]

2,000 jobs per run, in transactions of 10 (enqueue, then claim + finish), on a fresh database; the
triggers are dropped for the "off" runs. Runs alternate off/on so machine load hits both alike.
SQLite is reported in process CPU time (it runs in-process; fsync waits excluded), PostgreSQL in
wall time (its work happens in the server).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import timedelta

import psycopg

from nbjobs.clock import ManualClock
from nbjobs.model import JobOptions, NewJob, Outcome, OutcomeKind
from nbjobs.storage import SqlStore

JOBS, BATCH = 2000, 10


def one_run(url: str, triggers: bool) -> tuple[float, float]:
    store = SqlStore(url)
    if not triggers:
        with store.engine.begin() as conn:
            for kind in ("ins", "upd", "del"):
                on = "" if store.dialect_name == "sqlite" else " ON nbjobs_jobs"
                conn.exec_driver_sql(f"DROP TRIGGER nbjobs_count_{kind}{on}")
    clock = time.process_time if store.dialect_name == "sqlite" else time.perf_counter
    now = ManualClock().now()
    spec = NewJob(function="bench:fn", payload=b"x", options=JobOptions())
    t0 = clock()
    for _ in range(JOBS // BATCH):
        store.enqueue([spec] * BATCH, now)
    t1 = clock()
    while claimed := store.acquire("bench", ["*"], BATCH, now + timedelta(seconds=60), now):
        store.finish("bench", [Outcome(job_id=c.id, kind=OutcomeKind.SUCCEEDED, finished_at=now)
                               for c in claimed], now)
    t2 = clock()
    store.close()
    return (t1 - t0) * 1000, (t2 - t1) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    server = os.environ.get("NBJOBS_BENCH_PG_URL", "postgresql://postgres@127.0.0.1/test")
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    for backend in backends:
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for i in range(args.runs * 2):
            triggers = bool(i % 2)
            if backend == "sqlite":
                with tempfile.TemporaryDirectory() as tmp:
                    results[triggers].append(one_run(f"sqlite:///{tmp}/c.db", triggers))
                continue
            name = f"nbjobs_bench_counters_{os.getpid()}"
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            try:
                results[triggers].append(one_run(f"{server.rsplit('/', 1)[0]}/{name}", triggers))
            finally:
                with psycopg.connect(server, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        unit = "CPU ms" if backend == "sqlite" else "wall ms"
        for triggers in (False, True):
            enq = statistics.median(r[0] for r in results[triggers])
            fin = statistics.median(r[1] for r in results[triggers])
            state = "on " if triggers else "off"
            print(f"{backend:10} triggers {state}  {JOBS} jobs: enqueue {enq:6.0f} {unit}"
                  f"  claim+finish {fin:6.0f} {unit}")


if __name__ == "__main__":
    main()
