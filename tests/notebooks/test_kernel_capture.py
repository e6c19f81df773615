"""In a real kernel (sys.stdout is ipykernel's OutStream): jobs printing while the cell prints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from ..conftest import wait_for
from .execute import children

pytestmark = pytest.mark.timeout(180)

CELLS = [
    "%load_ext nbjobs",
    "import logging, sys, threading\n"
    "main_printing = threading.Event()\n"
    "def chatty(i):\n"
    "    main_printing.wait(30)  # make sure the cell prints while the jobs do\n"
    "    for k in range(100):\n"
    "        print(f'job {i} line {k}')\n"
    "    print(f'job {i} to stderr', file=sys.stderr)\n"
    "    logging.getLogger('user').warning('job %d logged', i)\n"
    "    return i\n"
    "jobs = [nbjobs.enqueue(chatty, i) for i in range(3)]\n"
    "n = 0\n"
    "while not all(j.done for j in jobs):\n"
    "    print(f'main {n}')\n"
    "    n += 1\n"
    "    if n == 20:\n"
    "        main_printing.set()\n"
    "print('results', [j.result(timeout=30) for j in jobs])",
    "print(jobs[1].logs())",
    "%unload_ext nbjobs",
]


def test_job_output_never_reaches_the_cell_that_runs_meanwhile(tmp_path: Path) -> None:
    baseline = children()
    nb = new_notebook(cells=[new_code_cell(c) for c in CELLS])
    NotebookClient(nb, timeout=60, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute(
        env={**os.environ, "NBJOBS_URL": f"sqlite:///{tmp_path / 'capture.db'}",
             "NBJOBS_HOME": str(tmp_path / "home")})
    streams = nb.cells[1].outputs
    stdout = "".join(o["text"] for o in streams if o.get("name") == "stdout")
    stderr = "".join(o["text"] for o in streams if o.get("name") == "stderr")
    # Only the notice that chatty (it uses a threading.Event) runs on this kernel's server alone.
    assert "to stderr" not in stderr and "logged" not in stderr
    assert "chatty is not copied into its jobs: it cannot be pickled by value" in stderr
    lines = stdout.splitlines()
    assert lines[-1] == "results [0, 1, 2]"
    assert len(lines) > 21
    assert lines[:-1] == [f"main {n}" for n in range(len(lines) - 1)]  # nothing of the jobs
    logs = "".join(o["text"] for o in nb.cells[2].outputs if o.get("name") == "stdout")
    assert logs.startswith("".join(f"job 1 line {k}\n" for k in range(100)))
    assert "job 1 to stderr\n" in logs and "WARNING user: job 1 logged" in logs
    assert "job 0" not in logs and "job 2" not in logs
    wait_for(lambda: not children() - baseline, timeout=10)
