"""An outcome the database refuses (too large for it, a constraint) fails its own job and holds up no
other: the server goes on. The refusals are real: a lowered SQLite length limit, triggers and CHECK
constraints on the real databases."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, text

import nbjobs
from nbjobs import JobState

from ..conftest import wait_for


@pytest.fixture(autouse=True)
def _drop_test_constraints(db_url: str) -> Iterator[None]:
    """The PostgreSQL database outlives the test (tables are only emptied): take the refusals away."""
    yield
    if db_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as conn:
            for name in ("test_small_results", "test_refuse"):
                conn.execute(f"ALTER TABLE nbjobs_jobs DROP CONSTRAINT IF EXISTS {name}")


def blob(n: int) -> bytes:
    return b"x" * n


def refuse_results_over(engine: nbjobs.Engine, limit: int) -> None:
    store: Any = engine.store
    if store.dialect_name == "sqlite":
        @event.listens_for(store.engine, "connect")
        def small(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limit)

        store.engine.dispose()  # pooled connections open again, with the limit
    else:
        with store.engine.begin() as conn:
            conn.execute(text("ALTER TABLE nbjobs_jobs ADD CONSTRAINT test_small_results "
                              f"CHECK (result IS NULL OR octet_length(result) < {limit})"))


def refuse_ending(engine: nbjobs.Engine, job_id: int) -> None:
    store: Any = engine.store
    with store.engine.begin() as conn:
        if store.dialect_name == "sqlite":
            conn.execute(text("CREATE TRIGGER test_refuse BEFORE UPDATE ON nbjobs_jobs "
                              f"WHEN NEW.id = {job_id} "
                              "AND NEW.state NOT IN ('scheduled', 'enqueued', 'processing') "
                              "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"))
        else:
            conn.execute(text("ALTER TABLE nbjobs_jobs ADD CONSTRAINT test_refuse "
                              f"CHECK (id <> {job_id} OR state IN ('scheduled', 'enqueued', 'processing'))"))


def test_a_refused_result_fails_its_job_and_the_others_are_written(engine: nbjobs.Engine) -> None:
    refuse_results_over(engine, 50_000)
    engine.start_server(workers=1)
    big = engine.options(retries=3).enqueue(blob, 100_000)
    assert big.wait(timeout=30) is JobState.FAILED
    record = big.record()
    assert record.error_type == "nbjobs.errors.UnstorableError" and record.attempts == 1
    assert "the job ended, but the database refused its outcome" in (record.error_message or "")
    assert big.history()[-1].reason == "failed: the database refused its outcome"
    jobs = [engine.enqueue(blob, 10) for _ in range(5)]
    assert engine.results(jobs, timeout=30) == [b"x" * 10] * 5


def test_an_outcome_refused_even_as_a_failure_is_left_to_its_lease(db_url: str) -> None:
    with nbjobs.connect(db_url, secret="s") as engine:
        engine.start_server(workers=1, server_timeout=600, heartbeat_interval=0.05)
        gate = engine.schedule(3600, blob, 1)  # a job whose end the database will refuse …
        refuse_ending(engine, gate.id)
        engine.job(gate.id).requeue()  # … due now
        dispatcher = engine.server.dispatcher  # type: ignore[union-attr]
        wait_for(lambda: gate.record().attempts == 1 and gate.id not in dispatcher.running)
        assert gate.state is JobState.PROCESSING  # until its lease runs out and a reaper returns it
        assert engine.enqueue(blob, 3).result(timeout=30) == b"xxx"  # the server goes on


def fails_to_be_retried() -> None:
    raise ValueError("to be retried")


def test_a_job_whose_stored_options_break_its_retry_date_fails_alone(engine: nbjobs.Engine) -> None:
    # Options are checked at the call; a row written by hand or by another version is not. A retry
    # date past the calendar (a backoff of 1e300 s) failed every turn, and no other job ran.
    import json

    from sqlalchemy import select, update

    from nbjobs.storage.schema import jobs

    job = engine.options(retries=3).enqueue(fails_to_be_retried)
    store: Any = engine.store
    with store.engine.begin() as conn:
        stored = conn.execute(select(jobs.c.options).where(jobs.c.id == job.id)).scalar_one()
        options = {**json.loads(stored), "retry_base": 1e300, "retry_cap": 1e300}
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(options=json.dumps(options)))
    engine.start_server(workers=1)
    assert job.wait(timeout=10) is JobState.FAILED
    record = job.record()
    assert record.attempts == 1 and record.error_type == "OverflowError"
    assert "nbjobs could not record this attempt: OverflowError" in (record.error_message or "")
    assert engine.enqueue(blob, 3).result(timeout=10) == b"xxx"  # the server went on
    assert engine.server is not None and engine.server.dispatcher.errors == 0
