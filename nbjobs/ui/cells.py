"""What a job displays goes to the notebook cell that enqueued it, not to whichever cell runs now.

A job runs on a worker thread of the kernel's server, and IPython's `display()` (a DataFrame, a
figure shown with `plt.show()`, a widget) publishes with the kernel's current parent message: the
output used to land in the cell executing at that moment, an unrelated one. With `%load_ext nbjobs`,
each job enqueued in this kernel is noted with the cell it came from (the display publisher's parent
header in the enqueuing thread: the running cell, or for a job enqueued by a job, that job's cell),
and while the job runs its thread publishes under that header (ipykernel's `set_thread_parent`,
ipykernel 7): the frontend appends the output to the enqueuing cell, next to the job's widget.
Jobs this kernel did not enqueue (other kernels', scripts', ones stored before a restart), and
kernels without per-thread parents, keep IPython's behaviour. Printing is not affected: stdout and
stderr of a job are its captured output (`nbjobs.capture`). Matplotlib figures a job leaves open are
shown in its cell when it ends (`ui.figures`).
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from .. import client, context
from ..client import Job
from . import figures

#: Jobs remembered with their cell; the oldest are forgotten past this (their displays fall back).
REMEMBERED = 10_000

_cells: OrderedDict[tuple[str | None, int], dict[str, Any]] = OrderedDict()
_lock = threading.Lock()


def _publisher() -> Any:
    """The kernel's display publisher if it can route per thread, else None (a terminal IPython,
    an older ipykernel, no IPython at all)."""
    from IPython.core.interactiveshell import InteractiveShell

    if not InteractiveShell.initialized():
        return None
    pub = getattr(InteractiveShell.instance(), "display_pub", None)
    return pub if hasattr(pub, "set_thread_parent") else None


def note_cells(jobs: Sequence[Job]) -> None:
    """SUBMIT_HOOK: remember the cell these jobs were enqueued from."""
    pub = _publisher()
    header = getattr(pub, "parent_header", None) if pub is not None else None
    if not header or not jobs:
        return
    with _lock:
        for job in jobs:
            _cells[(job.client.store.database, job.id)] = header
            _cells.move_to_end((job.client.store.database, job.id))
        while len(_cells) > REMEMBERED:
            _cells.popitem(last=False)


@contextlib.contextmanager
def in_its_cell(ctx: context.JobContext) -> Iterator[None]:
    """RUN_HOOK: publish what the job displays under the header of the cell that enqueued it."""
    with _lock:
        header = _cells.get((ctx.database, ctx.id))
    pub = _publisher() if header is not None else None
    if pub is None:
        yield
        return
    token = pub.set_thread_parent(header)
    try:
        with figures.kept_for(ctx):  # its charts too, when it ends: not in the next cell to run
            yield
    finally:
        pub.reset_thread_parent(token)


def install() -> None:
    """Route displays of jobs to their cells from now on (idempotent)."""
    if note_cells not in client.SUBMIT_HOOKS:
        client.SUBMIT_HOOKS.append(note_cells)
    if in_its_cell not in context.RUN_HOOKS:
        context.RUN_HOOKS.append(in_its_cell)


def uninstall() -> None:
    with contextlib.suppress(ValueError):
        client.SUBMIT_HOOKS.remove(note_cells)
    with contextlib.suppress(ValueError):
        context.RUN_HOOKS.remove(in_its_cell)
    with _lock:
        _cells.clear()
