"""A job that fans out and gathers, against the same work fanned out from the notebook itself.

    python benchmarks/fan_out.py                 # 2,000 children, median of 3 runs, 1 and 4 workers
    python benchmarks/fan_out.py --jobs 500 --runs 1

For each worker count, on a fresh SQLite database (synchronous=NORMAL) with an in-process server:
the baseline enqueues `--jobs` no-op jobs with `enqueue_many` from this thread and waits with
`nb.results`; the fan-out enqueues one job that does exactly that itself (`nbjobs.enqueue_many`,
`nbjobs.results`) and waits for it. Rates are children per second; the ratio is fan-out ÷ baseline
of the same run. The waiting job lends its worker slot to the server while it waits: without that,
on one worker, the fan-out never ends (its children wait for the worker it holds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import nbjobs

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.integration.jobfuncs import gather_noops, noop  # importable: no pickling by value


def _engine(path: str, workers: int) -> Any:
    eng = nbjobs.connect(f"sqlite:///{os.path.join(path, 'nbjobs.db')}", synchronous="NORMAL",
                         secret="bench")
    eng.start_server(workers=workers)
    return eng


def baseline(workers: int, n: int) -> float:
    with tempfile.TemporaryDirectory() as path:
        eng = _engine(path, workers)
        try:
            started = time.perf_counter()
            eng.results(eng.enqueue_many(noop, [()] * n), timeout=600)
            return n / (time.perf_counter() - started)
        finally:
            eng.close()


def fan_out(workers: int, n: int) -> float:
    with tempfile.TemporaryDirectory() as path:
        eng = _engine(path, workers)
        try:
            started = time.perf_counter()
            done = eng.enqueue(gather_noops, n).result(timeout=600)
            elapsed = time.perf_counter() - started
            if done != n:
                raise RuntimeError(f"the parent gathered {done} of {n} children")
            return n / elapsed
        finally:
            eng.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000, help="children per run (default 2,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure, median (default 3)")
    args = parser.parse_args(argv)
    print(f"nbjobs {nbjobs.__version__} · {args.jobs:,} children · median of {args.runs} run(s)")
    print("| workers | from the notebook (jobs/s) | from inside a job (jobs/s) | ratio |")
    print("|---:|---:|---:|---:|")
    for workers in (1, 4):
        base, fan = [], []
        for _ in range(args.runs):  # alternating, so drift hits both alike
            base.append(baseline(workers, args.jobs))
            fan.append(fan_out(workers, args.jobs))
        b, f = statistics.median(base), statistics.median(fan)
        print(f"| {workers} | {b:,.0f} | {f:,.0f} | {f / b:.2f}x |")


if __name__ == "__main__":
    main()
