"""Recurring definitions in storage, on a real SQLite file and real PostgreSQL (see tests/conftest.py)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from nbjobs.cron import due_fires, next_fire, parse_schedule
from nbjobs.model import JobOptions, JobState, NewJob, Outcome, OutcomeKind
from nbjobs.storage import JobFilter, SqlStore
from nbjobs.storage.base import RecurringRecord, RecurringSpec

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


def spec(rid: str = "report", cron: str = "*/15 * * * *", **kw: object) -> RecurringSpec:
    values: dict[str, object] = {
        "id": rid, "cron": cron, "tz": "UTC", "function": "tests.jobs:report", "payload": b"args",
        "options": JobOptions(queue="reports", retries=1), "next_fire": T0 + timedelta(minutes=15),
    }
    values.update(kw)
    return RecurringSpec(**values)  # type: ignore[arg-type]


def job_for(rid: str, fire: datetime | None, *, key: str | None = None) -> NewJob:
    return NewJob(
        function="tests.jobs:report", payload=b"args", options=JobOptions(queue="reports", key=key),
        recurring_id=rid, fire_time=fire, reason=f"recurring {rid} fire {fire}",
    )


def must_get(store: SqlStore, rid: str) -> RecurringRecord:
    rec = store.get_recurring(rid)
    assert rec is not None
    return rec


def recurring_jobs(store: SqlStore, rid: str) -> list[dict[str, object]]:
    return store.query(JobFilter(recurring_id=rid, newest_first=False, limit=None))


# -- definitions ----------------------------------------------------------------------------------------
def test_add_get_and_list(store: SqlStore) -> None:
    assert store.upsert_recurring(spec("b"), T0) is True
    assert store.upsert_recurring(spec("a", "0 9 * * MON-FRI", tz="Europe/Berlin", misfire="all",
                                        misfire_limit=7, misfire_grace=7200.0, overlap="skip"), T0) is True
    rec = must_get(store, "a")
    assert (rec.cron, rec.tz, rec.function, rec.payload) == ("0 9 * * MON-FRI", "Europe/Berlin",
                                                             "tests.jobs:report", b"args")
    assert rec.options == JobOptions(queue="reports", retries=1)
    assert (rec.misfire, rec.misfire_limit, rec.misfire_grace, rec.overlap) == ("all", 7, 7200.0, "skip")
    assert must_get(store, "b").misfire_grace is None
    assert rec.next_fire == T0 + timedelta(minutes=15)
    assert (rec.last_fire, rec.last_job_id, rec.last_job_state, rec.paused, rec.error) == (
        None, None, None, False, None,
    )
    assert (rec.missed, rec.last_skip, rec.created_at, rec.updated_at) == (0, None, T0, T0)
    assert [r.id for r in store.list_recurring()] == ["a", "b"]
    assert store.get_recurring("nope") is None


def test_update_keeps_history_pause_and_plan(store: SqlStore) -> None:
    store.upsert_recurring(spec(), T0)
    fire = T0 + timedelta(minutes=15)
    ids = store.claim_recurring_fire("report", fire, fire + timedelta(minutes=15), [job_for("report", fire)],
                                     fire, missed=2, note="2 missed")
    assert ids is not None
    store.set_recurring_paused("report", True, fire)
    store.set_recurring_error("report", "function not found", fire)
    later = fire + timedelta(minutes=1)
    # same schedule, new function and options: the plan and history stay, the error is cleared
    assert store.upsert_recurring(spec(function="tests.jobs:report_v2", payload=b"new",
                                       options=JobOptions(queue="io"), next_fire=T0), later) is False
    rec = must_get(store, "report")
    assert (rec.function, rec.payload, rec.options.queue, rec.error) == (
        "tests.jobs:report_v2", b"new", "io", None,
    )
    assert rec.next_fire == fire + timedelta(minutes=15)
    assert (rec.last_fire, rec.last_job_id, rec.missed, rec.last_skip) == (fire, ids[0], 2, "2 missed")
    assert rec.paused is True
    assert (rec.created_at, rec.updated_at) == (T0, later)
    # a new expression replaces the plan
    store.upsert_recurring(spec(cron="0 * * * *", next_fire=T0 + timedelta(hours=1)), later)
    assert must_get(store, "report").next_fire == T0 + timedelta(hours=1)
    store.upsert_recurring(spec(cron="0 * * * *", tz="Asia/Tokyo", next_fire=T0 + timedelta(hours=2)), later)
    assert must_get(store, "report").next_fire == T0 + timedelta(hours=2)


def test_a_window_is_stored_and_a_changed_one_replaces_the_plan(store: SqlStore) -> None:
    start, end = T0 + timedelta(hours=1), T0 + timedelta(days=2)
    store.upsert_recurring(spec(start=start, end=end, next_fire=start), T0)
    rec = must_get(store, "report")
    assert (rec.start, rec.end, rec.next_fire) == (start, end, start)
    fire = start
    assert store.claim_recurring_fire("report", fire, fire + timedelta(minutes=15),
                                      [job_for("report", fire)], fire)
    # the same expression and window again: the plan stays
    store.upsert_recurring(spec(start=start, end=end, next_fire=start), fire)
    assert must_get(store, "report").next_fire == fire + timedelta(minutes=15)
    # a new end (the same expression): the client's plan for the new window replaces it
    store.upsert_recurring(spec(start=start, end=end + timedelta(days=1), next_fire=fire), fire)
    rec = must_get(store, "report")
    assert (rec.end, rec.next_fire) == (end + timedelta(days=1), fire)
    # the window taken away
    store.upsert_recurring(spec(next_fire=T0), fire)
    assert (must_get(store, "report").start, must_get(store, "report").end) == (None, None)


def test_a_resume_after_the_end_ends_the_definition(store: SqlStore) -> None:
    store.upsert_recurring(spec(end=T0 + timedelta(hours=1)), T0)
    store.set_recurring_paused("report", True, T0)
    assert store.set_recurring_paused("report", False, T0 + timedelta(hours=2), next_fire=None)
    rec = must_get(store, "report")
    assert (rec.paused, rec.next_fire) == (False, None)
    assert store.due_recurring(T0 + timedelta(days=9)) == []  # an ended definition is never due
    assert store.next_recurring_fire() is None
    store.set_recurring_paused("report", True, T0)  # a pause without a plan leaves it as it is
    assert must_get(store, "report").next_fire is None


def test_remove_keeps_the_jobs(store: SqlStore) -> None:
    store.upsert_recurring(spec(), T0)
    fire = T0 + timedelta(minutes=15)
    assert store.claim_recurring_fire("report", fire, fire + timedelta(minutes=15),
                                      [job_for("report", fire)], fire)
    assert store.remove_recurring("report") is True
    assert store.remove_recurring("report") is False
    assert store.get_recurring("report") is None
    assert len(recurring_jobs(store, "report")) == 1


def test_pause_resume_and_due(store: SqlStore) -> None:
    store.upsert_recurring(spec("a", next_fire=T0 + timedelta(minutes=5)), T0)
    store.upsert_recurring(spec("b", next_fire=T0 + timedelta(minutes=1)), T0)
    store.upsert_recurring(spec("c", next_fire=T0 + timedelta(hours=1)), T0)
    assert store.next_recurring_fire() == T0 + timedelta(minutes=1)
    assert [r.id for r in store.due_recurring(T0 + timedelta(minutes=10))] == ["b", "a"]
    assert [r.id for r in store.due_recurring(T0 + timedelta(minutes=10), limit=1)] == ["b"]
    assert store.due_recurring(T0) == []
    assert store.set_recurring_paused("b", True, T0) is True
    assert store.next_recurring_fire() == T0 + timedelta(minutes=5)
    assert [r.id for r in store.due_recurring(T0 + timedelta(minutes=10))] == ["a"]
    # a claim computed before the pause loses
    fire = T0 + timedelta(minutes=1)
    lost = store.claim_recurring_fire("b", fire, fire + timedelta(minutes=15), [job_for("b", fire)], fire)
    assert lost is None
    assert recurring_jobs(store, "b") == []
    # resume from now: the fire times during the pause are not caught up
    resumed = T0 + timedelta(hours=3)
    assert store.set_recurring_paused("b", False, resumed, next_fire=resumed + timedelta(minutes=15))
    rec = must_get(store, "b")
    assert (rec.paused, rec.next_fire, rec.updated_at) == (False, resumed + timedelta(minutes=15), resumed)
    assert store.set_recurring_paused("nope", True, T0) is False


def test_error_is_recorded_and_cleared(store: SqlStore) -> None:
    store.upsert_recurring(spec(), T0)
    assert store.set_recurring_error("report", "FunctionNotFoundError: tests.jobs:report", T0)
    assert must_get(store, "report").error == "FunctionNotFoundError: tests.jobs:report"
    assert [r.id for r in store.due_recurring(T0 + timedelta(hours=1))] == ["report"]  # still visible
    assert store.set_recurring_error("report", None, T0)
    assert must_get(store, "report").error is None
    assert store.set_recurring_error("nope", "x", T0) is False


# -- claiming fires -------------------------------------------------------------------------------------
def test_claim_creates_jobs_and_advances_the_plan(store: SqlStore) -> None:
    store.upsert_recurring(spec(), T0)
    fire = T0 + timedelta(minutes=15)
    now = fire + timedelta(milliseconds=300)
    ids = store.claim_recurring_fire(
        "report", fire, fire + timedelta(minutes=15), [job_for("report", fire)], now
    )
    assert ids is not None and len(ids) == 1
    job = store.get(ids[0])
    assert job is not None
    assert (job.state, job.recurring_id, job.fire_time, job.queue, job.created_at) == (
        JobState.ENQUEUED, "report", fire, "reports", now,
    )
    assert [(h.state, h.reason) for h in store.history(ids[0])] == [
        (JobState.ENQUEUED, f"recurring report fire {fire}")
    ]
    rec = must_get(store, "report")
    assert (rec.next_fire, rec.last_fire, rec.last_job_id, rec.last_job_state, rec.missed) == (
        fire + timedelta(minutes=15), fire, ids[0], JobState.ENQUEUED, 0,
    )
    # the same fire time again, or a stale plan, or an unknown id: nothing happens
    assert store.claim_recurring_fire("report", fire, fire + timedelta(minutes=15),
                                      [job_for("report", fire)], now) is None
    assert store.claim_recurring_fire("report", T0, fire, [job_for("report", T0)], now) is None
    assert store.claim_recurring_fire("nope", fire, fire, [job_for("nope", fire)], now) is None
    assert len(recurring_jobs(store, "report")) == 1
    # the latest job's state is followed
    store.delete(ids[0], now, "test")
    assert must_get(store, "report").last_job_state is JobState.DELETED


def test_claim_without_jobs_records_missed_fires(store: SqlStore) -> None:
    store.upsert_recurring(spec(misfire="skip"), T0)
    fire = T0 + timedelta(minutes=15)
    now = T0 + timedelta(hours=1, minutes=7)
    assert store.claim_recurring_fire("report", fire, T0 + timedelta(hours=1, minutes=15), [], now,
                                      missed=4, note="4 fire times missed while no server ran") == []
    rec = must_get(store, "report")
    assert (rec.next_fire, rec.missed, rec.last_skip, rec.last_fire, rec.last_job_id) == (
        T0 + timedelta(hours=1, minutes=15), 4, "4 fire times missed while no server ran", None, None,
    )


def test_claim_several_fire_times_at_once(store: SqlStore) -> None:
    store.upsert_recurring(spec(misfire="all"), T0)
    fires = [T0 + timedelta(minutes=15 * i) for i in range(1, 5)]
    ids = store.claim_recurring_fire("report", fires[0], fires[-1] + timedelta(minutes=15),
                                     [job_for("report", f) for f in fires], fires[-1], missed=1)
    assert ids is not None and len(ids) == 4
    assert [j["fire_time"] for j in recurring_jobs(store, "report")] == fires
    rec = must_get(store, "report")
    assert (rec.last_fire, rec.last_job_id, rec.missed) == (fires[-1], ids[-1], 1)


def test_overlap_skip_while_previous_run_is_unfinished(store: SqlStore) -> None:
    store.upsert_recurring(spec(overlap="skip"), T0)
    f1, f2, f3 = (T0 + timedelta(minutes=15 * i) for i in (1, 2, 3))
    first = store.claim_recurring_fire("report", f1, f2, [job_for("report", f1)], f1)
    assert first is not None and len(first) == 1
    # still enqueued: the next fire is skipped, recorded, and the plan moves on
    assert store.claim_recurring_fire("report", f2, f3, [job_for("report", f2)], f2) == []
    rec = must_get(store, "report")
    assert (rec.next_fire, rec.last_job_id, rec.last_fire, rec.missed) == (f3, first[0], f1, 1)
    assert rec.last_skip is not None
    assert f2.isoformat(timespec="seconds") in rec.last_skip
    assert f"job {first[0]}" in rec.last_skip and "enqueued" in rec.last_skip
    # running counts as unfinished too
    claimed = store.acquire("srv", ["reports"], 1, f3 + timedelta(minutes=5), f3)
    assert [c.id for c in claimed] == first
    f4 = f3 + timedelta(minutes=15)
    assert store.claim_recurring_fire("report", f3, f4, [job_for("report", f3)], f3, note="late") == []
    rec = must_get(store, "report")
    assert rec.missed == 2 and rec.last_skip is not None and "processing" in rec.last_skip
    assert rec.last_skip.startswith("late; skipped")
    # once it finished, the next fire runs; with several due, only the latest
    assert store.delete(first[0], f4, "test") is JobState.PROCESSING  # cancel requested
    store.finish("srv", [Outcome(job_id=first[0], kind=OutcomeKind.CANCELLED, finished_at=f4)], f4)
    assert must_get(store, "report").last_job_state is JobState.DELETED
    f5, f6 = f4 + timedelta(minutes=15), f4 + timedelta(minutes=30)
    ids = store.claim_recurring_fire("report", f4, f6, [job_for("report", f4), job_for("report", f5)], f5)
    assert ids is not None and len(ids) == 1
    assert [j["fire_time"] for j in recurring_jobs(store, "report")] == [f1, f5]
    rec = must_get(store, "report")
    assert (rec.last_fire, rec.last_job_id, rec.missed) == (f5, ids[0], 3)
    assert rec.last_skip is not None and "only the latest" in rec.last_skip


def test_fire_times_already_fired_are_never_created_again(store: SqlStore) -> None:
    store.upsert_recurring(spec(), T0)
    fire = T0 + timedelta(minutes=15)
    assert store.claim_recurring_fire("report", fire, fire + timedelta(minutes=15),
                                      [job_for("report", fire)], fire)
    # someone resets the plan to a fire time that already ran
    store.set_recurring_paused("report", False, fire, next_fire=fire)
    assert store.claim_recurring_fire("report", fire, fire + timedelta(minutes=15),
                                      [job_for("report", fire)], fire) == []
    assert len(recurring_jobs(store, "report")) == 1
    assert must_get(store, "report").next_fire == fire + timedelta(minutes=15)


def test_unique_key_returns_the_unfinished_job(store: SqlStore) -> None:
    store.upsert_recurring(spec(), T0)
    f1, f2, f3 = (T0 + timedelta(minutes=15 * i) for i in (1, 2, 3))
    first = store.claim_recurring_fire("report", f1, f2, [job_for("report", f1, key="only-one")], f1)
    again = store.claim_recurring_fire("report", f2, f3, [job_for("report", f2, key="only-one")], f2)
    assert first is not None and again == first
    assert len(recurring_jobs(store, "report")) == 1


def test_trigger_runs_now_and_leaves_the_schedule(store: SqlStore) -> None:
    store.upsert_recurring(spec(), T0)
    now = T0 + timedelta(minutes=3)
    job_id = store.trigger_recurring("report", job_for("report", None), now)
    assert job_id is not None
    job = store.get(job_id)
    assert job is not None
    assert (job.state, job.recurring_id, job.fire_time) == (JobState.ENQUEUED, "report", None)
    rec = must_get(store, "report")
    assert (rec.next_fire, rec.last_fire, rec.last_job_id) == (T0 + timedelta(minutes=15), None, job_id)
    assert store.trigger_recurring("nope", job_for("nope", None), now) is None
    assert recurring_jobs(store, "nope") == []


# -- never fired twice -----------------------------------------------------------------------------------
def _race(stores: list[SqlStore], fire: datetime) -> list[list[int] | None]:
    """Every store claims the same fire time at once; returns what each got."""
    barrier = threading.Barrier(len(stores))
    results: list[list[int] | None] = [None] * len(stores)
    errors: list[BaseException] = []

    def claim(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = stores[index].claim_recurring_fire(
                "race", fire, fire + timedelta(seconds=1), [job_for("race", fire)], fire
            )
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    return results


def test_racing_claims_have_exactly_one_winner(db_url: str) -> None:
    stores = [SqlStore(db_url) for _ in range(6)]
    try:
        stores[0].upsert_recurring(spec("race", "* * * * * *", next_fire=T0 + timedelta(seconds=1)), T0)
        for second in range(1, 6):
            results = _race(stores, T0 + timedelta(seconds=second))
            winners = [r for r in results if r is not None]
            assert len(winners) == 1 and len(winners[0]) == 1, results
        fire_times = [j["fire_time"] for j in recurring_jobs(stores[0], "race")]
        assert fire_times == [T0 + timedelta(seconds=i) for i in range(1, 6)]
    finally:
        for s in stores:
            s.close()


def test_three_schedulers_one_job_per_fire_time(db_url: str) -> None:
    """Three uncoordinated scheduler loops (cron + store, as phase 2's scheduler will) over a
    minute of a per-second schedule: every fire time gets exactly one job."""
    stores = [SqlStore(db_url) for _ in range(3)]
    schedule = parse_schedule("* * * * * *")
    end = T0 + timedelta(seconds=60)
    try:
        stores[0].upsert_recurring(
            spec("tick", "* * * * * *", misfire="all", misfire_limit=1000,
                 next_fire=next_fire(schedule, T0)),
            T0,
        )
        errors: list[BaseException] = []

        def scheduler(store: SqlStore, step: timedelta) -> None:
            try:
                now = T0
                while now <= end:
                    for rec in store.due_recurring(now):
                        assert rec.next_fire is not None
                        plan = due_fires(schedule, rec.next_fire, now, rec.misfire, rec.misfire_limit)
                        store.claim_recurring_fire(
                            rec.id, rec.next_fire, plan.next_fire,
                            [job_for(rec.id, f) for f in plan.fires], now, missed=plan.missed,
                        )
                    now += step
            except BaseException as exc:
                errors.append(exc)

        steps = [timedelta(milliseconds=250), timedelta(milliseconds=400), timedelta(milliseconds=700)]
        threads = [
            threading.Thread(target=scheduler, args=(s, st)) for s, st in zip(stores, steps, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        fire_times = Counter(j["fire_time"] for j in recurring_jobs(stores[0], "tick"))
        assert set(fire_times.values()) == {1}
        assert sorted(fire_times) == [T0 + timedelta(seconds=i) for i in range(1, 61)]
        assert must_get(stores[0], "tick").missed == 0
    finally:
        for s in stores:
            s.close()


@pytest.mark.parametrize("misfire", ["once", "skip"])
def test_downtime_policies_through_the_store(store: SqlStore, misfire: str) -> None:
    schedule = parse_schedule("*/15 * * * *")
    store.upsert_recurring(spec(misfire=misfire, next_fire=T0 + timedelta(minutes=15)), T0)
    now = T0 + timedelta(hours=2, minutes=1)  # 8 fire times passed while no server ran
    rec = must_get(store, "report")
    assert rec.next_fire is not None
    plan = due_fires(schedule, rec.next_fire, now, rec.misfire, rec.misfire_limit)
    ids = store.claim_recurring_fire("report", rec.next_fire, plan.next_fire,
                                     [job_for("report", f) for f in plan.fires], now, missed=plan.missed)
    assert ids is not None
    rec = must_get(store, "report")
    assert rec.next_fire == T0 + timedelta(hours=2, minutes=15)
    if misfire == "once":
        assert [j["fire_time"] for j in recurring_jobs(store, "report")] == [T0 + timedelta(hours=2)]
        assert rec.missed == 7
    else:
        assert recurring_jobs(store, "report") == [] and rec.missed == 8
