"""Pure pieces of the dashboard: paging, action rules, redaction, and the `nbjobs dashboard` guards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nbjobs.cli import cli
from nbjobs.errors import ConfigurationError
from nbjobs.model import JobState
from nbjobs.redact import MASK, Redactor
from nbjobs.ui.dashboard_model import ActionOutcome, JobsPage, allowed_actions, confirm_text
from nbjobs.ui.serve import NOTEBOOK, ServeOptions, check, notebook, prepare

S = JobState


def test_actions_follow_the_state_machine() -> None:
    assert allowed_actions(S.FAILED) == ("requeue", "delete")
    assert allowed_actions(S.PROCESSING) == ("delete", "cancel")
    assert allowed_actions(S.ENQUEUED) == ("delete", "cancel")
    assert allowed_actions(S.SCHEDULED) == ("requeue", "delete", "cancel")
    assert allowed_actions(S.DELETED) == ("requeue",)


def test_keyset_pages_go_forward_and_back() -> None:
    page = JobsPage(state=S.SUCCEEDED, page_size=2)
    assert page.filter().before_id is None and page.filter().limit == 3
    assert page.accept([{"id": 9}, {"id": 8}, {"id": 7}]) == [{"id": 9}, {"id": 8}]
    assert page.has_next and page.next() and page.filter().before_id == 8 and page.page == 2
    assert page.accept([{"id": 7}]) == [{"id": 7}] and not page.has_next and not page.next()
    assert page.previous() and page.filter().before_id is None and not page.previous()
    assert page.pages(5) == 3
    page.reset(search="x")
    assert page.page == 1 and page.pages(5) is None and page.filter().search == "x"
    with pytest.raises(ValueError, match="page size"):
        page.reset(page_size=7)


def test_outcome_messages_say_what_happened() -> None:
    assert ActionOutcome("requeue", done=(1, 2)).message() == "requeued jobs 1, 2"
    msg = ActionOutcome("delete", refused=(3,), failed=((4, "gone"),)).message()
    assert msg == "not allowed to delete job 3; could not delete job 4: gone"
    assert confirm_text("cancel", 1) == "Cancel 1 job?" and confirm_text("delete", 3) == "Delete 3 jobs?"


def test_redaction_by_name_nested_and_unknown_signature() -> None:
    r = Redactor()

    def connect(host: str, password: str, *extra: str, **kw: object) -> None: ...

    out = dict(r.arguments(connect, ("db1", "pw", "x"), {"API_KEY": "k", "cfg": {"token": "t", "n": 1}}))
    assert out == {"host": "'db1'", "password": MASK, "extra[0]": "'x'", "API_KEY": MASK,
                   "cfg": f"{{'n': 1, 'token': '{MASK}'}}"}
    unknown = dict(r.arguments(None, ("db1", "pw"), {"user": "bob"}))
    assert "pw" not in str(unknown) and unknown["user"] == "'bob'"
    assert dict(Redactor(("ssn",)).arguments(None, (), {"ssn": 1, "password": "p"})) == {
        "ssn": MASK, "password": "'p'"}


def test_serving_refuses_an_open_interface_without_a_token() -> None:
    with pytest.raises(ConfigurationError, match="without a token"):
        check(ServeOptions(url="sqlite:///x.db", ip="0.0.0.0"))
    with pytest.raises(ConfigurationError, match="too short"):
        check(ServeOptions(url="sqlite:///x.db", ip="0.0.0.0", token="short"))
    check(ServeOptions(url="sqlite:///x.db", ip="0.0.0.0", token="a" * 32))
    check(ServeOptions(url="sqlite:///x.db", ip="::1"))
    result = CliRunner().invoke(cli, ["dashboard", "--url", "sqlite:///x.db", "--ip", "10.1.2.3"])
    assert result.exit_code != 0 and "without a token" in str(result.exception)


def test_served_notebook_is_read_only_unless_allowed_and_keeps_secrets_out_of_argv() -> None:
    source = notebook(ServeOptions(url="postgresql://u:pw@h/db"))["cells"][0]["source"]  # type: ignore[index]
    assert "read_only=True" in source and "pw" not in source
    options = ServeOptions(url="postgresql://u:pw@h/db", allow_actions=True, token="t" * 20)
    folder, argv, env = prepare(options)
    try:
        assert "read_only=False" in (folder / "page" / NOTEBOOK).read_text()
        # Neither the token nor the URL's password (not a bare "pw": a random temporary folder name
        # in argv may hold those letters).
        assert not any("t" * 20 in a or ":pw@" in a for a in argv)
        assert "--Voila.ip=127.0.0.1" in argv and env["NBJOBS_URL"] == options.url
        config = Path(env["JUPYTER_CONFIG_DIR"]) / "voila.json"
        assert json.loads(config.read_text()) == {"Voila": {"token": "t" * 20}}
        assert config.stat().st_mode & 0o077 == 0 and sorted(p.name for p in (folder / "page").iterdir()) == [
            NOTEBOOK]
    finally:
        import shutil

        shutil.rmtree(folder)


def test_header_never_shows_the_database_password() -> None:
    from nbjobs.ui.dashboard_views import title

    header = title("postgresql://jobs:hunter2@db.internal/jobs")
    assert "hunter2" not in header and "jobs:***@db.internal" in header
