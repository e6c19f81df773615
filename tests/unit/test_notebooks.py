"""Pure notebook-job logic: parameter literals, papermill-style injection, names of saved runs."""

from __future__ import annotations

import ast
import json
from datetime import UTC, date, datetime
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from nbjobs import InvalidJobError
from nbjobs.notebooks import (
    INJECTED_TAG,
    check_parameters,
    declared_parameters,
    inject_parameters,
    kernel_name,
    output_path,
    overwritten_parameters,
    parameters_source,
    parse_cli_value,
    parse_notebook,
    strip_ansi,
    undeclared_parameters,
)


def _notebook(with_parameters_cell: bool = True) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [new_markdown_cell("# title")]
    if with_parameters_cell:
        nb.cells.append(new_code_cell("region = 'ALL'", metadata={"tags": ["parameters"]}))
    nb.cells.append(new_code_cell("print(region)"))
    return nb


def test_literals_pass_and_round_trip() -> None:
    params = {"s": "EMEA", "i": 3, "f": 1.5, "b": True, "n": None, "l": [1, "a", [2.5]],
              "t": (1, 2), "d": {"k": [1, {"x": None}], 3: "three"}}
    checked = check_parameters(params)
    assert checked == params
    for value in checked.values():
        assert ast.literal_eval(repr(value)) == value


def test_dates_become_iso_strings() -> None:
    checked = check_parameters({"day": date(2026, 11, 27),
                                "at": datetime(2026, 11, 27, 7, 0, tzinfo=UTC)})
    assert checked == {"day": "2026-11-27", "at": "2026-11-27T07:00:00+00:00"}


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"when": object()}, "parameter 'when'"),
        ({"rows": [1, {2, 3}]}, "parameter 'rows'[1]"),
        ({"x": float("nan")}, "parameter 'x'"),
        ({"cfg": {"k": Path("/tmp")}}, "parameter 'cfg'['k']"),
        ({"cfg": {(1, 2): 1}}, "parameter 'cfg' has a key"),
        ({"not valid": 1}, "'not valid' is not a valid Python variable name"),
        ({"class": 1}, "'class' is not a valid Python variable name"),
    ],
)
def test_bad_parameters_are_refused_naming_the_parameter(params: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidJobError) as info:
        check_parameters(params)
    assert named in str(info.value)


def test_parameters_must_be_a_mapping() -> None:
    with pytest.raises(InvalidJobError, match="must be a dict"):
        check_parameters([("a", 1)])  # type: ignore[arg-type]


def test_injected_cell_goes_after_the_parameters_cell_and_is_tagged() -> None:
    nb = _notebook()
    out = inject_parameters(nb, {"region": "EMEA", "n": 2})
    assert [c.source for c in nb.cells] == ["# title", "region = 'ALL'", "print(region)"]  # input untouched
    assert len(out.cells) == 4
    injected = out.cells[2]
    assert injected.cell_type == "code"
    assert injected.metadata["tags"] == [INJECTED_TAG]
    assert "region = 'EMEA'\nn = 2\n" in injected.source
    nbformat.validate(out)


def test_without_a_parameters_cell_the_injected_cell_comes_first() -> None:
    out = inject_parameters(_notebook(with_parameters_cell=False), {"region": "EMEA"})
    assert out.cells[0].metadata["tags"] == [INJECTED_TAG]
    assert out.cells[1].source == "# title"


def test_parameters_a_notebook_without_a_parameters_cell_assigns_itself_are_named() -> None:
    """Injected before its first cell, they would be overwritten by its own code without a word."""
    nb = _notebook(with_parameters_cell=False)
    nb.cells[1:1] = [
        new_code_cell("%matplotlib inline\nregion, (limit, other) = 'ALL', (5, 6)\nscale: float = 2.0"),
        new_code_cell("def f():\n    since = 1  # inside a function: not the notebook's name\nmonth += 1"),
        new_code_cell("this is not python"),  # the run says so; no guess here
    ]
    given = {"region": "EMEA", "limit": 3, "scale": 1.0, "since": "2026-01-01", "month": 5}
    assert overwritten_parameters(nb, given) == ["region", "limit", "scale"]
    assert overwritten_parameters(_notebook(), given) == []  # a parameters cell: set right after it
    assert overwritten_parameters(nb, {}) == []


def test_a_previous_injected_cell_is_replaced_not_stacked() -> None:
    once = inject_parameters(_notebook(), {"region": "EMEA"})
    twice = inject_parameters(once, {"region": "APAC"})
    injected = [c for c in twice.cells if INJECTED_TAG in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "'APAC'" in injected[0].source


def test_old_notebooks_without_cell_ids_get_none() -> None:
    nb = _notebook()
    nb.nbformat_minor = 4
    for cell in nb.cells:
        cell.pop("id")
    out = inject_parameters(nb, {"region": "EMEA"})
    assert all("id" not in c for c in out.cells)
    nbformat.validate(out)


def test_source_is_valid_python_assigning_each_parameter() -> None:
    source = parameters_source({"a": [1, 2], "b": "x'y\"z"})
    namespace: dict[str, object] = {}
    exec(compile(source, "<injected>", "exec"), namespace)
    assert namespace["a"] == [1, 2] and namespace["b"] == "x'y\"z"


def test_output_path_default_and_configured() -> None:
    expected = Path("/data/reports/nbjobs-runs/sales.42.ipynb")
    assert output_path("/data/reports/sales.ipynb", None, 42) == expected
    assert output_path("/data/reports/sales.ipynb", "/runs", 7) == Path("/runs/sales.7.ipynb")


def test_kernel_name_option_then_metadata_then_python3() -> None:
    nb = _notebook()
    assert kernel_name(nb) == "python3"
    nb.metadata["kernelspec"] = {"name": "ir", "display_name": "R"}
    assert kernel_name(nb) == "ir"
    assert kernel_name(nb, "python3") == "python3"


def test_cli_values_are_literals_when_they_can_be() -> None:
    assert parse_cli_value("3") == 3
    assert parse_cli_value("2.5") == 2.5
    assert parse_cli_value("True") is True
    assert parse_cli_value("[1, 2]") == [1, 2]
    assert parse_cli_value("EMEA") == "EMEA"
    assert parse_cli_value("2026-11-27") == "2026-11-27"
    assert parse_cli_value("'quoted'") == "quoted"


def test_parse_notebook_says_what_is_wrong() -> None:
    nb = parse_notebook(json.dumps(nbformat.v4.new_notebook()), "ok.ipynb")
    assert nb.cells == []
    with pytest.raises(InvalidJobError, match=r"x\.ipynb is not a valid Jupyter notebook.*JSON"):
        parse_notebook("{not json", "x.ipynb")
    with pytest.raises(InvalidJobError, match=r"y\.ipynb is not a valid Jupyter notebook"):
        parse_notebook('{"nbformat": 4, "nbformat_minor": 5, "cells": [{"cell_type": "code"}]}', "y.ipynb")


def test_strip_ansi() -> None:
    assert strip_ansi("\x1b[0;31mValueError\x1b[0m: boom") == "ValueError: boom"


def test_declared_parameters_are_read_from_the_parameters_cell_as_written() -> None:
    source = (
        "%matplotlib inline\n"  # a magic line does not stop the reading
        'tag = "#x"  # a hash in the value, then the help\n'
        'région: str = "é"  # zone é\n'
        "limit = 10; ratio = 0.5\n"
        "start = date.today()\n"
        "a, b = 1, 2\n"  # several names at once: not offered
        "c = d = 3\n"
        "tag = '#y'\n"  # assigned again: the last one is the default
    )
    cell = new_code_cell(source, metadata={"tags": ["parameters"]})
    nb = new_notebook(cells=[new_code_cell("x = 1"), cell])
    found = {p.name: p for p in declared_parameters(nb)}
    assert list(found) == ["tag", "région", "limit", "ratio", "start"]
    assert (found["tag"].default, found["tag"].value, found["tag"].help) == ("'#y'", "#y", None)
    assert (found["région"].annotation, found["région"].help, found["région"].value) == ("str", "zone é", "é")
    assert (found["limit"].value, found["ratio"].value) == (10, 0.5)
    assert (found["start"].default, found["start"].literal, found["start"].value) == (
        "date.today()", False, None)
    assert declared_parameters(new_notebook(cells=[new_code_cell("x = 1")])) == []  # no such cell
    broken = new_notebook(cells=[new_code_cell("x = (", metadata={"tags": ["parameters"]})])
    with pytest.raises(InvalidJobError, match="the parameters cell does not parse"):
        declared_parameters(broken)


def test_undeclared_parameters_name_their_near_miss_and_need_a_parameters_cell() -> None:
    cell = new_code_cell('region = "EMEA"\nday = "2026-11-27"', metadata={"tags": ["parameters"]})
    nb = new_notebook(cells=[cell])
    given = {"regoin": 1, "day": 2, "zzz": 3}
    assert undeclared_parameters(nb, given) == [("regoin", "region"), ("zzz", None)]
    untagged = new_notebook(cells=[new_code_cell("x = 1")])
    assert undeclared_parameters(untagged, {"y": 1}) == []  # no parameters cell: nothing to compare
    r_cell = new_code_cell('days <- 1:7', metadata={"tags": ["parameters"]})  # R: no Python
    assert undeclared_parameters(new_notebook(cells=[r_cell]), {"y": 1}) == []  # not Python: no word


def test_a_running_notebook_is_saved_when_it_changed_and_a_slow_save_spaces_the_next(tmp_path: Path) -> None:
    from nbjobs.executors.notebook import CHECKPOINT_COST, CHECKPOINT_SECONDS, _Checkpoint

    readings = iter([0.0, 1.0, 4.0, 10.0, 61.0, 61.01, 62.0])
    out = tmp_path / "run.ipynb"
    saver = _Checkpoint(new_notebook(cells=[new_code_cell("x = 1")]), out, clock=lambda: next(readings))
    saver.maybe_save()  # nothing changed yet: no file, and the clock is read once
    assert not out.exists()
    saver.mark()
    saver.maybe_save()  # the first change is saved at once; the save took 3 s (a large notebook)
    assert saver.saves == 1 and out.exists() and saver.next_save == 1.0 + CHECKPOINT_COST * 3.0
    saver.mark()
    saver.maybe_save()  # at 10 s: changed, but within 20 times that save's duration
    assert saver.saves == 1
    saver.maybe_save()  # at 61 s: saved; a quick save spaces the next by CHECKPOINT_SECONDS only
    assert saver.saves == 2 and saver.next_save == 61.0 + CHECKPOINT_SECONDS
    saver.maybe_save()  # unchanged since: not saved again
    assert saver.saves == 2
    assert nbformat.read(out, as_version=4).cells[0].source == "x = 1"
