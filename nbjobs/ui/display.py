"""How a Job looks in a notebook: static HTML, `%job` details, and a widget that updates while it runs.

The widget is refreshed by one shared background thread (never the kernel's thread) that polls the
jobs on display, faster while they run, and forgets each job once it is final (after a last
refresh), so an idle notebook costs nothing. Importing this module installs the hooks that
`Job._repr_html_` and `Job._ipython_display_` call.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from datetime import datetime
from typing import Any, TypeVar

from .. import client, gather
from ..capture import as_shown
from ..client import Job
from ..clock import utcnow
from ..gather import JobsView
from ..model import FINAL_STATES, JobRecord, JobState
from ..redact import Redactor, arguments_text, call_arguments

log = logging.getLogger("nbjobs.ui")

TAIL_LINES = 12
RESULT_CHARS = 4000  #: `%job` cuts a longer result repr or output tail (`job.result()`, `logs()` have all)
WAITING_EVERY = 4  #: refresh waiting (not running) jobs every 4th tick of the updater
VIEW_REST = 10.0  #: a view of many jobs rests this many times its last refresh's duration
COLORS = {
    JobState.SCHEDULED: "#6f42c1", JobState.AWAITING: "#6c757d", JobState.ENQUEUED: "#0d6efd",
    JobState.PROCESSING: "#fd7e14", JobState.SUCCEEDED: "#198754", JobState.FAILED: "#dc3545",
    JobState.DELETED: "#495057",
}


# -- pure rendering -----------------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


def elapsed(record: JobRecord, now: datetime) -> str:
    """Run time so far (or in total once finished); how long it has waited before it started."""
    if record.started_at is not None and record.state in (JobState.PROCESSING, *FINAL_STATES):
        end = record.finished_at if record.state.is_final and record.finished_at else now
        return format_seconds((end - record.started_at).total_seconds())
    if record.state is JobState.SCHEDULED and record.run_at is not None:
        return f"due in {format_seconds((record.run_at - now).total_seconds())}"
    return f"waiting {format_seconds((now - record.created_at).total_seconds())}"


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def badge(state: JobState) -> str:
    return (f'<span style="background:{COLORS[state]};color:white;border-radius:4px;'
            f'padding:1px 6px;font-size:0.9em">{state.value}</span>')


def progress_text(record: JobRecord, now: datetime | None = None) -> str:
    """"42% epoch 21 of 50 · ~3m10s left": the time left (with `now`, while it runs) at the pace so
    far, as tqdm estimates it, once there is a pace to go by (2 % done, and 2 s)."""
    parts = []
    if record.progress is not None:
        parts.append(f"{record.progress:.0%}")
    if record.progress_message:
        parts.append(record.progress_message)
    left = _time_left(record, now)
    if left is not None:
        parts.append(f"· ~{format_seconds(left)} left")
    return " ".join(parts)


def _time_left(record: JobRecord, now: datetime | None) -> float | None:
    done = record.progress
    if now is None or record.state is not JobState.PROCESSING or record.started_at is None or done is None:
        return None
    spent = (now - record.started_at).total_seconds()
    if not 0.02 <= done < 1 or spent < 2:
        return None
    return spent * (1 - done) / done


def title_html(record: JobRecord) -> str:
    name = html.escape(record.options.name or record.function)
    return (f"<b>Job {record.id}</b> {badge(record.state)} <code>{name}</code> "
            f'<span style="color:#6c757d">queue {html.escape(record.queue)} · attempt '
            f"{record.attempts}</span>")


def record_html(record: JobRecord, output: str, now: datetime) -> str:
    """A static card: state, progress, elapsed, error and output tail."""
    parts = [f"<div>{title_html(record)} · {html.escape(elapsed(record, now))}</div>"]
    if record.progress is not None or record.progress_message:
        value = "" if record.progress is None else f' value="{record.progress:.4f}"'
        parts.append(f'<div><progress max="1"{value} style="width:240px"></progress> '
                     f"{html.escape(progress_text(record, now))}</div>")
    if record.error_type:
        parts.append(f'<div style="color:#dc3545">{html.escape(record.error_type)}: '
                     f"{html.escape(record.error_message or '')}</div>")
    if output:
        parts.append('<pre style="max-height:12em;overflow:auto;margin:2px 0">'
                     f"{html.escape(tail(output))}</pre>")
    return "<div class=\"nbjobs-job\">" + "".join(parts) + "</div>"


def _output(job: Job, lines: int = TAIL_LINES) -> str:
    return as_shown("".join(text for _, _, text in job.client.store.read_logs(job.id, tail=lines * 4)))


def job_html(job: Job) -> str:
    """`Job._repr_html_`: one read of the job and its output tail."""
    record = job.client.store.get(job.id)
    if record is None:
        return f"<div>Job {job.id}: gone (expired or removed)</div>"
    return record_html(record, _output(job), utcnow())


def details_bundle(job: Job) -> dict[str, str]:
    """`%job ID`: state, history, output tail, and the result or the traceback (HTML and text)."""
    record = job.record()
    output = tail(_output(job, 40), 40)
    if len(output) > RESULT_CHARS:  # a few very long lines (a progress bar redrawn with \r)
        output = "…" + output[-RESULT_CHARS:]
    history = job.history()
    rows = "".join(
        f"<tr><td>{c.at:%Y-%m-%d %H:%M:%S}</td><td>{badge(c.state)}</td>"
        f"<td>{html.escape(c.reason)}</td></tr>" for c in history
    )
    call = call_text(job, record)
    text = [repr(job), f"call: {call}", f"attempts: {record.attempts} · elapsed: {elapsed(record, utcnow())}"]
    if record.progress is not None or record.progress_message:
        text.append(f"progress: {progress_text(record, utcnow())}")
    text += ["history (UTC):"]
    text += [f"  {c.at:%Y-%m-%d %H:%M:%S} {c.state.value:<10} {c.reason}" for c in history]
    parts = [f"<div>{title_html(record)} · {html.escape(elapsed(record, utcnow()))}</div>",
             f"<div><code>{html.escape(call)}</code></div>",
             f"<table><tr><th>at (UTC)</th><th>state</th><th>reason</th></tr>{rows}</table>"]
    if output:
        text += ["output (tail):", output]
        parts.append(f"<b>Output</b><pre>{html.escape(output)}</pre>")
    if record.state is JobState.SUCCEEDED:
        shown = result_text(job)
        text += ["result:", shown]
        parts.append(f"<b>Result</b><pre>{html.escape(shown)}</pre>")
    elif record.error_traceback or record.error_type:
        trace = record.error_traceback or f"{record.error_type}: {record.error_message}"
        hint = f"nbjobs.job({job.id}).run_here() runs it again in a cell, with its arguments, for %debug"
        text += ["error:", trace, hint]
        parts.append(f'<b>Error</b><pre style="color:#dc3545">{html.escape(trace)}</pre>'
                     f'<div style="color:#6c757d">{html.escape(hint)}</div>')
    return {"text/plain": "\n".join(text), "text/html": "".join(parts)}


def result_text(job: Job) -> str:
    """A succeeded job's result as `%job` and `nbjobs show` print it: a notebook run by where it is
    saved (not its JSON), anything else by its repr, cut at `RESULT_CHARS`."""
    if isinstance(job, client.NotebookJob):
        return f"the executed notebook, saved at {job.output_path}"
    try:
        shown = repr(job.result(timeout=0))
    except Exception as exc:  # a result this process cannot load (missing class, other key)
        return f"<result cannot be loaded here: {exc}>"
    if len(shown) > RESULT_CHARS:
        shown = (f"{shown[:RESULT_CHARS]}… ({len(shown):,} characters in all; "
                 f"nbjobs.job({job.id}).result() is the value)")
    return shown


def call_text(job: Job, record: JobRecord) -> str:
    """`module:function(a=1, password=***)`: the stored call, secrets masked (the dashboard's rules)."""
    arguments = call_arguments(job.client.codec, Redactor(), record.function, record.payload)
    if isinstance(arguments, str):  # why they cannot be shown (another secret, a damaged payload)
        return f"{record.function}(…)  [{arguments}]"
    return f"{record.function}({arguments_text(arguments)})"


# -- the live widget ------------------------------------------------------------------------------


class JobWidget:
    """State, progress bar, elapsed time and output tail of one job, refreshed while it runs."""

    def __init__(self, job: Job) -> None:
        import ipywidgets as w

        self.job = job
        self.title = w.HTML()
        self.bar = w.FloatProgress(min=0.0, max=1.0, value=0.0, layout=w.Layout(width="240px"))
        self.label = w.Label()
        self.output = w.HTML()
        self.box = w.VBox([self.title, w.HBox([self.bar, self.label]), self.output])
        self.state: JobState | None = None
        self.finished = threading.Event()
        self.refresh()

    def refresh(self) -> None:
        """Read the job once and update every part; marks the widget finished on a final state."""
        record = self.job.client.store.get(self.job.id)
        if record is None:
            self.title.value = f"<b>Job {self.job.id}</b>: gone (expired or removed)"
            self.finished.set()
            return
        self.state = record.state
        self.title.value = f"{title_html(record)} · {html.escape(elapsed(record, utcnow()))}"
        if record.progress is not None:
            self.bar.value = record.progress
        elif record.state is JobState.SUCCEEDED:
            self.bar.value = 1.0
        self.bar.bar_style = {JobState.SUCCEEDED: "success", JobState.FAILED: "danger"}.get(record.state, "")
        self.label.value = progress_text(record, utcnow()) or (record.error_type or "")
        out = tail(_output(self.job))
        self.output.value = (f'<pre style="max-height:12em;overflow:auto;margin:0">{html.escape(out)}</pre>'
                             if out else "")
        if record.state.is_final:
            self.finished.set()

    @property
    def busy(self) -> bool:
        """Refreshed on every tick (running), else on every `WAITING_EVERY`th."""
        return self.state is JobState.PROCESSING

    def mimebundle(self) -> dict[str, Any]:
        bundle: dict[str, Any] = dict(self.box._repr_mimebundle_() or {})
        bundle["text/plain"] = repr(self.job)
        bundle["text/html"] = job_html(self.job)  # for frontends without a widget manager
        return bundle

    def __repr__(self) -> str:
        return f"<widget of job {self.job.id}>"


def counts_html(counts: dict[str, int]) -> str:
    """Badges with the number of jobs in each state, in the states' order."""
    order = [s.value for s in JobState] + ["gone"]
    parts = []
    for name in sorted(counts, key=order.index):
        state = JobState(name) if name != "gone" else None
        label = badge(state) if state is not None else '<span style="color:#6c757d">gone</span>'
        parts.append(f"{label} {counts[name]}")
    return " ".join(parts)


def view_html(view: JobsView) -> str:
    """`JobsView._repr_html_`: one read of the jobs' states."""
    counts = view.counts()
    return f"<div><b>{len(set(j.id for j in view.jobs))} jobs</b> {counts_html(counts)}</div>"


class JobsWidget:
    """A bar of how many of the view's jobs ended, and their counts by state, refreshed until all
    have ended (one state query per 500 jobs a refresh)."""

    def __init__(self, view: JobsView) -> None:
        import ipywidgets as w

        self.view = view
        self.total = len({job.id for job in view.jobs})
        self.bar = w.IntProgress(min=0, max=max(1, self.total), value=0, layout=w.Layout(width="240px"))
        self.label = w.HTML()
        self.box = w.HBox([self.bar, self.label])
        self.finished = threading.Event()
        self.busy = True
        self._rest_until = 0.0
        self.refresh()

    def refresh(self) -> None:
        """Read the states once and update; a refresh that took t skips the ticks of the next
        `VIEW_REST` t, so a view of 20,000 jobs (70 ms a read) leaves the kernel's server alone."""
        started = time.monotonic()
        if started < self._rest_until:
            return
        counts = self.view.counts()
        self._rest_until = time.monotonic() + VIEW_REST * (time.monotonic() - started)
        ended = sum(n for name, n in counts.items() if name == "gone" or JobState(name).is_final)
        self.bar.value = ended
        self.bar.bar_style = ("danger" if counts.get(JobState.FAILED.value) else
                              "success" if ended == self.total else "")
        self.label.value = f"{ended}/{self.total} ended · {counts_html(counts)}"
        if ended == self.total:
            self.finished.set()

    def mimebundle(self) -> dict[str, Any]:
        bundle: dict[str, Any] = dict(self.box._repr_mimebundle_() or {})
        bundle["text/plain"] = repr(self.view)
        bundle["text/html"] = view_html(self.view)
        return bundle

    def __repr__(self) -> str:
        return f"<widget of {self.total} jobs>"


class _Updater:
    """One daemon thread refreshing every widget on display until its job is final."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._widgets: set[JobWidget | JobsWidget] = set()  # strong: ipywidgets keep no reference to us
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def add(self, widget: JobWidget | JobsWidget) -> None:
        if widget.finished.is_set():
            return
        with self._lock:
            self._widgets.add(widget)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="nbjobs-display", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        tick = 0
        while True:
            self._wake.wait(self.interval)
            tick += 1
            with self._lock:
                widgets = list(self._widgets)
                if not widgets:
                    self._thread = None
                    return
            for widget in widgets:
                if not widget.busy and tick % WAITING_EVERY:
                    continue  # a job that waits changes rarely: look at it less often
                try:
                    widget.refresh()
                except Exception:  # the engine was closed, the database went away: stop showing
                    log.debug("display refresh of %r failed", widget, exc_info=True)
                    widget.finished.set()
                if widget.finished.is_set():
                    with self._lock:
                        self._widgets.discard(widget)

    def active(self) -> int:
        with self._lock:
            return len(self._widgets)


updater = _Updater()


LiveWidget = TypeVar("LiveWidget", JobWidget, JobsWidget)


def _followed(widget: LiveWidget) -> LiveWidget:
    updater.add(widget)
    return widget


def _shown(widget: LiveWidget) -> LiveWidget:
    """Display the live widget, with HTML and text fallbacks for frontends without widgets."""
    from IPython.display import display

    display(widget.mimebundle(), raw=True)  # type: ignore[no-untyped-call]
    return widget


def live_widget(job: Job) -> JobWidget:
    """A widget for `job`, kept up to date in the background until the job is final."""
    return _followed(JobWidget(job))


def live_jobs_widget(view: JobsView) -> JobsWidget:
    """A widget for many jobs, kept up to date in the background until all have ended."""
    return _followed(JobsWidget(view))


def display_job(job: Job) -> JobWidget:
    """`Job._ipython_display_`."""
    return _shown(live_widget(job))


def display_view(view: JobsView) -> JobsWidget:
    """`JobsView._ipython_display_`."""
    return _shown(live_jobs_widget(view))


client.DISPLAY_HOOKS["html"] = job_html
client.DISPLAY_HOOKS["display"] = display_job
gather.VIEW_HOOKS["html"] = view_html
gather.VIEW_HOOKS["display"] = display_view
