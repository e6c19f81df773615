"""The dispatcher's storage path: finish and claim in one transaction, statements reused across
queues and batch sizes, writers of one process serialised without busy sleeps, partial indexes
still enforcing unique keys. On a real SQLite file and real PostgreSQL."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import bindparam, delete, event, inspect, select, text, update

from nbjobs.errors import SchemaVersionError
from nbjobs.model import JobOptions, JobState, NewJob, Outcome, OutcomeKind
from nbjobs.rates import QueueQuota, Rate
from nbjobs.storage import SqlStore
from nbjobs.storage.base import RecurringSpec
from nbjobs.storage.schema import SCHEMA_VERSION, meta, metadata

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S = JobState


def spec(i: int = 0, **options: object) -> NewJob:
    return NewJob(function="mod:fn", payload=f"p{i}".encode(), options=JobOptions(**options))  # type: ignore[arg-type]


def lease() -> datetime:
    return T0 + timedelta(seconds=30)


def test_finish_and_acquire_reports_and_claims_in_one_turn(store: SqlStore) -> None:
    first = store.enqueue([spec(i) for i in range(3)], T0)
    held = store.acquire("s1", ["*"], 2, lease(), T0)
    assert [c.id for c in held] == [first[0].id, first[1].id]
    outcomes = [
        Outcome(job_id=held[0].id, kind=OutcomeKind.SUCCEEDED, started_at=T0, finished_at=T0, result=b"r"),
        Outcome(job_id=held[1].id, kind=OutcomeKind.FAILED, started_at=T0, finished_at=T0,
                error_type="ValueError", error_message="boom"),
        Outcome(job_id=first[2].id, kind=OutcomeKind.SUCCEEDED, finished_at=T0),  # not held by s1
    ]
    lost, claimed = store.finish_and_acquire("s1", outcomes, ["*"], 5, lease(), T0)
    assert lost == [first[2].id]
    assert [c.id for c in claimed] == [first[2].id]  # the only one left, claimed in the same turn
    states = store.states_of([j.id for j in first])
    assert states == {first[0].id: S.SUCCEEDED, first[1].id: S.FAILED, first[2].id: S.PROCESSING}
    # Every transition has its history row.
    assert [h.state for h in store.history(first[0].id)] == [S.ENQUEUED, S.PROCESSING, S.SUCCEEDED]
    assert [h.state for h in store.history(first[2].id)] == [S.ENQUEUED, S.PROCESSING]
    # Nothing to report and no free slot: nothing happens.
    assert store.finish_and_acquire("s1", [], ["*"], 0, lease(), T0) == ([], [])


def test_claim_statement_is_reused_across_batch_sizes_and_queues(store: SqlStore) -> None:
    store.enqueue([spec(i, queue="a") for i in range(5)] + [spec(i, queue="b") for i in range(5)], T0)
    sizes = [len(store.acquire("s", ["b", "a"], n, lease(), T0)) for n in (1, 3, 2, 10)]
    assert sizes == [1, 3, 2, 4]
    assert set(store._claim_stmts) == {("a", frozenset(), False), ("b", frozenset(), False)}


def test_queue_limits_cap_each_limited_queue_and_star_takes_the_rest(store: SqlStore) -> None:
    store.enqueue([spec(i, queue=q) for q in ("gpu", "io", "default") for i in range(4)], T0)
    got = store.acquire("s", ["*"], 10, lease(), T0, queue_limits={"gpu": 1, "io": 2})
    by_queue = sorted(j.options.queue for j in got)
    assert by_queue == ["default"] * 4 + ["gpu"] + ["io"] * 2  # the limits, and all of the rest
    # a limited queue named in the list keeps its place and its room; "*" then leaves it out
    more = store.acquire("s", ["io", "*"], 10, lease(), T0, queue_limits={"io": 1, "gpu": 0})
    assert [j.options.queue for j in more] == ["io"]
    last = store.acquire("s", ["*"], 10, lease(), T0, queue_limits={"gpu": 5})
    assert sorted(j.options.queue for j in last) == ["gpu"] * 3 + ["io"]


def test_options_survive_the_parse_cache(store: SqlStore) -> None:
    store.enqueue([spec(1, retries=7, timeout=2.5, name="x"), spec(2, retries=1)], T0)
    claimed = store.acquire("s", ["*"], 2, lease(), T0)
    assert [(c.options.retries, c.options.timeout, c.options.name) for c in claimed] == [
        (7, 2.5, "x"), (1, None, None)]


def test_unique_keys_still_enforced_with_partial_index(store: SqlStore) -> None:
    [a] = store.enqueue([spec(1, key="k")], T0)
    [b] = store.enqueue([spec(2, key="k")], T0)
    assert b.id == a.id and not b.created
    store.delete(a.id, T0, "test")
    [c] = store.enqueue([spec(3, key="k")], T0)
    assert c.created and c.id != a.id


def test_writers_of_one_process_never_fail_or_duplicate(store: SqlStore) -> None:
    ids: list[int] = []
    lock = threading.Lock()

    def writer() -> None:
        for i in range(100):
            [e] = store.enqueue([spec(i)], T0)
            with lock:
                ids.append(e.id)

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ids) == 600 and len(set(ids)) == 600


def test_a_failed_schema_check_releases_its_connections(db_url: str) -> None:
    store = SqlStore(db_url)
    with store.engine.begin() as conn:
        conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="999"))
    store.close()
    with pytest.raises(SchemaVersionError):
        SqlStore(db_url)
    gc.collect()  # a pooled connection left open would warn here (warnings are errors)


@pytest.fixture
def altered_db_url(db_url: str) -> Iterator[str]:
    """`db_url` for a test that alters the schema: on PostgreSQL (one database for the session) its
    tables are dropped afterwards, so a failure midway cannot leave the next tests a schema with
    indexes or columns missing (they create it whole again); a SQLite file is the test's own."""
    yield db_url
    if db_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as conn:
            names = [t.name for t in metadata.sorted_tables] + ["nbjobs_queue_rates"]  # schema 6's
            conn.execute(f"DROP TABLE IF EXISTS {', '.join(names)} CASCADE")


def test_an_older_schema_is_upgraded_in_place(altered_db_url: str) -> None:
    db_url = altered_db_url
    store = SqlStore(db_url)
    [kept] = store.enqueue([spec()], T0)
    store.upsert_recurring(RecurringSpec(id="nightly", cron="0 2 * * *", function="tests.jobs:report",
                                         payload=b"args", options=JobOptions(), next_fire=T0), T0)
    with store.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_nbjobs_jobs_fetch_any"))
        conn.execute(text("DROP TABLE nbjobs_dependencies"))  # schema 3
        conn.execute(text("DROP INDEX ix_nbjobs_jobs_lock_held"))  # schema 4
        conn.execute(text("DROP INDEX ix_nbjobs_jobs_lock_next"))
        conn.execute(text("ALTER TABLE nbjobs_jobs DROP COLUMN lock_name"))
        conn.execute(text("DROP TABLE nbjobs_paused_queues"))  # schema 5
        conn.execute(text("ALTER TABLE nbjobs_recurring DROP COLUMN start_at"))  # schema 6
        conn.execute(text("ALTER TABLE nbjobs_recurring DROP COLUMN end_at"))
        conn.execute(text("ALTER TABLE nbjobs_recurring DROP COLUMN misfire_grace"))
        conn.execute(text("DROP TABLE nbjobs_queue_quotas"))  # schema 7: schema 6's rates move in
        real = "TIMESTAMPTZ" if db_url.startswith("postgresql") else "REAL"
        conn.execute(text(f"CREATE TABLE nbjobs_queue_rates (queue VARCHAR(200) PRIMARY KEY, "
                          f"count INTEGER NOT NULL, period FLOAT NOT NULL, set_at {real} NOT NULL)"))
        conn.execute(text("INSERT INTO nbjobs_queue_rates VALUES ('api', 60, 60.0, :at)"),
                     {"at": T0 if db_url.startswith("postgresql") else T0.timestamp()})
        conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="1"))
    store.close()
    upgraded = SqlStore(db_url)
    try:
        indexes = {ix["name"] for ix in inspect(upgraded.engine).get_indexes("nbjobs_jobs")}
        assert {"ix_nbjobs_jobs_fetch_any", "ix_nbjobs_jobs_lock_held", "ix_nbjobs_jobs_lock_next"} <= indexes
        tables = set(inspect(upgraded.engine).get_table_names())
        assert {"nbjobs_dependencies", "nbjobs_paused_queues"} <= tables
        with upgraded.engine.connect() as conn:
            version = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        assert version == str(SCHEMA_VERSION)
        assert upgraded.get(kept.id) is not None  # nothing stored was lost
        columns = {c["name"] for c in inspect(upgraded.engine).get_columns("nbjobs_recurring")}
        assert {"start_at", "end_at", "misfire_grace"} <= columns
        nightly = upgraded.get_recurring("nightly")
        assert nightly is not None and (nightly.next_fire, nightly.start, nightly.end) == (T0, None, None)
        assert nightly.misfire_grace is None
        assert upgraded.queue_quotas() == {"api": QueueQuota(rate=Rate(count=60, period=60.0))}
        assert "nbjobs_queue_rates" not in set(inspect(upgraded.engine).get_table_names())
    finally:
        upgraded.close()


def test_a_claim_reads_the_backlog_in_index_order_not_by_sorting_it(store: SqlStore) -> None:
    store.enqueue([spec(i) for i in range(2000)], T0)
    if store.dialect_name == "postgresql":
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE nbjobs_jobs")  # autovacuum does this in real life
    explain = "EXPLAIN QUERY PLAN " if store.dialect_name == "sqlite" else "EXPLAIN "
    for queue, index in (("*", "ix_nbjobs_jobs_fetch_any"), ("default", "ix_nbjobs_jobs_fetch")):
        claims: list[tuple[str, Any]] = []

        def grab(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _many: bool,
                 claims: list[tuple[str, Any]] = claims) -> None:
            if "picked" in statement:
                claims.append((statement, parameters))

        event.listen(store.engine, "before_cursor_execute", grab)
        try:
            assert len(store.acquire("s", [queue], 5, lease(), T0)) == 5
        finally:
            event.remove(store.engine, "before_cursor_execute", grab)
        [(statement, parameters)] = claims
        with store.engine.connect() as conn:
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(explain + statement, parameters).all())
        assert index in plan and "TEMP B-TREE" not in plan and "Sort" not in plan, plan


def test_engines_on_one_sqlite_file_share_one_write_lock(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    a, b = SqlStore(url), SqlStore(url)
    try:
        assert a.dialect.write_guard() is b.dialect.write_guard()
    finally:
        a.close()
        b.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_does_not_inherit_a_held_write_lock(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    store = SqlStore(url)
    guard = store.dialect.write_guard()
    try:
        with guard:  # as if another thread were mid-transaction when the fork happened
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                ok = False
                try:
                    child = SqlStore(url)
                    ok = len(child.enqueue([spec(1)], T0)) == 1
                finally:
                    os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_writes_through_its_own_connection(tmp_path: object) -> None:
    """The SQLite store keeps one connection for its lone enqueues; a child forked from a process
    that used it opens its own, and the parent's stays usable."""
    store = SqlStore(f"sqlite:///{tmp_path}/jobs.db")
    try:
        [first] = store.enqueue([spec(1)], T0)  # the parent's writer connection now exists
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            ok = False
            try:
                [child] = store.enqueue([spec(2)], T0)
                ok = child.id == first.id + 1
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        [third] = store.enqueue([spec(3)], T0)
        assert third.id == first.id + 2
        assert store.counts()[S.ENQUEUED] == 3
    finally:
        store.close()


def test_a_large_batch_of_outcomes_reads_back_exactly_as_a_small_one(store: SqlStore) -> None:
    """Many rows go to the driver as tuples (`SqlBase._executemany`); a few go through SQLAlchemy.
    Both must store the same values: times to the microsecond, NULLs, bytes, text and JSON data."""
    n = 20
    stored = store.enqueue([spec(i) for i in range(n + 1)], T0)
    claimed = store.acquire("s1", ["*"], n + 1, lease(), T0)
    assert len(claimed) == n + 1

    def outcome(i: int, job_id: int) -> Outcome:
        started = T0 + timedelta(microseconds=123_457 + i)
        if i % 2:
            return Outcome(job_id=job_id, kind=OutcomeKind.SUCCEEDED, started_at=started,
                           finished_at=started + timedelta(seconds=1.000001), result=f"r{i}".encode())
        return Outcome(job_id=job_id, kind=OutcomeKind.FAILED, started_at=started,
                       finished_at=started + timedelta(seconds=2), error_type="ValueError",
                       error_message=f"bad {i} ✗", error_traceback="Traceback …")

    big = [outcome(i, c.id) for i, c in enumerate(claimed[:n])]
    small = [outcome(0, claimed[n].id)]
    finished_at = T0 + timedelta(seconds=5)
    assert store.finish("s1", big, finished_at) == []
    assert store.finish("s1", small, finished_at) == []
    for o in [*big, *small]:
        record = store.get(o.job_id)
        assert record is not None
        assert record.started_at == o.started_at and record.finished_at == o.finished_at
        assert record.server_id is None and record.lease_until is None
        if o.kind is OutcomeKind.SUCCEEDED:
            assert record.state is S.SUCCEEDED and record.result == o.result
        else:
            assert record.state is S.FAILED and record.error_message == o.error_message
            assert record.result is None and record.error_traceback == "Traceback …"
        last = store.history(o.job_id)[-1]
        assert last.state is record.state and last.at == finished_at and last.server_id == "s1"
    assert {store.get(s.id).state for s in stored} == {S.SUCCEEDED, S.FAILED}  # type: ignore[union-attr]


def test_a_lone_enqueue_stores_what_a_transaction_of_many_stores(store: SqlStore) -> None:
    """A lone plain job takes the short path (the driver's connection on SQLite, one statement on
    PostgreSQL); it must store exactly what the general transaction stores."""
    when = T0 + timedelta(microseconds=654_321)
    lone_specs = [spec(1, queue="q", priority=3, name="n ✓"),
                  NewJob(function="mod:fn", payload=b"\x00p", options=JobOptions(),
                         run_at=when + timedelta(hours=1), reason="made later")]
    for lone in lone_specs:
        [short] = store.enqueue([lone], when)
        [general] = store._tx(lambda conn, lone=lone: store._enqueue(conn, [lone], when))
        assert (short.state, short.created) == (general.state, general.created)
        a, b = store.get(short.id), store.get(general.id)
        assert a is not None and b is not None
        assert replace(a, id=0) == replace(b, id=0)
        hist_a, hist_b = store.history(short.id), store.history(general.id)
        assert [(h.state, h.at, h.reason, h.server_id) for h in hist_a] == [
            (h.state, h.at, h.reason, h.server_id) for h in hist_b]
        assert len(hist_a) == 1 and hist_a[0].at == when
    counts = store.counts()
    assert counts[S.ENQUEUED] == 2 and counts[S.SCHEDULED] == 2


def test_a_failed_driver_write_stores_nothing_and_frees_the_writer(tmp_path: object) -> None:
    """The SQLite short path rolls back a failed enqueue whole (job row, counters) and releases the
    process's write lock, so the next writer, on any thread, proceeds."""
    store = SqlStore(f"sqlite:///{tmp_path}/jobs.db")
    try:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("CREATE TRIGGER refuse BEFORE INSERT ON nbjobs_history "
                                 "BEGIN SELECT RAISE(ABORT, 'history refused'); END")
        with pytest.raises(Exception, match="history refused"):
            store.enqueue([spec(1)], T0)
        assert not any(store.counts().values())
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM nbjobs_jobs").scalar() == 0
            conn.exec_driver_sql("DROP TRIGGER refuse")
            conn.commit()
        done: list[int] = []
        writer = threading.Thread(target=lambda: done.extend(e.id for e in store.enqueue([spec(2)], T0)))
        writer.start()
        writer.join(10)
        assert len(done) == 1 and store.states_of(done) == {done[0]: S.ENQUEUED}
    finally:
        store.close()


def test_driver_rows_convert_typed_values_and_keep_nulls(tmp_path: object) -> None:
    """`_DriverBatch` turns row dicts into the driver's tuples in the compiled order, converting
    only typed values (times to epoch seconds on SQLite), for one column as for many."""
    from nbjobs.storage.schema import history
    from nbjobs.storage.sql_base import _INSERT_HISTORY

    store = SqlStore(f"sqlite:///{tmp_path}/jobs.db")
    try:
        one = store._driver_statement(delete(history).where(history.c.at < bindparam("at")), ())
        assert one is not None and one.tuples([{"at": T0}, {"at": None}]) == [(T0.timestamp(),), (None,)]
        columns = ("job_id", "state", "at", "reason", "server_id", "data")
        many = store._driver_statement(_INSERT_HISTORY, columns)
        assert many is not None
        [row] = many.tuples([{"data": None, "reason": "r", "at": T0, "job_id": 7, "state": "x",
                              "server_id": None}])
        order = [c.strip().strip('"') for c in many.sql.split("(")[1].split(")")[0].split(",")]
        assert dict(zip(order, row, strict=True)) == {
            "job_id": 7, "state": "x", "at": T0.timestamp(), "reason": "r", "server_id": None, "data": None}
    finally:
        store.close()


def test_only_dialects_without_notify_write_on_the_driver() -> None:
    """A driver write cannot send `notify` (it takes a SQLAlchemy connection): a dialect that
    writes on the driver must be one whose notify does nothing."""
    from nbjobs.storage.dialects import Dialect

    def all_dialects(cls: type[Dialect]) -> list[type[Dialect]]:
        return [cls] + [d for sub in cls.__subclasses__() for d in all_dialects(sub)]

    for dialect in all_dialects(Dialect):
        if dialect.driver_writes:
            assert dialect.notify is Dialect.notify, dialect.__name__
    assert any(d.driver_writes for d in all_dialects(Dialect))
