"""notebooks/scale-out.ipynb: two `nbjobs server` processes on PostgreSQL share the work, then stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import _reset_pg, wait_for
from .execute import children, execute, text

pytestmark = pytest.mark.timeout(300)


def test_scale_out_tour(pg_database: str, tmp_path: Path) -> None:
    _reset_pg(pg_database)
    baseline = children()
    nb = execute("scale-out.ipynb", tmp_path, {
        "NBJOBS_URL": pg_database, "NBJOBS_HOME": str(tmp_path / "home"),
    }, folders=("reports",))
    out = text(nb)
    servers = nb.cells[2].outputs[0]["data"]["text/plain"]
    assert "worker-1" in servers and "worker-2" in servers
    assert "24 jobs ran, on ['worker-1', 'worker-2']" in out  # both servers took work
    counts = nb.cells[5].outputs[0]["data"]["text/plain"]
    assert "worker-1" in counts and "worker-2" in counts
    assert "sales.25.ipynb succeeded" in out  # a server process ran the notebook job
    assert "APAC 2026-11-27: 50 orders" in out
    assert "[0, 0]\n0 servers left" in out  # drained and unregistered
    assert (tmp_path / "reports" / "nbjobs-runs" / "sales.25.ipynb").exists()
    wait_for(lambda: not children() - baseline, timeout=10)
