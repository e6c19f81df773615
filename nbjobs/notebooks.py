"""Pure logic of notebook jobs: parameter checks, papermill-style injection, output naming.

No files, kernels or storage here: the client validates with these functions at enqueue and the
notebook executor (`executors/notebook.py`) uses the same ones to run, so both agree on every rule.
"""

from __future__ import annotations

import ast
import copy
import keyword
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidJobError

if TYPE_CHECKING:  # nbformat (with jsonschema) loads on first use: `import nbjobs` stays fast
    from nbformat import NotebookNode

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
DEFAULT_OUTPUT_DIR = "nbjobs-runs"  #: next to the notebook, unless `output_dir=` says otherwise
DEFAULT_KERNEL = "python3"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_KINDS = "str, int, float, bool, None, or lists, tuples and dicts of them (dates as ISO strings)"


# --- parameters ---------------------------------------------------------------------------------


def _literal(value: Any, where: str) -> Any:
    """`value` as a Python literal (dates become ISO strings); InvalidJobError naming `where`."""
    kind = type(value)
    if value is None or kind in (str, int, bool):
        return value
    if kind is float:
        if not math.isfinite(value):
            raise InvalidJobError(f"{where} is {value!r}, which has no Python literal; pass a finite number "
                                  "or None")
        return value
    if kind in (datetime, date, time):
        return value.isoformat()
    if kind in (list, tuple):
        return kind(_literal(v, f"{where}[{i}]") for i, v in enumerate(value))
    if kind is dict:
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if type(k) not in (str, int, float, bool, type(None)):
                raise InvalidJobError(f"{where} has a key {k!r} of type {type(k).__name__}; dict keys must "
                                      "be str, int, float, bool or None")
            out[k] = _literal(v, f"{where}[{k!r}]")
        return out
    raise InvalidJobError(
        f"{where} is a {kind.__name__} ({value!r:.80}), which cannot be written into a notebook as a "
        f"Python literal; pass {_KINDS}, e.g. convert it with str(), int(), float() or .tolist()"
    )


def check_parameters(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate notebook parameters and return them normalised (dates as ISO strings).

    Every value must survive `ast.literal_eval(repr(value))`, because it is written into a code cell.
    """
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise InvalidJobError(f"parameters must be a dict of name → value, got {type(parameters).__name__}")
    checked: dict[str, Any] = {}
    for name, value in parameters.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise InvalidJobError(f"parameter name {name!r} is not a valid Python variable name")
        where = f"parameter {name!r}"
        literal = _literal(value, where)
        text = repr(literal)
        try:
            same = ast.literal_eval(text) == literal
        except (ValueError, SyntaxError, RecursionError):
            same = False
        if not same:
            raise InvalidJobError(f"{where} does not survive a round trip through its repr ({text:.80}); "
                                  f"pass {_KINDS}")
        checked[name] = literal
    return checked


def parameters_source(parameters: Mapping[str, Any]) -> str:
    """The code of the injected cell: one `name = literal` line per parameter."""
    lines = ["# Parameters (injected by nbjobs)"]
    lines += [f"{name} = {value!r}" for name, value in parameters.items()]
    return "\n".join(lines) + "\n"


def parse_cli_value(text: str) -> Any:
    """A `-p NAME VALUE` value from the command line: a Python literal if it is one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


# --- notebooks ----------------------------------------------------------------------------------


def parse_notebook(text: str, source: str) -> NotebookNode:
    """Parse and validate notebook JSON (nbformat 4); InvalidJobError saying what is wrong."""
    import nbformat

    try:
        nb = nbformat.reads(text, as_version=4)  # type: ignore[no-untyped-call]
    except Exception as exc:  # NotJSONError, jsonschema ValidationError, conversion errors
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidJobError(f"{source} is not a valid Jupyter notebook (nbformat 4): {first:.300}") from exc
    if not isinstance(nb, nbformat.NotebookNode) or "cells" not in nb:
        raise InvalidJobError(f"{source} is not a valid Jupyter notebook: it has no cells")
    return nb


def snapshot_text(nb: NotebookNode) -> str:
    """The notebook as a run will execute it, for storing with the job (`snapshot=True`): its code
    and text without the outputs it was saved with, which a run replaces anyway."""
    import nbformat

    copied = copy.deepcopy(nb)
    for cell in copied.cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return str(nbformat.writes(copied))  # type: ignore[no-untyped-call]


def read_notebook(path: str | Path) -> NotebookNode:
    """A saved run, read back (nbformat 4)."""
    import nbformat

    return nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call,no-any-return]


def tagged(cell: NotebookNode, tag: str) -> bool:
    return tag in (cell.get("metadata", {}).get("tags") or [])


def inject_parameters(nb: NotebookNode, parameters: Mapping[str, Any]) -> NotebookNode:
    """A copy of `nb` with a cell tagged `injected-parameters` after the `parameters` cell (or first).

    As papermill does: a previous injected cell is replaced, the notebook's own defaults stay in place
    and are overridden because the injected cell runs after them.
    """
    import nbformat

    out = copy.deepcopy(nb)
    out.cells = [c for c in out.cells if not tagged(c, INJECTED_TAG)]
    if not parameters:
        return out
    cell = nbformat.v4.new_code_cell(  # type: ignore[no-untyped-call]
        parameters_source(parameters), metadata={"tags": [INJECTED_TAG]}
    )
    if (out.get("nbformat"), out.get("nbformat_minor", 0)) < (4, 5):
        cell.pop("id", None)  # cell ids exist from nbformat 4.5 on; older files must not get one
    at = next((i + 1 for i, c in enumerate(out.cells) if tagged(c, PARAMETERS_TAG)), 0)
    out.cells.insert(at, cell)
    return out


def overwritten_parameters(nb: NotebookNode, parameters: Mapping[str, Any]) -> list[str]:
    """The parameters a notebook without a `parameters` cell assigns itself, in its own code: their
    injected values, set before its first cell, would be overwritten without a word."""
    if not parameters or any(tagged(c, PARAMETERS_TAG) for c in nb.cells):
        return []
    from IPython.core.inputtransformer2 import TransformerManager  # `%magic` lines as Python

    transform = TransformerManager().transform_cell  # type: ignore[no-untyped-call]
    assigned: set[str] = set()
    for cell in nb.cells:
        if cell.get("cell_type") != "code" or tagged(cell, INJECTED_TAG):
            continue
        try:
            body = ast.parse(transform(cell.get("source", ""))).body
        except SyntaxError:  # the run will say so
            continue
        for statement in body:  # the notebook's top level: what sets a parameter's name
            targets = (statement.targets if isinstance(statement, ast.Assign)
                       else [statement.target] if isinstance(statement, ast.AnnAssign) else [])
            assigned.update(node.id for target in targets for node in ast.walk(target)
                            if isinstance(node, ast.Name))
    return [name for name in parameters if name in assigned]


@dataclass(frozen=True)
class NotebookParameter:
    """One parameter a notebook declares in its `parameters` cell, as papermill's
    `inspect_notebook` reads them: its default as written, and its value when that is a literal."""

    name: str
    default: str  #: the default's source text (`date.today().isoformat()` too)
    value: Any = None  #: the default when it is a Python literal, else None (`literal` says which)
    literal: bool = False
    annotation: str | None = None  #: `region: str = "EMEA"` → "str"
    help: str | None = None  #: a comment after it on its line: `top = 10  # rows shown`


def declared_parameters(nb: NotebookNode) -> list[NotebookParameter]:
    """The top-level assignments of the cell tagged `parameters`, in order (none without that cell):
    what a form or `nbjobs.notebook_parameters` offers to change."""
    cell = next((c for c in nb.cells if c.get("cell_type") == "code" and tagged(c, PARAMETERS_TAG)), None)
    if cell is None:
        return []
    from IPython.core.inputtransformer2 import TransformerManager  # `%magic` lines as Python

    source = TransformerManager().transform_cell(cell.get("source", ""))  # type: ignore[no-untyped-call]
    try:
        body = ast.parse(source).body
    except SyntaxError as exc:
        raise InvalidJobError(f"the parameters cell does not parse: {exc}") from None
    lines = source.splitlines()
    found: dict[str, NotebookParameter] = {}
    for statement in body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, annotation = statement.targets[0], None
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, annotation = statement.target, ast.unparse(statement.annotation)
        else:
            continue
        if not isinstance(target, ast.Name) or statement.value is None:
            continue
        default = ast.get_source_segment(source, statement.value) or ast.unparse(statement.value)
        try:
            value, literal = ast.literal_eval(statement.value), True
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value, literal = None, False
        line = lines[(statement.end_lineno or statement.lineno) - 1]  # offsets count UTF-8 bytes
        rest = line.encode()[statement.end_col_offset or 0:].decode(errors="ignore")
        comment = rest.partition("#")[2].strip() or None
        found[target.id] = NotebookParameter(target.id, default, value, literal, annotation, comment)
    return list(found.values())


def undeclared_parameters(nb: NotebookNode, parameters: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """The parameters given that the notebook's `parameters` cell does not declare, each with the
    declared name it most resembles (or None); none when the notebook has no such cell to compare."""
    import difflib

    if not parameters:
        return []
    try:
        declared = [p.name for p in declared_parameters(nb)]
    except InvalidJobError:  # a cell that is not Python (another kernel's language): nothing to say
        return []
    if not declared:
        return []
    return [(name, next(iter(difflib.get_close_matches(name, declared, n=1)), None))
            for name in parameters if name not in declared]


def kernel_name(nb: NotebookNode, override: str | None = None) -> str:
    """The kernel to run: the option, else the notebook's kernelspec, else python3."""
    if override:
        return override
    spec = nb.get("metadata", {}).get("kernelspec") or {}
    name = spec.get("name")
    return name if isinstance(name, str) and name else DEFAULT_KERNEL


#: The nbconvert formats a run can be exported to, and the file each writes beside the run. (Not
#: `script`, whose extension depends on the kernel's language, nor the Qt ones, which need a display.)
EXPORT_EXTENSIONS = {
    "html": ".html", "slides": ".slides.html", "pdf": ".pdf", "webpdf": ".pdf", "markdown": ".md",
    "latex": ".tex", "rst": ".rst", "asciidoc": ".asciidoc", "python": ".py",
}


def check_export(export: str | Iterable[str] | None) -> tuple[str, ...]:
    """`export=` of a notebook job as nbconvert format names ("html", "pdf", …), checked at enqueue."""
    if export is None:
        return ()
    names = (export,) if isinstance(export, str) else tuple(export) if isinstance(export, Iterable) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise InvalidJobError(f"export must be a format name such as 'html' or a list of them, "
                              f"got {export!r}")
    unknown = [n for n in names if n not in EXPORT_EXTENSIONS]
    if unknown:
        raise InvalidJobError(f"cannot export a notebook run as {', '.join(map(repr, unknown))}; "
                              f"the formats are {', '.join(EXPORT_EXTENSIONS)}")
    if {"pdf", "webpdf"} <= set(names):
        raise InvalidJobError("export 'pdf' (LaTeX) or 'webpdf' (Chromium), not both: they write the "
                              "same file")
    return tuple(dict.fromkeys(names))


def check_flag(name: str, value: object) -> bool:
    """A yes/no option of a notebook job (`hide_code`, `latest`): a bool, not a truthy stand-in."""
    if not isinstance(value, bool):
        raise InvalidJobError(f"{name} must be True or False, got {value!r}")
    return value


def check_hide_code(hide_code: object, formats: tuple[str, ...]) -> bool:
    """`hide_code=` of a notebook job: a bool, for exports that can leave the code out."""
    hidden = check_flag("hide_code", hide_code)
    if hidden and not formats:
        raise InvalidJobError("hide_code applies to the reports a run is exported as: add export='html' "
                              "(or another format); the saved run itself always keeps its code")
    if hidden and "python" in formats:
        raise InvalidJobError("export 'python' without its code would be empty: export it separately, "
                              "without hide_code")
    return hidden


def latest_path(run: Path) -> Path:
    """Where a successful run is copied with `latest=True`: `report.12.ipynb` → `report.latest.ipynb`
    (and its exports beside it, `report.latest.html`): a name that a link or a reader can keep."""
    stem, _, _ = run.stem.rpartition(".")
    return run.with_name(f"{stem}.{LATEST}{run.suffix}")


def export_path(run: Path, export: str) -> Path:
    """Where a run's export is written: beside it, `report.12.ipynb` → `report.12.html`."""
    return run.with_name(run.stem + EXPORT_EXTENSIONS[export])


#: The name part that stands for the job id in the copies of the latest successful run.
LATEST = "latest"


def output_path(notebook: str | Path, output_dir: str | Path | None, job_id: int | str) -> Path:
    """Where a run is saved: `<output_dir>/<name>.<job id>.ipynb` (default dir: nbjobs-runs beside it)."""
    src = Path(notebook)
    folder = Path(output_dir) if output_dir is not None else src.parent / DEFAULT_OUTPUT_DIR
    return folder / f"{src.stem}.{job_id}.ipynb"


def strip_ansi(text: str) -> str:
    """Kernel tracebacks carry terminal colour codes; logs and error messages should not."""
    return _ANSI.sub("", text)
