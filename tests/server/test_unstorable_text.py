"""Text a job produces may hold what no database column can: NUL characters (binary data printed, a
C library's message; PostgreSQL text refuses them) and lone surrogates (a file name decoded with
`errors="surrogateescape"`, as `os.listdir` does; UTF-8 cannot encode them, so neither database
takes them). Such text is stored written out, and never wedges a server; on both databases. Names,
keys, queues and ids holding one are refused at the call."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import StatementError

import nbjobs
from nbjobs import JobState
from nbjobs.errors import ConfigurationError, InvalidJobError, InvalidScheduleError
from nbjobs.model import storable

#: (the character, as stored, as named in refusals)
ODD = [("\x00", "\\x00", "a NUL character"), ("\udce9", "\\udce9", "a lone surrogate")]


def noisy(odd: str) -> None:
    print(f"out{odd}put")
    nbjobs.current_job().set_progress(0.5, f"half{odd}way")
    raise ValueError(f"a{odd}b")


def asks_again(odd: str) -> str:
    raise nbjobs.Retry(after=3600, reason=f"busy{odd}server")


def ok() -> int:
    return 1


@pytest.mark.parametrize(("odd", "stored", "_named"), ODD)
def test_a_job_whose_error_output_and_progress_hold_odd_text_fails_and_the_server_goes_on(
    engine: nbjobs.Engine, odd: str, stored: str, _named: str
) -> None:
    engine.start_server(workers=1)
    job = engine.options(retries=0).enqueue(noisy, odd)
    assert job.wait(timeout=20) is JobState.FAILED  # before: its outcome could never be written
    record = job.record()
    assert record.error_message == f"a{stored}b"
    assert f"ValueError: a{stored}b" in (record.error_traceback or "")
    assert record.progress_message == f"half{stored}way"
    assert job.logs() == f"out{stored}put\n"
    retried = engine.options(retries=1).enqueue(asks_again, odd)  # its retry is an hour away
    assert engine.enqueue(ok).result(timeout=20) == 1  # ran after it, on the one worker
    assert engine.server.dispatcher.errors == 0  # type: ignore[union-attr]
    reasons = [change.reason for change in retried.history()]
    assert any(f"busy{stored}server" in reason for reason in reasons), reasons


@pytest.mark.parametrize(("odd", "stored", "named"), ODD)
def test_names_holding_odd_text_are_refused_at_the_call(
    engine: nbjobs.Engine, odd: str, stored: str, named: str
) -> None:
    for option in ("name", "key", "lock", "queue"):
        with pytest.raises(InvalidJobError, match=f"{option} 'a\\{stored}b' contains {named}"):
            engine.options(**{option: f"a{odd}b"}).enqueue(ok)
    with pytest.raises(InvalidScheduleError, match=f"contains {named}"):
        engine.recurring(f"a{odd}b", "@daily", ok)
    with pytest.raises(ConfigurationError, match=f"server name 'a\\{stored}b' contains {named}"):
        engine.start_server(workers=1, name=f"a{odd}b")
    # a queue the server's claims would name: every claim would fail, and the server run nothing
    with pytest.raises(ConfigurationError, match=f"queue 'a\\{stored}b' contains {named}"):
        engine.start_server(workers=1, queues=["default", f"a{odd}b"])
    assert engine.counts()["enqueued"] == 0 and engine.server is None


def test_storable_keeps_plain_text_as_it_is_and_writes_out_the_rest() -> None:
    assert storable("plain") == "plain" and storable("café ✓") == "café ✓"
    assert storable(None) is None and storable("") == ""
    assert storable("caf\udce9\x00") == "caf\\udce9\\x00"


def test_a_value_the_encoding_refuses_counts_as_unstorable(engine: nbjobs.Engine) -> None:
    # The safety net behind `storable`: such a write fails its one outcome, not every turn.
    dialect = engine.store.dialect  # type: ignore[attr-defined]
    refused = UnicodeEncodeError("utf-8", "caf\udce9", 3, 4, "surrogates not allowed")
    assert dialect.is_unstorable(refused)
    assert dialect.is_unstorable(StatementError("binding failed", "INSERT …", {}, refused))
    assert not dialect.is_unstorable(RuntimeError("something else"))
