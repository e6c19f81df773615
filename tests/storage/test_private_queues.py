"""Private queues (names with "@"): only a server naming them claims their jobs, never "*"."""

from __future__ import annotations

from datetime import timedelta

from nbjobs.clock import ManualClock
from nbjobs.model import JobOptions, NewJob
from nbjobs.storage import SqlStore


def spec(queue: str) -> NewJob:
    return NewJob(function="tests.fake:fn", payload=b"x", options=JobOptions(queue=queue))


def test_wildcard_never_claims_a_private_queue(store: SqlStore) -> None:
    now = ManualClock().now()
    lease = now + timedelta(seconds=60)
    private, public = store.enqueue([spec("default@kernel-abc"), spec("default")], now)
    assert [c.id for c in store.acquire("other-process", ["*"], 10, lease, now)] == [public.id]
    assert store.acquire("other-process", ["*"], 10, lease, now) == []
    claimed = store.acquire("kernel", ["default@kernel-abc", "*"], 10, lease, now)
    assert [c.id for c in claimed] == [private.id]
