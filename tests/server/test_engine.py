"""The foundation's public API, end to end on a real SQLite file and real PostgreSQL."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import warnings
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, update

import nbjobs
from nbjobs import JobState
from nbjobs.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    IllegalTransitionError,
    InvalidJobError,
    JobFailedError,
    JobNotFoundError,
    ResultTimeoutError,
    SchemaVersionError,
    UnknownStateError,
)
from nbjobs.history import DEFAULT_LIMIT, TruncatedWarning
from nbjobs.model import (
    ERROR_TYPE_MAX,
    KEY_MAX,
    LONGEST_SECONDS,
    NAME_MAX,
    PRIORITY_MAX,
    PRIORITY_MIN,
    QUEUE_MAX,
)
from nbjobs.storage import SqlStore
from nbjobs.storage.schema import meta

from ..conftest import wait_for

CALLS: Counter[str] = Counter()
GATE = threading.Event()
STARTED = threading.Event()


def add(a: int, b: int = 0) -> int:
    return a + b


def boom(message: str) -> None:
    raise ValueError(message)


def count(tag: str) -> str:
    CALLS[tag] += 1
    return tag


def flaky(tag: str, fail_times: int) -> str:
    CALLS[tag] += 1
    if CALLS[tag] <= fail_times:
        raise ConnectionError(f"attempt {CALLS[tag]} fails")
    return f"ok after {CALLS[tag]}"


def bad_json(tag: str) -> object:
    CALLS[tag] += 1
    return json.loads("{")


def blocking(tag: str) -> str:
    STARTED.set()
    GATE.wait(30)
    return tag


def cooperative() -> str:
    STARTED.set()
    job = nbjobs.current_job()
    while not job.wait_cancelled(0.01):
        pass
    job.check_cancelled()
    return "unreachable"


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    GATE.clear()
    STARTED.clear()


def test_enqueue_runs_and_returns_result(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=2)
    job = engine.enqueue(add, 2, b=3)
    assert job.result(timeout=10) == 5
    assert job.state is JobState.SUCCEEDED
    states = [c.state for c in job.history()]
    assert states == [JobState.ENQUEUED, JobState.PROCESSING, JobState.SUCCEEDED]
    assert "duration" in job.history()[-1].data


def test_failure_retries_then_fails_with_remote_traceback(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    job = engine.options(retries=2, retry_base=0.01).enqueue(boom, "kaput")
    with pytest.raises(JobFailedError) as info:
        job.result(timeout=20)
    assert info.value.exc_type == "ValueError" and info.value.remote_message == "kaput"
    assert "in boom" in (info.value.remote_traceback or "")
    record = job.record()
    assert record.attempts == 3 and record.state is JobState.FAILED
    hist = [c.state for c in job.history()]
    assert hist.count(JobState.SCHEDULED) == 2 and hist[-1] is JobState.FAILED


def test_flaky_job_succeeds_on_retry_and_no_retry_on_stops_it(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    ok = engine.options(retries=3, retry_base=0.01).enqueue(flaky, "a", 2)
    assert ok.result(timeout=20) == "ok after 3"
    stop = engine.options(retries=3, retry_base=0.01, no_retry_on=[ConnectionError]).enqueue(flaky, "b", 5)
    assert stop.wait(timeout=20) is JobState.FAILED
    assert CALLS["b"] == 1


def test_exception_names_are_checked_and_stored_where_the_class_is_defined(engine: nbjobs.Engine) -> None:
    """A name that can never match turned retries off (`retry_on`) or left them on (`no_retry_on`)
    silently: a re-exported name (`json.JSONDecodeError` lives in `json.decoder`), a typo in an
    imported module, one string of comma-separated names."""
    opts = engine.options(no_retry_on=["json.JSONDecodeError", "nosuchmodule.Error", "HTTPError"]).job_options
    assert opts.no_retry_on == ("json.decoder.JSONDecodeError", "nosuchmodule.Error", "HTTPError")
    for bad, why in (("ValueError, KeyError", "give a list of names"), ("print", "not an exception class"),
                     ("json.NoSuchError", "module json has no exception class NoSuchError")):
        with pytest.raises(InvalidJobError, match=why):
            engine.options(retry_on=[bad])
    engine.start_server(workers=1)
    job = engine.options(retries=3, retry_base=0.01, no_retry_on=["json.JSONDecodeError"]).enqueue(
        bad_json, "j")
    assert job.wait(timeout=20) is JobState.FAILED
    assert CALLS["j"] == 1 and "is in no_retry_on" in job.history()[-1].reason


def test_schedule_runs_when_due_with_manual_clock(db_url: str) -> None:
    clock = nbjobs.ManualClock()
    with nbjobs.connect(db_url, clock=clock, secret="s") as engine:
        engine.start_server(workers=1, scheduler_interval=1.0)
        job = engine.schedule(timedelta(minutes=10), count, "later")
        assert job.state is JobState.SCHEDULED
        assert job.record().run_at == clock.now() + timedelta(minutes=10)
        clock.advance(timedelta(minutes=9))
        with pytest.raises(ResultTimeoutError):
            job.wait(timeout=0.0)
        clock.advance(timedelta(minutes=1, seconds=1))
        assert job.result(timeout=10) == "later"
        assert CALLS["later"] == 1


def test_schedule_accepts_seconds_datetime_and_rejects_bad_delays(engine: nbjobs.Engine) -> None:
    now = engine.clock.now()
    assert engine.schedule(60, add, 1).record().run_at is not None
    assert engine.schedule(now + timedelta(hours=1), add, 1).state is JobState.SCHEDULED
    with pytest.raises(InvalidJobError, match="must not be negative"):
        engine.schedule(-1, add, 1)
    with pytest.raises(InvalidJobError, match="'soon' is not a time; write it as '2026-12-01 07:00'"):
        engine.schedule("soon", add, 1)
    with pytest.raises(InvalidJobError, match="datetime, an ISO time string, a timedelta or a number"):
        engine.schedule([60], add, 1)  # type: ignore[arg-type]
    # An ISO string or a date, naive = local time, as jobs(since=…) reads them.
    local = datetime(2030, 6, 1, 7, 30).astimezone()
    for when in ("2030-06-01 07:30", "2030-06-01T07:30:00", local.isoformat()):
        assert engine.schedule(when, add, 1).record().run_at == local.astimezone(UTC)
    # A delay written as text, as `nbjobs enqueue --at 10m` takes it.
    delays = {"10m": timedelta(minutes=10), "1 day": timedelta(days=1), "600": timedelta(seconds=600)}
    for text, delay in delays.items():
        before = engine.clock.now()
        run_at = engine.schedule(text, add, 1).record().run_at
        assert run_at is not None and before + delay <= run_at <= engine.clock.now() + delay
    assert engine.schedule("0", add, 1).state is JobState.ENQUEUED  # no delay (a zero is no time)
    midnight = datetime(2030, 6, 1).astimezone().astimezone(UTC)
    assert engine.schedule(date(2030, 6, 1), add, 1).record().run_at == midnight
    assert engine.schedule("2030-06-01", add, 1).record().run_at == midnight
    with pytest.raises(InvalidJobError, match="got NaN"):
        engine.schedule(float("nan"), add, 1)
    for too_far in (float("inf"), 1e12):
        with pytest.raises(InvalidJobError, match="past the last date a datetime holds"):
            engine.schedule(too_far, add, 1)
    assert len(engine.jobs()) == 11  # the good ones; nothing of the refused calls was stored


def test_continuations(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=2)
    parent = engine.enqueue(add, 1, 1)
    child = parent.then(count, "child")
    grandchild = child.then(count, "grandchild")
    assert grandchild.result(timeout=10) == "grandchild"
    assert child.history()[0].state is JobState.AWAITING or child.state is JobState.SUCCEEDED

    failing = engine.options(retries=0).enqueue(boom, "x")
    skipped = failing.then(count, "skipped")
    skipped_after = skipped.then(count, "skipped2")
    always = failing.then(count, "always", continue_on="finished")
    assert always.result(timeout=10) == "always"
    assert skipped.wait(timeout=10) is JobState.DELETED
    assert skipped_after.wait(timeout=10) is JobState.DELETED
    assert CALLS["skipped"] == 0 and CALLS["skipped2"] == 0
    # A continuation of an already finished parent is decided at once.
    late = parent.then(count, "late")
    assert late.result(timeout=10) == "late"


def test_continuation_waits_in_awaiting_without_server(engine: nbjobs.Engine) -> None:
    parent = engine.enqueue(add, 1)
    child = parent.then(add, 2)
    assert child.state is JobState.AWAITING
    parent.delete()
    assert child.state is JobState.DELETED
    with pytest.raises(JobNotFoundError):
        engine.job(10_000)
    with pytest.raises(InvalidJobError, match="continue_on must be one of"):
        parent.then(add, 1, continue_on="sometimes")


def test_requeue_delete_cancel(engine: nbjobs.Engine) -> None:
    job = engine.options(retries=0).enqueue(boom, "once")
    assert job.cancel().state is JobState.DELETED  # not started: cancelled at once
    with pytest.raises(IllegalTransitionError, match=r"is already deleted; there is nothing to cancel$"):
        job.cancel()
    job.requeue()
    assert job.state is JobState.ENQUEUED
    engine.start_server(workers=1)
    assert job.wait(timeout=10) is JobState.FAILED
    assert engine.job(job.id).requeue().wait(timeout=10) is JobState.FAILED
    reasons = [c.reason for c in job.history()]
    assert "requeued by user" in reasons and "deleted by user" not in reasons
    job.delete()
    assert job.state is JobState.DELETED


def test_cancel_running_job_is_cooperative(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    job = engine.enqueue(cooperative)
    assert STARTED.wait(10)
    wait_for(lambda: job.state is JobState.PROCESSING)
    job.cancel()
    assert job.wait(timeout=10) is JobState.DELETED
    with pytest.raises(JobFailedError, match="deleted or cancelled"):
        job.result()


def test_timeout_marks_job_for_cancellation_and_fails_it(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    job = engine.options(timeout=0.2, retries=0).enqueue(cooperative)
    with pytest.raises(JobFailedError, match="JobTimeoutError"):
        job.result(timeout=10)


def test_unique_key_returns_existing_unfinished_job(engine: nbjobs.Engine) -> None:
    first = engine.options(key="train-v1").enqueue(add, 1)
    second = engine.options(key="train-v1").enqueue(add, 2)
    assert first == second
    engine.start_server(workers=1)
    first.wait(timeout=10)
    third = engine.options(key="train-v1").enqueue(add, 3)
    assert third.id != first.id and third.result(timeout=10) == 3


def test_priority_and_queue_order(engine: nbjobs.Engine) -> None:
    low = engine.options(queue="default").enqueue(count, "low")
    high = engine.options(queue="default", priority=5).enqueue(count, "high")
    crit = engine.options(queue="critical").enqueue(count, "crit")
    engine.start_server(workers=1, queues=["critical", "default"])
    for job in (low, high, crit):
        job.wait(timeout=10)
    order = sorted((low, high, crit), key=lambda j: j.record().started_at)
    assert [j.id for j in order] == [crit.id, high.id, low.id]


def test_server_only_takes_its_queues(engine: nbjobs.Engine) -> None:
    other = engine.options(queue="gpu").enqueue(add, 1)
    mine = engine.enqueue(add, 2)
    engine.start_server(workers=1, queues=["default"])
    assert mine.result(timeout=10) == 2
    assert other.state is JobState.ENQUEUED


def test_durations_are_taken_as_text_or_timedelta(engine: nbjobs.Engine) -> None:
    """`timeout="10m"` as `schedule("10m", …)` reads it; a text that is no duration is refused."""
    durations = engine.options(timeout="10m", expires="1h30m", retry_base="30s", retry_cap=timedelta(hours=2))
    job = durations.enqueue(add, 1)
    options = job.record().options
    assert (options.timeout, options.expires, options.retry_base, options.retry_cap) == (600, 5400, 30, 7200)
    with pytest.raises(InvalidJobError, match=r"timeout must be .* a duration such as '10m'.*'ten minutes'"):
        engine.options(timeout="ten minutes")
    with pytest.raises(InvalidJobError, match=r"retry_base must be .*got '-5s'"):
        engine.options(retry_base="-5s")
    assert len(engine.jobs()) == 1


def test_bad_input_is_refused_at_the_call_and_nothing_is_stored(engine: nbjobs.Engine) -> None:
    with pytest.raises(InvalidJobError, match="unknown job option"):
        engine.options(queu="x")
    with pytest.raises(InvalidJobError, match="unknown job option"):
        engine.job(queu="x")  # the decorator's options: at `@nb.job(...)`, not when it decorates
    with pytest.raises(InvalidJobError, match="define it with `def`"):
        engine.enqueue(lambda: 1)
    with pytest.raises(InvalidJobError, match="'add' is not a function's name; write it as 'module:"):
        engine.enqueue("add")
    with pytest.raises(InvalidJobError, match="not callable"):
        engine.enqueue(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="keyword argument 'b'"):
        engine.enqueue(add, 1, b=threading.Lock())  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="retries must be 0 or more"):
        engine.options(retries=-1)
    with pytest.raises(InvalidJobError, match="timeout must be a positive"):
        engine.options(timeout=0)
    for not_finite in (float("nan"), float("inf")):
        with pytest.raises(InvalidJobError, match="leave it out for no limit"):
            engine.options(timeout=not_finite)
        with pytest.raises(InvalidJobError, match="retry_cap must be a number of seconds"):
            engine.options(retry_cap=not_finite)
    # Finite but past the calendar: a claim computing the expiry, or a turn computing the retry date,
    # overflowed (the job stuck claimed, the server running nothing else).
    for name in ("timeout", "expires", "retry_base", "retry_cap"):
        with pytest.raises(InvalidJobError, match=rf"{name} must be .*3,153,600,000"):
            engine.options(**{name: 1e300})
    engine.options(timeout=LONGEST_SECONDS, expires=LONGEST_SECONDS, retry_base=LONGEST_SECONDS,
                   retry_cap=LONGEST_SECONDS)  # the longest is taken
    with pytest.raises(UnknownStateError, match="use one of"):
        engine.jobs(state="done")
    # What one database would store and the other refuse is refused on both, with the limit.
    with pytest.raises(InvalidJobError, match="priority must be between"):
        engine.options(priority=PRIORITY_MAX + 1)
    with pytest.raises(InvalidJobError, match=f"queue .* use at most {QUEUE_MAX}"):
        engine.options(queue="q" * (QUEUE_MAX + 1))
    with pytest.raises(InvalidJobError, match=f"name .* use at most {NAME_MAX}"):
        engine.options(name="n" * (NAME_MAX + 1)).enqueue(add, 1)
    with pytest.raises(InvalidJobError, match="a hash of a long key"):
        engine.options(key="k" * (KEY_MAX + 1))
    with pytest.raises(InvalidJobError, match=r"cannot be called with these arguments \(too many positional"):
        engine.enqueue(add, 1, 2, 3)  # found now, not as a TypeError when a worker runs it
    with pytest.raises(InvalidJobError, match="unexpected keyword argument 'c'"):
        engine.recurring("every-minute", "* * * * *", add, 1, c=2)
    with pytest.raises(InvalidJobError, match=r"item 1 \(\(\)\): .*missing a required argument: 'a'.*; "
                       "nothing was enqueued"):
        engine.enqueue_many(add, [(1,), ()])  # the whole batch is refused, nothing stored
    with pytest.raises(InvalidJobError, match="for one job, wrap it in a list"):
        engine.enqueue_many(add, 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="for one job, wrap it in a list"):
        engine.enqueue_many(add, "abc")
    # Job ids: not a number is a mistake; a number no job can have is simply not found.
    for call in (lambda: engine.job("abc"), lambda: engine.history("abc"),
                 lambda: engine.client.then("abc", add)):
        with pytest.raises(InvalidJobError, match="a job id is a whole number such as 42"):
            call()
    for call in (lambda: engine.job(2**70), lambda: engine.requeue(2**70), lambda: engine.history(-1),
                 lambda: engine.history(999_999)):  # not an empty table: a typo'd id says so
        with pytest.raises(JobNotFoundError, match="does not exist"):
            call()
    with pytest.raises(InvalidJobError, match="limit must be a whole number"):
        engine.jobs(limit=-1)  # SQLite would list every job, PostgreSQL refuse the query
    with pytest.raises(ConfigurationError, match=r"queues=\['default'\]"):
        engine.start_server(queues="default")  # not the queues "d", "e", "f", …
    with pytest.raises(ConfigurationError, match="workers must be a whole number"):
        engine.start_server(workers="4")  # type: ignore[arg-type]
    # A queue with a space at an end (read from a file, typed after a comma) is served by no server.
    padded = (r"queue ' io' has spaces at its start or end, so servers of 'io' would not take its jobs; "
              r"write 'io'")
    with pytest.raises(ConfigurationError, match=padded):
        engine.start_server(queues=["default", " io"])
    for call in (lambda: engine.options(queue=" io").enqueue(add, 1), lambda: engine.pause_queue(" io")):
        with pytest.raises(InvalidJobError, match=padded):
            call()
    # Durations that overflowed a loop's wait (inf, 1e300), spun it (0) or never let a job run
    # (server_timeout=1e300: no lease could be written); max_batch=0 would claim nothing.
    refused = {"poll_interval": 0, "scheduler_interval": float("nan"), "server_timeout": 1e300,
               "keep_succeeded": float("inf"), "shutdown_timeout": -5, "heartbeat_interval": True,
               "scheduler_idle_interval": "soon"}
    for setting, value in refused.items():
        with pytest.raises(ConfigurationError, match=f"{setting} must be a number of seconds"):
            engine.start_server(**{setting: value})
    with pytest.raises(ConfigurationError, match="max_batch must be a whole number of jobs of at least 1"):
        engine.start_server(max_batch=0)
    for grace in (-1, float("nan"), "soon"):
        with pytest.raises(InvalidJobError, match=r"timeout must be a number of seconds ≥ 0 \(or a duration "
                                                  r"such as '10m'\), or None for the"):
            engine.stop_server(grace)  # type: ignore[arg-type]
    assert engine.server is None
    assert engine.jobs().empty and engine.recurring_jobs().empty


def test_server_settings_take_durations_as_job_options_do(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1, keep_succeeded="30d", keep_deleted=timedelta(days=2), server_timeout="1m")
    assert engine.server is not None
    config = engine.server.config
    assert (config.keep_succeeded, config.keep_deleted, config.server_timeout) == (30 * 86400, 2 * 86400, 60)


def test_names_and_priorities_at_their_limits_are_stored_on_both_databases(engine: nbjobs.Engine) -> None:
    edge = engine.options(queue="q" * QUEUE_MAX, name="n" * NAME_MAX, key="k" * KEY_MAX,
                          priority=PRIORITY_MAX)
    job = edge.enqueue(add, 1)
    low = engine.options(priority=PRIORITY_MIN).enqueue(add, 2)
    record = job.record()
    assert (len(record.options.queue), len(record.options.name or ""), record.options.priority) == (
        QUEUE_MAX, NAME_MAX, PRIORITY_MAX)
    assert low.record().options.priority == PRIORITY_MIN
    engine.start_server(workers=1, queues=["q" * QUEUE_MAX, "default"])
    assert job.result(timeout=10) == 1 and low.result(timeout=10) == 2


class_name = "E" * (ERROR_TYPE_MAX + 100)
LongNamedError = type(class_name, (ValueError,), {"__module__": __name__})


def raise_long_named() -> None:
    raise LongNamedError("a very long exception type name")


def test_an_exception_type_longer_than_its_column_is_stored_cut(engine: nbjobs.Engine) -> None:
    """The server writes the type name; a longer one is cut, never a finish the database refuses."""
    job = engine.options(retries=0).enqueue(raise_long_named)
    engine.start_server(workers=1)
    job.wait(timeout=10)
    record = job.record()
    assert record.state is JobState.FAILED
    assert record.error_type is not None and len(record.error_type) == ERROR_TYPE_MAX
    assert record.error_type.startswith(f"{__name__}.EEEE")


def test_job_decorator(engine: nbjobs.Engine) -> None:
    with pytest.raises(InvalidJobError, match="closure"):

        @engine.job(queue="io", retries=1)
        def double(x: int) -> int:  # defined inside a function: cannot be found again by name
            return 2 * x

    tripled = engine.job(add, queue="io")
    assert tripled(1, 2) == 3  # still callable directly
    engine.start_server(workers=1, queues=["io"])
    assert tripled.enqueue(2, 2).result(timeout=10) == 4
    assert tripled.schedule(0, 5).result(timeout=10) == 5


class Doubler:
    def __init__(self, offset: int) -> None:
        self.offset = offset

    def twice(self, x: int) -> int:
        return 2 * x + self.offset


def test_a_decorated_method_is_bound_to_its_instance(engine: nbjobs.Engine) -> None:
    decorated = engine.job(Doubler.twice, retries=0)
    try:
        Doubler.twice_job = decorated  # type: ignore[attr-defined]  # as `@engine.job()` in the class
        doubler: Any = Doubler(1)
        assert doubler.twice_job(3) == 7  # called without its instance, it used to miss an argument
        engine.start_server(workers=1)
        assert doubler.twice_job.enqueue(4).result(timeout=10) == 9
        assert doubler.twice_job.options(executor="process").enqueue(5).result(timeout=30) == 11
        assert Doubler.twice_job is decorated  # on the class: the job function itself
    finally:
        del Doubler.twice_job  # type: ignore[attr-defined]


def test_jobs_and_history_frames(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=2)
    ok = engine.enqueue(add, 1)
    bad = engine.options(retries=0).enqueue(boom, "bad")
    ok.wait(10)
    bad.wait(10)
    frame = engine.jobs()
    assert set(frame["id"]) == {ok.id, bad.id}
    failed = engine.jobs(state="failed")
    assert list(failed["id"]) == [bad.id] and failed["error_type"].iloc[0] == "ValueError"
    assert str(frame["created_at"].dt.tz) == "UTC"
    assert frame["duration"].dtype.kind == "m"
    hist = engine.history(ok.id)
    assert list(hist["state"]) == ["enqueued", "processing", "succeeded"]


def test_jobs_cut_at_the_default_limit_warn_and_a_chosen_limit_does_not(engine: nbjobs.Engine) -> None:
    """`nb.requeue(nb.jobs(state="failed"))` acted on the newest 1,000 of more without a word."""
    engine.enqueue_many(add, [(i,) for i in range(DEFAULT_LIMIT + 1)])
    with pytest.warns(TruncatedWarning, match="more than 1,000 jobs match: these are the newest 1,000; "
                      "pass limit=None") as caught:
        frame = engine.jobs()
    assert caught[0].filename == __file__  # points at the user's line
    assert len(frame) == DEFAULT_LIMIT and frame["id"].iloc[0] == DEFAULT_LIMIT + 1  # the newest
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(engine.jobs(limit=None)) == DEFAULT_LIMIT + 1
        assert len(engine.jobs(limit=1000)) == 1000  # chosen: the cut is expected
        assert len(engine.jobs(limit=5)) == 5
        engine.delete(int(frame["id"].iloc[0]))
        assert len(engine.jobs(state="enqueued")) == DEFAULT_LIMIT  # exactly the limit: nothing cut


def test_persistence_across_engines(db_url: str) -> None:
    with nbjobs.connect(db_url, secret="s") as first:
        ids = [first.enqueue(count, f"p{i}").id for i in range(20)]
    with nbjobs.connect(db_url, secret="s") as second:
        second.start_server(workers=4)
        for job_id in ids:
            assert second.job(job_id).wait(timeout=20) is JobState.SUCCEEDED
    assert sum(CALLS.values()) == 20


def test_stop_server_returns_running_jobs(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    job = engine.enqueue(blocking, "held")
    assert STARTED.wait(10)
    engine.stop_server(timeout=0.1)
    assert job.state is JobState.ENQUEUED
    assert engine.counts()["processing"] == 0
    assert "server stopped while the job was running" in job.history()[-1].reason
    GATE.set()
    engine.start_server(workers=1)
    assert job.result(timeout=10) == "held"


def test_payload_signed_with_other_secret_fails_clearly(db_url: str) -> None:
    with nbjobs.connect(db_url, secret="writer") as writer:
        job_id = writer.enqueue(add, 1).id
    with nbjobs.connect(db_url, secret="reader") as reader:
        reader.start_server(workers=1)
        job = reader.job(job_id)
        with pytest.raises(JobFailedError, match="same NBJOBS_SECRET"):
            job.result(timeout=10)
        assert job.record().attempts == 1  # not retried: no retry can fix a bad signature


def test_newer_schema_is_a_clear_error(db_url: str) -> None:
    store = SqlStore(db_url)
    with store.engine.begin() as conn:
        conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="999"))
    store.close()
    with pytest.raises(SchemaVersionError, match="newer nbjobs"):
        SqlStore(db_url)


def test_requeue_delete_and_cancel_take_many_jobs_and_say_what_became_of_each(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=2)
    failed = [engine.options(retries=0).enqueue(boom, f"x{i}") for i in range(3)]
    for job in failed:
        job.wait(timeout=10)
    done = engine.enqueue(add, 1)
    done.wait(timeout=10)
    engine.stop_server()
    outcome = engine.requeue(engine.jobs(state="failed"))  # a frame from jobs(), as in a notebook
    assert sorted(outcome["id"]) == sorted(j.id for j in failed)
    assert set(outcome["state"]) == {"enqueued"} and outcome["error"].isna().all()
    mixed = engine.cancel([failed[0], done.id])  # one can be cancelled, one has finished
    assert mixed.set_index("id").loc[failed[0].id, "state"] == "deleted"
    assert "already finished (succeeded)" in mixed.set_index("id").loc[done.id, "error"]
    assert done.state is JobState.SUCCEEDED  # untouched
    assert engine.delete(failed[1]) is JobState.DELETED  # one job: its new state, errors raise
    with pytest.raises(IllegalTransitionError):
        engine.cancel(done)
    with pytest.raises(InvalidJobError, match="a job id is a whole number"):
        engine.delete([failed[2].id, "abc"])  # checked before anything changes
    assert failed[2].state is JobState.ENQUEUED


def exits(code: int) -> None:
    import sys

    sys.exit(code)


def interrupts() -> None:
    raise KeyboardInterrupt


class LibraryAbort(BaseException):
    """A library's own BaseException (as trio's or gevent's are), not an Exception."""


def aborts() -> None:
    raise LibraryAbort("abort from a library")


def generator_exit() -> None:
    raise GeneratorExit


async def aborts_async() -> None:
    raise LibraryAbort("abort from an async library")


def test_connect_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="url must be a database URL"):
        nbjobs.connect(5)  # type: ignore[arg-type]  # it failed with "argument of type 'int' is not iterable"
    for secret in ("", b"", 123):  # an empty key signs nothing worth checking
        with pytest.raises(ConfigurationError, match="secret must be a non-empty string or bytes"):
            nbjobs.connect(f"sqlite:///{tmp_path / 'x.db'}", secret=secret)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"workers is a setting of the server, not of the database: "
                       r"nb = nbjobs.connect\(url\); nb.start_server\(workers=…\)"):
        nbjobs.connect(f"sqlite:///{tmp_path / 'x.db'}", workers=4)  # it was Engine's bare TypeError
    with nbjobs.connect(tmp_path / "path.db", secret="s") as by_path:  # a pathlib.Path is a SQLite file
        assert by_path.enqueue(add, 1, 2).id == 1 and (tmp_path / "path.db").exists()


def test_connect_says_why_it_cannot_reach_the_database(pg_server_url: str, tmp_path: Path) -> None:
    server = make_url(pg_server_url)
    # What the URL names does not exist: said at once, not retried as a passing fault.
    for url, named in [
        (server.set(database="nbjobs_no_such_db"), 'database "nbjobs_no_such_db" does not exist'),
        (server.set(username="nbjobs_no_such_role"), 'role "nbjobs_no_such_role" does not exist'),
    ]:
        started = time.monotonic()
        with pytest.raises(ConfigurationError, match=r"cannot use the database postgresql://.*Check the URL"):
            nbjobs.connect(url.render_as_string(hide_password=False))
        assert time.monotonic() - started < 2
        with pytest.raises(ConfigurationError, match=re.escape(named)):
            nbjobs.connect(url.render_as_string(hide_password=False))
    with pytest.raises(ConfigurationError, match="server does not support SSL, but SSL was required"):
        nbjobs.connect(server.update_query_dict({"sslmode": "require"}).render_as_string(hide_password=False))
    # Nothing listens there: tried (a server may be starting), then said in one error.
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DatabaseUnavailableError, match=rf"cannot reach the database postgresql://127.0.0.1:{port}/"
                       r".* after 2 tries; check that its server runs"):  # (the store connect() opens,
        SqlStore(server.set(host="127.0.0.1", port=port).render_as_string(hide_password=False),
                 max_retries=1)  # with fewer tries to keep the test short)


def test_a_postgresql_url_of_any_driver_or_default_port_is_the_same_database(pg_database: str) -> None:
    """A URL copied from another project's settings (`postgres://`, `postgresql+psycopg2://`) failed
    with "No module named 'psycopg2'"; the same server without its default port was another database
    to `job_id`, which refused the jobs of one engine in the other."""
    url = make_url(pg_database)
    with nbjobs.connect(pg_database, secret="test-secret") as engine:
        job = engine.enqueue(add, 1)
        default_port = url.port in (None, 5432)
        variants = [url.set(drivername="postgresql+psycopg2"), url.set(drivername="postgresql+asyncpg"),
                    url.set(drivername="postgres")]
        if default_port:
            variants += [url.set(port=5432), url.set(port=None)]
        for variant in variants:
            with nbjobs.connect(variant.render_as_string(hide_password=False), secret="test-secret") as other:
                assert other.store.database == engine.store.database, variant
                assert other.job(job).state is JobState.ENQUEUED  # a Job of the first engine, accepted
        engine.delete(job)


def test_starting_a_running_server_again_says_what_it_ignores(engine: nbjobs.Engine) -> None:
    server = engine.start_server(workers=1)
    assert engine.start_server() is server  # nothing asked: nothing to say
    assert engine.start_server(workers=1) is server
    already = r"a server already runs in this engine \(queues=\('\*',\), workers=1\)"
    with pytest.warns(UserWarning, match=already):
        assert engine.start_server(workers=2, queues=["io"]) is server
    assert server.config.workers == 1


def test_a_second_server_on_the_same_database_in_this_process_warns_and_engines_finds_the_first(
        db_url: str) -> None:
    """A notebook cell `nb = nbjobs.connect(); nb.start_server(workers=1)` run again."""
    first = nbjobs.connect(db_url, secret="test-secret")
    try:
        first.start_server(workers=1, name="first")
        nb = nbjobs.connect(db_url, secret="test-secret")
        with pytest.warns(nbjobs.DuplicateServerWarning, match=r"this process already runs a server on .* "
                          r"\(first\), from another engine") as caught:
            nb.start_server(workers=1)
        assert caught[0].filename == __file__
        assert [e for e in nbjobs.engines() if e in (first, nb)] == [first, nb]  # oldest first
        for other in nbjobs.engines():
            other is nb or other.close()  # as the warning says
        assert first._closed and first.server is None and not nb._closed
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            nb.stop_server()
            nb.start_server(workers=1)  # alone now: nothing to say
        nb.close()
        assert nb not in nbjobs.engines()
    finally:
        first.close()


def test_an_engine_dropped_without_close_releases_its_database_when_collected(db_url: str) -> None:
    """Each `nb = nbjobs.connect()` run again left its connections open for good (two file handles
    on SQLite), since SQLAlchemy keeps a checked-out connection alive by itself."""
    import gc
    import weakref

    engine = nbjobs.connect(db_url, secret="test-secret")
    engine.enqueue(add, 1)
    engine.jobs()
    store = engine.store
    assert (isinstance(store, SqlStore) and store._writer is not None) or db_url.startswith("postgresql")
    dropped = weakref.ref(engine)
    del engine
    gc.collect()
    assert dropped() is None
    assert store.engine.pool.checkedout() == 0  # the writer's connection went back and the pool was emptied
    assert isinstance(store, SqlStore) and store._writer is None


def test_a_job_handle_outliving_its_engine_works_and_leaves_no_connection_open(db_url: str) -> None:
    """After `%reload_ext nbjobs` (or a `with` block's end) the notebook's Job handles still read and
    change their jobs; each such call opened connections that stayed in a new pool for good (Python
    3.13 reports them: "ResourceWarning: unclosed database")."""
    with nbjobs.connect(db_url, secret="test-secret") as engine:
        job = engine.enqueue(add, 1)
    store = engine.store
    assert isinstance(store, SqlStore)
    assert job.state is JobState.ENQUEUED  # a read
    job.cancel()  # a write
    assert job.state is JobState.DELETED
    assert engine.enqueue(add, 2).state is JobState.ENQUEUED  # the engine too, as before
    pool = store.engine.pool
    assert pool.checkedin() == 0 and pool.checkedout() == 0 and store._writer is None


def test_a_job_calling_sys_exit_fails_and_its_worker_goes_on(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)  # one worker: had it died, nothing else would run
    exited = engine.options(retries=0).enqueue(exits, 3)
    with pytest.raises(JobFailedError, match="SystemExit: 3"):
        exited.result(timeout=10)
    interrupted = engine.options(retries=0).enqueue(interrupts)
    with pytest.raises(JobFailedError, match="KeyboardInterrupt"):
        interrupted.result(timeout=10)
    assert engine.enqueue(add, 2, 3).result(timeout=10) == 5


@pytest.mark.parametrize(("fn", "error"), [
    (aborts, "LibraryAbort: abort from a library"),
    (generator_exit, "GeneratorExit"),
    (aborts_async, "LibraryAbort: abort from an async library"),
])
def test_any_base_exception_fails_its_job_and_the_worker_goes_on(
    engine: nbjobs.Engine, fn: Any, error: str
) -> None:
    # Such an exception used to end the worker thread: its job stayed Processing for good (the
    # heartbeat kept its lease) and the server had one worker less.
    engine.start_server(workers=1)
    failing = engine.options(retries=1, retry_base=0.01).enqueue(fn)
    with pytest.raises(JobFailedError, match=error):
        failing.result(timeout=10)
    assert failing.record().attempts == 2  # retried like any failure
    assert engine.enqueue(add, 2, 3).result(timeout=10) == 5
    assert engine.server is not None
    assert [t.is_alive() for t in engine.server.dispatcher._workers] == [True]


class _StrFails(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str failed")


class _ReduceExits:
    def __reduce__(self) -> str:
        raise SystemExit("reduce exits")


class _Locked:
    def __init__(self) -> None:
        self.lock = threading.Lock()


def raises_unprintable() -> None:
    raise _StrFails()


def returns_exiting() -> object:
    return _ReduceExits()


def returns_locked() -> object:
    return _Locked()


def test_odd_failures_and_results_fail_the_attempt_with_a_clear_record(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)  # one worker: each case must leave it alive
    odd = engine.options(retries=0).enqueue(raises_unprintable)
    assert odd.wait(timeout=10) is JobState.FAILED
    assert odd.record().error_message == "<_StrFails whose str() failed>"
    exiting = engine.options(retries=0).enqueue(returns_exiting)
    assert exiting.wait(timeout=10) is JobState.FAILED and exiting.record().error_type == "SystemExit"
    locked = engine.options(retries=0).enqueue(returns_locked)
    with pytest.raises(JobFailedError, match=r"the job's return value \(_Locked\) cannot be pickled"):
        locked.result(timeout=10)
    assert engine.enqueue(add, 1, 1).result(timeout=10) == 2


def test_a_job_of_another_database_is_never_taken_for_one_of_this(
    engine: nbjobs.Engine, tmp_path: Path
) -> None:
    other = nbjobs.connect(f"sqlite:///{tmp_path / 'other.db'}", secret="test-secret")
    try:
        foreign = other.enqueue(add, 1)
        local = engine.enqueue(add, 2)  # the same id as `foreign`
        assert local.id == foreign.id
        for change in (engine.requeue, engine.delete, engine.cancel, engine.history):
            with pytest.raises(InvalidJobError, match="belongs to another database"):
                change(foreign)
        with pytest.raises(InvalidJobError, match="belongs to another database"):
            engine.requeue([local, foreign])  # checked before anything changes
        assert local.state is JobState.ENQUEUED
    finally:
        other.close()


def test_a_job_of_another_engine_on_the_same_database_is_taken(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two engines on one database (the default one and a connect(), a relative and an absolute
    path) share their Jobs."""
    if db_url.startswith("sqlite"):
        monkeypatch.chdir(tmp_path)
        first, second = "sqlite:///jobs.db", f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        first = second = db_url
    with nbjobs.connect(first, secret="s") as a, nbjobs.connect(second, secret="s") as b:
        job = a.enqueue(add, 1, 2)
        assert b.job(job.id) == job and len({b.job(job.id), job}) == 1
        follow = b.after([job], add, 3, 4)  # a continuation of the other engine's Job
        b.start_server(workers=1)
        assert b.results([job, follow], timeout=20) == [3, 7]
        assert b.requeue(job) is JobState.ENQUEUED


def test_an_executor_that_fails_fails_the_attempt_saying_why(engine: nbjobs.Engine) -> None:
    # E.g. worker processes that cannot start (a script without `if __name__ == "__main__":` under
    # forkserver): the job's error is that cause, not a bare "executor failed".
    engine.start_server(workers=1)
    assert engine.server is not None

    def cannot_start(job: object, ctx: object) -> object:
        raise RuntimeError("worker processes cannot start here")

    engine.server.dispatcher.executors["process"] = cannot_start  # type: ignore[assignment]
    job = engine.options(executor="process", retries=0).enqueue(add, 1, 2)
    with pytest.raises(JobFailedError, match="RuntimeError: worker processes cannot start here"):
        job.result(timeout=10)
    assert "cannot_start" in (job.record().error_traceback or "")
    assert engine.enqueue(add, 2, 3).result(timeout=10) == 5


def stops_its_server() -> str:
    nbjobs.current_job().engine.stop_server()
    return "stopped"


def test_a_job_stopping_its_own_server_is_refused_at_once(engine: nbjobs.Engine) -> None:
    # It used to wait for itself until the shutdown timeout, then be put back in its queue
    # unfinished, to stop the next server that ran it.
    engine.start_server(workers=1)
    job = engine.options(retries=0).enqueue(stops_its_server)
    with pytest.raises(JobFailedError, match="stopping that server from inside it would wait for the job"):
        job.result(timeout=10)
    assert engine.server is not None and engine.server.running
    assert engine.enqueue(add, 2, 3).result(timeout=10) == 5
