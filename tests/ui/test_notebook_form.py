"""`nb.notebook_form(path)` and `nbjobs.notebook_parameters(path)`: real widgets, a real SQLite file,
real notebooks on disk (the runs themselves are `tests/integration/test_notebook_jobs.py`'s)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import nbjobs
from nbjobs import JobState, NotebookJob

PARAMETERS = (
    'region = "EMEA"  # sales region\n'
    "from datetime import date\n"
    "day: str = date.today().isoformat()\n"
    "top = 10\n"
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[nbjobs.Engine]:
    eng = nbjobs.connect(f"sqlite:///{tmp_path / 'jobs.db'}", secret="test-secret")  # no server: nothing runs
    yield eng
    eng.close()


def report(tmp_path: Path, parameters: str | None = PARAMETERS) -> Path:
    nb = new_notebook(cells=[new_markdown_cell("# Report")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if parameters is not None:
        nb.cells.append(new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    nb.cells.append(new_code_cell("print(region, day, top)"))
    path = tmp_path / "report.ipynb"
    nbformat.write(nb, path)
    return path


def stored_parameters(engine: nbjobs.Engine, job: NotebookJob) -> dict[str, object]:
    call = engine.codec.decode_call(job.record().payload)
    parameters: dict[str, object] = call.args[1]
    return parameters


def test_the_parameters_a_notebook_declares_are_a_frame(tmp_path: Path) -> None:
    frame = nbjobs.notebook_parameters(report(tmp_path))
    assert list(frame["name"]) == ["region", "day", "top"]
    assert list(frame["default"]) == ['"EMEA"', "date.today().isoformat()", "10"]
    assert list(frame["value"]) == ["EMEA", None, 10]  # a computed default has no value here
    assert list(frame["type"]) == [None, "str", None]
    assert list(frame["help"]) == ["sales region", None, None]
    assert nbjobs.notebook_parameters(report(tmp_path, None)).empty  # no parameters cell
    with pytest.raises(nbjobs.InvalidJobError, match="does not exist"):
        nbjobs.notebook_parameters(tmp_path / "missing.ipynb")


def test_the_form_runs_the_notebook_with_the_fields_that_changed(
    engine: nbjobs.Engine, tmp_path: Path
) -> None:
    path = report(tmp_path)
    form = engine.notebook_form(path, queue="reports", export="html")
    assert list(form.fields) == ["region", "day", "top"]
    assert form.fields["region"].value == '"EMEA"' and form.fields["region"].placeholder == "sales region"
    assert form.fields["day"].value == "date.today().isoformat()"
    form.fields["region"].value = "AMER"  # text: passed as the string
    form.fields["top"].value = "25"  # a literal: passed as the number
    form.run_button.click()
    [job] = form.jobs
    assert isinstance(job, NotebookJob) and job.state is JobState.ENQUEUED
    # `day` was left as it is: not passed, so the notebook computes it when it runs
    assert stored_parameters(engine, job) == {"region": "AMER", "top": 25}
    assert job.record().queue == "reports" and "html" in job.exports
    assert f"job {job.id} enqueued" in form.status.value
    # a value enqueue_notebook refuses: said in the form, nothing stored, the fields keep it
    form.fields["top"].value = "{1, 2}"
    assert form.run() is None
    assert "parameter &#x27;top&#x27; is a set" in form.status.value
    assert len(engine.jobs()) == 1 and form.fields["top"].value == "{1, 2}"
    assert "application/vnd.jupyter.widget-view+json" in form._repr_mimebundle_()


def test_a_notebook_without_parameters_gets_a_form_that_runs_it_as_it_is(
    engine: nbjobs.Engine, tmp_path: Path
) -> None:
    form = nbjobs.Engine.notebook_form(engine, report(tmp_path, None))
    assert form.fields == {} and "no cell tagged" in form.widget.children[0].value
    job = form.run()
    assert job is not None and stored_parameters(engine, job) == {}
