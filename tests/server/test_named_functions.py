"""Job functions named by text, "module:function" (RQ's `enqueue("pkg.mod.fn")`, Celery's `send_task`):
checked like the function itself where it imports, stored by name with a warning where it does not
(code only the servers have), refused where the name cannot be right. On real SQLite and PostgreSQL."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import nbjobs
from nbjobs import JobState, NotImportableHereWarning
from nbjobs.errors import InvalidJobError, ResultUnavailableError

from ..conftest import wait_for


@pytest.fixture
def server_code(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A module of a unique name, written but not yet importable (its folder is not on sys.path)."""
    name = f"server_code_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "server_side"
    folder.mkdir()
    (folder / f"{name}.py").write_text(textwrap.dedent("""
        class Model:
            def __init__(self, weight):
                self.weight = weight

        def train(n, scale=1):
            return n * scale

        def fit(n):
            return Model(n)
    """))
    yield name, folder
    if str(folder) in sys.path:
        sys.path.remove(str(folder))
    sys.modules.pop(name, None)


def test_a_name_that_imports_here_is_checked_and_runs_as_the_function(engine: nbjobs.Engine) -> None:
    with pytest.raises(InvalidJobError, match=r"posixpath:join\(a, \*p\) cannot be called"):
        engine.enqueue("os.path:join")
    engine.start_server(workers=1)
    job = engine.enqueue("os.path:join", "a", "b")
    assert job.result(timeout=20) == "a/b"
    assert job.record().function == "posixpath:join"  # stored as the function it names
    assert engine.enqueue("os.path:basename", job).result(timeout=20) == "b"  # given its result
    assert job.then("os.path:join", "c", "d").result(timeout=20) == "c/d"


@pytest.mark.parametrize(("name", "message"), [
    ("json", "is not a function's name; write it as 'module:function'"),
    ("json dumps", "is not a function's name"),
    ("json:", "is not a function's name"),
    ("json:dumps.x", "json:dumps.x cannot be used as a job: 'function' object has no attribute 'x'"),
    ("os.path:no_such_function", "has no attribute 'no_such_function'; check the name"),
    ("__main__:train", "names a function of this notebook or script"),
])
def test_a_name_that_cannot_be_right_is_refused_and_nothing_is_stored(
        engine: nbjobs.Engine, name: str, message: str) -> None:
    with pytest.raises(InvalidJobError, match=message):
        engine.enqueue(name, 1)
    assert engine.jobs().empty


def test_a_name_not_importable_here_is_stored_with_a_warning_and_run_by_a_server_that_can(
        engine: nbjobs.Engine, server_code: tuple[str, Path]) -> None:
    module, folder = server_code
    with pytest.warns(NotImportableHereWarning, match=rf"{module}:train cannot be imported here \(No module "
                      "named .*stored by name for the servers that can import it") as caught:
        job = engine.enqueue(f"{module}:train", 3, scale=2)
    assert caught[0].filename == __file__  # the user's line
    with pytest.warns(NotImportableHereWarning):
        continuation = job.then(f"{module}:train", 5)
        fitted = engine.enqueue(f"{module}:fit", 4)
        engine.recurring("nightly", "0 3 * * *", f"{module}:train", 1)
    triggered = engine.job(engine.trigger("nightly").id)  # runs on the servers that have the code
    assert job.state is JobState.ENQUEUED and continuation.state is JobState.AWAITING
    sys.path.insert(0, str(folder))  # the server's side: the code is there
    engine.start_server(workers=1)
    assert job.result(timeout=20) == 6 and continuation.result(timeout=20) == 5
    assert triggered.result(timeout=20) == 1
    assert fitted.wait(timeout=20) is JobState.SUCCEEDED
    # Back on a side without the code, the result (a Model) cannot be loaded: a clear error.
    sys.path.remove(str(folder))
    sys.modules.pop(module)
    with pytest.raises(ResultUnavailableError, match=rf"job {fitted.id} succeeded, but its result cannot be "
                       rf"loaded in this process: .*No module named '{module}'"):
        fitted.result()


def test_a_server_without_the_code_still_fires_a_recurring_job_named_by_text(
        db_url: str, server_code: tuple[str, Path]) -> None:
    """Every server fires due definitions; one that cannot import the function (the notebook's own)
    used to mark an error and skip the fire, so the servers with the code never ran it."""
    module, _ = server_code
    clock = nbjobs.ManualClock(datetime(2026, 1, 5, 7, 0, 30, tzinfo=UTC))
    with nbjobs.connect(db_url, secret="test-secret", clock=clock) as engine:
        with pytest.warns(NotImportableHereWarning):
            engine.options(queue="gpu").recurring("tick", "* * * * *", f"{module}:train", 2)
        engine.start_server(workers=1, queues=["default"], server_timeout=7200.0, heartbeat_interval=3600.0)
        clock.set(datetime(2026, 1, 5, 7, 1, tzinfo=UTC))
        fired = wait_for(lambda: engine.jobs(queue="gpu", limit=None)["id"].tolist())
        assert engine.job(fired[0]).state is JobState.ENQUEUED  # waiting for a server of "gpu"
        assert engine.recurring_jobs().set_index("id").loc["tick", "error"] is None
