"""The process's default engine behind the module-level API (no IPython needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import nbjobs
from nbjobs import default
from nbjobs.errors import ConfigurationError


@nbjobs.job(queue="io", retries=1)
def double(x: int) -> int:  # decorated at import time: no engine exists yet
    return 2 * x


def triple(x: int) -> int:
    return 3 * x


class Scaler:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    @nbjobs.job(retries=0)
    def scale(self, x: int) -> int:  # a decorated method: bound like the method it decorates
        return self.factor * x


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    db = tmp_path / "default.db"
    monkeypatch.setenv("NBJOBS_URL", f"sqlite:///{db}")
    monkeypatch.setenv("NBJOBS_SECRET", "default-test-secret")
    monkeypatch.setenv("NBJOBS_WORKERS", "2")
    assert default.current_default() is None
    yield db
    default.close_default(timeout=1)
    default._settings.clear()


def test_first_use_creates_the_engine_from_the_environment_with_a_server(env: Path) -> None:
    job = nbjobs.enqueue(triple, 3)
    engine = nbjobs.default_engine()
    assert engine.url.endswith(str(env)) and engine.server is not None
    assert engine.server.config.workers == 2
    assert job.result(timeout=30) == 9
    assert nbjobs.job(job.id) == job
    assert nbjobs.schedule(0, triple, 1).result(timeout=30) == 3
    assert nbjobs.options(queue="io").enqueue(triple, 2).result(timeout=30) == 6
    assert len(nbjobs.jobs()) == 3 and len(nbjobs.history(job)) == 3
    assert len(nbjobs.servers()) == 1 and nbjobs.stats()["succeeded"].sum() == 3
    assert list(nbjobs.queues().columns)[:2] == ["queue", "enqueued"]


def test_a_decorated_function_binds_to_the_default_engine_when_used(env: Path) -> None:
    assert double(4) == 8  # still a plain function when called
    job = double.enqueue(5)
    assert job.result(timeout=30) == 10
    record = job.record()
    assert (record.queue, record.options.retries) == ("io", 1)


def test_a_decorators_bad_options_are_refused_where_it_decorates() -> None:
    """At import of the module that decorates, not at its first enqueue: and with no engine opened."""
    with pytest.raises(nbjobs.InvalidJobError, match=r"unknown job option\(s\) \['queu'\]"):
        nbjobs.job(queu="io")
    with pytest.raises(nbjobs.InvalidJobError, match="retries must be 0 or more"):
        nbjobs.job(triple, retries=-1)
    with pytest.raises(nbjobs.InvalidScheduleError, match="misfire"):
        nbjobs.job(misfire="sometimes")
    assert nbjobs.job(tz="Europe/Berlin", queue="io") is not None  # recurring options are options too
    assert default.current_default() is None


def test_a_decorated_method_is_bound_to_its_instance(env: Path) -> None:
    scaler = Scaler(5)
    assert scaler.scale(2) == 10  # it called the function without its instance
    assert default.current_default() is None  # calling it directly opened no engine
    job = scaler.scale.enqueue(3)  # the instance is stored with the arguments
    assert job.result(timeout=10) == 15
    assert Scaler(7).scale.options(queue="default").enqueue(1).result(timeout=10) == 7
    assert repr(Scaler.scale) == f"<nbjobs job function {__name__}:Scaler.scale>"


def test_set_default_engine_replaces_it_and_returns_the_previous(env: Path, tmp_path: Path) -> None:
    mine = nbjobs.connect(f"sqlite:///{tmp_path / 'mine.db'}", secret="x")
    try:
        assert nbjobs.set_default_engine(mine) is None
        assert nbjobs.default_engine() is mine
        assert nbjobs.set_default_engine(None) is mine
    finally:
        mine.close()


def test_client_only_default_engine_refuses_cells(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBJOBS_SERVER", "0")
    engine = nbjobs.default_engine()
    assert engine.server is None
    from nbjobs.ui.magics import submit_cell

    with pytest.raises(UsageError, match="only on this kernel's own server"):
        submit_cell("x = 1")


def test_bad_settings_are_refused_with_the_known_ones(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="known:"):
        default.configure(wokers=3)
    monkeypatch.setenv("NBJOBS_WORKERS", "many")
    with pytest.raises(ConfigurationError, match="NBJOBS_WORKERS must be a whole number"):
        nbjobs.default_engine()


def boom() -> None:
    raise ValueError("no")


def test_many_jobs_and_bulk_changes_on_the_default_engine(env: Path) -> None:
    sweep = nbjobs.enqueue_many(triple, [(1,), (2,), (3,)])
    assert nbjobs.results(sweep, timeout=30) == [3, 6, 9]
    failed = nbjobs.options(retries=0).enqueue(boom)
    assert nbjobs.wait([failed], timeout=30).done == [failed]
    assert nbjobs.counts()["failed"] == 1
    frame = nbjobs.requeue(nbjobs.jobs(state="failed"))
    assert list(frame["id"]) == [failed.id] and list(frame["error"]) == [None]
    assert failed.wait(timeout=30) is nbjobs.JobState.FAILED  # ran again and failed again
    later = nbjobs.schedule(3600, triple, 4)
    assert nbjobs.cancel(later) is nbjobs.JobState.DELETED
    assert nbjobs.delete(failed.id) is nbjobs.JobState.DELETED
    assert nbjobs.counts() == {**dict.fromkeys(nbjobs.counts(), 0), "succeeded": 3, "deleted": 2}
    board = nbjobs.dashboard(refresh=None, read_only=True)
    assert board.engine is nbjobs.default_engine() and board.read_only
    board.close()


def test_max_payload_is_a_default_engine_setting(env: Path) -> None:
    engine = default.configure(max_payload=1000)
    assert engine is nbjobs.default_engine() and engine.codec.max_bytes == 1000
    assert default.configure(max_function_copy=0).codec.copy_max == 0  # a new engine, as max_payload
    assert nbjobs.default_engine().codec.max_bytes == 1000
    with pytest.raises(nbjobs.InvalidJobError, match=r"more than the 1\.0 kB a job may store"):
        nbjobs.enqueue(triple, b"x" * 2000)
