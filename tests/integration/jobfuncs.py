"""Job functions for tests that run jobs in other processes (importable as tests.integration.jobfuncs).

Functions take file paths rather than sharing memory, because they run in `nbjobs server` processes
and worker processes: each execution appends one line to a file, which the test then counts.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def record(path: str, tag: int) -> int:
    """Append `tag pid` to `path` (O_APPEND: one line per write, atomically) and return the tag."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return tag


def noop() -> None:
    """The benchmark's job: nothing at all."""


def hold(path: str, release: str, tag: int, limit: float = 60.0) -> int:
    """Record a start line, wait until `release` exists, then record an end line."""
    record(path, tag)
    deadline = time.monotonic() + limit
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} did not appear within {limit}s")
        time.sleep(0.01)
    record(path + ".done", tag)
    return tag


def print_then_hold(release: str, limit: float = 60.0) -> str:
    """Print a line, wait until `release` exists (or sleep out `limit` for a timeout to end it),
    then print another."""
    print("working on it")
    print("a warning", file=sys.stderr)
    deadline = time.monotonic() + limit
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    print("done")
    return "held"


def whoami() -> int:
    return os.getpid()


def shout(text: str) -> str:
    print(text)
    print("to stderr", file=sys.stderr)
    return text.upper()


def kill_self() -> None:
    """Die the way an out-of-memory kill looks: SIGKILL, no Python cleanup."""
    os.kill(os.getpid(), 9)


def write_pid_and_sleep(path: str, seconds: float) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)


def _square(x: int) -> int:
    return x * x


def pool_sum(n: int) -> int:
    """Sum of squares computed by a multiprocessing Pool and a ProcessPoolExecutor of the job's own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with multiprocessing.Pool(2) as pool:
        by_pool = sum(pool.map(_square, range(n)))
    with ProcessPoolExecutor(2) as executor:
        by_executor = sum(executor.map(_square, range(n)))
    assert by_pool == by_executor
    return by_pool


def pool_pids_then_sleep(path: str, seconds: float) -> None:
    """Keep a Pool's two workers busy sleeping (busy: they do not notice this process die, as idle
    ones do), write their pids to `path`, and sleep too (to be stopped by a timeout)."""
    import multiprocessing

    pool = multiprocessing.Pool(2)
    pool.map_async(time.sleep, [seconds, seconds], chunksize=1)
    Path(path).write_text(" ".join(str(p.pid) for p in multiprocessing.active_children()))
    time.sleep(seconds)
    pool.terminate()


def hog_gil(path: str, n: int) -> int:
    """Signal the start in `path`, then hold the GIL in one C call (`sum(range(n))`)."""
    Path(path).write_text("started")
    return sum(range(n))


def fail_with(exc_name: str) -> None:
    raise {"ValueError": ValueError, "KeyError": KeyError}[exc_name]("planned failure")


async def async_whoami(x: int) -> tuple[int, int]:
    import asyncio

    await asyncio.sleep(0)
    return 2 * x, os.getpid()


def add_pairs(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """Adds the values of two (value, pid) results."""
    return a[0] + b[0], os.getpid()


def exits(code: int) -> None:
    sys.exit(code)


class LibraryAbort(BaseException):
    """A library's own BaseException, not an Exception."""


def aborts() -> None:
    raise LibraryAbort("abort in a worker process")


def retry_once(marker: str) -> str:
    """Ask to be retried the first time (leaving `marker`), succeed the next (from a worker process)."""
    import nbjobs

    if not Path(marker).exists():
        Path(marker).write_text("asked")
        raise nbjobs.Retry(after=0.05, reason="not yet")
    return f"ran in {os.getpid()}"



def fan_out(n: int, executor: str) -> list[int]:
    """Enqueue `n` jobs that report their pid and gather them: [own pid, their pids…]. In a worker
    process, `nbjobs.enqueue` acts on the server's database through a client engine (no server)."""
    import nbjobs
    from nbjobs import default

    kids = [nbjobs.options(executor=executor).enqueue(whoami) for _ in range(n)]
    pids = nbjobs.results(kids, timeout=20)
    assert default.current_default() is None  # no default engine (and no server) in the child
    assert nbjobs.current_job().engine.server is None
    return [os.getpid(), *pids]


def fan_out_here(n: int) -> dict[str, object]:
    """`fan_out` for an `nbjobs server` process: what the job's `nbjobs.enqueue` reached."""
    import nbjobs
    from nbjobs import default

    kids = [nbjobs.enqueue(whoami) for _ in range(n)]
    return {"pid": os.getpid(), "kids": nbjobs.results(kids, timeout=20),
            "default_engine": default.current_default() is not None,
            "url": nbjobs.current_job().engine.url}


def gather_noops(n: int) -> int:
    """Fan out `n` no-op jobs from inside a job and wait for them all (benchmarks/fan_out.py)."""
    import nbjobs

    return len(nbjobs.results(nbjobs.enqueue_many(noop, [()] * n)))


_KEPT: list[bytes] = []  #: what `keep_memory` leaves behind in its worker process, as a leak would


def keep_memory(mb: int) -> int:
    """Leave `mb` MB allocated (and touched) in this process; its pid."""
    _KEPT.append(b"x" * (mb * 1_000_000))
    return os.getpid()


def echo(value: object) -> object:
    return value


def enqueue_echo(value: object) -> int:
    """Enqueue `echo(value)` from inside a job (on its server's database); the new job's id."""
    import nbjobs

    return nbjobs.enqueue(echo, value).id
