"""A notebook's function runs as itself on every server, never as another notebook's function of the
same name: two notebooks in one folder share `./nbjobs.db`, each with its own server, and both may
define `def compute(...)`. Each `__main__` is its own; a job carries its function by value and only
the process that enqueued it runs the live one."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.errors import JobFailedError

SECRET = "test-secret"

#: The other notebook: a server in its own process, with a `compute` of its own in its `__main__`.
OTHER_NOTEBOOK = """
import sys
import nbjobs

def compute(x):
    return "the other notebook's compute"

if __name__ == "__main__":
    nb = nbjobs.connect(sys.argv[1])
    nb.start_server(workers=1, queues=["shared"], poll_interval=0.05)
    print("serving", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    nb.stop_server()
    nb.close()
"""


def notebook_function(source: str, **globals_: Any) -> Callable[..., Any]:
    """A function defined as a notebook cell defines it: in a namespace named `__main__`."""
    namespace: dict[str, Any] = {"__name__": "__main__", **globals_}
    exec(source, namespace)
    fn: Callable[..., Any] = namespace["compute"]
    return fn


@pytest.fixture
def other_notebook(tmp_path: Path) -> Iterator[str]:
    """The database URL, served only by the other notebook's process."""
    url = f"sqlite:///{tmp_path / 'nbjobs.db'}"
    script = tmp_path / "other_notebook.py"
    script.write_text(OTHER_NOTEBOOK)
    proc = subprocess.Popen(
        [sys.executable, str(script), url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env={"NBJOBS_SECRET": SECRET, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"serving"
        yield url
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_another_server_runs_this_notebooks_function_not_its_own_namesake(other_notebook: str) -> None:
    compute = notebook_function("def compute(x):\n    return f'this notebook computed {x * factor}'\n",
                                factor=2)
    with nbjobs.connect(other_notebook, secret=SECRET) as nb:
        jobs = [nb.options(queue="shared").enqueue(compute, i) for i in range(5)]
        results = [job.result(timeout=30) for job in jobs]
    assert results == [f"this notebook computed {i * 2}" for i in range(5)]


def test_a_function_that_could_not_be_stored_by_value_fails_elsewhere_saying_why(
    other_notebook: str,
) -> None:
    compute = notebook_function(
        "def compute(x):\n    with lock:\n        return x\n", lock=threading.Lock()
    )
    with nbjobs.connect(other_notebook, secret=SECRET) as nb:
        job = nb.options(queue="shared", retries=0).enqueue(compute, 1)
        with pytest.raises(JobFailedError, match="another process") as caught:
            job.result(timeout=30)
        assert "Requeue it there, or move the function into an importable module" in str(caught.value)
        assert job.state is JobState.FAILED


def test_the_enqueuing_process_runs_its_live_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In the notebook's own server the function is the live one: it sees the notebook's globals as
    they are now, not as they were when the job was stored."""
    main = sys.modules["__main__"]
    namespace: dict[str, Any] = {"__name__": "__main__", "settings": {"factor": 2}}
    exec("def nbjobs_test_live_compute(x):\n    return x * settings['factor']\n", namespace)
    compute = namespace["nbjobs_test_live_compute"]
    monkeypatch.setattr(main, "nbjobs_test_live_compute", compute, raising=False)
    with nbjobs.connect(f"sqlite:///{tmp_path / 'jobs.db'}", secret=SECRET) as nb:
        job = nb.enqueue(compute, 5)
        namespace["settings"]["factor"] = 10  # a later cell changes the notebook's state
        nb.start_server(workers=1)
        assert job.result(timeout=30) == 50  # the copy stored by value would say 10
