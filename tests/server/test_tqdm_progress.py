"""tqdm bars inside jobs become the jobs' progress (threads and worker processes, on both
databases), and redrawn bars read once in the jobs' output."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm

import nbjobs
from nbjobs import tqdm_progress
from nbjobs.capture import as_shown

from ..conftest import wait_for

GATE = threading.Event()
AT_GATE = threading.Event()
LEFT_OPEN: list[Any] = []


def epochs(n_epochs: int, n_batches: int, stop_at: tuple[int, int] | None = None) -> str:
    for epoch in tqdm(range(n_epochs), desc="epochs", mininterval=0):
        for batch in auto_tqdm(range(n_batches), desc="batches", leave=False, mininterval=0):
            if (epoch, batch) == stop_at:
                AT_GATE.set()
                GATE.wait(30)
    return "trained"


def counting(n: int) -> int:
    with tqdm(desc="rows", mininterval=0) as bar:  # no total: a count, no fraction
        for _ in range(n):
            bar.update(1)
    return n


def leaves_a_bar_open() -> str:
    bar = tqdm(total=10, desc="half", mininterval=0)
    bar.update(5)
    LEFT_OPEN.append(bar)  # closed later, by someone else, after the job ended
    return "left"


def test_a_jobs_tqdm_bars_are_its_progress_nested_ones_as_one(engine: nbjobs.Engine) -> None:
    GATE.clear()
    AT_GATE.clear()
    engine.start_server(workers=2)
    try:
        job = engine.enqueue(epochs, 4, 10, stop_at=(1, 5))
        assert AT_GATE.wait(30)
        # epoch 2 of 4 begun (1 done) and 5 of its 10 batches done: 1/4 + 5/10 of a quarter
        record = wait_for(lambda: (r := job.record()).progress == 0.375 and r)
        assert record.progress_message == "epochs: 1/4 · batches: 5/10"
        running = engine.jobs(state="processing").set_index("id")
        assert "epochs: 1/4" in running.loc[job.id, "progress_message"]
    finally:
        GATE.set()
    assert job.result(timeout=30) == "trained"
    record = job.record()
    assert (record.progress, record.progress_message) == (1.0, "epochs: 4/4")  # the outer bar's end
    shown = job.logs()  # each bar as last drawn, not its every redraw
    assert "\r" not in shown and shown.count("epochs: 100%") == 1 and "batches" not in shown
    assert job.logs(raw=True).count("\r") > 20


def test_a_bar_without_a_total_counts_and_one_outside_jobs_is_left_alone(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    job = engine.enqueue(counting, 7)
    assert job.result(timeout=30) == 7
    record = job.record()
    assert (record.progress, record.progress_message) == (None, "rows: 7")
    with tqdm(range(3), desc="here", disable=False) as bar:  # this thread runs no job
        assert not hasattr(bar, "_nbjobs_job")
        list(bar)


def test_a_bar_closed_after_its_job_ended_writes_nothing(engine: nbjobs.Engine) -> None:
    LEFT_OPEN.clear()
    engine.start_server(workers=1)
    job = engine.enqueue(leaves_a_bar_open)
    assert job.result(timeout=30) == "left"
    before = job.record()
    assert before.progress == 0.5
    left = LEFT_OPEN.pop()  # moved on and closed in this thread, after the end (as a collected bar
    left.update(3)          # is): the finished job's row is not touched
    left.close()
    engine.progress_throttle.close()  # a write held back by the rate limit would be made now
    after = job.record()
    assert (after.progress, after.progress_message) == (before.progress, before.progress_message)


def test_tqdm_in_a_worker_process_job_is_its_progress(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    job = engine.options(executor="process").enqueue(epochs, 3, 2)
    assert job.result(timeout=60) == "trained"
    record = job.record()
    assert (record.progress, record.progress_message) == (1.0, "epochs: 3/3")


def test_installing_twice_wraps_once() -> None:
    assert tqdm_progress.install() and tqdm_progress.install()
    for method in (tqdm.__init__, tqdm.refresh, tqdm.close):
        original = method.__wrapped__  # wrapped: tqdm's own method inside
        assert not hasattr(original, "__wrapped__")  # and only once


def bar(n: float, total: float | None, desc: str = "") -> Any:
    return SimpleNamespace(n=n, total=total, desc=desc)


@pytest.mark.parametrize(("bars", "fraction", "message"), [
    ([bar(3, 10, "epochs")], 0.3, "epochs: 3/10"),
    ([bar(1, 4, "epochs"), bar(5, 10, "batches")], 0.375, "epochs: 1/4 · batches: 5/10"),
    ([bar(1, 4), bar(5, None, "rows")], 0.25, "1/4 · rows: 5"),  # nothing finer below a count
    ([bar(5, None, "rows"), bar(1, 2)], None, "rows: 5 · 1/2"),
    ([bar(2.5, 10, "MB: ")], 0.25, "MB: 2.5/10"),
    ([bar(12, 10, "over")], 1.0, "over: 12/10"),  # a bar driven past its total
])
def test_nested_bars_read_as_one(bars: list[Any], fraction: float | None, message: str) -> None:
    assert tqdm_progress.describe(bars) == (fraction, message)


@pytest.mark.parametrize(("text", "shown"), [
    ("plain\ntext\n", "plain\ntext\n"),
    ("\r 0%|  | 0/3\r33%|# | 1/3\r100%|##| 3/3\ndone\n", "100%|##| 3/3\ndone\n"),
    ("windows\r\nlines\r\n", "windows\nlines\n"),
    ("abcdef\rXY", "XYcdef"),  # overwritten from the start of the line, as a terminal does
    ("kept\r", "kept"),
    # tqdm's nested bars: the inner one drawn a line down, then the cursor back up (ESC [ A); an
    # inner bar that does not stay is blanked; the outer one ends the output
    ("outer 0/2\n\rinner 1/4\x1b[A\n\rinner 4/4\x1b[A\n\r         \x1b[A\router 1/2\router 2/2\n",
     "outer 2/2\n"),
    ("a\x1b[31mred\x1b[0m\n", "a\x1b[31mred\x1b[0m\n"),  # other escapes (colours) left as they are
])
def test_output_reads_as_a_terminal_shows_it(text: str, shown: str) -> None:
    assert as_shown(text) == shown
