"""Waiting for many jobs at once: `wait`, `as_completed` and `results`, as `concurrent.futures` has.

A notebook fans out (`[nb.enqueue(fit, seed=s) for s in range(100)]`, `enqueue_many`) and gathers.
Calling `job.result()` on each in turn works, but blocks on the slowest first, cannot stop at the
first failure, and asks the database once per job on every poll. Here one query reads the state of
every pending job per round: local completions wake the round at once (the in-process server's
notifier), jobs finished by other servers are seen by polling that starts at 2 ms and backs off to
0.5 s, and falls back to 2 ms whenever a round sees progress, so a stream of completions elsewhere
is followed closely.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ALL_COMPLETED as ALL_COMPLETED
from concurrent.futures import FIRST_COMPLETED as FIRST_COMPLETED
from concurrent.futures import FIRST_EXCEPTION as FIRST_EXCEPTION
from contextlib import closing
from typing import Any, NamedTuple

import pandas as pd

from . import context
from .client import Client, Job, check_timeout, display_via, html_via, refuse_waiting_for_itself
from .errors import InvalidJobError, JobFailedError, JobNotFoundError, ResultTimeoutError
from .model import FINAL_STATES, JobState

#: The `return_when` values, the same strings as `concurrent.futures`' constants.
RETURN_WHEN = (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION)
#: Ids per state query (a bound on SQL parameters, well under every driver's limit).
_CHUNK = 500
_FIRST_DELAY = 0.002
_LONGEST_DELAY = 0.5
#: After a round that took t seconds, the next one starts no sooner than this many t later (real
#: time, as the dispatcher's pacing): gathering 20,000 jobs from the kernel whose server runs them
#: otherwise spends the GIL and the database on state queries, and the server drains 4x slower.
_SPACING = 4.0


class DoneAndPending(NamedTuple):
    """What `wait` returns: the jobs that are final and those that are not, each in the order given."""

    done: list[Job]
    pending: list[Job]


def jobs_of(client: Client, jobs: Any) -> list[Job]:
    """Jobs from Jobs, ids or a `jobs()` frame, each checked to be of this database, in order."""
    if isinstance(jobs, int | str | Job):
        raise InvalidJobError(
            "expected several jobs (a list of Jobs or ids, or a jobs() frame); for one job use "
            "job.wait() or job.result()"
        )
    if isinstance(jobs, pd.DataFrame):
        if "id" not in jobs.columns:
            raise InvalidJobError("a frame of jobs needs an `id` column, as `jobs()` returns")
        jobs = jobs["id"].tolist()
    if not isinstance(jobs, Iterable):
        raise InvalidJobError(f"expected a list of jobs or job ids, got {type(jobs).__name__}")
    out: list[Job] = []
    for item in jobs:
        job_id = client.job_id(item)  # refuses a Job of another database
        out.append(item if isinstance(item, Job) else Job(client, job_id))
    return out


#: Rich display of a JobsView ("html" → str, "display" → shows it), installed by `nbjobs.ui.display`.
VIEW_HOOKS: dict[str, Callable[[JobsView], Any]] = {}


class JobsView:
    """Many jobs (a sweep) as one thing to look at: counts by state, and in a notebook a live bar of
    the jobs that ended, refreshed in the background while the notebook goes on (`nb.watch(runs)`)."""

    def __init__(self, client: Client, jobs: list[Job]) -> None:
        self.client = client
        self.jobs = jobs

    def counts(self) -> dict[str, int]:
        """Jobs per state (only states some job is in), plus "gone" for jobs that no longer exist;
        counted by the database, a few rows per 500 jobs."""
        ids = list(dict.fromkeys(job.id for job in self.jobs))
        found: dict[JobState, int] = {}
        for start in range(0, len(ids), _CHUNK):
            for state, n in self.client.store.state_counts(ids[start:start + _CHUNK]).items():
                found[state] = found.get(state, 0) + n
        out = {state.value: found[state] for state in JobState if state in found}  # in the states' order
        gone = len(ids) - sum(out.values())
        if gone:
            out["gone"] = gone
        return out

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {state}" for state, n in self.counts().items())
        return f"<{len({job.id for job in self.jobs})} jobs: {counts or 'none'}>"

    def _repr_html_(self) -> str | None:
        return html_via(VIEW_HOOKS, self)

    def _ipython_display_(self) -> None:
        display_via(VIEW_HOOKS, self)


def watch(client: Client, jobs: Any) -> JobsView:
    """A live view of many jobs for a notebook: `nb.watch(runs)` as a cell's last line."""
    return JobsView(client, jobs_of(client, jobs))


def as_completed(
    client: Client, jobs: Any, timeout: float | None = None, progress: bool = False
) -> Iterator[Job]:
    """Yield each job once it is final (succeeded, failed or deleted), the earliest seen first.

    Jobs final already come first, in the order given; a job given twice is yielded once. Raises
    ResultTimeoutError when `timeout` seconds pass (counted from the call) with jobs still pending,
    and JobNotFoundError for a job that does not exist (or is pruned while waited for). `progress`
    shows a bar (tqdm: a widget in a notebook, text elsewhere) counting the jobs that ended.
    """
    timeout = check_timeout(timeout)
    pending = {job.id: job for job in _to_wait_for(client, jobs)}
    return (job for seen in _rounds(client, pending, timeout, progress) for job, _ in seen)


def _to_wait_for(client: Client, jobs: Any) -> list[Job]:
    """`jobs_of`, refusing the job that calls (inside a job: it would wait for itself forever)."""
    given = jobs_of(client, jobs)
    refuse_waiting_for_itself([job.id for job in given], client.store)
    return given


#: The jobs one round saw final, each with its state.
Round = list[tuple[Job, JobState]]


def _rounds(
    client: Client, pending: dict[int, Job], timeout: float | None, progress: bool = False
) -> Generator[Round, None, None]:
    """The pending jobs seen final, a round at a time (`pending` is emptied on the way)."""
    if not progress:
        yield from _seen_final(client, pending, timeout)
        return
    from tqdm.auto import tqdm

    # Inside a job the bar is its progress too (`tqdm_progress`): "jobs ended: 3/8".
    with tqdm(total=len(pending), desc="jobs ended", unit="job") as bar:
        for seen in _seen_final(client, pending, timeout):
            bar.update(len(seen))
            yield seen


def _seen_final(client: Client, pending: dict[int, Job], timeout: float | None) -> Iterator[Round]:
    clock = client.clock
    total = len(pending)
    deadline = None if timeout is None else clock.monotonic() + timeout
    delay = _FIRST_DELAY
    # Inside a job, its worker slot runs other jobs (those waited for, say) while it waits.
    with context.Waiting() as waiting:
        while pending:
            started = time.monotonic()
            states = _states(client, list(pending))
            spacing = _SPACING * (time.monotonic() - started)
            final = [job_id for job_id in pending if states[job_id] in FINAL_STATES]
            if final:
                waiting.unblock()  # the caller's own code runs until it asks for more
                yield [(pending.pop(job_id), states[job_id]) for job_id in final]
            if not pending:
                return
            remaining = None if deadline is None else deadline - clock.monotonic()
            if remaining is not None and remaining <= 0:
                raise _timeout(pending, total, timeout)
            delay = _FIRST_DELAY if final else min(delay * 1.5, _LONGEST_DELAY)
            waiting.block()
            if spacing > _FIRST_DELAY:  # a big round: leave the database and the GIL to the server
                time.sleep(min(spacing, _LONGEST_DELAY) if remaining is None else min(spacing, remaining))
            # Local completions wake us at once; jobs finished elsewhere are seen by polling.
            client.notifier.wait_finished(delay if remaining is None else min(delay, remaining))


def _states(client: Client, ids: list[int]) -> dict[int, JobState]:
    states: dict[int, JobState] = {}
    for start in range(0, len(ids), _CHUNK):
        states.update(client.store.states_of(ids[start:start + _CHUNK]))
    missing = [job_id for job_id in ids if job_id not in states]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
        raise JobNotFoundError(
            f"{len(missing)} of the jobs waited for do not exist (ids {shown}); they may have been "
            "pruned or belong to another database"
        )
    return states


def _timeout(pending: dict[int, Job], total: int, timeout: float | None) -> ResultTimeoutError:
    shown = ", ".join(map(str, list(pending)[:10])) + (" …" if len(pending) > 10 else "")
    return ResultTimeoutError(
        f"{len(pending)} of {total} jobs are unfinished after {timeout}s (ids {shown}); wait longer "
        "or check that a server listens to their queues"
    )


def wait(
    client: Client, jobs: Any, timeout: float | None = None, return_when: str = ALL_COMPLETED,
    progress: bool = False,
) -> DoneAndPending:
    """Wait until all jobs are final (ALL_COMPLETED), any is (FIRST_COMPLETED), or any ended
    other than succeeded (FIRST_EXCEPTION: failed or deleted), or `timeout` passed: unlike
    `as_completed`, a timeout is not an error; what is still pending is returned as such."""
    if return_when not in RETURN_WHEN:
        raise InvalidJobError(
            f"return_when must be one of {', '.join(RETURN_WHEN)} (as in concurrent.futures), got "
            f"{return_when!r}"
        )
    timeout = check_timeout(timeout)
    given = _to_wait_for(client, jobs)
    pending = {job.id: job for job in given}
    finished: set[int] = set()
    try:
        with closing(_rounds(client, pending, timeout, progress)) as rounds:  # the bar ends here
            for seen in rounds:
                finished.update(job.id for job, _ in seen)
                if return_when == FIRST_COMPLETED or (
                        return_when == FIRST_EXCEPTION and any(s is not JobState.SUCCEEDED for _, s in seen)):
                    break
    except ResultTimeoutError:
        pass
    done = [job for job in given if job.id in finished]
    return DoneAndPending(done, [job for job in given if job.id not in finished])


def results(
    client: Client, jobs: Any, timeout: float | None = None, return_exceptions: bool = False,
    progress: bool = False,
) -> list[Any]:
    """The return values of all jobs, in the order given, once all are final.

    A job that failed or was deleted raises its JobFailedError as soon as it is seen final (the
    others are left running); with `return_exceptions=True` the error takes its place in the list
    instead, as in `asyncio.gather`. Raises ResultTimeoutError when `timeout` passes first.
    """
    timeout = check_timeout(timeout)
    given = _to_wait_for(client, jobs)
    pending = {job.id: job for job in given}
    values: dict[int, Any] = {}
    with closing(_rounds(client, pending, timeout, progress)) as rounds:
        for seen in rounds:
            ids = [job.id for job, _ in seen]
            found = {}
            for start in range(0, len(ids), _CHUNK):  # a round's results in one read per chunk
                found.update(client.store.results_of(ids[start:start + _CHUNK]))
            for job, _ in seen:
                result = found.get(job.id)
                try:
                    # Gone or requeued since its state was read: as `result()` has it.
                    values[job.id] = (job.final_result() if result is None or result.state not in FINAL_STATES
                                      else job.value_of(result))
                except JobFailedError as exc:
                    if not return_exceptions:
                        raise
                    values[job.id] = exc
    return [values[job.id] for job in given]
