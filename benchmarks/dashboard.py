"""Dashboard speed with a million jobs: opening it and refreshing each page, on SQLite and PostgreSQL.

    python benchmarks/dashboard.py                       # 1,000,000 jobs, both databases
    python benchmarks/dashboard.py --jobs 100000 --db sqlite
    NBJOBS_BENCH_PG_URL=postgresql://postgres@127.0.0.1/test python benchmarks/dashboard.py

The jobs are bulk-loaded through the real schema (so the counter triggers run for every row) in a
few big transactions: `executemany` on SQLite, COPY on PostgreSQL. The mix is a busy system's:
90 % succeeded, 5 % failed, 3 % deleted, 1 % enqueued, scheduled (a fifth of them retries),
awaiting and a few processing, finished over the last 30 days. PostgreSQL is ANALYZEd and VACUUMed
after loading, as autovacuum would do on a live system.

Each figure is the median of `--runs` timings of the real `Dashboard` (widgets without a frontend):
opening it (widgets + Overview), then a refresh of each page. `counts(GROUP BY)` is the table scan
the counters replace, for comparison.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

import nbjobs
import nbjobs.ui.dashboard  # imported up front: "open" times the dashboard, not imports
from nbjobs.model import JobOptions, JobState
from nbjobs.storage.schema import jobs

S = JobState
MIX = [(S.SUCCEEDED, 0.90), (S.FAILED, 0.05), (S.DELETED, 0.03), (S.ENQUEUED, 0.01),
       (S.SCHEDULED, 0.005), (S.AWAITING, 0.0049), (S.PROCESSING, 0.0001)]
COLUMNS = ["id", "state", "queue", "priority", "name", "function", "options", "payload", "attempts",
           "created_at", "run_at", "enqueued_at", "started_at", "finished_at", "server_id", "lease_until",
           "parent_id", "continue_on", "has_children", "error_type", "error_message", "cancel_requested"]


def sample_job(x: int, password: str = "") -> int:
    return x


def rows(n: int, payload: bytes, now: datetime) -> Any:
    rnd = random.Random(7)
    states = [s for s, share in MIX for _ in range(max(1, round(share * 10_000)))]
    queues = ["default"] * 8 + ["io", "reports"]
    opts = {q: json.dumps(JobOptions(queue=q).to_dict()) for q in queues}
    for i in range(1, n + 1):
        state = states[rnd.randrange(len(states))]
        queue = queues[rnd.randrange(len(queues))]
        created = now - timedelta(days=30) + timedelta(seconds=30 * 86400 * i / n)
        started = finished = run_at = lease = server = error = message = None
        attempts = 0
        if state in (S.SUCCEEDED, S.FAILED, S.DELETED, S.PROCESSING):
            started = created + timedelta(seconds=rnd.random() * 5)
            attempts = 1
            server = "bench-server" if state is S.PROCESSING else None
            lease = now + timedelta(minutes=5) if state is S.PROCESSING else None
        if state in (S.SUCCEEDED, S.FAILED, S.DELETED):
            finished = started + timedelta(seconds=rnd.random() * 20)  # type: ignore[operator]
        if state is S.FAILED:
            error, message = "ValueError", f"bad input {i}"
        if state is S.SCHEDULED:
            run_at = now + timedelta(seconds=rnd.random() * 86400)
            attempts = 1 if rnd.random() < 0.2 else 0
        yield (i, state.value, queue, 0, f"job-{i}" if i % 3 == 0 else None, "dashboard:sample_job",
               opts[queue], payload, attempts, created, run_at, created if state is S.ENQUEUED else None,
               started, finished, server, lease, (i - 1) if state is S.AWAITING else None,
               "succeeded" if state is S.AWAITING else None, False, error, message, False)


def load_sqlite(engine: nbjobs.Engine, n: int, payload: bytes, now: datetime) -> None:
    raw = engine.store.engine.raw_connection()  # type: ignore[attr-defined]
    cur = raw.cursor()
    marks = ",".join("?" * len(COLUMNS))
    sql = f"INSERT INTO nbjobs_jobs ({','.join(COLUMNS)}) VALUES ({marks})"
    batch: list[tuple[Any, ...]] = []

    def flush() -> None:
        cur.execute("BEGIN IMMEDIATE")
        cur.executemany(sql, batch)
        cur.execute("COMMIT")
        batch.clear()

    for row in rows(n, payload, now):
        batch.append(tuple(v.timestamp() if isinstance(v, datetime) else v for v in row))
        if len(batch) == 200_000:
            flush()
    if batch:
        flush()
    cur.execute("ANALYZE")
    raw.close()


def load_postgres(engine: nbjobs.Engine, n: int, payload: bytes, now: datetime) -> None:
    raw = engine.store.engine.raw_connection()  # type: ignore[attr-defined]
    conn = raw.driver_connection
    with conn.cursor() as cur:
        start = 1
        while start <= n:
            end = min(n, start + 199_999)
            with cur.copy(f"COPY nbjobs_jobs ({','.join(COLUMNS)}) FROM STDIN") as copy:
                for row in rows(n, payload, now):
                    if row[0] < start:
                        continue
                    if row[0] > end:
                        break
                    copy.write_row(row)
            conn.commit()
            start = end + 1
        cur.execute("SELECT setval(pg_get_serial_sequence('nbjobs_jobs', 'id'), %s)", (n,))
    conn.commit()
    conn.autocommit = True
    conn.execute("VACUUM ANALYZE nbjobs_jobs")
    raw.close()


def timed(fn: Callable[[], Any], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def bench(url: str, n: int, runs: int) -> dict[str, float]:
    engine = nbjobs.connect(url, secret="bench")
    payload = engine.client.new_job(sample_job, (1,), {"password": "hunter2"}).payload
    now = datetime.now(UTC)
    t = time.perf_counter()
    (load_sqlite if engine.store.dialect_name == "sqlite" else load_postgres)(engine, n, payload, now)
    load_s = time.perf_counter() - t
    counts = engine.store.counts()
    assert sum(counts.values()) == n, counts
    out: dict[str, float] = {"load s": load_s}

    def group_by() -> None:
        with engine.store.engine.connect() as conn:  # type: ignore[attr-defined]
            conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()

    out["counts(GROUP BY) ms"] = timed(group_by, runs)
    out["counts() ms"] = timed(engine.store.counts, runs)
    dashes: list[Any] = []
    out["open ms"] = timed(lambda: dashes.append(engine.dashboard(refresh=None)), runs)
    for d in dashes[1:]:
        d.close()
    dash = dashes[0]
    for page in dash.page_names:
        if page == "Job":
            continue  # timed below, with a job open
        dash.show(page)
        out[f"{page} ms"] = timed(dash.refresh, runs)
    dash.show("Jobs")
    for state in (S.SUCCEEDED, S.FAILED, S.ENQUEUED, S.PROCESSING):
        dash.show_state(state)
        out[f"Jobs[{state.value}] ms"] = timed(dash.refresh, runs)
    dash.show_state(S.SUCCEEDED)
    for _ in range(50):
        dash.page.next()
        dash.refresh()
    out["Jobs[succeeded] page 51 ms"] = timed(dash.refresh, runs)
    dash.show_state(S.FAILED)
    dash.size.value = 100
    out["Jobs[failed] 100/page ms"] = timed(dash.refresh, runs)
    dash.queue.value = "io"
    out["Jobs[failed] queue=io ms"] = timed(dash.refresh, runs)
    dash.queue.value = ""
    dash.search.value = "job-999"
    out["Jobs[failed] search name ms"] = timed(dash.refresh, runs)
    dash.open_job(n - 2)
    out["Job detail ms"] = timed(dash.refresh, runs)
    dash.close()
    engine.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    sys.modules.setdefault("dashboard", sys.modules[__name__])  # jobs are stored as dashboard:sample_job
    results: dict[str, dict[str, float]] = {}
    if args.db in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            results["SQLite"] = bench(f"sqlite:///{tmp}/bench.db", args.jobs, args.runs)
    if args.db in ("postgresql", "both"):
        import psycopg

        server = os.environ.get("NBJOBS_BENCH_PG_URL", "postgresql://postgres@127.0.0.1/test")
        name = f"nbjobs_bench_dash_{os.getpid()}"
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = server.rsplit("/", 1)[0]
            results["PostgreSQL"] = bench(f"{base}/{name}", args.jobs, args.runs)
        finally:
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    keys = list(next(iter(results.values())))
    out = io.StringIO()
    out.write(f"{args.jobs:,} jobs, median of {args.runs} runs\n")
    out.write(f"{'':32}" + "".join(f"{db:>14}" for db in results) + "\n")
    for key in keys:
        out.write(f"{key:32}" + "".join(f"{results[db][key]:>14.1f}" for db in results) + "\n")
    print(out.getvalue())


if __name__ == "__main__":
    main()
