"""Notebooks as jobs: real notebooks run by a real server in fresh kernels (nbclient).

Kernel starts cost 1-2 s each, so every test here runs as few notebooks as it can and checks
everything it can on each run. After each run the test process must have no more child processes
than before it: no kernel is ever left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import nbformat
import psutil
import pytest
from click.testing import CliRunner
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import nbjobs
from nbjobs import InvalidJobError, JobFailedError, JobState
from nbjobs.cli import cli
from nbjobs.client import NotebookJob
from nbjobs.executors.notebook import NOTEBOOK_FUNCTION
from nbjobs.notebooks import INJECTED_TAG

from ..conftest import wait_for

pytestmark = pytest.mark.timeout(90)

SALES = Path(__file__).resolve().parents[2] / "notebooks" / "reports" / "sales.ipynb"


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def kernels(baseline: set[int]) -> set[int]:
    """Child processes started since `baseline` (the kernels of running notebook jobs)."""
    return children() - baseline


def assert_no_kernel_left(baseline: set[int]) -> None:
    wait_for(lambda: not kernels(baseline), timeout=5)


def make_notebook(path: Path, *sources: str, parameters: str | None = None) -> Path:
    """A notebook file: an optional `parameters` cell, then one code cell per source."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [new_markdown_cell("test notebook")]
    if parameters is not None:
        nb.cells.append(new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    nb.cells += [new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def after_report(day: str) -> str:
    """A continuation of a notebook job (importable, so any server can run it)."""
    return f"published {day}"


def test_report_runs_with_parameters_saved_and_continued(engine: nbjobs.Engine, tmp_path: Path) -> None:
    """The whole happy path, on SQLite and PostgreSQL: one kernel per backend."""
    baseline = children()
    engine.start_server(workers=2, queues=["reports"], scheduler_interval=0.05)
    out_dir = tmp_path / "runs"
    run = engine.options(queue="reports", retries=0).enqueue_notebook(
        SALES, {"region": "AMER", "day": "2026-11-27"}, output_dir=out_dir, export=["html", "markdown"],
    )
    assert isinstance(run, NotebookJob)
    follow = run.then(after_report, "2026-11-27")
    assert run.output_path == out_dir / f"sales.{run.id}.ipynb"
    assert run.exports == {"html": out_dir / f"sales.{run.id}.html",
                           "markdown": out_dir / f"sales.{run.id}.md"}

    executed = run.result(timeout=60)
    assert isinstance(executed, nbformat.NotebookNode)
    assert run.output_path.exists()
    assert executed == nbformat.read(run.output_path, as_version=4)
    # The injected cell comes right after the `parameters` cell and overrides its defaults.
    tags = [c.metadata.get("tags", []) for c in executed.cells]
    assert tags.index(["parameters"]) + 1 == tags.index([INJECTED_TAG])
    injected = executed.cells[tags.index([INJECTED_TAG])]
    assert "region = 'AMER'" in injected.source and "day = '2026-11-27'" in injected.source
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "AMER 2026-11-27: 50 orders" in printed
    assert executed.metadata["nbjobs"]["job_id"] == run.id
    assert executed.metadata["nbjobs"]["status"] == "succeeded"
    # The path is stored with the job (its return value), the output is the job's captured output.
    stored = engine.codec.loads(run.record().result)
    assert stored["output_path"] == str(run.output_path)
    assert stored["parameters"] == {"region": "AMER", "day": "2026-11-27"}
    assert "AMER 2026-11-27: 50 orders" in run.logs()
    # The reports asked for, written beside the run from the executed notebook (outputs included).
    assert stored["exports"] == {name: str(p) for name, p in run.exports.items()}
    html = run.exports["html"].read_text()
    assert html.lstrip().lower().startswith("<!doctype html>") and "AMER 2026-11-27: 50 orders" in html
    assert "AMER 2026-11-27: 50 orders" in run.exports["markdown"].read_text()
    assert "REGIONS = {" in run.exports["markdown"].read_text()  # with its code (no hide_code)
    # An ordinary job: named, in its queue, continued, found again as a NotebookJob.
    assert run.record().options.name == "sales.ipynb" and run.record().queue == "reports"
    assert follow.result(timeout=30) == "published 2026-11-27"
    again = engine.job(run.id)
    assert isinstance(again, NotebookJob) and again.output_path == run.output_path
    # notebooks, as result() gives, also for plain handles made from ids (a jobs() frame)
    assert engine.results([run, again, run.id]) == [executed] * 3
    assert engine.results(engine.jobs(name="sales.ipynb")) == [executed]
    assert_no_kernel_left(baseline)


def test_bad_notebook_jobs_are_refused_at_enqueue(nb: nbjobs.Engine, tmp_path: Path) -> None:
    with pytest.raises(InvalidJobError, match="does not exist"):
        nb.enqueue_notebook(tmp_path / "missing.ipynb")
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ this is not json")
    with pytest.raises(InvalidJobError, match="not a valid Jupyter notebook"):
        nb.enqueue_notebook(broken)
    with pytest.raises(InvalidJobError, match="parameter 'since'"):
        nb.enqueue_notebook(SALES, {"region": "EMEA", "since": object()})
    with pytest.raises(InvalidJobError, match="parameter 'regions'"):
        nb.options(queue="reports").enqueue_notebook(SALES, {"regions": {"EMEA", "APAC"}})
    for bad in (0, float("nan"), float("inf"), "soon", True):  # NaN and infinity were taken
        with pytest.raises(InvalidJobError, match="cell_timeout must be a positive number of seconds"):
            nb.enqueue_notebook(SALES, cell_timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="unknown job option"):
        nb.enqueue_notebook(SALES, colour="red")
    with pytest.raises(InvalidJobError, match=r"cwd .*missing-folder is not a folder"):
        nb.enqueue_notebook(SALES, cwd=tmp_path / "missing-folder")  # failed in the worker
    with pytest.raises(InvalidJobError, match=r"output_dir .*broken\.ipynb is a file"):
        nb.enqueue_notebook(SALES, output_dir=broken)
    with pytest.raises(InvalidJobError, match="cannot export a notebook run as 'htm'; the formats are html"):
        nb.enqueue_notebook(SALES, export="htm")
    with pytest.raises(InvalidJobError, match="export must be a format name"):
        nb.enqueue_notebook(SALES, export=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="hide_code applies to the reports a run is exported as"):
        nb.enqueue_notebook(SALES, hide_code=True)
    with pytest.raises(InvalidJobError, match="export 'python' without its code would be empty"):
        nb.enqueue_notebook(SALES, export=["html", "python"], hide_code=True)
    with pytest.raises(InvalidJobError, match="hide_code must be True or False, got 'yes'"):
        nb.enqueue_notebook(SALES, export="html", hide_code="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="latest must be True or False, got 1"):
        nb.enqueue_notebook(SALES, latest=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="not both"):
        nb.enqueue_notebook(SALES, export=["pdf", "webpdf"])
    previous = nbjobs.set_default_engine(nb)
    try:
        with pytest.raises(InvalidJobError, match="parameter 'x'"):  # the module-level API checks too
            nbjobs.enqueue_notebook(SALES, {"x": object()})
        with pytest.raises(InvalidJobError, match="parameter 'y'"):
            nbjobs.recurring_notebook("daily", "0 7 * * *", SALES, {"y": object()})
    finally:
        nbjobs.set_default_engine(previous)
    assert nb.jobs().empty  # nothing was stored
    nb.stop_server()  # the jobs below are checked as stored, not run (a run writes beside the notebook)
    untagged = tmp_path / "untagged.ipynb"
    untagged.write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [{"cell_type": "code", "id": "a", "metadata": {}, "outputs": [], "execution_count": None,
                   "source": "region = 'ALL'"}]}))
    with pytest.warns(nbjobs.NoParametersCellWarning, match="untagged.ipynb has no cell tagged 'parameters', "
                      "and its own code assigns region"):
        nb.enqueue_notebook(untagged, {"region": "EMEA"})
    # a parameter the parameters cell does not declare: a typo papermill only warns about too
    with pytest.warns(nbjobs.UnknownParameterWarning, match=r"sales.ipynb does not declare 'regoin' \(did "
                      r"you mean 'region'\?\), 'shop' in its 'parameters' cell"):
        typo = nb.enqueue_notebook(SALES, {"regoin": "EMEA", "shop": 3, "day": "2026-12-01"})
    assert typo.state is JobState.ENQUEUED  # stored all the same: the notebook may read them otherwise
    with pytest.warns(nbjobs.UnknownParameterWarning, match="'regoin'"):
        nb.recurring_notebook("typo", "0 7 * * *", SALES, {"regoin": "EMEA"})
    nb.enqueue_notebook(SALES, cell_timeout="2m")  # a duration, as `timeout` and `schedule` take
    assert nb.jobs(args=True)["args"][0].endswith("cell_timeout=120.0")  # newest first


def test_unknown_kernel_fails_with_a_clear_error(nb: nbjobs.Engine, tmp_path: Path) -> None:
    path = make_notebook(tmp_path / "r.ipynb", "1 + 1")
    # Said at enqueue (a warning: the servers that run it may have the kernel), and by the run.
    with pytest.warns(UserWarning, match=r"kernel 'no-such-kernel' for r.ipynb is not installed here \("
                                         r".*python3.* are\): a server on this machine would fail the run"):
        run = nb.options(retries=0).enqueue_notebook(path, kernel_name="no-such-kernel")
    with pytest.raises(JobFailedError) as info:
        run.result(timeout=30)
    assert info.value.exc_type == "nbjobs.errors.NotebookError"
    assert "kernel 'no-such-kernel' is not installed" in str(info.value.remote_message)
    assert run.notebook().metadata["nbjobs"]["status"] == "failed"  # type: ignore[union-attr]


def test_failing_cell_fails_the_job_with_cell_and_traceback(nb: nbjobs.Engine, tmp_path: Path) -> None:
    baseline = children()
    path = make_notebook(
        tmp_path / "fails.ipynb",
        "print('before the failure')",
        "x = 1\nraise ValueError(f'bad input {x}')",
        "print('never runs')",
    )
    run = nb.options(retries=0).enqueue_notebook(path, export="html", latest=True)
    with pytest.raises(JobFailedError) as info:
        run.result(timeout=60)
    err = info.value
    assert run.state is JobState.FAILED
    # A failed run's report is written too: it shows where the run stopped.
    assert "bad input 1" in run.exports["html"].read_text()
    assert not list(run.output_path.parent.glob("*.latest.*"))  # the latest good run stays the latest
    assert err.exc_type == "nbjobs.errors.NotebookCellError"
    assert err.remote_message is not None
    assert err.remote_message.startswith("cell 2 of fails.ipynb raised ValueError: bad input 1")
    assert err.remote_traceback is not None
    assert "Cell 2 traceback (from the kernel)" in err.remote_traceback
    assert "raise ValueError(f'bad input {x}')" in err.remote_traceback
    assert "\x1b[" not in err.remote_traceback  # no terminal colours
    # The partially executed notebook is kept: outputs up to the failing cell, none after.
    partial = run.notebook()
    assert partial is not None and partial.metadata["nbjobs"]["status"] == "failed"
    assert partial.cells[1].outputs[0]["text"] == "before the failure\n"
    assert partial.cells[2].outputs[-1]["ename"] == "ValueError"
    assert partial.cells[3].outputs == []
    assert "before the failure" in run.logs() and "ValueError: bad input 1" in run.logs()
    assert_no_kernel_left(baseline)


def test_an_export_that_fails_after_the_run_fails_the_job_naming_the_saved_run(
    nb: nbjobs.Engine, tmp_path: Path
) -> None:
    path = make_notebook(tmp_path / "r.ipynb", "print('ran')")
    nb.pause_queue("default")  # the job's id is known before it runs
    run = nb.options(retries=0).enqueue_notebook(path, export="html")
    run.exports["html"].mkdir(parents=True)  # where the report goes is taken by a folder
    nb.resume_queue("default")
    with pytest.raises(JobFailedError) as info:
        run.result(timeout=60)
    assert info.value.exc_type == "nbjobs.errors.NotebookError"
    assert (f"the run is saved at {run.output_path}, but exporting it as html failed: IsADirectoryError"
            in str(info.value.remote_message))
    assert run.notebook().metadata["nbjobs"]["status"] == "succeeded"  # type: ignore[union-attr]


def test_a_notebook_job_enqueues_into_its_servers_database(
    nb: nbjobs.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not into an nbjobs.db beside the notebook (its kernel's default), where nothing would run it."""
    monkeypatch.setenv("NBJOBS_SECRET", "test-secret")  # how a client finds the key (as any would)
    monkeypatch.delenv("NBJOBS_URL", raising=False)
    path = make_notebook(tmp_path / "fan.ipynb", "import nbjobs\nchild = nbjobs.enqueue(len, 'abcd')\n"
                         "print(child.id, child.result(timeout=60))")
    run = nb.options(retries=0).enqueue_notebook(path)
    run.result(timeout=120)
    child_id, length = run.logs().split()
    assert length == "4" and nb.job(int(child_id)).state is JobState.SUCCEEDED
    assert not (tmp_path / "nbjobs.db").exists()


def test_failed_run_is_retried_by_the_normal_policy(nb: nbjobs.Engine, tmp_path: Path) -> None:
    """The first attempt fails (and leaves a marker); the retry succeeds. Two kernels."""
    baseline = children()
    path = make_notebook(
        tmp_path / "flaky.ipynb",
        "from pathlib import Path\n"
        "marker = Path('attempted')\n"
        "if not marker.exists():\n"
        "    marker.touch()\n"
        "    raise ConnectionError('source not ready')\n"
        "print('loaded')",
    )
    run = nb.options(retries=2, retry_base=0.05).enqueue_notebook(path)
    executed = run.result(timeout=60)
    assert (tmp_path / "attempted").exists()  # ran in the notebook's folder
    assert executed.metadata["nbjobs"]["attempt"] == 2
    assert run.record().attempts == 2
    reasons = [h.reason for h in run.history() if h.state is JobState.SCHEDULED]
    assert any("NotebookCellError" in r and "retry 1 of 2" in r for r in reasons), reasons
    assert_no_kernel_left(baseline)


def test_a_snapshot_runs_the_notebook_as_it_was_enqueued(nb: nbjobs.Engine, tmp_path: Path) -> None:
    """`snapshot=True` stores the notebook with the job (jupyter-scheduler copies its input): a run
    that starts after the file changed executes it as enqueued; without it, as the file is then."""
    baseline = children()
    path = make_notebook(tmp_path / "model.ipynb", "version = 'as enqueued'\nprint(version)")
    executed = nbformat.read(path, as_version=4)
    executed.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="x" * 100_000)]
    nbformat.write(executed, path)  # saved with a large output: not stored with the job
    nb.pause_queue("models")
    frozen = nb.options(queue="models").enqueue_notebook(path, snapshot=True)
    live = nb.options(queue="models").enqueue_notebook(path)
    assert len(frozen.record().payload) < 10_000
    make_notebook(path, "version = 'edited later'\nprint(version)")
    nb.resume_queue("models")
    ran = frozen.result(timeout=60)
    assert ran.cells[1].outputs[0].text == "as enqueued\n" and ran.metadata["nbjobs"]["snapshot"] is True
    assert live.result(timeout=60).cells[1].outputs[0].text == "edited later\n"
    assert "snapshot" not in live.result().metadata["nbjobs"]
    with pytest.raises(InvalidJobError, match="snapshot must be True or False, got 'yes'"):
        nb.enqueue_notebook(path, snapshot="yes")  # type: ignore[arg-type]
    assert_no_kernel_left(baseline)


def test_a_notebook_run_can_be_put_off_until_later(tmp_path: Path) -> None:
    """`enqueue_notebook(path, at=…)` and `nbjobs run-notebook --at`: one run, later (Scheduled)."""
    clock = nbjobs.ManualClock()
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with nbjobs.connect(url, secret="test-secret", clock=clock) as engine:
        tonight = engine.enqueue_notebook(SALES, at="2h")
        record = tonight.record()
        assert tonight.state is JobState.SCHEDULED and record.run_at == clock.now() + timedelta(hours=2)
        with pytest.raises(InvalidJobError, match="at 'tonight' is not a time"):
            engine.enqueue_notebook(SALES, at="tonight")
        assert len(engine.jobs()) == 1  # the refusal stored nothing
    result = CliRunner().invoke(cli, ["run-notebook", str(SALES), "--url", url, "--at", "30m"],
                                env={"NBJOBS_SECRET": "test-secret"}, catch_exceptions=False)
    assert result.exit_code == 0 and " scheduled: " in result.output, result.output
    bad = CliRunner().invoke(cli, ["run-notebook", str(SALES), "--url", url, "--at", "soonish"],
                             env={"NBJOBS_SECRET": "test-secret"})
    assert bad.exit_code == 2 and "Invalid value for --at: 'soonish' is neither a time" in bad.output


def test_a_kernel_that_dies_fails_the_run(nb: nbjobs.Engine, tmp_path: Path) -> None:
    baseline = children()
    path = make_notebook(tmp_path / "dies.ipynb", "print('alive', flush=True)", "import os\nos._exit(3)")
    run = nb.options(retries=0).enqueue_notebook(path)
    with pytest.raises(JobFailedError) as info:
        run.result(timeout=30)
    assert info.value.exc_type == "nbjobs.errors.NotebookError"
    assert "the kernel died while running cell 2 of dies.ipynb" in str(info.value.remote_message)
    assert run.notebook().cells[1].outputs[0]["text"] == "alive\n"  # type: ignore[union-attr]
    assert_no_kernel_left(baseline)


def test_cell_timeout_bounds_each_cell(nb: nbjobs.Engine, tmp_path: Path) -> None:
    baseline = children()
    path = make_notebook(tmp_path / "slow_cell.ipynb", "print('quick')", "import time\ntime.sleep(60)")
    run = nb.options(retries=0).enqueue_notebook(path, cell_timeout=1.0)
    with pytest.raises(JobFailedError) as info:
        run.result(timeout=30)
    assert info.value.exc_type == "nbjobs.errors.NotebookCellTimeoutError"
    assert "cell 2 of slow_cell.ipynb ran longer than its cell_timeout" in str(info.value.remote_message)
    assert run.notebook().cells[1].outputs[0]["text"] == "quick\n"  # type: ignore[union-attr]
    assert_no_kernel_left(baseline)


def test_timeout_bounds_the_whole_run(nb: nbjobs.Engine, tmp_path: Path) -> None:
    baseline = children()
    cells = [f"import time\ntime.sleep(0.5)\nprint('step {i}')" for i in range(40)]
    path = make_notebook(tmp_path / "long.ipynb", *cells)
    run = nb.options(retries=0, timeout=4).enqueue_notebook(path)
    with pytest.raises(JobFailedError) as info:
        run.result(timeout=30)
    assert info.value.exc_type == "nbjobs.errors.JobTimeoutError"
    partial = run.notebook()
    assert partial is not None and partial.metadata["nbjobs"]["status"] == "cancelled"
    assert partial.metadata["nbjobs"]["reason"] == "timeout of 4.0s passed"
    done = [c for c in partial.cells if c.cell_type == "code" and c.outputs]
    assert len(done) < 40  # (how many ran depends on how long the kernel took to start)
    assert_no_kernel_left(baseline)


def test_a_running_notebook_reports_its_cell_and_saves_the_cells_done(
        nb: nbjobs.Engine, tmp_path: Path) -> None:
    baseline = children()
    gate = tmp_path / "gate"
    path = make_notebook(
        tmp_path / "steps.ipynb", "print('first')",
        "import pathlib, time\nwhile not pathlib.Path(gate).exists():\n    time.sleep(0.02)",
        "print('third')",
        parameters="gate = ''",
    )
    run = nb.enqueue_notebook(path, {"gate": str(gate)})

    def progress() -> tuple[float | None, str | None]:
        record = run.record()
        return record.progress, record.progress_message

    # the parameters cell and its injected one count: five code cells, the gate is the fourth
    wait_for(lambda: progress() == (0.6, "cell 4 of 5"), timeout=30)

    def saved_so_far() -> list[Any] | None:  # the run is saved as it goes (within 2 s), to be opened
        partial = run.notebook()
        code = [] if partial is None else [c for c in partial.cells if c.cell_type == "code"]
        return code if code and any("first" in o.get("text", "") for o in code[2].outputs) else None

    wait_for(lambda: saved_so_far() is not None, timeout=10)
    partial = run.notebook()
    assert partial is not None and partial.metadata["nbjobs"]["status"] == "running"
    code = saved_so_far()
    assert code is not None and code[4].outputs == []  # not run yet
    gate.touch()
    done = run.result(timeout=30)
    assert done.metadata["nbjobs"]["status"] == "succeeded"
    assert "third" in done.cells[-1].outputs[0]["text"]
    assert_no_kernel_left(baseline)


def test_cancel_interrupts_and_shuts_down_the_kernel(
        nb: nbjobs.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    baseline = children()
    sockets = tmp_path / "tmp"
    sockets.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(sockets))
    path = make_notebook(tmp_path / "waits.ipynb",
                         "import time\nprint('waiting', flush=True)\ntime.sleep(120)", "print('never')")
    run = nb.enqueue_notebook(path)
    wait_for(lambda: "waiting" in run.logs(), timeout=30)  # the cell runs: its kernel is alive
    assert len(kernels(baseline)) == 1
    # Reached over Unix sockets in a private folder (no TCP port, no plain-text warning), not in
    # the notebook's folder, and removed with the kernel.
    [folder] = sockets.iterdir()
    assert folder.stat().st_mode & 0o777 == 0o700
    assert any(entry.is_socket() for entry in folder.iterdir())
    assert not list(tmp_path.glob("kernel-*"))
    run.cancel()
    assert run.wait(timeout=15) is JobState.DELETED
    assert_no_kernel_left(baseline)
    assert not list(sockets.iterdir())
    partial = run.notebook()
    assert partial is not None and partial.metadata["nbjobs"]["status"] == "cancelled"
    assert partial.cells[2].outputs == []  # no cell ran after the cancellation
    assert "cancelled while running" in run.history()[-1].reason


def test_cancel_kills_a_kernel_that_ignores_the_interrupt(nb: nbjobs.Engine, tmp_path: Path) -> None:
    baseline = children()
    path = make_notebook(
        tmp_path / "stubborn.ipynb",
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('deaf', flush=True)\n"
        "time.sleep(120)",
    )
    run = nb.enqueue_notebook(path)
    wait_for(lambda: "deaf" in run.logs(), timeout=30)
    run.cancel()
    assert run.wait(timeout=15) is JobState.DELETED
    assert_no_kernel_left(baseline)


def test_stopping_the_server_requeues_a_running_notebook(nb: nbjobs.Engine, tmp_path: Path) -> None:
    baseline = children()
    path = make_notebook(tmp_path / "busy.ipynb", "import time\nprint('busy', flush=True)\ntime.sleep(120)")
    run = nb.enqueue_notebook(path)
    wait_for(lambda: "busy" in run.logs(), timeout=30)
    nb.stop_server(timeout=0.2)
    assert run.state is JobState.ENQUEUED  # back in its queue for another server
    assert_no_kernel_left(baseline)


def test_recurring_notebook_is_checked_defined_and_triggered(nb: nbjobs.Engine, tmp_path: Path) -> None:
    baseline = children()
    with pytest.raises(InvalidJobError, match="parameter 'region'"):
        nb.recurring_notebook("bad", "0 7 * * *", SALES, parameters={"region": object()})
    assert nb.recurring_jobs().empty  # nothing stored
    daily = nb.options(tz="Europe/Paris", retries=0).recurring_notebook(
        "daily-sales", "0 7 * * *", SALES, parameters={"region": "EMEA"}, output_dir=tmp_path / "runs",
    )
    row = nb.recurring_jobs().set_index("id").loc["daily-sales"]
    assert row["function"] == NOTEBOOK_FUNCTION and row["tz"] == "Europe/Paris" and row["cron"] == "0 7 * * *"
    assert daily.next_fire is not None
    assert daily.next_fire.astimezone(ZoneInfo("Europe/Paris")).hour == 7
    run = nb.trigger("daily-sales")  # one run now, as each fire would
    assert isinstance(run, NotebookJob)
    executed = run.result(timeout=60)
    injected = [c for c in executed.cells if INJECTED_TAG in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "region = 'EMEA'" in injected[0].source
    assert run.output_path == tmp_path / "runs" / f"sales.{run.id}.ipynb" and run.output_path.exists()
    assert run.record().options.name == "sales.ipynb"
    assert_no_kernel_left(baseline)


def test_a_killed_server_process_leaves_no_kernel_behind(tmp_path: Path) -> None:
    """`nbjobs server` runs notebook jobs too; killed with -9 mid-run, its kernel still goes away
    (ipykernel exits when its parent changes), and the job stays with the dead server until reaped."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "nbjobs", "server", "--url", url, "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NBJOBS_SECRET": "test-secret"},
        )
        try:
            with nbjobs.connect(url, secret="test-secret") as nb:  # no server in this process
                path = make_notebook(tmp_path / "long.ipynb",
                                     "import time\nprint('running', flush=True)\ntime.sleep(120)")
                run = nb.enqueue_notebook(path)
                wait_for(lambda: "running" in run.logs(), timeout=60)
                kernel_procs = psutil.Process(server.pid).children(recursive=True)
                assert len(kernel_procs) == 1 and "ipykernel" in " ".join(kernel_procs[0].cmdline())
                server.kill()
                server.wait(10)
                _, alive = psutil.wait_procs(kernel_procs, timeout=15)
                assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
                assert run.state is JobState.PROCESSING  # until its lease expires and a reaper returns it
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(10)


def test_cli_defines_a_recurring_notebook_and_lists_a_notebooks_parameters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = {"NBJOBS_SECRET": "test-secret"}
    runner = CliRunner()
    listed = runner.invoke(cli, ["notebook-parameters", str(SALES)], catch_exceptions=False)
    assert listed.exit_code == 0 and "region" in listed.output and '"EMEA"' in listed.output
    as_json = runner.invoke(cli, ["notebook-parameters", str(SALES), "--format", "json"])
    assert [row["name"] for row in json.loads(as_json.output)] == ["region", "day"]
    defined = runner.invoke(cli, [
        "recurring-notebook", "--url", url, "daily-sales", "0 7 * * MON-FRI", str(SALES),
        "-p", "region", "APAC", "--export", "html", "--hide-code", "--latest", "--queue", "reports",
        "--tz", "europe/paris", "--misfire-grace", "2h", "--end", "30d", "--snapshot",
    ], env=env, catch_exceptions=False)
    assert defined.exit_code == 0, defined.output
    assert "recurring job 'daily-sales': 0 7 * * MON-FRI (Europe/Paris), next run 20" in defined.output
    with nbjobs.connect(url, secret="test-secret") as nb:
        record = nb.store.get_recurring("daily-sales")
        assert record is not None and record.options.queue == "reports" and record.misfire_grace == 7200.0
        assert record.end is not None and record.tz == "Europe/Paris"
        call = nb.codec.decode_call(record.payload)
        assert call.args == (str(SALES), {"region": "APAC"})
        assert call.kwargs["export"] == ["html"] and call.kwargs["hide_code"] and call.kwargs["latest"]
        assert "Daily sales report" in call.kwargs["snapshot"]  # the notebook itself, stored with it
    bad = runner.invoke(cli, ["recurring-notebook", "--url", url, "typo", "0 25 * * *", str(SALES)], env=env)
    assert bad.exit_code != 0 and "hour field '25'" in str(bad.exception)


def test_cli_run_notebook_waits_for_the_run(nb: nbjobs.Engine, tmp_path: Path) -> None:
    """`nbjobs run-notebook PATH -p NAME VALUE --url … --wait`, served by this process's server."""
    baseline = children()
    out_dir = tmp_path / "cli-runs"
    result = CliRunner().invoke(cli, [
        "run-notebook", str(SALES), "-p", "region", "APAC", "-p", "day", "2026-11-28",
        "--lock", "apac-report", "--output-dir", str(out_dir), "--url", nb.url, "--wait", "--timeout", "60",
        "--export", "html", "--hide-code", "--latest",
    ], env={"NBJOBS_SECRET": "test-secret"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    job_id = int(result.output.split("job ", 1)[1].split()[0])
    run = nb.job(job_id)
    assert isinstance(run, NotebookJob) and run.state is JobState.SUCCEEDED
    assert f"job {job_id} succeeded: {run.output_path}, {run.exports['html']}" in result.output
    report = run.exports["html"].read_text()
    assert "APAC" in report and "Daily sales report" in report  # outputs and text, no code:
    assert "REGIONS" not in report and "import random" not in report
    assert "REGIONS" in run.notebook().cells[3].source  # type: ignore[union-attr]  # the run keeps it
    # --latest: the run and its report copied to names a link can keep
    assert (out_dir / "sales.latest.html").read_text() == report
    assert (out_dir / "sales.latest.ipynb").read_bytes() == run.output_path.read_bytes()
    assert nb.codec.loads(run.record().result)["latest"] == [
        str(out_dir / "sales.latest.ipynb"), str(out_dir / "sales.latest.html")]
    assert run.record().options.lock == "apac-report"
    assert str(run.output_path) in result.output and run.output_path.parent == out_dir
    assert json.dumps(nb.codec.loads(run.record().result)["parameters"]) == json.dumps(
        {"region": "APAC", "day": "2026-11-28"})
    shown = CliRunner().invoke(cli, ["show", "--url", nb.url, str(job_id)],
                               env={"NBJOBS_SECRET": "test-secret"}, catch_exceptions=False).output
    assert f"result:\nthe executed notebook, saved at {run.output_path}" in shown
    assert "'cells'" not in shown  # not its JSON
    assert_no_kernel_left(baseline)
