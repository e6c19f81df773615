"""A database with no room left: the write is refused at once with a `StorageFullError` saying so
(not retried as if a moment's wait could help), nothing of it is stored, and writes work again as
soon as there is room. SQLite's `max_page_count` makes a real SQLITE_FULL without filling a disk."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import event

from nbjobs.errors import StorageFullError
from nbjobs.model import JobOptions, NewJob
from nbjobs.storage import SqlStore
from nbjobs.storage.dialects import PostgresDialect, SqliteDialect

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def spec(size: int) -> NewJob:
    return NewJob(function="tests.fake:fn", payload=b"x" * size, options=JobOptions())


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[tuple[SqlStore, dict[str, int]]]:
    """A SQLite store whose connections may grow the file to `limit["pages"]` pages."""
    store = SqlStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    limit = {"pages": 2**30}

    @event.listens_for(store.engine, "connect")
    def cap(dbapi_conn: object, _record: object) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count = {limit['pages']}")  # type: ignore[attr-defined]

    store.enqueue([spec(10)], T0)
    with store.engine.connect() as conn:
        used = conn.exec_driver_sql("PRAGMA page_count").scalar()
    limit["pages"] = int(used or 0) + 8
    store.close()  # every connection is made anew, under the cap
    yield store, limit
    store.close()


def test_a_full_database_refuses_the_write_at_once_and_stores_nothing(
    capped: tuple[SqlStore, dict[str, int]], caplog: pytest.LogCaptureFixture
) -> None:
    store, limit = capped
    caplog.set_level(logging.WARNING, logger="nbjobs.storage")
    before = store.counts()
    with pytest.raises(StorageFullError, match=r"is full \(database or disk is full\); nothing of this "
                                               r"call was stored\. Free space where it is kept"):
        store.enqueue([spec(200_000)], T0)  # one job on the driver's path
    with pytest.raises(StorageFullError):
        store.enqueue([spec(100_000), spec(100_000)], T0)  # a batch on SQLAlchemy's
    assert "transient" not in caplog.text  # refused at once, not retried
    assert store.counts() == before
    limit["pages"] = 2**30  # room again
    store.close()  # (new connections, new cap)
    (stored,) = store.enqueue([spec(200_000)], T0)
    assert stored.created and store.get(stored.id) is not None


def test_a_full_postgresql_is_told_apart_from_other_errors() -> None:
    dialect = PostgresDialect("postgresql://nobody@localhost/none")
    assert dialect.is_full(psycopg.errors.DiskFull())
    assert dialect.is_full(psycopg.errors.OutOfMemory())
    assert not dialect.is_full(psycopg.errors.SerializationFailure())
    assert not dialect.is_full(ValueError("no"))
    assert not SqliteDialect("sqlite:///x.db").is_full(ValueError("no"))
