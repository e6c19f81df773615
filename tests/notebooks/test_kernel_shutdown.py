"""Shutting a kernel down (without unloading the extension) stops its server gracefully."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from nbjobs import JobState, connect

from ..conftest import wait_for
from .execute import children

pytestmark = pytest.mark.timeout(180)

CELLS = [
    "%load_ext nbjobs\n%nbjobs config shutdown_timeout=0.5",
    "import time, nbjobs\n"
    "def forever():\n"
    "    while True:\n"
    "        nbjobs.check_cancelled()\n"
    "        time.sleep(0.01)\n"
    "running = nbjobs.enqueue(forever)\n"
    "while running.state.value != 'processing':\n"
    "    time.sleep(0.01)\n"
    "print('running job', running.id)",
    "%%job --name never-started\nwhile True:\n    nbjobs.check_cancelled()\n    time.sleep(0.01)",
    "%%job --name queued-cell\n1 + 1",
]


def test_kernel_shutdown_leaves_nothing_processing(tmp_path: Path) -> None:
    baseline = children()
    db = tmp_path / "shutdown.db"
    nb = new_notebook(cells=[new_code_cell(c) for c in CELLS])
    client = NotebookClient(nb, timeout=60, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env={**os.environ, "NBJOBS_URL": f"sqlite:///{db}", "NBJOBS_WORKERS": "2",
                        "NBJOBS_HOME": str(tmp_path / "home")})  # returns after the kernel shut down
    engine = connect(f"sqlite:///{db}", secret="unused")
    try:
        frame = engine.jobs(limit=None).set_index("name", drop=False)
        states = dict(zip(frame["function"] + "/" + frame["name"].fillna(""), frame["state"], strict=True))
        assert (frame["state"] != JobState.PROCESSING.value).all(), states
        assert engine.servers().empty  # the kernel's server unregistered itself
        # The plain job went back to its queue for another server; the cell jobs cannot run
        # anywhere else and were deleted.
        assert states["__main__:forever/"] == "enqueued"
        assert frame.loc["never-started", "state"] == "deleted"
        assert frame.loc["queued-cell", "state"] == "deleted"
        history = engine.history(int(frame.loc["never-started", "id"]))
        assert "processing" in list(history["state"])
    finally:
        engine.close()
    wait_for(lambda: not children() - baseline, timeout=10)
    nbformat.write(nb, tmp_path / "shutdown.ipynb")
