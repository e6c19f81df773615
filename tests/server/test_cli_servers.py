"""`nbjobs servers` lists live servers with their heartbeats and running jobs; `nbjobs server`
refuses bad settings before starting anything."""

from __future__ import annotations

import threading

from click.testing import CliRunner

import nbjobs
from nbjobs.cli import cli

GATE = threading.Event()
STARTED = threading.Event()


def held() -> None:
    STARTED.set()
    GATE.wait(30)


def held_free() -> str:
    return "done"


def test_servers_lists_running_jobs(engine: nbjobs.Engine) -> None:
    GATE.clear()
    STARTED.clear()
    engine.start_server(workers=1, name="listed-server")
    job = engine.enqueue(held)
    try:
        assert STARTED.wait(10)
        result = CliRunner().invoke(cli, ["servers", "--url", engine.url])
        assert result.exit_code == 0, result.output
        line = next(ln for ln in result.output.splitlines() if "listed-server" in ln)
        assert line.split()[-2:] == ["1", str(job.id)]  # running count, running job ids
        assert "heartbeat_at" in result.output
    finally:
        GATE.set()


def test_server_refuses_bad_settings_before_starting(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    result = CliRunner().invoke(cli, ["server", "--url", url, "--heartbeat-interval", "10",
                                      "--server-timeout", "5"])
    assert result.exit_code != 0
    assert "server_timeout must be longer than heartbeat_interval" in str(result.exception)
    result = CliRunner().invoke(cli, ["server", "--url", url, "--queues", " , "])
    assert result.exit_code == 2 and "at least one queue" in result.output
    result = CliRunner().invoke(cli, ["server", "--url", url, "--limit", "gpu:1"])
    assert result.exit_code == 2 and "write QUEUE=N, e.g. gpu=1" in result.output
    result = CliRunner().invoke(cli, ["server", "--url", url, "--queues", "default", "--limit", "gpu=1"])
    assert result.exit_code != 0 and "does not serve queue 'gpu'" in str(result.exception)
    result = CliRunner().invoke(cli, ["server", "--url", url, "--rate", "openai"])
    assert result.exit_code == 2 and "write QUEUE=N/UNIT, e.g. openai=60/m" in result.output
    result = CliRunner().invoke(cli, ["server", "--url", url, "--rate", "openai=60/week"])
    assert result.exit_code != 0 and "'60/week' is not a rate" in str(result.exception)
    result = CliRunner().invoke(cli, ["server", "--url", url, "--name", "s" * 201])
    assert result.exit_code != 0
    assert "server name 'sss" in str(result.exception) and "use at most 200" in str(result.exception)


def test_requeue_reports_each_job_and_fails_if_one_cannot_change(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    done = engine.enqueue(held_free)
    done.wait(timeout=10)
    engine.stop_server()
    waiting = engine.schedule(3600, held_free)
    result = CliRunner().invoke(cli, ["requeue", "--url", engine.url, str(done.id), str(waiting.id),
                                      "999999"])
    assert result.exit_code == 1
    assert f"job {done.id} requeued" in result.output and f"job {waiting.id} requeued" in result.output
    assert "job 999999: job 999999 does not exist" in result.output
    assert done.state is nbjobs.JobState.ENQUEUED and waiting.state is nbjobs.JobState.ENQUEUED


def refuse(why: str) -> None:
    raise PermissionError(why)


def test_wait_prints_each_job_as_it_ends_and_exits_by_how_they_ended(engine: nbjobs.Engine) -> None:
    GATE.clear()
    engine.start_server(workers=2)
    ok = [engine.enqueue(held_free) for _ in range(3)]
    result = CliRunner().invoke(cli, ["wait", "--url", engine.url, *[str(j.id) for j in ok]])
    assert result.exit_code == 0
    assert sorted(result.output.splitlines()) == sorted(f"job {j.id} succeeded" for j in ok)

    bad = engine.options(retries=0).enqueue(refuse, "no access to s3://bucket")
    result = CliRunner().invoke(cli, ["wait", "--url", engine.url, str(ok[0].id), str(bad.id)])
    assert result.exit_code == 1
    assert f"job {bad.id} failed: PermissionError: no access to s3://bucket" in result.output

    blocked = engine.enqueue(held)
    try:
        result = CliRunner().invoke(cli, ["wait", "--url", engine.url, "--timeout", "50ms", str(blocked.id)])
        assert result.exit_code == 124
        assert f"1 of 1 jobs are unfinished after 0.05s (ids {blocked.id})" in result.output
        result = CliRunner().invoke(cli, ["wait", "--url", engine.url, "--timeout", "-1s", str(blocked.id)])
        assert result.exit_code == 2 and "'-1s' is negative; give a duration from 0" in result.output
        result = CliRunner().invoke(cli, ["wait", "--url", engine.url, "999999"])
        assert result.exit_code != 0 and "do not exist (ids 999999)" in str(result.exception)
    finally:
        GATE.set()
