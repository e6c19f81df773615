"""`nbjobs demo` — the quick start's first command — on a fresh folder, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_every_kind_of_job_and_prints_their_table(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NBJOBS_URL"}
    env["NBJOBS_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-m", "nbjobs", "demo"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert (tmp_path / "nbjobs.db").exists()
    lines = {
        line.split()[0]: line for line in out.splitlines() if "nbjobs.demo:" in line
    }
    assert len(lines) == 9
    assert "estimate pi" in lines["1"] and "succeeded" in lines["1"]
    assert "report (continuation)" in lines["2"] and "succeeded" in lines["2"]
    assert "delayed reminder" in lines["3"] and "succeeded" in lines["3"]
    assert "flaky, retried" in lines["4"] and "succeeded" in lines["4"] and " 2 " in lines["4"]
    assert "fails for good" in lines["5"] and "failed" in lines["5"] and "ValueError" in lines["5"]
    assert "summary (results of 1 and 4)" in lines["6"] and "succeeded" in lines["6"]
    assert "async fetch" in lines["7"] and "succeeded" in lines["7"]
    assert "alert (failure of 5)" in lines["8"] and "succeeded" in lines["8"] and " 5 " in lines["8"]
    assert "demo-tick" in lines["9"] and "succeeded" in lines["9"]
    assert "`nbjobs show 5` shows the failed one's traceback, `nbjobs requeue 5` retries it." in out
