"""Scale-out benchmark: 20,000 no-op jobs through 1, 2 and 4 `nbjobs server` processes, on PostgreSQL
and on SQLite; cross-process pickup latency; Procrastinate side by side when installed.

    python benchmarks/scale.py                         # full run (needs NBJOBS_BENCH_PG_URL or the default)
    python benchmarks/scale.py --jobs 5000 --servers 1,2 --no-sqlite

End to end: the servers are started and registered first; the clock starts at the first enqueue (the
benchmark process enqueues in batches of 1,000 while the servers run) and stops when the last job is
committed Succeeded. Each run uses a fresh database. Every server: 4 worker threads (`--workers 4`).

Pickup latency: one idle server in another process; 200 jobs enqueued one at a time, each after the
previous finished; latency = the job's claim time (`started_at`, written by the server) minus its
`created_at` (taken by the client just before the enqueue transaction). PostgreSQL wakes the server
with NOTIFY; SQLite relies on its data_version poll (`--poll-interval`, default 0.25 s).

Procrastinate (the `bench` extra): one `procrastinate worker --concurrency 4` process, the same jobs
deferred with `batch_defer` in batches of 1,000 while the worker runs; pickup from its own events
table (`started` minus `deferred`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

import nbjobs  # noqa: E402
from nbjobs import JobState  # noqa: E402

SECRET = "bench-secret"
WORKERS = 4
BATCH = 1000


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "NBJOBS_SECRET": SECRET, **extra}


@contextlib.contextmanager
def pg_database(server_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    name = f"nbjobs_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="nbjobs-bench-") as folder:
        yield f"sqlite:///{folder}/jobs.db"


@contextlib.contextmanager
def nbjobs_servers(
    url: str, count: int, nb: nbjobs.Engine, *args: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "nbjobs", "server", "--url", url, "--workers", str(WORKERS),
             "--name", f"bench{i}", "--log-level", "WARNING", *args],
            env=_env(), cwd=str(ROOT),
        )
        for i in range(count)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(nb.store.list_servers()) < count:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("servers did not start")
            time.sleep(0.05)
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def nbjobs_throughput(url: str, servers: int, n: int) -> tuple[float, float]:
    """(end-to-end jobs/s, enqueue jobs/s) for `n` no-op jobs through `servers` server processes."""
    from benchmarks._scale_jobs import noop

    with nbjobs.connect(url, secret=SECRET) as nb, nbjobs_servers(url, servers, nb):
        t0 = time.perf_counter()
        for first in range(0, n, BATCH):
            nb.enqueue_many(noop, [() for _ in range(min(BATCH, n - first))])
        enqueued = time.perf_counter()
        while True:
            counts = nb.store.counts()
            if counts[JobState.SUCCEEDED] + counts[JobState.FAILED] >= n:
                break
            time.sleep(0.01)
        t1 = time.perf_counter()
        if counts[JobState.FAILED]:
            raise RuntimeError(f"{counts[JobState.FAILED]} jobs failed (nbjobs jobs --state failed)")
    return n / (t1 - t0), n / (enqueued - t0)


def nbjobs_pickup(url: str, samples: int) -> list[float]:
    """Milliseconds from enqueue to claim by an idle server in another process."""
    from benchmarks._scale_jobs import noop

    with nbjobs.connect(url, secret=SECRET) as nb, nbjobs_servers(url, 1, nb):
        for _ in range(5):  # warm up the server's connections and the client's
            nb.enqueue(noop).wait(timeout=30)
        out = []
        for _ in range(samples):
            time.sleep(0.02)  # let the server go idle (waiting on NOTIFY or its poll)
            job = nb.enqueue(noop)
            job.wait(timeout=30)
            rec = job.record()
            assert rec.started_at is not None
            out.append((rec.started_at - rec.created_at).total_seconds() * 1000)
    return out


def procrastinate_run(server_url: str, n: int, samples: int) -> tuple[float, list[float]]:
    """(end-to-end jobs/s, pickup ms) for Procrastinate: one worker, concurrency 4."""
    with pg_database(server_url) as dsn:
        import procrastinate

        # A task-less app on this database defers by name; the worker imports _scale_jobs.app.
        app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=dsn))
        task = app.configure_task("noop", allow_unknown=True)
        with app.open():
            app.schema_manager.apply_schema()
            worker = subprocess.Popen(
                [sys.executable, "-m", "procrastinate", "--app=benchmarks._scale_jobs.app", "worker",
                 "--concurrency", str(WORKERS)],
                env=_env(SCALE_PROCRASTINATE_DSN=dsn), cwd=str(ROOT),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:

                    def done() -> int:
                        row = conn.execute(
                            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'").fetchone()
                        return int(row[0]) if row else 0

                    def busy() -> bool:
                        # Cheap while the run lasts (a count over 20,000 rows every few ms would slow
                        # the database Procrastinate works against).
                        row = conn.execute("SELECT EXISTS (SELECT 1 FROM procrastinate_jobs "
                                           "WHERE status IN ('todo', 'doing'))").fetchone()
                        return bool(row and row[0])

                    # Warm-up and wait for the worker to be listening.
                    task.defer()
                    deadline = time.monotonic() + 60
                    while done() < 1:
                        if time.monotonic() > deadline:
                            raise RuntimeError("procrastinate worker did not start")
                        time.sleep(0.02)
                    t0 = time.perf_counter()
                    for first in range(0, n, BATCH):
                        batch = [{} for _ in range(min(BATCH, n - first))]
                        task.batch_defer(*batch)
                    while busy() or done() < n + 1:
                        time.sleep(0.01)
                    rate = n / (time.perf_counter() - t0)
                    ids = []
                    for _ in range(samples):
                        time.sleep(0.02)
                        before = done()
                        ids.append(task.defer())
                        while done() <= before:
                            time.sleep(0.0005)
                    rows = conn.execute(
                        "SELECT job_id, type, at FROM procrastinate_events "
                        "WHERE job_id = ANY(%s) AND type IN ('deferred', 'started')", (ids,)).fetchall()
            finally:
                worker.terminate()
                worker.wait(30)
    events: dict[int, dict[str, object]] = {}
    for job_id, kind, at in rows:
        events.setdefault(job_id, {})[kind] = at
    pickups = [(e["started"] - e["deferred"]).total_seconds() * 1000  # type: ignore[operator]
               for e in events.values() if "started" in e and "deferred" in e]
    return rate, pickups


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default=os.environ.get("NBJOBS_BENCH_PG_URL",
                                                       "postgresql://postgres@127.0.0.1/postgres"))
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--servers", default="1,2,4")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--no-procrastinate", action="store_true")
    parser.add_argument("--only-procrastinate", action="store_true")
    args = parser.parse_args()
    counts = [int(c) for c in args.servers.split(",")]
    rows: list[tuple[str, str, str]] = []

    print(f"nbjobs scale benchmark: {args.jobs} no-op jobs, {WORKERS} workers per server, "
          f"{os.cpu_count()} CPUs", flush=True)
    backends = [] if args.only_procrastinate else [("PostgreSQL", lambda: pg_database(args.pg))]
    if not args.no_sqlite and not args.only_procrastinate:
        backends.append(("SQLite", sqlite_database))
    for label, make_db in backends:
        for count in counts:
            with make_db() as url:
                rate, enq = nbjobs_throughput(url, count, args.jobs)
            rows.append((f"nbjobs {label}, {count} server process(es)", f"{rate:,.0f} jobs/s",
                         f"enqueue {enq:,.0f} jobs/s"))
            print(*rows[-1], sep=" | ", flush=True)
        with make_db() as url:
            lat = nbjobs_pickup(url, args.samples)
        rows.append((f"nbjobs {label} pickup (other process)", f"p50 {pct(lat, 0.5):.1f} ms",
                     f"p99 {pct(lat, 0.99):.1f} ms"))
        print(*rows[-1], sep=" | ", flush=True)

    if not args.no_procrastinate:
        try:
            import procrastinate  # noqa: F401
        except ImportError:
            rows.append(("Procrastinate", "not installed", "pip install 'nbjobs[bench]'"))
        else:
            rate, lat = procrastinate_run(args.pg, args.jobs, args.samples)
            rows.append(("Procrastinate PostgreSQL, 1 worker, concurrency 4", f"{rate:,.0f} jobs/s", ""))
            print(*rows[-1], sep=" | ", flush=True)
            if lat:
                rows.append(("Procrastinate pickup (other process)", f"p50 {pct(lat, 0.5):.1f} ms",
                             f"p99 {pct(lat, 0.99):.1f} ms"))
                print(*rows[-1], sep=" | ", flush=True)

    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'run':<{width}} | {'result':>16} | detail")
    print(f"{'-' * width}-|-{'-' * 16}-|-------")
    for name, result, detail in rows:
        print(f"{name:<{width}} | {result:>16} | {detail}")


if __name__ == "__main__":
    main()
