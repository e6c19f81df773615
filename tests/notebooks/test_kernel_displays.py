"""In a real kernel: what a job displays goes to the cell that enqueued it, not the cell running now."""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager, start_new_kernel

from ..conftest import wait_for
from .execute import children

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[BlockingKernelClient]:
    baseline = children()
    env = {**os.environ, "NBJOBS_URL": f"sqlite:///{tmp_path / 'displays.db'}",
           "NBJOBS_HOME": str(tmp_path / "home")}
    km: KernelManager
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path))
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        wait_for(lambda: not children() - baseline, timeout=20)


def run(kc: BlockingKernelClient, code: str, seen: list[dict[str, Any]]) -> str:
    """Execute `code`, collect every iopub message until it is idle; its msg_id."""
    msg_id = kc.execute(code)
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=60)
        except queue.Empty:
            raise AssertionError(f"no idle status for {code!r}") from None
        seen.append(msg)
        if (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                and msg["parent_header"].get("msg_id") == msg_id):
            reply = kc.get_shell_msg(timeout=60)
            assert reply["content"]["status"] == "ok", reply["content"]
            return msg_id


def displays_of(seen: list[dict[str, Any]], marker: str) -> list[str]:
    """The parent msg_ids of display_data messages whose text holds `marker`."""
    return [m["parent_header"].get("msg_id") for m in seen
            if m["msg_type"] == "display_data" and marker in m["content"]["data"].get("text/plain", "")]


def test_a_job_display_goes_to_the_cell_that_enqueued_it(kernel: BlockingKernelClient) -> None:
    seen: list[dict[str, Any]] = []
    run(kernel, "%load_ext nbjobs\nimport threading\nfrom IPython.display import display\n"
                "go = threading.Event()\n"
                "def show_later(text):\n"
                "    go.wait(30)\n"
                "    display(text)\n"
                "    return text", seen)
    by_enqueue = run(kernel, "job = nbjobs.enqueue(show_later, 'shown by an enqueued job')", seen)
    by_cell_job = run(kernel, "%%job\ngo.wait(30)\ndisplay('shown by a cell job')", seen)
    # The jobs display while this later cell runs: before, their output landed here.
    later = run(kernel, "go.set()\nnbjobs.wait(nbjobs.jobs()['id'], timeout=30)", seen)
    assert displays_of(seen, "shown by an enqueued job") == [by_enqueue]
    assert displays_of(seen, "shown by a cell job") == [by_cell_job]
    assert later not in displays_of(seen, "shown by")


def test_a_jobs_notebook_tqdm_bar_shows_under_its_cell_and_is_its_progress(
        kernel: BlockingKernelClient) -> None:
    """`tqdm.auto` in a kernel is the widget bar (tqdm.notebook): it appears under the cell that
    enqueued the job, and the job's stored progress (the dashboard's, `jobs()`) follows it."""
    seen: list[dict[str, Any]] = []
    run(kernel, "%load_ext nbjobs\nimport threading\nfrom tqdm.auto import tqdm\n"
                "go, halfway = threading.Event(), threading.Event()\n"
                "def train(n):\n"
                "    for epoch in tqdm(range(n), desc='epochs', mininterval=0):\n"
                "        if epoch == n // 2:\n"
                "            halfway.set()\n"
                "            go.wait(30)\n"
                "    return n", seen)
    by_enqueue = run(kernel, "job = nbjobs.enqueue(train, 10)", seen)
    run(kernel, "import time\nassert halfway.wait(30)\ndeadline = time.monotonic() + 30\n"
                "while job.record().progress != 0.5 and time.monotonic() < deadline:\n"
                "    time.sleep(0.05)\n"
                "print('seen', job.record().progress, job.record().progress_message)\n"
                "go.set()\nprint('result', job.result(timeout=30))", seen)
    out = "".join(m["content"]["text"] for m in seen
                  if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")
    assert "seen 0.5 epochs: 5/10" in out and "result 10" in out
    widgets = [m["parent_header"].get("msg_id") for m in seen if m["msg_type"] == "display_data"
               and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]]
    assert widgets and set(widgets) == {by_enqueue}  # the bar, under the enqueuing cell


def images_of(seen: list[dict[str, Any]]) -> list[str]:
    """The parent msg_ids of the figures drawn (image/png displays)."""
    return [m["parent_header"].get("msg_id") for m in seen
            if m["msg_type"] == "display_data" and "image/png" in m["content"]["data"]]


def test_a_jobs_figures_are_its_own_and_show_under_its_cell_when_it_ends(
        kernel: BlockingKernelClient) -> None:
    """Matplotlib's inline backend draws the open figures when a cell ends: a job's chart (drawn
    without plt.show()) landed under whatever cell ran next, and two jobs plotting at once drew
    into one figure (pyplot's current figure was shared)."""
    seen: list[dict[str, Any]] = []
    run(kernel, "%load_ext nbjobs\nimport threading\nimport matplotlib.pyplot as plt\n"
                "both = threading.Barrier(2)\n"
                "def chart(points, first):\n"
                "    if not first:\n"
                "        both.wait(30)  # the first has plotted: its figure is pyplot's latest\n"
                "    plt.plot(points)\n"
                "    if first:\n"
                "        both.wait(30)\n"
                "    both.wait(30)  # both figures open\n"
                "    return len(plt.gca().lines)", seen)
    by_first = run(kernel, "first = nbjobs.enqueue(chart, [1, 3, 2], True)", seen)
    by_second = run(kernel, "second = nbjobs.enqueue(chart, [2, 1], False)", seen)
    by_cell_job = run(kernel, "%%job\nfig, ax = plt.subplots()\nax.bar(['a', 'b'], [1, 2])", seen)
    waiting = run(kernel, "nbjobs.wait(nbjobs.jobs()['id'], timeout=30)\n"
                          "print('lines', first.result(), second.result())", seen)
    own = run(kernel, "plt.plot([3, 2, 1])  # the notebook's own figure: the backend's, in this cell", seen)
    later = run(kernel, "print('open', plt.get_fignums())", seen)
    images = images_of(seen)
    assert [images.count(cell) for cell in (by_first, by_second, by_cell_job, own)] == [1, 1, 1, 1]
    assert waiting not in images and later not in images
    out = "".join(m["content"]["text"] for m in seen if m["msg_type"] == "stream")
    assert "lines 1 1" in out  # each job drew in a figure of its own
    assert "open []" in out  # every figure closed once shown
