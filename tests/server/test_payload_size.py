"""Arguments and results too large for the database are refused with the fix, at enqueue or as the
job's failure, and never wedge a server; on real SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import nbjobs
from nbjobs import JobState
from nbjobs.errors import ConfigurationError, InvalidJobError


def echo(data: bytes) -> int:
    return len(data)


def blob(n: int) -> bytes:
    return b"x" * n


@pytest.fixture
def small(db_url: str) -> Iterator[nbjobs.Engine]:
    eng = nbjobs.connect(db_url, secret="s", max_payload=10_000)
    yield eng
    eng.close()


def test_too_large_arguments_are_refused_at_enqueue_and_nothing_is_stored(small: nbjobs.Engine) -> None:
    with pytest.raises(InvalidJobError, match=r"arguments: 20\.0 kB once serialized, more than the 10\.0 kB "
                                              r"a job may store .* save large data to a file"):
        small.enqueue(echo, b"x" * 20_000)
    with pytest.raises(InvalidJobError, match=r"more than the 10\.0 kB"):
        small.enqueue_many(echo, [(b"x",), (b"x" * 20_000,)])  # all or nothing
    assert small.counts()["enqueued"] == 0
    assert small.enqueue(echo, b"x" * 5_000).run_here() == 5_000


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_too_large_result_fails_its_job_at_once_and_the_server_goes_on(
    small: nbjobs.Engine, executor: str
) -> None:
    small.start_server(workers=1)
    big = small.options(executor=executor, retries=3).enqueue(blob, 20_000)
    assert big.wait(timeout=60) is JobState.FAILED
    record = big.record()
    assert record.attempts == 1  # no retry makes it smaller
    expected = "the job's return value: 20.0 kB once serialized, more than the 10.0 kB"
    assert expected in (record.error_message or "")
    assert small.options(executor=executor).enqueue(blob, 100).result(timeout=60) == b"x" * 100


def test_max_payload_is_checked_when_connecting(db_url: str) -> None:
    for bad in (0, -1, 10**10, 1.5, True):
        with pytest.raises(ConfigurationError, match="max_payload must be a number of bytes from 1 to"):
            nbjobs.connect(db_url, secret="s", max_payload=bad)  # type: ignore[arg-type]
