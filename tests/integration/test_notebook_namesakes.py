"""A notebook's function runs as itself on every server, never as another notebook's function of the
same name: two notebooks in one folder share `./nbjobs.db`, each with its own server, and both may
define `def compute(...)`. Each `__main__` is its own; a job carries its function by value and only
the process that enqueued it runs the live one."""

from __future__ import annotations

import operator
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.errors import FunctionNotFoundError, InvalidJobError, RunsOnlyHereWarning
from nbjobs.payload import Call, Codec, Signer
from nbjobs.private_queues import PROCESS_TAG, private_queue

SECRET = "test-secret"

#: The other notebook: a server in its own process, with a `compute` of its own in its `__main__`.
OTHER_NOTEBOOK = """
import sys
import nbjobs

def compute(x):
    return "the other notebook's compute"

def half(x):
    return "the other notebook's half"

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


def test_a_copy_that_uses_the_notebooks_engine_enqueues_into_the_jobs_database(other_notebook: str) -> None:
    """`nb.enqueue(...)` and `@nb.job` functions inside a notebook function, `nb` a notebook variable:
    the copy another process runs enqueues through that process's engine of the job's database.
    Before, such a function could not be copied at all (an engine holds locks and connections)."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(
        "def half(x):\n"
        "    return f'this notebook halved {x}'\n"
        "def twice(x):\n"
        "    return 2 * x\n"
        "def fan_out(x):\n"
        "    first = nb.options(queue='shared').enqueue(half, x)\n"
        "    second = doubler.enqueue(x)\n"
        "    return [first.result(timeout=30), second.result(timeout=30)]\n",
        namespace,
    )
    with nbjobs.connect(other_notebook, secret=SECRET) as nb:
        namespace["nb"] = nb
        namespace["doubler"] = nb.job(queue="shared")(namespace["twice"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no RunsOnlyHereWarning: the function is copied
            job = nb.options(queue="shared").enqueue(namespace["fan_out"], 21)
        # `half` is this notebook's, run as its copy; the other notebook's `half` is never called.
        assert job.result(timeout=60) == ["this notebook halved 21", 42]
        assert sorted(nb.jobs(limit=None)["state"]) == ["succeeded"] * 3  # into this database


def test_a_function_that_could_not_be_copied_waits_for_a_server_of_this_process(
    other_notebook: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It uses a lock of the notebook: no copy, so no other process can run it. It goes to this
    process's private queue for its queue, which the other notebook's server passes over."""
    namespace: dict[str, Any] = {"__name__": "__main__", "lock": threading.Lock()}
    exec("def nbjobs_test_bound_compute(x):\n    with lock:\n        return x + 1\n", namespace)
    compute = namespace["nbjobs_test_bound_compute"]
    monkeypatch.setattr(sys.modules["__main__"], "nbjobs_test_bound_compute", compute, raising=False)
    with nbjobs.connect(other_notebook, secret=SECRET) as nb:
        with pytest.warns(RunsOnlyHereWarning, match="cannot be pickled by value") as warned:
            job = nb.options(queue="shared").enqueue(compute, 1)
        assert "No server runs in this process now" in str(warned[0].message)
        assert job.record().queue == f"shared@{PROCESS_TAG}"
        after = nb.options(queue="shared").enqueue(operator.add, 1, 2)
        assert after.result(timeout=30) == 3  # the other server took the later job of "shared" ...
        assert job.state is JobState.ENQUEUED  # ... and not this one
        nb.start_server(workers=1, queues=["other"])  # any server of this process serves it
        assert job.result(timeout=30) == 2
        with warnings.catch_warnings(record=True) as later:
            warnings.simplefilter("always")
            second = nb.options(queue="shared").enqueue(compute, 2)
        assert "No server runs" not in str(later[0].message)
        assert second.result(timeout=30) == 3


def test_a_notebook_function_without_a_copy_is_refused_by_another_process() -> None:
    """A call stored without a copy (by this version only in a private queue) that reaches a
    process other than its own fails there, saying why, instead of running that process's namesake."""
    codec = Codec(Signer(SECRET.encode()))
    call = Call(args=(1,), kwargs={}, function_by_value=None, origin=b"another process!")
    with pytest.raises(FunctionNotFoundError, match="only that process's own server can run it"):
        codec.load_function("__main__:compute", call)


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


ENQUEUES_AND_EXITS = """
import sys, threading, warnings
import nbjobs

lock = threading.Lock()

def locked(x):
    with lock:
        return x

if __name__ == "__main__":
    warnings.simplefilter("ignore")
    nb = nbjobs.connect(sys.argv[1])
    print(nb.enqueue(locked, 1).id, nb.options(queue="shared").enqueue(locked, 2).id, flush=True)
"""


def test_jobs_only_a_process_could_run_are_deleted_when_it_exits(tmp_path: Path) -> None:
    """Left Enqueued, they would wait for ever: no server of another process takes them."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    script = tmp_path / "enqueues_and_exits.py"
    script.write_text(ENQUEUES_AND_EXITS)
    done = subprocess.run([sys.executable, str(script), url], capture_output=True, timeout=60,
                          env={"NBJOBS_SECRET": SECRET, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr.decode()
    ids = [int(word) for word in done.stdout.split()]
    with nbjobs.connect(url, secret=SECRET) as nb:
        for job_id in ids:
            assert nb.job(job_id).state is JobState.DELETED
            reason = nb.history(job_id)["reason"].iloc[-1]
            assert reason == "its process ended: only that process could run it"


def test_requeuing_a_job_only_an_ended_process_could_run_is_refused(engine: nbjobs.Engine) -> None:
    """A `%%job` cell or a bound job of a kernel that is gone: requeued, it would wait for ever."""
    gone = "default@kernel-0123456789ab"  # another process's private queue, served by nobody
    job = engine.options(queue=gone).enqueue(operator.add, 1, 2)
    job.delete()
    with pytest.raises(InvalidJobError, match=r"can run only in the kernel or process that enqueued it .*"
                       r"no server of it is running"):
        job.requeue()
    frame = engine.requeue([job.id])  # many at once: reported, not raised
    assert "no server of it is running" in frame["error"].iloc[0]
    assert job.state is JobState.DELETED
    engine.start_server(workers=1, queues=[gone])  # that process's server, alive again
    assert job.requeue().result(timeout=30) == 3
    # this process's own: scheduled far ahead, so no worker takes it before it is deleted
    mine = engine.options(queue=private_queue("default")).schedule(3600, operator.add, 2, 2)
    mine.delete()
    assert mine.requeue().result(timeout=30) == 4
