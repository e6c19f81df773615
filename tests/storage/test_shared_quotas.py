"""Shared queue quotas in storage (rates and limits): every server's claims of a queue with a quota
counted together, on a real SQLite file and real PostgreSQL (two stores stand for two servers on
other machines)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from nbjobs.model import JobOptions, JobState, NewJob, Outcome, OutcomeKind
from nbjobs.rates import QueueQuota, Rate
from nbjobs.storage import SqlStore
from nbjobs.storage.base import JobFilter

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
API = Rate(count=3, period=60.0)


def spec(queue: str, i: int = 0) -> NewJob:
    return NewJob(function="mod:fn", payload=f"p{i}".encode(), options=JobOptions(queue=queue))


def lease(at: datetime) -> datetime:
    return at + timedelta(seconds=300)


@pytest.fixture
def other(db_url: str) -> Iterator[SqlStore]:
    """A second store on the same database: another server's."""
    s = SqlStore(db_url)
    yield s
    s.close()


def claim(store: SqlStore, server: str, at: datetime, shared: Collection[str] | None,
          queues: tuple[str, ...] = ("*",), limit: int = 10, done: Collection[int] = ()) -> list[str]:
    """The queues of the jobs a server's turn claims (after finishing `done`, in the same turn)."""
    outcomes = [Outcome(job_id=i, kind=OutcomeKind.SUCCEEDED, finished_at=at) for i in done]
    _, jobs = store.finish_and_acquire(server, outcomes, list(queues), limit, lease(at), at, None, shared)
    return [j.options.queue for j in jobs]


def running(store: SqlStore, queue: str) -> list[int]:
    return [row["id"] for row in store.query(JobFilter(states=(JobState.PROCESSING,), queues=(queue,)))]


def race(db_url: str, servers: int, turn: Callable[[SqlStore, str], None]) -> None:
    """`servers` stores (servers on other machines) start together and each runs `turn(store,
    server_id)`; they are closed afterwards."""
    stores = [SqlStore(db_url) for _ in range(servers)]
    start = threading.Barrier(servers)

    def server(index: int) -> None:
        start.wait(10)
        turn(stores[index], f"s{index}")

    threads = [threading.Thread(target=server, args=(i,)) for i in range(servers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        for s in stores:
            s.close()


def test_a_shared_rate_counts_every_servers_starts(store: SqlStore, other: SqlStore) -> None:
    store.enqueue([spec("api", i) for i in range(7)] + [spec("default", i) for i in range(2)], T0)
    assert store.set_queue_rate("api", API, T0) is True
    assert store.set_queue_rate("api", API, T0) is False  # the same: no change
    assert other.queue_quotas() == {"api": QueueQuota(rate=API)}
    first = claim(store, "s1", T0, {"api": API})
    assert sorted(first) == ["api", "api", "api", "default", "default"]  # the rated queue up to its rate
    assert claim(other, "s2", T0 + timedelta(seconds=30), {"api": API}) == []  # no room on any server
    # a server that has not read the rate yet takes none of its jobs (the claim leaves rated queues out)
    assert claim(other, "s2", T0 + timedelta(seconds=30), None) == []
    assert claim(other, "s2", T0 + timedelta(seconds=30), None, queues=("api",)) == []
    # a period after the first starts, room again, on whichever server claims
    assert claim(other, "s2", T0 + timedelta(seconds=60, microseconds=1), {"api": API}) == ["api"] * 3
    # a higher rate leaves room at once; without a rate the queue is claimed as any other
    assert store.set_queue_rate("api", Rate(count=4, period=60.0), T0) is True
    assert claim(store, "s1", T0 + timedelta(seconds=61), {"api": Rate(count=4, period=60.0)}) == ["api"]
    assert store.set_queue_rate("api", None, T0) is True and store.queue_quotas() == {}
    assert store.set_queue_rate("api", None, T0) is False
    store.enqueue([spec("api", 9)], T0)
    assert claim(other, "s2", T0 + timedelta(seconds=62), None) == ["api"]


def test_a_servers_own_limit_and_queue_list_still_apply_to_a_rated_queue(store: SqlStore) -> None:
    store.enqueue([spec("api", i) for i in range(5)], T0)
    store.set_queue_rate("api", API, T0)
    _, jobs = store.finish_and_acquire("s1", [], ["*"], 10, lease(T0), T0, {"api": 1}, {"api": API})
    assert [j.options.queue for j in jobs] == ["api"]  # its limit of 1 running, under the rate's 3
    assert claim(store, "s2", T0, {"api": API}, queues=("default",)) == []  # a server not serving it
    assert claim(store, "s3", T0, {"api": API}, limit=1) == ["api"]  # no more than its free slots


def test_servers_claiming_at_once_never_exceed_the_rate(store: SqlStore, db_url: str) -> None:
    store.enqueue([spec("api", i) for i in range(40)], T0)
    store.set_queue_rate("api", Rate(count=5, period=60.0), T0)
    taken: list[str] = []
    lock = threading.Lock()

    def turns(other: SqlStore, server: str) -> None:
        for _ in range(5):
            got = claim(other, server, T0 + timedelta(seconds=1), {"api"}, limit=3)
            with lock:
                taken.extend(got)

    race(db_url, 4, turns)
    assert len(taken) == 5


def test_a_rated_queue_is_claimed_in_its_place_in_the_servers_queue_order(store: SqlStore) -> None:
    store.enqueue([spec("api", i) for i in range(2)] + [spec("critical", i) for i in range(2)], T0)
    store.set_queue_rate("api", API, T0)
    rates = {"api": API}
    assert claim(store, "s1", T0, rates, queues=("critical", "*"), limit=2) == ["critical"] * 2
    assert claim(store, "s1", T0, rates, queues=("critical", "*"), limit=2) == ["api"] * 2  # "*" covers it
    store.enqueue([spec("api", 3), spec("critical", 3)], T0)
    assert claim(store, "s1", T0, rates, queues=("api", "critical"), limit=1) == ["api"]  # named first
    assert claim(store, "s1", T0, rates, queues=("api", "critical"), limit=1) == ["critical"]  # api: no room


def test_a_rate_another_server_is_claiming_is_passed_over_not_waited_for(pg_database: str) -> None:
    """PostgreSQL (many writers): a claim finding a rate's row locked by another server's claim takes
    the other queues and leaves that one to it, so two servers locking two rated queues in opposite
    orders never deadlock. (SQLite has one writer at a time: nothing to pass over.)"""
    import psycopg

    from tests.conftest import _reset_pg

    _reset_pg(pg_database)
    store = SqlStore(pg_database)
    try:
        store.enqueue([spec("api", i) for i in range(2)] + [spec("default", 0)], T0)
        store.set_queue_rate("api", API, T0)
        with psycopg.connect(pg_database) as holder:  # another server, mid-claim of "api"
            holder.execute("SELECT 1 FROM nbjobs_queue_quotas WHERE queue = 'api' FOR UPDATE")
            assert claim(store, "s1", T0, {"api": API}) == ["default"]  # at once, without "api"
        assert claim(store, "s1", T0, {"api": API}) == ["api", "api"]  # released: its room again
    finally:
        store.close()


def test_a_shared_limit_counts_every_servers_running_jobs(store: SqlStore, other: SqlStore) -> None:
    store.enqueue([spec("gpu", i) for i in range(5)] + [spec("default", i) for i in range(2)], T0)
    assert store.set_queue_limit("gpu", 2, T0) is True
    assert store.set_queue_limit("gpu", 2, T0) is False  # the same: no change
    assert other.queue_quotas() == {"gpu": QueueQuota(running=2)}
    assert sorted(claim(store, "s1", T0, {"gpu"})) == ["default", "default", "gpu", "gpu"]
    assert claim(other, "s2", T0, {"gpu"}) == []  # two run on s1: none more on any server
    assert claim(other, "s2", T0, None) == []  # nor on a server that has not read the limit yet
    # s1 finishes one in the turn that claims: its room is counted after the finish
    first = running(store, "gpu")[0]
    assert claim(store, "s1", T0, {"gpu"}, done=[first]) == ["gpu"]
    store.finish("s1", [Outcome(job_id=running(store, "gpu")[0], kind=OutcomeKind.SUCCEEDED, finished_at=T0)],
                 T0)
    assert claim(other, "s2", T0, {"gpu"}) == ["gpu"]  # a place freed on s1 is taken on s2
    assert len(running(store, "gpu")) == 2
    assert store.set_queue_limit("gpu", 3, T0) is True  # raised: room at once
    assert claim(other, "s2", T0, {"gpu"}) == ["gpu"]
    assert store.set_queue_limit("gpu", None, T0) is True and store.queue_quotas() == {}
    assert store.set_queue_limit("gpu", None, T0) is False
    store.enqueue([spec("gpu", 9)], T0)
    assert claim(other, "s2", T0, None) == ["gpu"]  # no quota: claimed as any queue


def test_a_rate_and_a_limit_on_one_queue_both_hold(store: SqlStore) -> None:
    store.enqueue([spec("api", i) for i in range(6)], T0)
    store.set_queue_rate("api", API, T0)  # 3 a minute
    store.set_queue_limit("api", 2, T0)  # 2 at once
    assert store.queue_quotas() == {"api": QueueQuota(rate=API, running=2)}
    assert str(store.queue_quotas()["api"]) == "at most 3/m, 2 running"
    assert claim(store, "s1", T0, {"api"}) == ["api", "api"]  # the limit is the tighter
    done = running(store, "api")
    assert claim(store, "s1", T0 + timedelta(seconds=1), {"api"}, done=done) == ["api"]  # the rate's last
    assert claim(store, "s1", T0 + timedelta(seconds=2), {"api"}, done=running(store, "api")) == []
    # clearing the limit keeps the rate (and its count of starts); clearing both drops the row
    assert store.set_queue_limit("api", None, T0) is True
    assert store.queue_quotas() == {"api": QueueQuota(rate=API)}
    assert claim(store, "s1", T0 + timedelta(seconds=3), {"api"}) == []
    assert claim(store, "s1", T0 + timedelta(seconds=61), {"api"}) == ["api"] * 3
    store.set_queue_limit("api", 1, T0)
    assert store.set_queue_rate("api", None, T0) is True
    assert store.queue_quotas() == {"api": QueueQuota(running=1)}


def test_servers_claiming_at_once_never_exceed_the_limit(store: SqlStore, db_url: str) -> None:
    """Four stores (four servers) claim from a queue limited to 3 running, finishing what they hold
    in the same turn; at no moment do more than 3 run."""
    store.enqueue([spec("gpu", i) for i in range(60)], T0)
    store.set_queue_limit("gpu", 3, T0)
    most = [0]
    lock = threading.Lock()

    def turns(other: SqlStore, server: str) -> None:
        mine: list[int] = []
        for _ in range(15):
            outcomes = [Outcome(job_id=i, kind=OutcomeKind.SUCCEEDED, finished_at=T0) for i in mine]
            _, jobs = other.finish_and_acquire(server, outcomes, ["*"], 2, lease(T0), T0, None, {"gpu"})
            mine = [j.id for j in jobs]
            with lock:
                most[0] = max(most[0], len(running(store, "gpu")))

    race(db_url, 4, turns)
    assert 1 <= most[0] <= 3
