"""What a fan-in over many jobs costs: N no-op jobs gathered by one continuation, against the same N
jobs and a plain job, in the same run.

    python benchmarks/fan_in.py                       # SQLite, 10,000 parents, median of 3
    python benchmarks/fan_in.py --url postgresql://postgres@127.0.0.1:5432/bench --jobs 2000

Each run stores the N parents with `enqueue_many` (and the continuation, `after(parents, noop)`, or a
plain `enqueue(noop)` for the baseline) with no server running, then starts a server of 4 workers
and times until every job is final. Each finishing batch of parents reads the states of all the
continuation's parents, so the cost grows with N; the limit of `after` (10,000 parents) is set by
this figure. SQLite: a fresh temporary file at synchronous=NORMAL; PostgreSQL: the tables are
dropped after each run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from continuations import _drop_tables

import nbjobs

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.integration.jobfuncs import noop  # importable: no pickling by value

WORKERS = 4


def one_run(url: str, n: int, fan_in: bool) -> float:
    """Seconds from the server's start until the N parents and the last job are final."""
    nb = nbjobs.connect(url, **({"synchronous": "NORMAL"} if url.startswith("sqlite") else {}))
    try:
        parents = nb.enqueue_many(noop, [()] * n)
        last = nb.after(parents, noop) if fan_in else nb.enqueue(noop)
        started = time.perf_counter()
        nb.start_server(workers=WORKERS)
        if last.wait(timeout=600) is not nbjobs.JobState.SUCCEEDED:
            raise RuntimeError(f"the last job ended {last.state.value}")
        nb.wait(parents, timeout=600)
        return time.perf_counter() - started
    finally:
        nb.close()


def timed(url: str | None, n: int, fan_in: bool) -> float:
    if url:
        _drop_tables(url)
        try:
            return one_run(url, n, fan_in)
        finally:
            _drop_tables(url)
    with tempfile.TemporaryDirectory() as folder:
        return one_run(f"sqlite:///{os.path.join(folder, 'bench.db')}", n, fan_in)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a PostgreSQL URL (its nbjobs tables are dropped); default SQLite")
    parser.add_argument("--jobs", type=int, default=10_000, help="parents per run (default 10,000)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    plain, gathered = [], []
    for _ in range(args.runs):  # alternating, so drift hits both alike
        plain.append(timed(args.url, args.jobs, fan_in=False))
        gathered.append(timed(args.url, args.jobs, fan_in=True))
    where = "PostgreSQL" if args.url else "SQLite"
    print(f"nbjobs {nbjobs.__version__} · {where} · {args.jobs:,} no-op parents · {WORKERS} workers · "
          f"median of {args.runs}")
    base, fan = statistics.median(plain), statistics.median(gathered)
    print("| run | seconds | ÷ without |\n|---|---:|---:|")
    print(f"| N jobs and a plain job | {base:.2f} | 1.00x |")
    print(f"| N jobs and a continuation after all N | {fan:.2f} | {fan / base:.2f}x |")


if __name__ == "__main__":
    main()
