"""A notebook function's copy (its code and the notebook data it uses, pickled by value) is stored in
every job of it. A function that uses a notebook's big DataFrame or array is not copied: pickling it
took seconds and stored the data again at every enqueue. Its jobs run on this process's servers, on a
private queue other servers pass over; a job that must run elsewhere (a worker process, a recurring
definition) is refused at the call, naming the data."""

from __future__ import annotations

import sys
import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import nbjobs
from nbjobs.copies import FUNCTION_COPY_MAX, function_copy
from nbjobs.errors import ConfigurationError, InvalidJobError, RunsOnlyHereWarning
from nbjobs.private_queues import PROCESS_TAG


def notebook_function(
    name: str, source: str, monkeypatch: pytest.MonkeyPatch, **data: Any,
) -> Callable[..., Any]:
    """`source` defining `name` as a cell would: in `__main__`, whose live function it then is."""
    namespace: dict[str, Any] = {"__name__": "__main__", **data}
    exec(source, namespace)
    fn: Callable[..., Any] = namespace[name]
    monkeypatch.setattr(sys.modules["__main__"], name, fn, raising=False)
    return fn


def test_a_function_using_a_big_array_is_not_copied_and_runs_on_this_process(
    engine: nbjobs.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = notebook_function(
        "nbjobs_test_total", "def nbjobs_test_total(i):\n    return float(big[:i].sum()) * scale\n",
        monkeypatch, big=np.ones(5_000_000), scale=2,  # 40 MB
    )
    with pytest.warns(RunsOnlyHereWarning) as warned:
        job = engine.enqueue(total, 10)
    message = str(warned[0].message)
    assert "uses more than 250.0 kB of the notebook's data by value (big)" in message  # not `scale`
    assert "pass the data it uses as arguments" in message
    record = job.record()
    assert record.queue == f"default@{PROCESS_TAG}"
    assert len(record.payload) < 2_000  # the arguments and the function's origin; no copy
    engine.start_server(workers=1)
    assert job.result(timeout=30) == 20.0


def test_a_small_notebook_function_is_copied_and_keeps_its_queue(
    engine: nbjobs.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    double = notebook_function("nbjobs_test_double", "def nbjobs_test_double(x):\n    return x * factor\n",
                               monkeypatch, factor=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        job = engine.options(queue="shared").enqueue(double, 21)
    assert job.record().queue == "shared"
    engine.start_server(workers=1, queues=["shared"])
    assert job.result(timeout=30) == 42


def test_jobs_that_run_elsewhere_refuse_a_function_using_big_data(
    engine: nbjobs.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = notebook_function("nbjobs_test_sum", "def nbjobs_test_sum():\n    return float(table.sum())\n",
                              monkeypatch, table=np.ones(1_000_000))
    expected = (r"cannot be copied into the job: it uses more than 250\.0 kB of the notebook's data by value "
                r"\(table\)")
    with pytest.raises(InvalidJobError, match=expected):
        engine.options(executor="process").enqueue(total)
    with pytest.raises(InvalidJobError, match=expected):
        engine.recurring("nightly-sum", "0 3 * * *", total)
    assert engine.jobs().empty and engine.recurring_jobs().empty  # nothing stored


def test_copying_stops_at_the_limit_without_copying_the_data() -> None:
    namespace: dict[str, Any] = {"__name__": "__main__", "huge": np.ones(12_500_000)}  # 100 MB
    exec("def uses_huge():\n    return huge.sum()\n", namespace)
    tracemalloc.start()
    try:
        copy, why = function_copy(namespace["uses_huge"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert copy is None and why.startswith("uses more than")
    assert peak < 4 * FUNCTION_COPY_MAX  # pickling it whole allocates 100 MB


def test_max_function_copy_sets_the_limit_and_zero_keeps_every_notebook_function_here(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    scale = notebook_function("nbjobs_test_scale", "def nbjobs_test_scale(x):\n    return x * len(table)\n",
                              monkeypatch, table=np.ones(100_000))  # 800 kB: bound at the default
    with nbjobs.connect(db_url, secret="s", max_function_copy=2_000_000) as roomy:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            job = roomy.options(queue="shared").enqueue(scale, 2)
        assert job.record().queue == "shared" and len(job.record().payload) > 800_000  # copied
    with nbjobs.connect(db_url, secret="s", max_function_copy=0) as here_only:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # asked for: no RunsOnlyHereWarning
            kept = here_only.options(queue="shared").enqueue(scale, 3)
        assert kept.record().queue == f"shared@{PROCESS_TAG}"
        with pytest.raises(InvalidJobError, match="max_function_copy=0 keeps notebook functions to this"):
            here_only.options(executor="process").enqueue(scale, 1)
        here_only.start_server(workers=1, queues=["other"])
        assert kept.result(timeout=30) == 300_000
    for bad in (-1, True, 1.5, 10**12):
        with pytest.raises(ConfigurationError, match="max_function_copy must be a number of bytes from 0"):
            nbjobs.connect(db_url, secret="s", max_function_copy=bad)  # type: ignore[arg-type]
