"""notebooks/quickstart.ipynb, the tour a new user follows, executed end to end in a fresh kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbjobs import connect

from ..conftest import wait_for
from .execute import children, execute, text

pytestmark = pytest.mark.timeout(300)


def test_quickstart_tour(tmp_path: Path) -> None:
    baseline = children()
    db = tmp_path / "quickstart.db"
    nb = execute("quickstart.ipynb", tmp_path, {
        "NBJOBS_URL": f"sqlite:///{db}", "NBJOBS_HOME": str(tmp_path / "home"),
    })
    out = text(nb)
    assert "result: 0.0156" in out
    assert "epoch 0: loss 0.5000\n" in out and "epoch 5: loss 0.0156\n" in out
    assert "claimed (attempt 1)" in out  # %job details
    assert "scheduled job is scheduled" in out
    assert "sum: 5 | the sum is ready" in out
    assert "ok after 3 attempts" in out
    assert "['enqueued', 'processing', 'scheduled', 'enqueued', 'processing', 'scheduled', 'enqueued'," in out
    assert "slope: 1.99" in out
    assert "model is now a notebook variable: 0.05" in out
    assert "'succeeded': 5," in out
    assert "combined: 60 | the pipeline is ready" in out
    assert "pages: [0, 1, 4, 9, 16, 25] | ended: 6" in out
    assert "['retry 1 of 3 in 0.2s, as the job asked (HTTP 429)']" in out
    assert "best: {'lr': 0.1}" in out  # a job that fanned out and gathered
    assert "['line 0', 'line 1', 'line 2']" in out  # jobs of one lock, one after the other
    assert "stopped" in out
    view = nb.cells[22].outputs[0]["data"]  # nbjobs.watch(pages)
    assert "application/vnd.jupyter.widget-view+json" in view
    assert view["text/plain"] == "<6 jobs: 6 succeeded>"
    live = nb.cells[4].outputs[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" in live and "text/html" in live
    # The job's own prints stayed out of the cell that ran while it worked.
    assert not any("epoch" in o.get("text", "") for o in nb.cells[4].outputs)
    # The notebook wrote only to the database it was given, and left nothing running.
    engine = connect(f"sqlite:///{db}", secret="unused")
    try:
        assert engine.counts()["processing"] == 0
        assert len(engine.jobs(limit=None)) == 16 + 5 + 3  # … + the sweep and its runs + the writers
        assert engine.servers().empty
    finally:
        engine.close()
    assert not (Path(__file__).resolve().parents[2] / "notebooks" / "nbjobs.db").exists()
    wait_for(lambda: not children() - baseline, timeout=10)
