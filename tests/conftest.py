"""Shared fixtures: every storage-backed test runs on a real SQLite file and on real PostgreSQL.

PostgreSQL comes from NBJOBS_TEST_PG_URL (a server URL; each test session creates and later drops
its own database there). When the variable is set, PostgreSQL tests must run: a connection failure
is an error, never a skip. Without it they are skipped with the reason.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nbjobs
from nbjobs.storage import SqlStore
from nbjobs.storage.schema import metadata

PG_ENV = "NBJOBS_TEST_PG_URL"
BACKENDS = ["sqlite", "postgresql"]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.005) -> Any:
    """Wait until `predicate()` is truthy (returning it) or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        threading.Event().wait(interval)


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set; PostgreSQL tests need a server (e.g. postgresql://postgres@127.0.0.1/test)")
    return url


@pytest.fixture(scope="session")
def pg_database(pg_server_url: str) -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(pg_server_url.replace("postgresql+psycopg://", "postgresql://"))
    name = f"nbjobs_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _reset_pg(url: str) -> None:
    """Empty every nbjobs table (schema version row included) without going through SqlStore."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        names = [
            t.name for t in metadata.sorted_tables
            if conn.execute("SELECT to_regclass(%s)", (t.name,)).fetchone()[0] is not None  # type: ignore[index]
        ]
        if names:
            conn.execute(f"TRUNCATE {', '.join(names)} RESTART IDENTITY")


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A clean database URL: a new SQLite file, or the session's PostgreSQL database truncated."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    url: str = request.getfixturevalue("pg_database")
    _reset_pg(url)
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[SqlStore]:
    s = SqlStore(db_url)
    yield s
    s.close()


@pytest.fixture
def engine(db_url: str) -> Iterator[nbjobs.Engine]:
    """An Engine with a fast-polling config; its server (if started) is stopped afterwards."""
    eng = nbjobs.connect(db_url, secret="test-secret")
    yield eng
    eng.close()


@pytest.fixture
def manual_clock() -> nbjobs.ManualClock:
    return nbjobs.ManualClock()
