"""The `nbjobs` console script as a user runs it: from a terminal, in their project folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import nbjobs

from .servers import SECRET

MODULE = "nbjobs_console_tasks"  #: unique: the test process imports it too, to enqueue its function


def console_script() -> str:
    """The installed `nbjobs` script beside this interpreter (`pip install -e .` puts it there)."""
    found = shutil.which("nbjobs", path=str(Path(sys.executable).parent))
    assert found is not None, "the nbjobs console script is not installed: pip install -e ."
    return found


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder with a module of job functions, importable in this process."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text("def add(a, b):\n    print('adding', a, b)\n    return a + b\n")
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop(MODULE, None)


def test_a_server_started_in_a_project_folder_runs_its_modules_and_logs_why_jobs_failed(
    project: Path, tmp_path: Path
) -> None:
    tasks = __import__(MODULE)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    # The server's environment names no path: only its working folder can make the module found.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NBJOBS_SECRET"] = SECRET
    log_path = tmp_path / "server.log"
    with nbjobs.connect(url, secret=SECRET) as nb:
        added = nb.enqueue(tasks.add, 2, 3)
        broken = nb.options(retries=0).enqueue(tasks.add, 1, "x")
        with log_path.open("wb") as log:
            proc = subprocess.Popen([console_script(), "server", "--url", url, "--workers", "1"],
                                    cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                assert added.result(timeout=60) == 5
                with pytest.raises(nbjobs.JobFailedError, match="unsupported operand"):
                    broken.result(timeout=60)
            finally:
                proc.terminate()
                assert proc.wait(30) == 0
        text = log_path.read_text()
        assert f"job {added.id} succeeded" in text
        assert (f"job {broken.id} failed: TypeError: unsupported operand type(s) for +: 'int' and 'str'"
                in text)
