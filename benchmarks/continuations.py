"""What creating a continuation costs, against a plain `enqueue` in the same run.

    python benchmarks/continuations.py                       # SQLite, 2,000 calls each, median of 3
    python benchmarks/continuations.py --url postgresql://postgres@127.0.0.1:5432/bench --jobs 1000

Each figure is calls per second from the calling thread, no server running (the calls only store):
`enqueue` (the baseline), `then` on one scheduled parent (a fan of continuations), `then` on the
last continuation (a chain), `after` on three parents (a fan-in) and `options(key=…).enqueue` (a
unique key, checked and stored in one transaction). Each run uses a fresh database (SQLite: a
temporary file at the default synchronous=FULL; PostgreSQL: the tables are dropped after each run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import nbjobs

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.integration.jobfuncs import noop  # importable: no pickling by value


def _rate(n: int, call: Callable[[int], object]) -> float:
    started = time.perf_counter()
    for i in range(n):
        call(i)
    return n / (time.perf_counter() - started)


def one_run(url: str, n: int) -> dict[str, float]:
    nb = nbjobs.connect(url)
    try:
        parent = nb.schedule(3600, noop)
        parents = [nb.schedule(3600, noop) for _ in range(3)]
        chain = [parent]
        return {
            "enqueue": _rate(n, lambda i: nb.enqueue(noop)),
            "then, one parent": _rate(n, lambda i: parent.then(noop)),
            "then, a chain": _rate(n, lambda i: chain.append(chain[-1].then(noop))),
            "after, three parents": _rate(n, lambda i: nb.after(parents, noop)),
            "enqueue with a key": _rate(n, lambda i: nb.options(key=f"k{i}").enqueue(noop)),
        }
    finally:
        nb.close()


def _drop_tables(url: str) -> None:
    from sqlalchemy import create_engine

    from nbjobs.storage.schema import metadata

    engine = create_engine(url)
    with engine.begin() as conn:
        metadata.drop_all(conn)
        for fn in ("nbjobs_count_ins", "nbjobs_count_upd", "nbjobs_count_del"):
            conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {fn}() CASCADE")
    engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a PostgreSQL URL (its nbjobs tables are dropped); default SQLite")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    runs: list[dict[str, float]] = []
    for _ in range(args.runs):
        if args.url:
            _drop_tables(args.url)
            try:
                runs.append(one_run(args.url, args.jobs))
            finally:
                _drop_tables(args.url)
        else:
            with tempfile.TemporaryDirectory() as folder:
                runs.append(one_run(f"sqlite:///{os.path.join(folder, 'bench.db')}", args.jobs))
    where = "PostgreSQL" if args.url else "SQLite"
    print(f"nbjobs {nbjobs.__version__} · {where} · {args.jobs:,} calls each · median of {args.runs}")
    print("| call | calls/s | ÷ enqueue |\n|---|---:|---:|")
    base = statistics.median(r["enqueue"] for r in runs)
    for name in runs[0]:
        rate = statistics.median(r[name] for r in runs)
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
