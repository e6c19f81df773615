"""notebooks/notebook-jobs.ipynb runs end to end in a fresh kernel and shows what it promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..conftest import wait_for
from .execute import children, execute, text

pytestmark = pytest.mark.timeout(240)


def test_notebook_jobs_tour(tmp_path: Path) -> None:
    baseline = children()
    nb = execute("notebook-jobs.ipynb", tmp_path, {
        "NBJOBS_URL": f"sqlite:///{tmp_path / 'tour.db'}", "NBJOBS_HOME": str(tmp_path / "home"),
    }, folders=("reports",))
    out = text(nb)
    assert "<Job 1 sales.ipynb [default]" in out  # the Job shown right after enqueue
    run_files = sorted(p.name for p in (tmp_path / "reports" / "nbjobs-runs").iterdir())
    # job 2 is the continuation, 3 the failing run, 4 the form's
    assert run_files == ["sales.1.html", "sales.1.ipynb", "sales.3.ipynb", "sales.4.html", "sales.4.ipynb"]
    assert "reports/nbjobs-runs/sales.1.ipynb" in out
    assert "reports/nbjobs-runs/sales.1.html True" in out  # the HTML report beside it
    assert "EMEA 2026-11-27: 50 orders" in (tmp_path / "reports" / "nbjobs-runs" / "sales.1.html").read_text()
    assert "region = 'EMEA'\nday = '2026-11-27'" in out  # the injected cell
    assert "'region': 'EMEA', 'day': '2026-11-27', 'orders': 50" in out  # the report's summary
    assert "EMEA 2026-11-27: 50 orders, total" in out  # its captured output
    assert "'published the EMEA report'" in out  # the continuation
    assert "nbjobs.errors.NotebookCellError" in out
    assert "cell 3 of sales.ipynb raised ValueError: unknown region 'MARS'" in out
    assert "failed - sales.3.ipynb exists: True" in out  # the partial run is kept
    assert "parameter 'lock' is a lock" in out
    assert "daily-sales  0 7 * * *  Europe/Paris" in out  # the recurring definition
    assert re.search(r'region\s+"EMEA"\s+EMEA', out)  # the parameters the notebook declares
    assert "{'region': 'APAC'}" in out  # the form's run, with the field that was changed
    form_report = (tmp_path / "reports" / "nbjobs-runs" / "sales.4.html").read_text()
    assert "APAC" in form_report and "REGIONS" not in form_report  # hide_code
    table = nb.cells[-2].outputs[0]["data"]["text/plain"]
    assert table.count("succeeded") == 3 and table.count("failed") == 1
    wait_for(lambda: not children() - baseline, timeout=10)
