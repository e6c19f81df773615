"""`nb.notebook_form("report.ipynb")`: a form that runs a parameterised notebook as a job.

One field per parameter the notebook declares in its `parameters` cell (`notebooks.declared_parameters`),
filled with the default as written; Run enqueues the notebook with the fields that were changed, each
read as the command line reads `-p NAME VALUE` (a Python literal if it is one, else the text). A field
left as it is passes nothing, so a default the notebook computes (`day = date.today().isoformat()`)
is computed when it runs. What `enqueue_notebook` refuses (a bad value, a missing file) is shown in the
form, nothing is stored, and the fields keep what was typed. Each run appears under the form as the
job's live view. The same as jupyter-scheduler's "create job" dialog, in the notebook itself.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from ..errors import NbJobsError
from ..executors.notebook import read_parameters
from ..notebooks import NotebookParameter, parse_cli_value

if TYPE_CHECKING:
    from ..client import NotebookJob
    from ..engine import Engine


class NotebookForm:
    """The form (`.widget`), the jobs it started (`.jobs`), and its fields by parameter (`.fields`)."""

    def __init__(self, engine: Engine, path: str | Path, **run_options: Any) -> None:
        self.engine = engine
        self.path = Path(path)
        self.run_options = run_options
        self.parameters: Sequence[NotebookParameter] = read_parameters(self.path)
        self.jobs: list[NotebookJob] = []
        self.fields = {p.name: self._field(p) for p in self.parameters}
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.run_button.on_click(lambda _button: self.run())
        self.status = w.HTML()
        self.runs = w.Output()
        title = w.HTML(f"<b>{html.escape(self.path.name)}</b>" + (
            "" if self.parameters else " <i>(no cell tagged 'parameters': it runs as it is)</i>"))
        self.widget = w.VBox([title, *self.fields.values(), w.HBox([self.run_button, self.status]),
                              self.runs])

    @staticmethod
    def _field(parameter: NotebookParameter) -> w.Text:
        hint = " ".join(part for part in (parameter.annotation, parameter.help) if part)
        field = w.Text(value=parameter.default, description=parameter.name, placeholder=hint,
                       tooltip=hint or parameter.name, layout=w.Layout(width="480px"),
                       style={"description_width": "140px"})
        return field

    def values(self) -> dict[str, Any]:
        """The parameters to pass: the fields changed from their default, read as literals or text."""
        return {p.name: parse_cli_value(self.fields[p.name].value) for p in self.parameters
                if self.fields[p.name].value.strip() != p.default.strip()}

    def run(self) -> NotebookJob | None:
        """Enqueue the notebook with the changed fields; None (and the reason shown) if refused."""
        try:
            job = self.engine.enqueue_notebook(self.path, self.values(), **self.run_options)
        except NbJobsError as exc:
            self.status.value = f'<span style="color:#b00020">{html.escape(str(exc))}</span>'
            return None
        self.jobs.append(job)
        self.status.value = f"job {job.id} enqueued: {html.escape(str(job.output_path))}"
        with self.runs:  # the job's live view, under the form
            from IPython.display import display

            display(job)  # type: ignore[no-untyped-call]
        return job

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """Shown as its widget in a notebook."""
        return self.widget._repr_mimebundle_(**kwargs)
