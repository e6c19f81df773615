"""Job rich display: HTML, plain repr, and the live ipywidgets widget updated from a background thread."""

from __future__ import annotations

import threading

import ipywidgets
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import nbjobs
from nbjobs import JobState
from nbjobs.ui import display
from tests.conftest import wait_for

gates: dict[str, threading.Event] = {}


def gated(name: str) -> str:
    ctx = nbjobs.current_job()
    ctx.set_progress(0.5, "halfway")
    print("working on", name)
    while not gates[name].wait(0.01):
        ctx.check_cancelled()
    return name.upper()


def test_html_and_repr_show_state_progress_and_output(engine: nbjobs.Engine) -> None:
    gates["html"] = threading.Event()
    engine.start_server(workers=1, poll_interval=0.05)
    job = engine.options(name="html job").enqueue(gated, "html")
    wait_for(lambda: "halfway" in job._repr_html_() and "working on html" in job._repr_html_())
    html = job._repr_html_()
    assert "processing" in html and "<progress" in html and "html job" in html
    assert repr(job) == f"<Job {job.id} html job [default] processing>"
    gates["html"].set()
    assert job.result(timeout=30) == "HTML"
    assert "succeeded" in job._repr_html_()


def test_live_widget_updates_until_the_job_is_final_then_stops(engine: nbjobs.Engine) -> None:
    gates["live"] = threading.Event()
    engine.start_server(workers=1, poll_interval=0.05)
    job = engine.enqueue(gated, "live")
    widget = display.live_widget(job)
    assert isinstance(widget.box, ipywidgets.VBox)
    wait_for(lambda: widget.bar.value == 0.5 and "halfway" in widget.label.value)
    wait_for(lambda: "working on live" in widget.output.value)
    assert widget.state is JobState.PROCESSING and not widget.finished.is_set()
    gates["live"].set()
    assert widget.finished.wait(30)
    assert widget.state is JobState.SUCCEEDED and widget.bar.bar_style == "success"
    wait_for(lambda: display.updater.active() == 0)  # the updater forgets finished jobs


def test_displaying_a_job_in_a_shell_shows_widget_html_and_text(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1, poll_interval=0.05)
    gates["shown"] = threading.Event()
    gates["shown"].set()
    job = engine.enqueue(gated, "shown")
    job.wait(30)
    shell = InteractiveShell.instance()
    shell.user_ns["shown_job"] = job
    with capture_output() as cap:
        shell.run_cell("shown_job").raise_error()
    (out,) = cap.outputs
    assert "application/vnd.jupyter.widget-view+json" in out.data
    assert "succeeded" in out.data["text/html"]
    assert out.data["text/plain"] == repr(job)
    shell.user_ns.pop("shown_job")


def fails(message: str) -> None:
    raise ValueError(message)


def test_a_view_of_many_jobs_counts_them_and_its_widget_follows_until_all_ended(
    engine: nbjobs.Engine,
) -> None:
    engine.start_server(workers=4, poll_interval=0.05)
    for name in ("sweep-a", "sweep-b"):
        gates[name] = threading.Event()
    runs = [engine.enqueue(gated, "sweep-a"), engine.enqueue(gated, "sweep-b"),
            engine.options(retries=0).enqueue(fails, "bad seed")]
    view = engine.watch([*runs, runs[0]])  # a job given twice counts once
    widget = display.live_jobs_widget(view)
    assert isinstance(widget.box, ipywidgets.HBox) and widget.bar.max == 3
    wait_for(lambda: view.counts() == {"processing": 2, "failed": 1})
    wait_for(lambda: widget.bar.value == 1 and "1/3 ended" in widget.label.value)
    assert widget.bar.bar_style == "danger" and not widget.finished.is_set()
    assert repr(view) == "<3 jobs: 2 processing, 1 failed>"
    gates["sweep-a"].set()
    gates["sweep-b"].set()
    assert widget.finished.wait(30)
    assert widget.bar.value == 3 and "3/3 ended" in widget.label.value
    assert view.counts() == {"succeeded": 2, "failed": 1}
    wait_for(lambda: display.updater.active() == 0)  # the updater forgets a view that has ended
    runs[2].delete()
    engine.store._tx(lambda conn: conn.exec_driver_sql(f"DELETE FROM nbjobs_jobs WHERE id = {runs[2].id}"))
    assert view.counts() == {"succeeded": 2, "gone": 1}


def test_displaying_a_view_in_a_shell_shows_widget_html_and_text(engine: nbjobs.Engine) -> None:
    jobs = [engine.enqueue(gated, "never-run") for _ in range(3)]  # no server: they stay enqueued
    view = engine.watch(jobs)
    shell = InteractiveShell.instance()
    shell.user_ns["sweep_view"] = view
    try:
        with capture_output() as cap:
            shell.run_cell("sweep_view").raise_error()
        (out,) = cap.outputs
        assert "application/vnd.jupyter.widget-view+json" in out.data
        assert "3 jobs" in out.data["text/html"] and "enqueued" in out.data["text/html"]
        assert out.data["text/plain"] == "<3 jobs: 3 enqueued>"
        assert display.updater.active() == 1  # it follows them until they end
    finally:
        shell.user_ns.pop("sweep_view")
        for job in jobs:
            job.delete()
        wait_for(lambda: display.updater.active() == 0)


def test_a_running_jobs_progress_says_how_long_is_left_at_its_pace(engine: nbjobs.Engine) -> None:
    from dataclasses import replace
    from datetime import timedelta

    record = engine.enqueue(gated, "eta").record()
    started = record.created_at
    running = replace(record, state=JobState.PROCESSING, started_at=started, progress=0.25,
                      progress_message="epoch 5 of 20")
    later = started + timedelta(seconds=30)
    assert display.progress_text(running, later) == "25% epoch 5 of 20 · ~1m30s left"  # 30 s per quarter
    assert display.progress_text(running) == "25% epoch 5 of 20"  # no clock, no estimate
    assert "left" not in display.progress_text(replace(running, progress=0.01), later)  # no pace yet
    assert "left" not in display.progress_text(running, started + timedelta(seconds=1))
    assert "left" not in display.progress_text(replace(running, state=JobState.SUCCEEDED), later)
    assert "left" not in display.progress_text(replace(running, progress=None), later)
