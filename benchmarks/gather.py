"""Gathering many jobs from the process whose server runs them: what waiting costs the server.

    python benchmarks/gather.py                  # 20,000 no-op jobs, median of 3 runs
    python benchmarks/gather.py --jobs 5000 --runs 1

A backlog of `--jobs` stored no-op jobs is drained by an in-process server (4 workers, SQLite,
synchronous=NORMAL) while this thread waits for all of them in one of four ways; the rate is jobs
per second from the server's start until the wait returns. The baseline waits without looking at
the jobs (`counts()` every 50 ms); the others are `nb.as_completed(jobs)`, `nb.results(jobs)`, the
baseline with a live `nb.watch(jobs)` widget refreshing meanwhile (as a notebook cell showing it
would) and, for comparison, `[job.result() for job in jobs]`. Each ratio is to the baseline of the
same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import nbjobs

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.integration.jobfuncs import noop  # importable: no pickling by value


def _counts(nb: Any, jobs: list[Any]) -> None:
    while nb.counts().get("succeeded", 0) < len(jobs):
        time.sleep(0.05)


def _as_completed(nb: Any, jobs: list[Any]) -> None:
    for _ in nb.as_completed(jobs):
        pass


def _results(nb: Any, jobs: list[Any]) -> None:
    nb.results(jobs)


def _watched(nb: Any, jobs: list[Any]) -> None:
    from nbjobs.ui import display

    widget = display.live_jobs_widget(nb.watch(jobs))  # what a notebook cell showing it starts
    _counts(nb, jobs)
    widget.finished.wait(30)


def _one_by_one(nb: Any, jobs: list[Any]) -> None:
    for job in jobs:
        job.result()


WAYS: dict[str, Callable[[Any, list[Any]], None]] = {
    "counts() every 50 ms (baseline)": _counts,
    "nb.as_completed(jobs)": _as_completed,
    "nb.results(jobs)": _results,
    "counts() every 50 ms, nb.watch(jobs) on display": _watched,
    "[job.result() for job in jobs]": _one_by_one,
}


def rate(way: Callable[[Any, list[Any]], None], n: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{os.path.join(folder, 'gather.db')}"
        with nbjobs.connect(url, secret="bench", synchronous="NORMAL") as nb:
            jobs: list[Any] = []
            for start in range(0, n, 1000):
                jobs += nb.enqueue_many(noop, [()] * min(1000, n - start))
            started = time.perf_counter()
            nb.start_server(workers=4)
            way(nb, jobs)
            elapsed = time.perf_counter() - started
            if nb.counts().get("succeeded") != n:
                raise RuntimeError("not every job succeeded")
            return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"nbjobs {nbjobs.__version__} · {args.jobs:,} jobs · 4 workers · SQLite NORMAL · "
          f"median of {args.runs} run(s)", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in WAYS}
    for run in range(args.runs):  # interleaved, so drift on a noisy machine hits every way alike
        for name, way in WAYS.items():
            print(f"  run {run + 1}/{args.runs}: {name} …", file=sys.stderr, flush=True)
            rates[name].append(rate(way, args.jobs))
    baseline = statistics.median(next(iter(rates.values())))
    print("| waiting with | jobs/s | ÷ baseline |")
    print("|---|---:|---:|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} | {median / baseline:.2f}x |")


if __name__ == "__main__":
    main()
