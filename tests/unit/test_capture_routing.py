"""Thread-aware routing of sys.stdout/sys.stderr and logging by the job running in each thread."""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from nbjobs import capture, context
from nbjobs.clock import ManualClock
from nbjobs.context import JobContext

Streams = Callable[[], tuple[io.StringIO, io.StringIO]]


@pytest.fixture
def streams() -> Iterator[Streams]:
    """Call it in the test body to get fresh sys.stdout/sys.stderr (pytest re-sets its own capture
    streams between a fixture's setup and the test call, so a fixture cannot install them itself)."""
    saved = sys.stdout, sys.stderr

    def swap() -> tuple[io.StringIO, io.StringIO]:
        sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
        return sys.stdout, sys.stderr

    yield swap
    capture.uninstall()
    sys.stdout, sys.stderr = saved


def _ctx(job_id: int) -> JobContext:
    return JobContext(id=job_id, attempt=1, function="m:f", queue="default")


def test_writes_outside_jobs_reach_the_original_stream(streams: Streams) -> None:
    out, err = streams()
    capture.install()
    assert isinstance(sys.stdout, capture.StreamProxy)
    print("hello")
    print("oops", file=sys.stderr)
    assert out.getvalue() == "hello\n"
    assert err.getvalue() == "oops\n"


def test_a_proxy_over_a_closed_stream_is_dropped_quietly() -> None:
    """At exit the runner's or kernel's stream may close before a dropped proxy is collected; io's
    finalizer then flushed it into the closed stream ("Exception ignored … I/O operation on closed
    file", seen at the end of every test run on Python 3.13)."""
    original = io.TextIOWrapper(io.BytesIO())  # a file's stream (a StringIO flushes even closed)
    proxy = capture.StreamProxy(original, "stdout")
    original.close()
    proxy.flush()
    proxy.close()  # what io's finalizer does


def test_install_twice_does_not_stack_proxies(streams: Streams) -> None:
    out, _ = streams()
    capture.install()
    capture.install()
    assert isinstance(sys.stdout, capture.StreamProxy)
    assert sys.stdout.original is out  # type: ignore[attr-defined]
    capture.uninstall()
    assert sys.stdout is out


def test_job_threads_and_main_thread_print_concurrently_without_crosstalk(
    streams: Streams,
) -> None:
    out, _ = streams()
    clock = ManualClock()
    outputs = {i: capture.JobOutput(i, clock) for i in range(4)}
    barrier = threading.Barrier(5)

    def job(i: int) -> None:
        ctx = _ctx(i)
        token = context.activate(ctx)
        try:
            with capture.routed(ctx, outputs[i].write):
                barrier.wait()
                for k in range(300):
                    print(f"job {i} line {k}")
                    if k % 50 == 0:
                        print(f"job {i} err {k}", file=sys.stderr)
        finally:
            context.deactivate(token)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    barrier.wait()
    for k in range(300):
        print(f"main line {k}")
    for t in threads:
        t.join(10)

    assert out.getvalue() == "".join(f"main line {k}\n" for k in range(300))
    for i, output in outputs.items():
        chunks = output.take()
        stdout = "".join(text for _, stream, text in chunks if stream == "stdout")
        stderr = "".join(text for _, stream, text in chunks if stream == "stderr")
        assert stdout == "".join(f"job {i} line {k}\n" for k in range(300))
        assert stderr == "".join(f"job {i} err {k}\n" for k in range(0, 300, 50))


def test_log_records_inside_a_job_go_to_the_job(streams: Streams) -> None:
    _, err = streams()
    root = logging.getLogger()
    saved_handlers = root.handlers[:]
    root.handlers = []  # pytest's own log capture would hide the last-resort behaviour
    try:
        _check_log_routing(err)
    finally:
        root.handlers = saved_handlers


def _check_log_routing(err: io.StringIO) -> None:
    capture.install()
    output = capture.JobOutput(7, ManualClock())
    ctx = _ctx(7)
    token = context.activate(ctx)
    try:
        with capture.routed(ctx, output.write):
            logging.getLogger("user.code").warning("disk %s is full", "/data")
            # Another thread, no job: while our handler is on the root logger it must not mute
            # Python's last-resort output of warnings.
            other = threading.Thread(target=logging.getLogger("user.code").warning, args=("meanwhile",))
            other.start()
            other.join()
    finally:
        context.deactivate(token)
    # No job runs: the handler is gone, so logging.basicConfig() works again.
    assert logging.getLogger().handlers == []
    logging.getLogger("user.code").warning("outside")
    (chunk,) = output.take()
    assert chunk[1] == "log"
    assert "WARNING user.code: disk /data is full" in chunk[2]
    assert "meanwhile" not in chunk[2]
    assert err.getvalue() == "meanwhile\noutside\n"


def test_consecutive_writes_merge_and_output_is_truncated_at_the_limit() -> None:
    output = capture.JobOutput(1, ManualClock(), max_bytes=20)
    output.write("stdout", "a" * 10)
    output.write("stdout", "b" * 5)
    output.write("stderr", "c" * 3)
    output.write("stdout", "d" * 10)  # crosses the limit
    output.write("stdout", "e")  # dropped
    chunks = output.take()
    assert [(s, t) for _, s, t in chunks[:3]] == [
        ("stdout", "a" * 10 + "b" * 5), ("stderr", "ccc"), ("stdout", "dd"),
    ]
    assert chunks[3][1] == "stderr" and "truncated after 20 bytes" in chunks[3][2]
    assert len(chunks) == 4
    assert output.take() == []
