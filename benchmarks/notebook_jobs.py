"""What a notebook job costs on top of running the notebook with nbclient by hand.

    python benchmarks/notebook_jobs.py            # 5 runs of notebooks/reports/sales.ipynb each way
    python benchmarks/notebook_jobs.py --runs 3

Two figures, each the median of `--runs` sequential runs on a temporary SQLite file:
- nbclient: `NotebookClient(nb, shutdown_kernel="immediate").execute()` of the parameterised report
  (a fresh kernel each time; nbjobs also kills the kernel at once once the notebook is done);
- nbjobs: `enqueue_notebook(...)` → `result()` with a server in this process (claim, fresh kernel,
  injection, execution, saving, captured output, result written back, notebook read back).
The difference is what nbjobs adds; the kernel start dominates both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import nbjobs
from nbjobs.notebooks import inject_parameters

SALES = Path(__file__).resolve().parents[1] / "notebooks" / "reports" / "sales.ipynb"
PARAMS = {"region": "EMEA", "day": "2026-11-27"}


def by_hand() -> float:
    nb = inject_parameters(nbformat.read(SALES, as_version=4), PARAMS)
    started = time.perf_counter()
    NotebookClient(nb, kernel_name="python3", shutdown_kernel="immediate",  # as nbjobs does
                   resources={"metadata": {"path": str(SALES.parent)}}).execute()
    return time.perf_counter() - started


def as_job(engine: nbjobs.Engine, out: Path) -> float:
    started = time.perf_counter()
    engine.enqueue_notebook(SALES, PARAMS, output_dir=out).result(timeout=120)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = nbjobs.connect(f"sqlite:///{tmp}/bench.db", secret="bench")
        engine.start_server(workers=1)
        try:
            hand, job = [], []
            for _ in range(args.runs):  # interleaved, so load changes hit both alike
                hand.append(by_hand())
                job.append(as_job(engine, Path(tmp) / "runs"))
        finally:
            engine.close()
    result = {"runs": args.runs, "nbclient_median_s": round(statistics.median(hand), 3),
              "nbjobs_median_s": round(statistics.median(job), 3)}
    result["overhead_s"] = round(result["nbjobs_median_s"] - result["nbclient_median_s"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
