"""SQLite's change listener: inotify wakes it at once on another process's commit, it sleeps when
nothing changes, and a stopping server can interrupt it. An opened listener (SQLite or PostgreSQL)
reports only what comes after it opened."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import make_url

from nbjobs.storage import SqlStore
from nbjobs.storage.dialects import CHANNEL, PostgresListener, SqliteListener

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux only")


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "jobs.db"
    SqlStore(f"sqlite:///{path}").close()  # the schema, WAL mode
    return str(path)


def commit_elsewhere(path: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO nbjobs_meta (key, value) VALUES ('touched', 'yes')")
    conn.close()


def test_a_commit_by_another_connection_wakes_it_long_before_the_safety_poll(db: str) -> None:
    listener = SqliteListener(db)
    stop = threading.Event()
    try:
        assert listener._watch is not None, "inotify should be available on Linux"
        assert listener.wait(stop, 0.25)  # the baseline call reports "look now"
        writer = threading.Timer(0.1, commit_elsewhere, (db,))
        writer.start()
        started = time.monotonic()
        while not listener.wait(stop, 0.25):  # a checkpoint or a new -wal file may wake it first
            assert time.monotonic() - started < 10
        assert time.monotonic() - started < SqliteListener.WATCHED_POLL / 2
        writer.join()
    finally:
        listener.close()


def test_an_idle_database_reports_nothing_and_interrupt_ends_the_wait(db: str) -> None:
    listener = SqliteListener(db)
    listener.WATCHED_POLL = 0.2  # the safety poll comes round quickly in this test
    stop = threading.Event()
    try:
        assert listener.wait(stop, 0.05)
        assert not listener.wait(stop, 0.05)  # the safety poll found no change
        listener.WATCHED_POLL = 60.0
        assert_interrupt_ends_the_wait(listener, stop, 0.05)
    finally:
        listener.close()


def assert_interrupt_ends_the_wait(listener: SqliteListener | PostgresListener, stop: threading.Event,
                                   timeout: float) -> None:
    """A wait in another thread returns "nothing changed" at once when the server stops."""
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(listener.wait(stop, timeout)))
    waiter.start()
    stop.set()
    listener.interrupt()
    waiter.join(5)
    assert not waiter.is_alive() and result == [False]


def test_without_inotify_it_polls_data_version(db: str) -> None:
    listener = SqliteListener(db)
    assert listener._watch is not None
    listener._watch.close()
    listener._watch = None  # as on macOS, or with the inotify instance limit reached
    stop = threading.Event()
    try:
        assert listener.wait(stop, 0.01)
        assert not listener.wait(stop, 0.01)
        commit_elsewhere(db)
        assert listener.wait(stop, 0.01)
    finally:
        listener.close()


def test_an_opened_listener_reports_only_later_commits(db: str) -> None:
    listener = SqliteListener(db)
    listener.WATCHED_POLL = 0.1
    stop = threading.Event()
    try:
        listener.open()  # the server opens it before its first look for work
        assert not listener.wait(stop, 0.05)  # no "look now, just in case" on the first wait
        commit_elsewhere(db)
        started = time.monotonic()
        while not listener.wait(stop, 0.05):
            assert time.monotonic() - started < 10
    finally:
        listener.close()


def test_an_opened_postgres_listener_reports_only_later_notifications(pg_database: str) -> None:
    import psycopg

    listener = PostgresListener(pg_database)
    stop = threading.Event()
    try:
        listener.open()
        assert not listener.wait(stop, 0.05)  # connected and listening already: nothing to report
        with psycopg.connect(make_url(pg_database).set(drivername="postgresql").render_as_string(False),
                             autocommit=True) as conn:
            conn.execute(f"NOTIFY {CHANNEL}")
        assert listener.wait(stop, 5)
    finally:
        listener.close()


def test_interrupt_ends_a_postgres_listener_wait_however_long_its_poll(pg_database: str) -> None:
    """A server with a long poll interval (LISTEN makes polling needless) still stops at once."""
    listener = PostgresListener(pg_database)
    stop = threading.Event()
    try:
        listener.open()
        assert_interrupt_ends_the_wait(listener, stop, 3600)
    finally:
        listener.close()


def test_it_tells_work_and_due_time_changes_from_other_commits(db: str) -> None:
    import nbjobs

    listener = SqliteListener(db)
    try:
        listener.open()
        assert not listener.work_pending()
        commit_elsewhere(db)  # a commit about nothing a server waits for
        assert not listener.work_pending() and not listener.due_times_changed()
        with nbjobs.connect(f"sqlite:///{db}", secret="s") as eng:
            later = eng.schedule(3600, print, "later")
            assert listener.due_times_changed() and not listener.work_pending()
            assert not listener.due_times_changed()  # unchanged since the last look
            eng.enqueue(print, "now")
            assert listener.work_pending() and not listener.due_times_changed()
            later.delete()
            assert listener.due_times_changed()
    finally:
        listener.close()
