"""The Store contract, on a real SQLite file and real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from nbjobs.errors import IllegalTransitionError, JobNotFoundError
from nbjobs.model import JobOptions, JobState, NewJob, Outcome, OutcomeKind, ServerInfo
from nbjobs.storage import JobFilter, SqlStore
from tests.conftest import wait_for

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S = JobState


def spec(i: int = 0, **options: object) -> NewJob:
    return NewJob(function="mod:fn", payload=f"p{i}".encode(), options=JobOptions(**options))  # type: ignore[arg-type]


def lease(seconds: float = 30) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_claims_are_exclusive_under_racing_threads(store: SqlStore) -> None:
    n = 400
    store.enqueue([spec(i) for i in range(n)], T0)
    taken: list[int] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while True:
            got = store.acquire(name, ["*"], 7, lease(), T0)
            if not got:
                return
            with lock:
                taken.extend(j.id for j in got)

    threads = [threading.Thread(target=claimer, args=(f"s{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(taken) == n and len(set(taken)) == n


def test_finish_only_applies_to_jobs_the_server_holds(store: SqlStore) -> None:
    [a, b] = store.enqueue([spec(1), spec(2)], T0)
    claimed = store.acquire("s1", ["default"], 2, lease(), T0)
    assert {c.id for c in claimed} == {a.id, b.id}
    assert claimed[0].attempts == 1
    lost = store.finish(
        "s2", [Outcome(job_id=a.id, kind=OutcomeKind.SUCCEEDED, finished_at=T0, result=b"r")], T0
    )
    assert lost == [a.id]
    lost = store.finish("s1", [
        Outcome(job_id=a.id, kind=OutcomeKind.SUCCEEDED, finished_at=T0, result=b"r"),
        Outcome(job_id=b.id, kind=OutcomeKind.FAILED, finished_at=T0, error_type="ValueError",
                error_message="x", retry_at=T0 + timedelta(seconds=5)),
    ], T0)
    assert lost == []
    assert store.get(a.id).state is S.SUCCEEDED  # type: ignore[union-attr]
    rec_b = store.get(b.id)
    assert rec_b is not None and rec_b.state is S.SCHEDULED and rec_b.error_type == "ValueError"
    assert store.next_due() == T0 + timedelta(seconds=5)
    assert store.promote_due(T0) == 0
    assert store.promote_due(T0 + timedelta(seconds=5)) == 1
    assert store.get(b.id).state is S.ENQUEUED  # type: ignore[union-attr]


def test_states_results_and_counts_of_many_jobs_in_one_read(store: SqlStore) -> None:
    [a, b, c] = store.enqueue([spec(1), spec(2), spec(3)], T0)
    store.acquire("s1", ["default"], 2, lease(), T0)
    store.finish("s1", [
        Outcome(job_id=a.id, kind=OutcomeKind.SUCCEEDED, finished_at=T0, result=b"value"),
        Outcome(job_id=b.id, kind=OutcomeKind.FAILED, finished_at=T0, error_type="ValueError",
                error_message="bad", error_traceback="Traceback …"),
    ], T0)
    assert store.states_of([a.id, b.id, c.id, 999]) == {a.id: S.SUCCEEDED, b.id: S.FAILED, c.id: S.ENQUEUED}
    found = store.results_of([a.id, b.id, c.id, 999])
    assert set(found) == {a.id, b.id, c.id}  # a job that does not exist is left out
    assert (found[a.id].state, found[a.id].result) == (S.SUCCEEDED, b"value")
    assert (found[b.id].state, found[b.id].error_type, found[b.id].error_message,
            found[b.id].error_traceback) == (S.FAILED, "ValueError", "bad", "Traceback …")
    assert found[c.id].state is S.ENQUEUED and found[c.id].result is None
    assert store.state_counts([a.id, b.id, c.id, 999]) == {S.SUCCEEDED: 1, S.FAILED: 1, S.ENQUEUED: 1}
    assert store.states_of([]) == {} and store.results_of([]) == {} and store.state_counts([]) == {}


def test_user_changes_follow_the_state_machine(store: SqlStore) -> None:
    [a] = store.enqueue([spec()], T0)
    store.acquire("s1", ["*"], 1, lease(), T0)
    with pytest.raises(IllegalTransitionError, match="cannot requeue a job that is processing"):
        store.requeue(a.id, T0, "test")
    assert store.delete(a.id, T0, "stop it") is S.PROCESSING  # running: a cancel request
    reply = store.heartbeat("s1", [a.id], lease(60), T0)
    assert reply.cancel_requested == {a.id}
    with pytest.raises(JobNotFoundError):
        store.requeue(999_999, T0, "test")


def test_deleting_a_job_as_a_server_claims_it_asks_the_running_job_to_stop(store: SqlStore) -> None:
    """A delete that read Enqueued just before a claim committed raised "cannot delete a job that is
    processing" on PostgreSQL (its row lock came after the read); it now reads under the lock."""
    job_id = store.enqueue([spec()], T0)[0].id
    claim = store.engine.connect().execution_options(nbjobs_write=True)
    outcome: list[object] = []
    try:
        with claim.begin():  # a server's claim, committed only once the delete is waiting behind it
            claim.execute(text("UPDATE nbjobs_jobs SET state = 'processing' WHERE id = :id"), {"id": job_id})
            deleter = threading.Thread(target=lambda: outcome.append(
                _or_error(lambda: store.delete(job_id, T0, "deleted by user"))))
            deleter.start()
            if store.dialect.name == "postgresql":
                wait_for(lambda: _waiting_on_a_lock(store) > 0)
    finally:
        claim.close()
    deleter.join(10)
    assert outcome == [S.PROCESSING]
    assert store.get(job_id).state is S.PROCESSING and store.get(job_id).cancel_requested


def _or_error(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as exc:  # the test shows which
        return exc


def _waiting_on_a_lock(store: SqlStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )).scalar_one())


def test_heartbeat_reports_lost_jobs_and_reaper_returns_expired_leases(store: SqlStore) -> None:
    now = T0
    store.register_server(ServerInfo(id="dead", name="d", host="h", pid=1, workers=1, queues=("*",),
                                     started_at=now, heartbeat_at=now))
    store.register_server(ServerInfo(id="live", name="l", host="h", pid=2, workers=1, queues=("*",),
                                     started_at=now, heartbeat_at=now))
    [a, b] = store.enqueue([spec(1), spec(2)], now)
    store.acquire("dead", ["*"], 1, now + timedelta(seconds=30), now)
    store.acquire("live", ["*"], 1, now + timedelta(seconds=30), now)
    later = now + timedelta(seconds=40)
    store.heartbeat("live", [b.id], later + timedelta(seconds=30), later)
    report = store.reap(later, server_timeout=30)
    assert report.dead_servers == ("dead",) and report.returned_jobs == (a.id,)
    assert store.get(a.id).state is S.ENQUEUED  # type: ignore[union-attr]
    assert "its server stopped" in store.history(a.id)[-1].reason
    assert store.get(b.id).state is S.PROCESSING  # type: ignore[union-attr]
    # The dead server comes back: its job is gone.
    reply = store.heartbeat("dead", [a.id], later + timedelta(seconds=30), later)
    assert not reply.registered and reply.lost == {a.id}


def test_unique_key_and_requeue_conflict(store: SqlStore) -> None:
    [a] = store.enqueue([spec(1, key="k")], T0)
    [b] = store.enqueue([spec(2, key="k")], T0)
    assert a.id == b.id and not b.created
    store.delete(a.id, T0, "x")
    [c] = store.enqueue([spec(3, key="k")], T0)
    assert c.created and c.id != a.id
    with pytest.raises(IllegalTransitionError, match="unique key"):
        store.requeue(a.id, T0, "again")
    assert store.get(a.id).state is S.DELETED  # type: ignore[union-attr]


def test_prune_removes_old_finished_jobs_with_their_history(store: SqlStore) -> None:
    ids = [e.id for e in store.enqueue([spec(i) for i in range(5)], T0)]
    store.acquire("s", ["*"], 5, lease(), T0)
    store.finish("s", [Outcome(job_id=i, kind=OutcomeKind.SUCCEEDED, finished_at=T0) for i in ids[:3]]
                 + [Outcome(job_id=i, kind=OutcomeKind.FAILED, finished_at=T0, error_type="E")
                    for i in ids[3:]], T0)
    day = 86400.0
    assert store.prune(T0 + timedelta(days=6), keep_succeeded=7 * day, keep_deleted=7 * day, batch=10) == 0
    assert store.prune(T0 + timedelta(days=8), keep_succeeded=7 * day, keep_deleted=7 * day, batch=2) == 2
    assert store.prune(T0 + timedelta(days=8), keep_succeeded=7 * day, keep_deleted=7 * day, batch=2) == 1
    left = store.query(JobFilter())
    assert sorted(r["id"] for r in left) == ids[3:]  # failed jobs are kept until deleted
    assert store.history(ids[0]) == []


def test_lease_lock_has_one_owner_at_a_time(store: SqlStore) -> None:
    assert store.try_lock("reaper", "a", T0 + timedelta(seconds=10), T0)
    assert not store.try_lock("reaper", "b", T0 + timedelta(seconds=10), T0 + timedelta(seconds=5))
    assert store.try_lock("reaper", "a", T0 + timedelta(seconds=20), T0 + timedelta(seconds=5))
    assert store.try_lock("reaper", "b", T0 + timedelta(seconds=40), T0 + timedelta(seconds=21))
    # An owner known dead gives it up at once.
    assert not store.try_lock("reaper", "c", T0 + timedelta(seconds=50), T0 + timedelta(seconds=22),
                              taking_from=["a"])
    assert store.try_lock("reaper", "c", T0 + timedelta(seconds=50), T0 + timedelta(seconds=22),
                          taking_from=["b"])


def server(server_id: str, *queues: str) -> ServerInfo:
    return ServerInfo(id=server_id, name=server_id, host="h", pid=1, workers=1, queues=queues,
                      started_at=T0, heartbeat_at=T0)


def test_private_queues_of_servers_known_dead_are_reported_and_their_jobs_discarded(store: SqlStore) -> None:
    store.register_server(server("gone", "default@kernel-1", "*"))
    store.register_server(server("silent", "default@kernel-2", "*"))
    store.register_server(server("live", "default@kernel-3", "*"))
    store.heartbeat("live", [], T0 + timedelta(seconds=60), T0 + timedelta(seconds=40))
    ran, waiting, later, public = (e.id for e in store.enqueue(
        [spec(0, queue="default@kernel-1"), spec(1, queue="default@kernel-1"),
         NewJob(function="tests.fake:fn", payload=b"x", options=JobOptions(queue="default@kernel-1"),
                run_at=T0 + timedelta(hours=1)), spec(3)], T0))
    (claimed,) = store.acquire("gone", ["default@kernel-1"], 1, T0 + timedelta(seconds=30), T0)
    assert claimed.id == ran
    follow = store.enqueue([NewJob(function="tests.fake:fn", payload=b"x", options=JobOptions(),
                                   parent_id=ran)], T0)[0].id
    report = store.reap(T0 + timedelta(seconds=40), server_timeout=30, dead_server_ids=["gone"])
    # "silent" timed out (it may only be paused, so its queue is left); "gone" is known dead.
    assert set(report.dead_servers) == {"gone", "silent"} and report.returned_jobs == (ran,)
    assert report.orphaned_queues == ("default@kernel-1",)
    now = T0 + timedelta(seconds=41)
    assert store.discard_queues(report.orphaned_queues, now, "its process is gone") == [ran, waiting, later]
    states = store.states_of([ran, waiting, later, public, follow])
    assert states == {ran: JobState.DELETED, waiting: JobState.DELETED, later: JobState.DELETED,
                      public: JobState.ENQUEUED, follow: JobState.DELETED}  # the continuation follows
    assert store.history(waiting)[-1].reason == "its process is gone"
    assert store.discard_queues([], now, "x") == []


def test_queue_order_then_priority_then_age(store: SqlStore) -> None:
    ids = [e.id for e in store.enqueue(
        [spec(0, queue="low"), spec(1, queue="high"), spec(2, queue="high", priority=3), spec(3)], T0)]
    got = store.acquire("s", ["high", "low"], 3, lease(), T0)
    assert [j.id for j in got] == [ids[2], ids[1], ids[0]]
    assert store.queue_lengths() == {"default": 1}


def test_a_claim_takes_one_job_per_lock_and_none_while_the_lock_is_held(store: SqlStore) -> None:
    a, b, plain, c = store.enqueue([spec(1, lock="L"), spec(2, lock="L"), spec(3), spec(4, lock="M")], T0)
    assert {j.id for j in store.acquire("s1", ["*"], 10, lease(), T0)} == {a.id, plain.id, c.id}
    assert store.acquire("s2", ["*"], 10, lease(), T0) == []  # b waits: a holds L
    store.finish("s1", [Outcome(job_id=a.id, kind=OutcomeKind.SUCCEEDED, finished_at=T0)], T0)
    assert [j.id for j in store.acquire("s2", ["*"], 10, lease(), T0)] == [b.id]


def test_the_database_refuses_a_second_holder_of_a_lock(store: SqlStore) -> None:
    from sqlalchemy import update
    from sqlalchemy.exc import IntegrityError

    from nbjobs.storage.schema import jobs

    a, b = store.enqueue([spec(1, lock="L"), spec(2, lock="L")], T0)
    assert [j.id for j in store.acquire("s1", ["*"], 10, lease(), T0)] == [a.id]
    with pytest.raises(IntegrityError), store.engine.begin() as conn:  # whatever a claim got wrong
        conn.execute(update(jobs).where(jobs.c.id == b.id).values(state="processing"))
    assert store.get(b.id).state is S.ENQUEUED  # type: ignore[union-attr]
