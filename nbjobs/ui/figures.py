"""Matplotlib figures a job draws are shown under the cell that enqueued it, once, when it ends.

In a kernel, matplotlib's inline backend draws every open figure when a cell finishes (its
post-execute flush) and closes them. A job that plots without `plt.show()` (`df.plot()`, then
return) had its chart appear under whatever cell the person ran next, and a cell finishing while
the job was still drawing showed the chart half made (and closed it under the job). While a job
enqueued from a cell runs (`kept_for`, inside `ui.cells`' routing to that cell), the figures pyplot
creates in its thread are noted as the job's (matplotlib's `figure.hooks`, 3.7 and later: every
`plt.figure`, `plt.subplots`, `df.plot()` …) and kept from the backend's flush (its list of open
figures, `Gcf.get_all_fig_managers`, leaves out running jobs' figures); when the job ends, those
still open are displayed, in its cell, and closed. pyplot's current figure is per job too
(`Gcf.get_active`): two jobs plotting at once, or a job and the notebook, never draw into each
other's figure. A job's own `plt.show()` shows its figures at once. Figures of the notebook's own
cells are the backend's, as before.

Matplotlib is never imported here: figures are noted once a job starts with matplotlib imported
(the notebook's `import matplotlib.pyplot as plt`); a job that imports pyplot itself for the first
time keeps matplotlib's behaviour for that run.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

from .. import context

log = logging.getLogger("nbjobs.ui")

#: How matplotlib finds the hook (`rcParams["figure.hooks"]` holds "module:function" names).
HOOK = f"{__name__}:note_figure"
_OWNER = "_nbjobs_job"
#: The job whose figures this thread is noting: (database, job id).
_noting: contextvars.ContextVar[tuple[str | None, int] | None] = contextvars.ContextVar(
    "nbjobs_figures_of", default=None)
_install_lock = threading.Lock()


def note_figure(figure: Any) -> None:
    """matplotlib figure hook: a figure made in a job's thread belongs to that job."""
    owner = _noting.get()
    if owner is not None:
        setattr(figure, _OWNER, owner)


@contextlib.contextmanager
def kept_for(ctx: context.JobContext) -> Iterator[None]:
    """Around a job whose displays go to its cell: its figures are shown there when it ends."""
    if not _watch():
        yield
        return
    owner = (ctx.database, ctx.id)
    token = _noting.set(owner)
    try:
        yield
    finally:
        _noting.reset(token)
        _show_and_close(owner)


def _watch() -> bool:
    """Note figures and keep them from other threads' flushes (once per process), if matplotlib is
    imported and new enough."""
    mpl = sys.modules.get("matplotlib")
    if mpl is None:
        return False
    try:
        hooks = list(mpl.rcParams["figure.hooks"])
    except KeyError:  # matplotlib before 3.7: no figure hooks
        return False
    with _install_lock:
        if HOOK not in hooks:
            mpl.rcParams["figure.hooks"] = [*hooks, HOOK]
        from matplotlib._pylab_helpers import Gcf

        if not getattr(Gcf, "_nbjobs_keeps", False):
            Gcf.get_all_fig_managers = classmethod(_own_managers)  # type: ignore[method-assign,assignment]
            Gcf.get_active = classmethod(_own_active)  # type: ignore[method-assign,assignment]
            Gcf._nbjobs_keeps = True  # type: ignore[attr-defined]
    return True


def _own_managers(cls: Any) -> list[Any]:
    """`Gcf.get_all_fig_managers` as this thread may see it: a running job's figures are its own
    (the backend's flush in the notebook's thread leaves them be, another job's `plt.show()` too)."""
    mine = _noting.get()
    return [m for m in cls.figs.values() if getattr(m.canvas.figure, _OWNER, None) == mine]


def _own_active(cls: Any) -> Any:
    """`Gcf.get_active` as this thread may see it: pyplot's current figure (`plt.gcf()`, `plt.plot`)
    is the last one this job (or, outside jobs, the notebook) made active, so two jobs plotting at
    once never draw into each other's figure or the notebook's."""
    mine = _noting.get()
    for manager in reversed(list(cls.figs.values())):
        if getattr(manager.canvas.figure, _OWNER, None) == mine:
            return manager
    return None


def _show_and_close(owner: tuple[str | None, int]) -> None:
    """Display and close the figures of `owner` still open (in its cell: the caller publishes this
    thread's displays there)."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:  # no pyplot, no figures of its making
        return
    try:
        from IPython.display import display
        from matplotlib._pylab_helpers import Gcf

        for manager in list(Gcf.figs.values()):
            figure = manager.canvas.figure
            if getattr(figure, _OWNER, None) == owner:
                display(figure)  # type: ignore[no-untyped-call]
                pyplot.close(figure)
    except Exception:  # a chart is not worth failing the job for
        log.exception("could not show the figures job %d left open", owner[1])
