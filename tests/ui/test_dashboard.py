"""The dashboard driven as a person would (clicks on real ipywidgets), on SQLite and PostgreSQL.

No frontend is needed: `Button.click()` runs the handlers synchronously, and the assertions read
the real database through the store.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import ipywidgets as w
import pytest

import nbjobs
from nbjobs.model import JobState, Outcome, OutcomeKind
from nbjobs.storage import JobFilter
from nbjobs.ui.dashboard import Dashboard
from nbjobs.ui.dashboard_model import JOB_ACTIONS, REASON, RECURRING_ACTIONS
from tests.conftest import wait_for

S = JobState


def login(user: str, password: str, retries: int = 1, *, api_token: str = "", note: str = "") -> None:
    raise PermissionError(f"bad credentials for {user}")


def failed_job(engine: nbjobs.Engine, *args: Any, retry_at: Any = None, **kwargs: Any) -> int:
    """A job that really went through enqueue → claim → fail in storage (no server thread needed)."""
    client = engine.client
    options = {"retries": 0 if retry_at is None else 3}
    job = client.submit([client.new_job(login, args or ("bob", "hunter2"), kwargs, options=options)])[0]
    now = engine.clock.now()
    claimed = engine.store.acquire("test-server", ["*"], 100, now + timedelta(seconds=60), now)
    assert job.id in [c.id for c in claimed]
    engine.store.finish("test-server", [
        Outcome(job_id=c.id, kind=OutcomeKind.FAILED, finished_at=now, error_type="PermissionError",
                error_message="bad credentials for bob", error_traceback="Traceback ...\nPermissionError",
                retry_at=retry_at)
        for c in claimed
    ], now)
    return job.id


def last_reason(engine: nbjobs.Engine, job_id: int) -> str:
    return engine.store.history(job_id)[-1].reason


def widgets_in(root: w.Widget) -> list[w.Widget]:
    out, todo = [], [root]
    while todo:
        node = todo.pop()
        out.append(node)
        todo.extend(getattr(node, "children", ()))
    return out


@pytest.fixture
def dash_factory(engine: nbjobs.Engine) -> Any:
    made: list[Dashboard] = []

    def make(**kwargs: Any) -> Dashboard:
        kwargs.setdefault("refresh", None)
        d = engine.dashboard(**kwargs)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def test_select_rows_and_requeue_them_after_confirmation(engine: nbjobs.Engine, dash_factory: Any) -> None:
    ids = [failed_job(engine) for _ in range(3)]
    dash = dash_factory()
    dash.show("Jobs")
    dash.state_buttons[S.FAILED].click()
    assert dash.state_buttons[S.FAILED].description == "Failed (3)"
    shown = [r.job_id for r in dash.rows if r.job_id is not None]
    assert shown == sorted(ids, reverse=True)
    dash.rows[0].check.value = True
    dash.rows[1].check.value = True

    dash.bulk["requeue"].click()
    assert "Requeue 2 jobs?" in dash.confirm_text.value
    assert engine.store.states_of(ids) == {i: S.FAILED for i in ids}  # nothing before Confirm
    dash.confirm_yes.click()

    picked = shown[:2]
    states = engine.store.states_of(ids)
    assert [states[i] for i in picked] == [S.ENQUEUED, S.ENQUEUED]
    assert states[shown[2]] is S.FAILED
    assert all(last_reason(engine, i) == REASON for i in picked)
    assert "requeued jobs" in dash.status.value and "error" not in dash.status.value
    assert dash.state_buttons[S.FAILED].description == "Failed (1)"


def test_keep_in_the_confirmation_changes_nothing(engine: nbjobs.Engine, dash_factory: Any) -> None:
    job_id = failed_job(engine)
    dash = dash_factory()
    dash.show("Jobs")
    dash.show_state("failed")
    dash.rows[0].check.value = True
    dash.bulk["delete"].click()
    assert "Delete 1 job?" in dash.confirm_text.value
    dash.confirm_no.click()
    assert engine.store.states_of([job_id])[job_id] is S.FAILED
    assert "nothing changed" in dash.status.value


def test_open_a_row_and_requeue_it_from_the_job_page(engine: nbjobs.Engine, dash_factory: Any) -> None:
    job_id = failed_job(engine)
    dash = dash_factory()
    dash.show("Jobs")
    dash.show_state(S.FAILED)
    dash.rows[0].open.click()
    assert dash.visible == "Job" and dash.detail_id == job_id
    page = dash.detail_html.value
    assert "PermissionError" in page and "Traceback ..." in page and "test_dashboard:login" in page
    assert not dash.job_actions["requeue"].disabled and dash.job_actions["cancel"].disabled

    dash.job_actions["requeue"].click()
    assert engine.store.states_of([job_id])[job_id] is S.ENQUEUED
    history = engine.store.history(job_id)
    assert (history[-1].state, history[-1].reason) == (S.ENQUEUED, "from dashboard")
    assert "requeued job" in dash.status.value
    assert "from dashboard" in dash.detail_html.value  # the page re-read the history


def test_job_page_of_an_unchanged_job_renders_identically_later(engine: nbjobs.Engine) -> None:
    """Identical HTML means no widget update, so the browser keeps the DOM and a text selection."""
    from nbjobs.ui import dashboard_views as views

    job_id = failed_job(engine)
    record = engine.store.get(job_id)
    assert record is not None
    now = engine.clock.now()

    def page(at: Any) -> str:
        return views.detail(record, at, arguments=[("user", "'bob'")], history=engine.store.history(job_id),
                            output="", output_truncated=False, result=None, children=[])

    assert page(now) == page(now + timedelta(seconds=37))
    # Absolute times: the last change's (not `now`'s, which may be a second later than it).
    last = engine.store.history(job_id)[-1].at
    assert last.strftime("%H:%M:%S UTC") in page(now)


def test_read_only_shows_no_action_at_all(engine: nbjobs.Engine, dash_factory: Any) -> None:
    failed_job(engine)
    dash = dash_factory(read_only=True)
    for page in dash.page_names:
        dash.show(page)
    dash.show_state("failed")
    dash.open_job(dash.rows[0].job_id)
    labels = {b.description.lower() for b in widgets_in(dash) if isinstance(b, w.Button)}
    forbidden = {a for a in JOB_ACTIONS} | {f"{a} selected" for a in JOB_ACTIONS} | {
        "trigger now", *RECURRING_ACTIONS, "confirm", "pause queue", "resume queue"}
    assert labels & forbidden == set()
    assert not any(isinstance(x, w.Checkbox) and x.layout.visibility != "hidden" for x in widgets_in(dash))
    assert dash.allowed("requeue", None) is False


def test_authorize_decides_each_action(engine: nbjobs.Engine, dash_factory: Any) -> None:
    job_id = failed_job(engine)
    asked: list[tuple[str, Any]] = []

    def authorize(action: str, job: Any) -> bool:
        asked.append((action, job))
        return action == "requeue"

    dash = dash_factory(authorize=authorize)
    dash.open_job(job_id)
    dash.job_actions["delete"].click()
    assert engine.store.states_of([job_id])[job_id] is S.FAILED
    assert "not allowed to delete job" in dash.status.value and "error" in dash.status.value
    assert asked[-1][0] == "delete" and asked[-1][1].id == job_id  # the JobRecord is passed
    dash.job_actions["requeue"].click()
    assert engine.store.states_of([job_id])[job_id] is S.ENQUEUED


def test_a_queue_is_paused_and_resumed_from_the_overview(engine: nbjobs.Engine, dash_factory: Any) -> None:
    engine.options(queue="etl").enqueue(login, "ann", "pw")
    engine.enqueue(login, "bob", "pw")
    asked: list[tuple[str, Any]] = []

    def authorize(action: str, queue: Any) -> bool:
        asked.append((action, queue))
        return queue != "default"

    dash = dash_factory(authorize=authorize)
    dash.show("Overview")
    controls = dash.queue_controls
    assert controls.pick.options == ("default", "etl")
    controls.pick.value = "etl"
    controls.buttons["pause_queue"].click()
    assert engine.paused_queues().keys() == {"etl"} and asked[-1] == ("pause_queue", "etl")
    assert "queue &#x27;etl&#x27; paused: no server starts its jobs" in dash.status.value
    assert "<td>etl <b>paused</b></td><td>1</td>" in dash.activity_html.value  # refreshed at once
    controls.buttons["pause_queue"].click()
    assert "queue &#x27;etl&#x27; was paused already" in dash.status.value
    controls.pick.value = "default"
    controls.buttons["pause_queue"].click()
    assert "not allowed to pause queue &#x27;default&#x27;" in dash.status.value
    assert "error" in dash.status.value
    assert engine.paused_queues().keys() == {"etl"}
    controls.pick.value = "etl"
    controls.buttons["resume_queue"].click()
    assert engine.paused_queues() == {} and "queue &#x27;etl&#x27; resumed" in dash.status.value
    engine.set_queue_limit("gpu", 1)  # a queue with a quota and no job yet is listed too
    dash.refresh()
    assert controls.pick.options == ("default", "etl", "gpu") and controls.pick.value == "etl"


def test_secret_arguments_are_masked(engine: nbjobs.Engine, dash_factory: Any) -> None:
    job_id = failed_job(engine, "alice", "hunter2", api_token="tok-123",
                        note={"db_password": "pw-9", "host": "db1"})
    dash = dash_factory()
    dash.open_job(job_id)
    page = dash.detail_html.value
    assert "alice" in page and "db1" in page
    assert "hunter2" not in page and "tok-123" not in page and "pw-9" not in page
    assert page.count("***") == 3  # password (positional, named from the signature), api_token, db_password

    custom = dash_factory(redact=("user",))
    custom.open_job(job_id)
    assert "alice" not in custom.detail_html.value and "hunter2" in custom.detail_html.value
    # one string is one pattern, not its letters (which masked every argument with an "s" in its name)
    single = dash_factory(redact="user")
    single.open_job(job_id)
    assert "alice" not in single.detail_html.value and "hunter2" in single.detail_html.value


def test_settings_that_would_misbehave_are_refused_at_the_call(engine: nbjobs.Engine) -> None:
    for refresh in (-1, float("nan"), float("inf"), "2", True):  # -1 spun the timer in a tight loop
        with pytest.raises(nbjobs.ConfigurationError, match="refresh must be a number of seconds > 0"):
            engine.dashboard(refresh=refresh)
    with pytest.raises(nbjobs.ConfigurationError, match="authorize must be a function"):
        engine.dashboard(authorize="yes")
    with pytest.raises(nbjobs.ConfigurationError, match=r"redact pattern 'pass\(word' is not a regular"):
        engine.dashboard(redact=["pass(word"])
    with pytest.raises(nbjobs.ConfigurationError, match="redact pattern"):
        engine.jobs(args=True, redact=["pass(word"])
    with pytest.raises(nbjobs.ConfigurationError, match=r"page size must be one of \(10, 20, 50, 100\)"):
        engine.dashboard(page_size=7)


def test_failed_action_says_why_and_changes_nothing(engine: nbjobs.Engine, dash_factory: Any) -> None:
    job_id = failed_job(engine)
    other = failed_job(engine)
    dash = dash_factory()
    dash.open_job(job_id)
    later = engine.clock.now() + timedelta(days=1)
    engine.store.delete(job_id, engine.clock.now(), "by someone else")
    assert engine.store.prune(later, keep_succeeded=0, keep_deleted=0, batch=10) == 1  # gone meanwhile
    before = engine.store.counts()

    dash.job_actions["requeue"].click()
    assert "could not requeue job" in dash.status.value and "no longer exists" in dash.status.value
    assert "error" in dash.status.value
    assert engine.store.counts() == before and engine.store.get(job_id) is None
    assert engine.store.states_of([other])[other] is S.FAILED


def test_cancel_is_refused_for_a_finished_job_with_the_reason(
    engine: nbjobs.Engine, dash_factory: Any
) -> None:
    job_id = failed_job(engine)
    dash = dash_factory()
    outcome = dash.act("cancel", [job_id])
    assert not outcome.ok and "already finished" in dash.status.value
    assert engine.store.states_of([job_id])[job_id] is S.FAILED


def test_keyset_paging_search_and_queue_filter(engine: nbjobs.Engine, dash_factory: Any) -> None:
    jobs = [engine.options(queue="io" if i % 5 == 0 else "default", name=f"fetch-{i}").enqueue(print, i)
            for i in range(25)]
    dash = dash_factory()
    dash.show("Jobs")
    dash.size.value = 10
    first = [r.job_id for r in dash.rows if r.job_id is not None]
    assert first == [j.id for j in reversed(jobs)][:10]
    assert "page 1 of 3" in dash.page_label.value and dash.prev.disabled
    dash.next.click()
    dash.next.click()
    third = [r.job_id for r in dash.rows if r.box.layout.display != "none"]
    assert third == [j.id for j in reversed(jobs)][20:] and dash.next.disabled
    dash.prev.click()
    assert "page 2 of 3" in dash.page_label.value

    dash.search.value = "fetch-7"
    assert [r.job_id for r in dash.rows if r.box.layout.display != "none"] == [jobs[7].id]
    dash.search.value = "FETCH-7"  # any case, on both databases (PostgreSQL's LIKE minds case)
    assert [r.job_id for r in dash.rows if r.box.layout.display != "none"] == [jobs[7].id]
    dash.search.value = str(jobs[3].id)
    assert jobs[3].id in [r.job_id for r in dash.rows if r.box.layout.display != "none"]
    dash.search.value = ""
    dash.queue.value = "io"
    shown = [r.job_id for r in dash.rows if r.box.layout.display != "none"]
    assert shown == [j.id for j in reversed(jobs) if (jobs.index(j)) % 5 == 0]


def test_overview_servers_and_retries_pages(engine: nbjobs.Engine, dash_factory: Any) -> None:
    failed_job(engine)
    retrying = failed_job(engine, retry_at=engine.clock.now() + timedelta(minutes=5))
    engine.options(queue="io").enqueue(print, 1)
    dash = dash_factory()
    overview = dash.overview_html.value + dash.activity_html.value
    assert "Failed</span><b>1</b>" in overview and "Scheduled</span><b>1</b>" in overview
    assert "<td>io</td><td>1</td>" in overview and "1 failed" in overview and "last hour" in overview
    dash.chart_range.value = "day"
    assert "last day" in dash.activity_html.value and "1 failed" in dash.activity_html.value
    dash.show("Retries")
    assert f"#{retrying}" in dash.retries.value and "<td>2 of 4</td>" in dash.retries.value
    dash.show("Servers")
    assert "no server is running" in dash.servers.value
    engine.start_server(workers=1, queues=["nothing-here"])
    dash.refresh()
    assert "nothing-here" in dash.servers.value
    engine.pause_queue("io")
    engine.pause_queue("empty")
    dash.show("Overview")
    assert "<td>io <b>paused</b></td><td>1</td>" in dash.activity_html.value
    assert "<td>empty <b>paused</b></td><td>0</td>" in dash.activity_html.value  # shown though empty
    engine.set_queue_rate("io", "60/m")
    engine.set_queue_rate("quota", "5/s")
    dash.refresh()
    assert "<td>io <b>paused</b> <span class=nbjobs-muted>at most 60/m</span></td><td>1</td>" in (
        dash.activity_html.value)
    assert "<td>quota <span class=nbjobs-muted>at most 5/s</span></td><td>0</td>" in dash.activity_html.value
    engine.set_queue_limit("quota", 2)
    engine.set_queue_limit("gpu", 1)
    dash.refresh()
    assert "<td>quota <span class=nbjobs-muted>at most 5/s, 2 running</span></td>" in dash.activity_html.value
    assert "<td>gpu <span class=nbjobs-muted>at most 1 running</span></td><td>0</td>" in (
        dash.activity_html.value)


def turn(dash: Dashboard) -> None:
    """Wake the timer and wait until its loop has taken the wake-up (one full turn)."""
    dash._wake.set()
    wait_for(lambda: not dash._wake.is_set(), timeout=10)


def test_refresh_timer_runs_in_background_pauses_and_stops_on_close(
    engine: nbjobs.Engine, dash_factory: Any
) -> None:
    dash = dash_factory(refresh=0.05)
    assert dash.refreshing
    engine.enqueue(print, "new")
    wait_for(lambda: "Enqueued</span><b>1</b>" in dash.overview_html.value, timeout=10)
    dash.pause.value = True
    turn(dash)  # a refresh already under way has finished once the timer has turned
    seen = dash.refreshes
    turn(dash)  # a wake-up while paused reads nothing
    assert dash.refreshes == seen
    dash.pause.value = False
    wait_for(lambda: dash.refreshes > seen, timeout=10)
    dash._view_count = 1  # shown in a frontend, then the output is cleared
    dash._view_count = 0
    assert not dash.on_screen
    turn(dash)
    hidden = dash.refreshes
    turn(dash)
    assert dash.refreshes == hidden
    dash._view_count = 1
    wait_for(lambda: dash.refreshes > hidden, timeout=10)
    dash.close()
    assert not dash.refreshing
    stopped = dash.refreshes
    engine.enqueue(print, "after close")
    assert dash._thread is not None and not dash._thread.is_alive() and dash.refreshes == stopped


def nightly_report(day: str = "today", api_key: str = "") -> str:
    return day


def test_recurring_page_triggers_pauses_resumes_and_removes(engine: nbjobs.Engine, dash_factory: Any) -> None:
    engine.recurring("nightly", "0 3 * * *", nightly_report, api_key="k-1")
    engine.recurring("hourly", "0 * * * *", nightly_report)
    refused: list[str] = []

    def authorize(action: str, target: Any) -> bool:
        if action == "remove" and target.id == "hourly":
            refused.append(action)
            return False
        return True

    dash = dash_factory(authorize=authorize)
    dash.show("Recurring")
    page = dash.recurring
    assert "<b>nightly</b>" in page.table.value and "0 3 * * *" in page.table.value
    page.pick.value = "nightly"
    page.buttons["trigger"].click()
    assert "triggered recurring job &#x27;nightly&#x27;" in dash.status.value
    triggered = engine.store.query(JobFilter(recurring_id="nightly"))
    assert len(triggered) == 1 and triggered[0]["state"] == "enqueued"
    page.buttons["pause"].click()
    assert engine.store.get_recurring("nightly").paused and "paused" in page.table.value
    page.buttons["resume"].click()
    assert not engine.store.get_recurring("nightly").paused
    page.buttons["remove"].click()
    assert engine.store.get_recurring("nightly") is None and "nightly" not in page.pick.options
    page.pick.value = "hourly"
    page.buttons["remove"].click()
    assert refused == ["remove"] and engine.store.get_recurring("hourly") is not None
    assert "not allowed to remove" in dash.status.value


def test_recurring_page_says_which_definitions_have_ended(engine: nbjobs.Engine, dash_factory: Any) -> None:
    ending = engine.options(end="2h").recurring("campaign", "0 * * * *", nightly_report)
    engine.recurring("nightly", "0 3 * * *", nightly_report)
    record = ending.record()
    now = engine.clock.now()  # its last fire handled, the scheduler plans nothing after its end
    assert engine.store.claim_recurring_fire("campaign", record.next_fire, None, [], now) == []
    dash = dash_factory()
    dash.show("Recurring")
    rows = dash.recurring.table.value.split("<tr")
    [campaign] = [r for r in rows if "<b>campaign</b>" in r]
    [nightly] = [r for r in rows if "<b>nightly</b>" in r]
    assert ">ended</span>" in campaign and "has passed" in campaign
    assert "ended" not in nightly and "active" in nightly
    # how each fires, beyond its expression, on the expression's tooltip
    assert f'title="misfire=once, overlap=allow, end {record.end:%Y-%m-%d %H:%M} UTC"' in campaign
    assert 'title="misfire=once, overlap=allow"' in nightly
    engine.options(misfire="all", misfire_grace="90m", overlap="skip").recurring("poll", "*/5 * * * *",
                                                                            nightly_report)
    dash.recurring.refresh()
    [poll] = [r for r in dash.recurring.table.value.split("<tr") if "<b>poll</b>" in r]
    assert 'title="misfire=all, misfire_limit=100, overlap=skip, misfire_grace=1h 30m"' in poll


def test_recurring_page_degrades_without_engine_actions(engine: nbjobs.Engine, dash_factory: Any) -> None:
    dash = dash_factory()
    assert "Recurring" in dash.page_names
    dash.show("Recurring")
    assert "no recurring jobs" in dash.recurring.table.value
    offered = set(dash.recurring.buttons)
    expected = {a for a, m in {"trigger": "trigger", "pause": "pause", "resume": "resume",
                               "remove": "remove_recurring"}.items() if hasattr(engine, m)}
    assert offered == expected


def test_jobs_magic_shows_the_dashboard(shell: Any) -> None:
    dash = shell.run_line_magic("jobs", "")
    try:
        assert isinstance(dash, Dashboard) and dash.refreshing
        assert dash.page_names[:3] == ["Overview", "Jobs", "Job"]
    finally:
        dash.close()
    assert not dash.refreshing


def test_jobs_frame_args_column_masks_secrets_too(engine: nbjobs.Engine) -> None:
    job_id = failed_job(engine, "alice", "hunter2", api_token="tok-123")
    frame = engine.jobs(args=True)
    text = frame.loc[frame["id"] == job_id, "args"].iloc[0]
    assert text == "user='alice', password=***, api_token=***"
    assert "args" not in engine.jobs().columns  # opt-in: a plain listing reads no payloads
    assert "alice" not in engine.jobs(args=True, redact=("user",))["args"].iloc[0]
    one_pattern = engine.jobs(args=True, redact="user")["args"].iloc[0]
    assert one_pattern == "user=***, password='hunter2', api_token='tok-123'"


def test_timer_stops_when_the_engine_is_closed(engine: nbjobs.Engine, dash_factory: Any) -> None:
    dash = dash_factory(refresh=0.05)
    wait_for(lambda: dash.refreshes > 1, timeout=10)
    engine.close()
    dash._wake.set()
    wait_for(lambda: not dash.refreshing, timeout=10)


def test_job_pages_show_the_parents_and_continuations_of_a_fan_in(
    engine: nbjobs.Engine, dash_factory: Any
) -> None:
    parents = [engine.enqueue(login, f"user{i}", "pw") for i in range(2)]
    child = engine.after(parents, login, "all", "pw")
    dash = dash_factory()
    dash.open_job(child.id)
    page = dash.detail_html.value
    assert f"#{parents[0].id}, #{parents[1].id} (continue when all succeeded)" in page
    dash.open_job(parents[1].id)
    assert f"#{child.id}" in dash.detail_html.value and "Continuations" in dash.detail_html.value
    handler = engine.after(parents, login, "alert", "pw", continue_on="failed")
    dash.open_job(handler.id)
    assert "(continue when all ended and one failed)" in dash.detail_html.value


def test_job_page_names_the_job_holding_its_lock(engine: nbjobs.Engine, dash_factory: Any) -> None:
    holder = engine.options(lock="results.csv").enqueue(login, "a", "pw")
    waiting = engine.options(lock="results.csv").enqueue(login, "b", "pw")
    now = engine.clock.now()
    [claimed] = engine.store.acquire("srv", ["*"], 10, now + timedelta(seconds=30), now)  # as a server would
    assert claimed.id == holder.id
    dash = dash_factory()
    dash.open_job(waiting.id)
    assert f"results.csv (held by #{holder.id})" in dash.detail_html.value
    dash.open_job(holder.id)
    assert "results.csv (held by this job)" in dash.detail_html.value
    assert list(engine.jobs("processing", lock="results.csv")["id"]) == [holder.id]
    frame = engine.jobs(lock="results.csv")
    assert list(frame["id"]) == [waiting.id, holder.id] and list(frame["lock"]) == ["results.csv"] * 2
    plain = engine.enqueue(login, "c", "pw")
    assert engine.jobs().set_index("id")["lock"].isna().to_dict() == {plain.id: True, waiting.id: False,
                                                                       holder.id: False}
