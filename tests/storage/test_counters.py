"""The per-state counters (kept by triggers) always equal a real count, whatever wrote the jobs."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import func, select, text, update

import nbjobs
from nbjobs.clock import ManualClock
from nbjobs.model import ContinueOn, JobOptions, JobState, NewJob, Outcome, OutcomeKind
from nbjobs.storage import SqlStore
from nbjobs.storage.schema import jobs

S = JobState


def real_counts(store: SqlStore) -> dict[JobState, int]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
    found = {JobState(s): int(n) for s, n in rows}
    return {s: found.get(s, 0) for s in JobState}


def spec(**kw: object) -> NewJob:
    opts = JobOptions(**{k: v for k, v in kw.items() if k in ("queue", "key")})  # type: ignore[arg-type]
    rest = {k: v for k, v in kw.items() if k not in ("queue", "key")}
    return NewJob(function="tests.fake:fn", payload=b"x", options=opts, **rest)  # type: ignore[arg-type]


def test_counters_match_real_counts_after_a_mixed_workload(store: SqlStore) -> None:
    clock = ManualClock()
    now = clock.now()
    made = store.enqueue([spec() for _ in range(20)] + [spec(queue="io", key="k1"), spec(key="k1")], now)
    parent = made[0].id
    store.enqueue([spec(run_at=now + timedelta(seconds=30)) for _ in range(5)], now)
    store.enqueue([spec(parent_id=parent), spec(parent_id=parent, continue_on=ContinueOn.FINISHED)], now)
    assert store.counts() == real_counts(store)

    claimed = store.acquire("srv", ["*"], 12, now + timedelta(seconds=60), now)
    assert len(claimed) == 12  # PostgreSQL once claimed all 21 (semi-join re-ran the LIMIT)
    assert store.counts()[S.PROCESSING] == 12
    ids = [c.id for c in claimed]
    later = now + timedelta(seconds=1)
    outcomes = [Outcome(job_id=i, kind=OutcomeKind.SUCCEEDED, finished_at=later) for i in ids[:5]]
    outcomes += [Outcome(job_id=i, kind=OutcomeKind.FAILED, finished_at=later, error_type="E")
                 for i in ids[5:8]]
    outcomes += [Outcome(job_id=ids[8], kind=OutcomeKind.FAILED, finished_at=later, error_type="E",
                         retry_at=later + timedelta(seconds=5))]
    outcomes += [Outcome(job_id=ids[9], kind=OutcomeKind.CANCELLED, finished_at=later)]
    store.finish("srv", outcomes, later)  # also releases the parent's continuations
    assert store.counts() == real_counts(store)

    store.requeue(ids[5], later, "from test")
    store.delete(ids[6], later, "from test")
    store.delete(ids[10], later, "from test")  # running: only a cancel request, no state change
    assert store.promote_due(later + timedelta(seconds=60)) == 6
    assert store.counts() == real_counts(store)

    store.reap(later + timedelta(seconds=120), server_timeout=1.0, dead_server_ids=["srv"])
    assert store.prune(later + timedelta(days=30), keep_succeeded=0, keep_deleted=0, batch=100) > 0
    with store.engine.begin() as conn:  # hand-written SQL is counted too
        conn.execute(update(jobs).where(jobs.c.state == "enqueued").values(state="failed"))
    got = store.counts()
    assert got == real_counts(store)
    assert sum(got.values()) > 0 and got[S.FAILED] > 0


def test_counters_stay_exact_under_concurrent_writers(store: SqlStore) -> None:
    clock = ManualClock()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for _ in range(10):
                now = clock.now()
                store.enqueue([spec() for _ in range(5)], now)
                claimed = store.acquire(f"srv{n}", ["*"], 3, now + timedelta(seconds=60), now)
                store.finish(f"srv{n}", [Outcome(job_id=c.id, kind=OutcomeKind.SUCCEEDED,
                                                 finished_at=now) for c in claimed], now)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    got = store.counts()
    assert got == real_counts(store)
    assert sum(got.values()) == 200


def test_counters_are_rebuilt_for_a_database_that_had_none(db_url: str) -> None:
    store = SqlStore(db_url)
    try:
        store.enqueue([spec() for _ in range(3)], ManualClock().now())
        with store.engine.begin() as conn:  # a database from before the counters existed
            for kind in ("ins", "upd", "del"):
                if store.dialect_name == "sqlite":
                    conn.execute(text(f"DROP TRIGGER nbjobs_count_{kind}"))
                else:
                    conn.execute(text(f"DROP TRIGGER nbjobs_count_{kind} ON nbjobs_jobs"))
            conn.execute(text("DELETE FROM nbjobs_counts"))
    finally:
        store.close()
    again = SqlStore(db_url)
    try:
        assert again.counts()[S.ENQUEUED] == 3 == real_counts(again)[S.ENQUEUED]
    finally:
        again.close()


def report() -> None:
    """A recurring job's function (stored by reference)."""


def test_recurring_fires_and_triggers_are_counted(engine: nbjobs.Engine) -> None:
    engine.recurring("report", "* * * * *", report)
    engine.trigger("report")
    store = engine.store
    assert isinstance(store, SqlStore)
    later = engine.clock.now() + timedelta(minutes=5)
    due = store.due_recurring(later)
    assert [r.id for r in due] == ["report"]
    fired = store.claim_recurring_fire("report", due[0].next_fire, later, [
        NewJob(function="tests.fake:fn", payload=b"x", options=JobOptions(), recurring_id="report",
               fire_time=due[0].next_fire)], later)
    assert fired
    assert store.counts() == real_counts(store)
    assert store.counts()[S.ENQUEUED] == 2
