"""notebooks/recurring.ipynb runs end to end in a fresh kernel and shows what it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import wait_for
from .execute import children, execute, text

pytestmark = pytest.mark.timeout(180)


def test_recurring_tour(tmp_path: Path) -> None:
    baseline = children()
    nb = execute("recurring.ipynb", tmp_path, {
        "NBJOBS_URL": f"sqlite:///{tmp_path / 'recurring.db'}", "NBJOBS_HOME": str(tmp_path / "home"),
    })
    out = text(nb)
    assert "<Recurring 'weekly-report' 0 9 * * MON (Europe/Berlin) → __main__:weekly_report, next " in out
    assert "hour field '25' of cron expression '0 25 * * MON' is not valid" in out
    assert "EMEA weekly report ready\nrecurring id: weekly-report - next run unchanged: True" in out
    assert "fired by schedule: True - on even seconds: True" in out
    table = nb.cells[11].outputs[0]["data"]["text/plain"]
    assert "weekly-report" in table and "Europe/Berlin" in table and "every-2s" in table
    assert table.count("True") == 2  # both paused
    assert "paused after resume: False" in out
    assert "weekly-report" in out.split("paused after resume: False")[1]  # the CLI's list
    assert "first run at its start: True - window: 23:00:00" in out
    assert "campaign" in out.split("first run at its start")[1]  # the CLI's list shows it
    assert "True True True" in out  # all three removed
    assert (tmp_path / "recurring.db").exists()
    wait_for(lambda: not children() - baseline, timeout=10)
