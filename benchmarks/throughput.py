"""In-process throughput of nbjobs on SQLite, against the machine's floor and Huey, at FULL and NORMAL.

    python benchmarks/throughput.py            # 5,000 jobs, median of 3 runs, both durability settings
    python benchmarks/throughput.py --quick    # 1,000 jobs, 1 run, 2 s idle sample

Every figure is the median of `--runs` runs, each on a fresh database file. Measured per SQLite
`synchronous` setting (FULL: every commit is fsynced; NORMAL: WAL survives process crashes only):

- nbjobs: enqueue rate (single `enqueue` calls; bulk `enqueue_many`), drain of a stored backlog
  (enqueued with no server, then `start_server(workers=4)`, timed until the last job is committed
  as succeeded), end-to-end (jobs enqueued one call at a time while 4 workers run, and again with
  `enqueue_many` calls of 100), pickup latency
  (enqueue returned → the job's first line, in this process) and idle CPU of a started engine.
- raw floor: plain `sqlite3` in WAL mode, one thread, the minimal writes per job, one transaction
  each: insert, claim (UPDATE … RETURNING), finish.
- Huey: SqliteHuey (same synchronous setting), thread consumer with the same worker count, its
  default polling; drain, end-to-end and pickup latency on the same no-op task.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

WORKERS = 4

# --- the jobs (module-level so both engines store them by reference) -------------------------------

_started: dict[int, float] = {}
_count_lock = threading.Lock()
_count = 0
_target = 0
_all_done = threading.Event()


def noop() -> None:
    """The no-op job used for rates."""
    _tick()


def mark_start(token: int) -> None:
    """Record when the job began (perf_counter, same process)."""
    _started[token] = time.perf_counter()
    _tick()


def _tick() -> None:
    global _count
    with _count_lock:
        _count += 1
        if _count >= _target:
            _all_done.set()


def _reset_counter(target: int) -> None:
    global _count, _target
    with _count_lock:
        _count = 0
        _target = target
        _all_done.clear()


# --- helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="nbjobs-bench-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Settings:
    jobs: int
    runs: int
    idle_seconds: float
    latency_samples: int
    modes: list[str]
    skip_huey: bool = False


@dataclass
class Results:
    values: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)

    def add(self, mode: str, system: str, metric: str, value: float) -> None:
        self.values.setdefault((mode, system, metric), []).append(value)

    def median(self, mode: str, system: str, metric: str) -> float | None:
        found = self.values.get((mode, system, metric))
        return statistics.median(found) if found else None


# --- nbjobs ----------------------------------------------------------------------------------------


class FinishCounter:
    """Counts jobs whose outcome the dispatcher committed; an event fires at the target."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def wrap(self, inner: Callable[[Any], None]) -> Callable[[Any], None]:
        def on_finished(job_ids: Any) -> None:
            with self._lock:
                self.count += len(job_ids)
                if self.count >= self.target:
                    self.done.set()
            inner(job_ids)

        return on_finished


@contextlib.contextmanager
def _scratch_engine(mode: str) -> Iterator[Any]:
    """An engine on a fresh database in a scratch folder, closed (server and all) afterwards."""
    with scratch_dir() as path:
        eng = _connect(path, mode)
        try:
            yield eng
        finally:
            eng.close()


def _connect(path: str, mode: str) -> Any:
    import nbjobs

    return nbjobs.connect(f"sqlite:///{os.path.join(path, 'nbjobs.db')}", synchronous=mode, secret="bench")


def _start(eng: Any, counter: FinishCounter | None = None) -> None:
    if counter is not None:
        # The server reports committed outcomes through the notifier; count them on the way.
        eng.notifier.finished = counter.wrap(eng.notifier.finished)
    eng.start_server(workers=WORKERS)


def _rate_when_done(eng: Any, counter: FinishCounter, t0: float, what: str) -> float:
    """Jobs per second from `t0` until the counter's last outcome was committed; then stop the
    server and check every job succeeded."""
    n = counter.target
    if not counter.done.wait(300):
        raise RuntimeError(f"{what} did not finish: {counter.count}/{n}")
    rate = n / (time.perf_counter() - t0)
    eng.stop_server()
    _check_succeeded(eng, n)
    return rate


def _check_succeeded(eng: Any, n: int) -> None:
    counts = eng.counts()
    if counts.get("succeeded") != n:
        raise RuntimeError(f"expected {n} succeeded jobs, found {counts}")


def nbjobs_enqueue_single(mode: str, n: int) -> float:
    with _scratch_engine(mode) as eng:
        t0 = time.perf_counter()
        for _ in range(n):
            eng.enqueue(noop)
        return n / (time.perf_counter() - t0)


def nbjobs_enqueue_bulk(mode: str, n: int) -> float:
    with _scratch_engine(mode) as eng:
        t0 = time.perf_counter()
        eng.enqueue_many(noop, [()] * n)
        return n / (time.perf_counter() - t0)


def nbjobs_drain(mode: str, n: int) -> float:
    with _scratch_engine(mode) as eng:
        for i in range(0, n, 1000):
            eng.enqueue_many(noop, [()] * min(1000, n - i))
        _reset_counter(n)
        counter = FinishCounter(n)
        t0 = time.perf_counter()
        _start(eng, counter)
        return _rate_when_done(eng, counter, t0, "drain")


def nbjobs_end_to_end(
    mode: str, n: int, batch: int = 1, cpu: dict[str, float] | None = None
) -> float:
    """Jobs enqueued while 4 workers run: one `enqueue` call each, or `enqueue_many` of `batch`.

    With `cpu`, also fills it with CPU µs per job by thread role over the run (`thread_cpu_ns`).
    """
    with _scratch_engine(mode) as eng:
        counter = FinishCounter(n)
        _start(eng, counter)
        _reset_counter(n)
        before = thread_cpu_ns()
        t0 = time.perf_counter()
        if batch == 1:
            for _ in range(n):
                eng.enqueue(noop)
        else:
            for i in range(0, n, batch):
                eng.enqueue_many(noop, [()] * min(batch, n - i))
        if not counter.done.wait(300):
            raise RuntimeError(f"end-to-end did not finish: {counter.count}/{n}")
        if cpu is not None and before:
            after = thread_cpu_ns()
            for role, ns in after.items():
                cpu[role] = (ns - before.get(role, 0)) / n / 1000
        return _rate_when_done(eng, counter, t0, "end-to-end")


def _role(thread: threading.Thread) -> str:
    if thread is threading.main_thread():
        return "enqueuing thread"
    if thread.name.startswith("nbjobs-worker"):
        return "workers"
    if thread.name == "nbjobs-dispatcher":
        return "dispatcher"
    return "other"


def thread_cpu_ns() -> dict[str, int]:
    """CPU time of this process's threads by role, from /proc (Linux; empty elsewhere)."""
    totals: dict[str, int] = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/schedstat") as fh:
                ns = int(fh.read().split()[0])
        except OSError:
            return {}
        role = _role(thread)
        totals[role] = totals.get(role, 0) + ns
    return totals


def nbjobs_latency(mode: str, samples: int) -> list[float]:
    with _scratch_engine(mode) as eng:
        counter = FinishCounter(samples)
        _start(eng, counter)
        time.sleep(0.3)  # let the server settle (initial reap, first heartbeat)
        return _sample_latency(lambda i: eng.enqueue(mark_start, i), samples,
                               lambda i: counter.count >= i + 1)


def _sample_latency(
    submit: Callable[[int], Any], samples: int, finished: Callable[[int], bool]
) -> list[float]:
    _started.clear()
    _reset_counter(10**9)
    out: list[float] = []
    for i in range(samples):
        submit(i)
        returned = time.perf_counter()
        deadline = returned + 10
        while i not in _started or not finished(i):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"job {i} was not picked up within 10 s")
            time.sleep(0.0005)
        out.append(max(0.0, _started[i] - returned) * 1000)
        time.sleep(0.005)  # idle again before the next sample
    return out


def nbjobs_idle_cpu(mode: str, seconds: float) -> float:
    with _scratch_engine(mode) as eng:
        eng.start_server(workers=WORKERS)
        time.sleep(1.0)  # start-up work is not idle
        c0, t0 = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        return 100 * (time.process_time() - c0) / (time.perf_counter() - t0)


# --- raw sqlite3 floor -----------------------------------------------------------------------------


def raw_floor(mode: str, n: int) -> float:
    """Minimal writes per job, one transaction each: insert, claim, finish (one thread, WAL)."""
    with scratch_dir() as path:
        conn = sqlite3.connect(os.path.join(path, "raw.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={mode}")
        conn.execute(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL, payload BLOB, "
            "started REAL, finished REAL)"
        )
        conn.execute("CREATE INDEX ix_enqueued ON jobs (id) WHERE state = 'enqueued'")
        payload = os.urandom(64)
        t0 = time.perf_counter()
        for _ in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO jobs (state, payload) VALUES ('enqueued', ?)", (payload,))
            conn.execute("COMMIT")
        for _ in range(n):
            conn.execute("BEGIN IMMEDIATE")
            job_id = conn.execute(
                "UPDATE jobs SET state = 'processing', started = ? WHERE id = "
                "(SELECT id FROM jobs WHERE state = 'enqueued' ORDER BY id LIMIT 1) RETURNING id",
                (time.time(),),
            ).fetchone()[0]
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE jobs SET state = 'succeeded', finished = ? WHERE id = ? AND state = 'processing'",
                (time.time(), job_id),
            )
            conn.execute("COMMIT")
        rate = n / (time.perf_counter() - t0)
        conn.close()
        return rate


# --- Huey ------------------------------------------------------------------------------------------


def _huey(path: str, mode: str) -> Any:
    from huey import SqliteHuey
    from huey.storage import SqliteStorage

    class Storage(SqliteStorage):  # type: ignore[misc]
        """SqliteStorage at the same synchronous setting as the nbjobs run."""

        def _create_connection(self) -> sqlite3.Connection:
            conn = super()._create_connection()
            conn.execute(f"PRAGMA synchronous={mode}")
            return conn

    huey = SqliteHuey("bench", filename=os.path.join(path, "huey.db"), storage_class=Storage)
    return huey


_huey_tasks: dict[int, tuple[Any, Any]] = {}


def _huey_with_tasks(path: str, mode: str) -> tuple[Any, Any, Any]:
    huey = _huey(path, mode)
    return huey, huey.task()(noop), huey.task()(mark_start)


@contextlib.contextmanager
def _consumer(huey: Any) -> Iterator[Any]:
    import logging

    logging.getLogger("huey").setLevel(logging.WARNING)
    consumer = huey.create_consumer(workers=WORKERS, worker_type="thread", periodic=False)
    consumer.start()
    try:
        yield consumer
    finally:
        consumer.stop(graceful=True)


def huey_drain(mode: str, n: int) -> float:
    with scratch_dir() as path:
        huey, task, _ = _huey_with_tasks(path, mode)
        for _ in range(n):
            task()
        _reset_counter(n)
        t0 = time.perf_counter()
        with _consumer(huey):
            if not _all_done.wait(300):
                raise RuntimeError("huey drain did not finish")
            rate = n / (time.perf_counter() - t0)
        return rate


def huey_end_to_end(mode: str, n: int) -> float:
    with scratch_dir() as path:
        huey, task, _ = _huey_with_tasks(path, mode)
        with _consumer(huey):
            time.sleep(0.2)
            _reset_counter(n)
            t0 = time.perf_counter()
            for _ in range(n):
                task()
            if not _all_done.wait(300):
                raise RuntimeError("huey end-to-end did not finish")
            rate = n / (time.perf_counter() - t0)
        return rate


def huey_latency(mode: str, samples: int) -> list[float]:
    with scratch_dir() as path:
        huey, _, marker = _huey_with_tasks(path, mode)
        with _consumer(huey):
            time.sleep(0.3)
            return _sample_latency(lambda i: marker(i), samples, lambda i: True)


# --- driver ----------------------------------------------------------------------------------------


def run(settings: Settings) -> Results:
    res = Results()
    n = settings.jobs
    for mode in settings.modes:
        for run_no in range(settings.runs):
            print(f"  [{mode}] run {run_no + 1}/{settings.runs} …", file=sys.stderr, flush=True)
            res.add(mode, "raw", "floor", raw_floor(mode, n))
            res.add(mode, "nbjobs", "enqueue", nbjobs_enqueue_single(mode, n))
            res.add(mode, "nbjobs", "enqueue_many", nbjobs_enqueue_bulk(mode, n))
            res.add(mode, "nbjobs", "drain", nbjobs_drain(mode, n))
            cpu: dict[str, float] = {}
            res.add(mode, "nbjobs", "e2e", nbjobs_end_to_end(mode, n, cpu=cpu))
            for role, us in cpu.items():
                res.add(mode, "nbjobs", f"e2e_cpu_{role}", us)
            res.add(mode, "nbjobs", "e2e_bulk", nbjobs_end_to_end(mode, n, batch=100))
            lat = nbjobs_latency(mode, settings.latency_samples)
            res.add(mode, "nbjobs", "p50", percentile(lat, 0.5))
            res.add(mode, "nbjobs", "p99", percentile(lat, 0.99))
            res.add(mode, "nbjobs", "idle", nbjobs_idle_cpu(mode, settings.idle_seconds))
            if not settings.skip_huey:
                res.add(mode, "huey", "drain", huey_drain(mode, n))
                res.add(mode, "huey", "e2e", huey_end_to_end(mode, n))
                lat = huey_latency(mode, settings.latency_samples)
                res.add(mode, "huey", "p50", percentile(lat, 0.5))
                res.add(mode, "huey", "p99", percentile(lat, 0.99))
    return res


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "—" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}x"


def table(res: Results, settings: Settings) -> str:
    lines = []
    head = "| metric | " + " | ".join(f"{m}" for m in settings.modes) + " |"
    lines += [head, "|---|" + "---:|" * len(settings.modes)]

    def row(label: str, fn: Callable[[str], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(fn(m) for m in settings.modes) + " |")

    def m(mode: str, system: str, metric: str) -> float | None:
        return res.median(mode, system, metric)

    row("raw sqlite3 floor (insert+claim+finish, jobs/s)", lambda md: _fmt(m(md, "raw", "floor")))
    row("nbjobs enqueue, single calls (jobs/s)", lambda md: _fmt(m(md, "nbjobs", "enqueue")))
    row("nbjobs enqueue_many, bulk (jobs/s)", lambda md: _fmt(m(md, "nbjobs", "enqueue_many")))
    row(f"nbjobs drain, {settings.jobs:,} stored (jobs/s)", lambda md: _fmt(m(md, "nbjobs", "drain")))
    row("Huey drain (jobs/s)", lambda md: _fmt(m(md, "huey", "drain")))
    row("nbjobs drain ÷ Huey", lambda md: _ratio(m(md, "nbjobs", "drain"), m(md, "huey", "drain")))
    row("nbjobs drain ÷ raw floor", lambda md: _ratio(m(md, "nbjobs", "drain"), m(md, "raw", "floor")))
    row(f"nbjobs end-to-end, {settings.jobs:,} (jobs/s)", lambda md: _fmt(m(md, "nbjobs", "e2e")))
    row("Huey end-to-end (jobs/s)", lambda md: _fmt(m(md, "huey", "e2e")))
    row("nbjobs end-to-end ÷ Huey", lambda md: _ratio(m(md, "nbjobs", "e2e"), m(md, "huey", "e2e")))
    row("nbjobs end-to-end ÷ raw floor", lambda md: _ratio(m(md, "nbjobs", "e2e"), m(md, "raw", "floor")))
    row("… CPU per job: enqueuing thread / dispatcher / workers (µs)",
        lambda md: " / ".join(_fmt(m(md, "nbjobs", f"e2e_cpu_{role}"))
                              for role in ("enqueuing thread", "dispatcher", "workers")))
    row("nbjobs end-to-end, enqueue_many by 100 (jobs/s)", lambda md: _fmt(m(md, "nbjobs", "e2e_bulk")))
    row("… ÷ raw floor", lambda md: _ratio(m(md, "nbjobs", "e2e_bulk"), m(md, "raw", "floor")))
    row("nbjobs pickup p50 / p99 (ms)",
        lambda md: f"{_fmt(m(md, 'nbjobs', 'p50'), '.2f')} / {_fmt(m(md, 'nbjobs', 'p99'), '.2f')}")
    row("Huey pickup p50 / p99 (ms)",
        lambda md: f"{_fmt(m(md, 'huey', 'p50'), '.1f')} / {_fmt(m(md, 'huey', 'p99'), '.1f')}")
    row(f"nbjobs idle CPU over {settings.idle_seconds:g} s (% of one core)",
        lambda md: _fmt(m(md, "nbjobs", "idle"), ".3f"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, 1 run, 2 s idle sample")
    parser.add_argument("--runs", type=int, help="runs per figure (median); default 3, quick 1")
    parser.add_argument("--jobs", type=int, help="jobs per rate measurement; default 5,000, quick 1,000")
    parser.add_argument("--sync", default="FULL,NORMAL", help="SQLite synchronous settings to measure")
    parser.add_argument("--no-huey", action="store_true", help="skip the Huey reference")
    args = parser.parse_args(argv)
    settings = Settings(
        jobs=args.jobs or (1000 if args.quick else 5000),
        runs=args.runs or (1 if args.quick else 3),
        idle_seconds=2.0 if args.quick else 10.0,
        latency_samples=50 if args.quick else 200,
        modes=[s.strip().upper() for s in args.sync.split(",") if s.strip()],
        skip_huey=args.no_huey,
    )
    import nbjobs

    print(
        f"nbjobs {nbjobs.__version__} · Python {platform.python_version()} · "
        f"SQLite {sqlite3.sqlite_version} · {os.cpu_count()} cores · {settings.jobs:,} jobs · "
        f"{WORKERS} workers · median of {settings.runs} run(s)",
        flush=True,
    )
    res = run(settings)
    print(table(res, settings))


if __name__ == "__main__":
    # Re-enter through the importable module so jobs are stored by reference (`throughput:noop`),
    # as a function in a library would be, rather than pickled by value from __main__.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import throughput

    throughput.main()
