"""`nbjobs enqueue`, `nbjobs show` and `nbjobs logs`: a job's whole life from a terminal."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import nbjobs
from nbjobs.cli import cli
from nbjobs.cli_values import duration
from nbjobs.errors import ConfigurationError
from nbjobs.storage.dialects import sqlite_file

from ..conftest import wait_for

SECRET = "test-secret"
HERE = f"{__name__}"
GATE = threading.Event()


def add(a: object, b: object = 0, *, scale: int = 1) -> object:
    print(f"adding {a!r} and {b!r}")
    return (a + b) * scale  # type: ignore[operator]


def login(user: str, password: str) -> str:
    return f"{user} in"


def chatty(lines: int) -> str:
    """Prints a line, holds until the test opens the gate, prints the rest."""
    print("line 0", flush=True)
    GATE.wait(30)
    for i in range(1, lines):
        print(f"line {i}")
    return "done"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner(env={"NBJOBS_SECRET": SECRET}).invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_enqueue_reads_arguments_as_literals_and_takes_options(engine: nbjobs.Engine) -> None:
    code, out, _ = invoke("enqueue", "--url", engine.url, f"{HERE}.add", "2", "3", "-k", "scale", "10",
                          "--queue", "cli", "--priority", "5", "--retries", "1", "--name", "sum",
                          "--key", "sum-2-3", "--timeout", "10m")
    assert code == 0
    job = engine.job(int(out.split()[1]))
    assert out == f"job {job.id} enqueued\n"
    record = job.record()
    assert (record.function, record.queue, record.name) == (f"{HERE}:add", "cli", "sum")
    assert (record.options.priority, record.options.retries, record.options.key) == (5, 1, "sum-2-3")
    assert record.options.timeout == 600
    code, _, err = invoke("enqueue", "--url", engine.url, f"{HERE}:add", "2", "--timeout", "soon")
    assert code == 2 and "--timeout" in err and "'soon' is not a duration" in err
    # The same key again returns the unfinished job instead of storing a second one.
    code, again, _ = invoke("enqueue", "--url", engine.url, f"{HERE}:add", "2", "--key", "sum-2-3")
    assert code == 0 and again == out
    # Not literals are strings; quoted literals are strings too.
    code, out, _ = invoke("enqueue", "--url", engine.url, f"{HERE}:add", "ab", "'12'", "--queue", "cli")
    words = engine.job(int(out.split()[1]))
    engine.start_server(workers=1, queues=["cli"])
    assert job.result(timeout=30) == 50
    assert words.result(timeout=30) == "ab12"


def test_enqueue_at_a_delay_or_a_time_schedules_the_job(engine: nbjobs.Engine) -> None:
    before = engine.clock.now()
    code, out, _ = invoke("enqueue", "--url", engine.url, f"{HERE}:add", "1", "--at", "10m")
    assert code == 0 and out.endswith("scheduled\n")
    run_at = engine.job(int(out.split()[1])).record().run_at
    assert run_at is not None and timedelta(minutes=9) < run_at - before < timedelta(minutes=11)
    code, out, _ = invoke("enqueue", "--url", engine.url, f"{HERE}:add", "1", "--at", "2999-01-02 03:04")
    run_at = engine.job(int(out.split()[1])).record().run_at
    assert run_at is not None and run_at.year == 2999


def test_enqueue_refuses_what_it_cannot_store_before_storing_anything(engine: nbjobs.Engine) -> None:
    for args, message in [
        ([f"{HERE}:no_such_function"], "check the function's name"),
        (["no_such_module_here:f"], "run this in the folder of its module, or put that folder on PYTHONPATH"),
        (["justaname"], "write the function as module:function"),
        ([f"{HERE}:add", "1", "--at", "someday"], "'someday' is neither a time"),
        ([f"{HERE}:add", "1", "--at", "-5m"], "negative"),
        ([f"{HERE}:add", "1", "--queue", "a\udce9b"], "queue"),
    ]:
        result = CliRunner(env={"NBJOBS_SECRET": SECRET}).invoke(cli, ["enqueue", "--url", engine.url, *args])
        assert result.exit_code != 0, args
        shown = result.output + str(result.exception or "")
        assert message in shown, (args, shown)
    assert engine.jobs().empty


def test_enqueue_wait_prints_the_result_or_exits_1_with_the_remote_traceback(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    code, out, _ = invoke("enqueue", "--url", engine.url, f"{HERE}:add", "[1]", "[2]", "--wait")
    assert code == 0 and out.splitlines()[-1] == "[1, 2]"
    code, out, err = invoke("enqueue", "--url", engine.url, f"{HERE}:add", "1", "'x'", "--retries", "0",
                            "--wait")
    assert code == 1
    assert "failed: TypeError: unsupported operand" in err and "Remote traceback" in err
    assert "return (a + b) * scale" in err


def test_show_prints_the_call_history_output_and_result_or_traceback(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    good = engine.enqueue(add, 2, b=3)
    secret = engine.enqueue(login, "ann", "hunter2")
    bad = engine.options(retries=0).enqueue(add, 1, "x")
    engine.wait([good, secret, bad], timeout=30)
    code, out, _ = invoke("show", "--url", engine.url, str(good.id))
    assert code == 0
    assert f"call: {HERE}:add(a=2, b=3)" in out
    assert "claimed (attempt 1)" in out and "adding 2 and 3" in out
    assert out.rstrip().endswith("result:\n5")
    code, out, _ = invoke("show", "--url", engine.url, str(secret.id))
    assert f"call: {HERE}:login(user='ann', password=***)" in out and "hunter2" not in out
    code, out, _ = invoke("show", "--url", engine.url, str(bad.id))
    assert code == 0
    assert "failed" in out and "TypeError: unsupported operand" in out and "return (a + b) * scale" in out
    long = engine.enqueue(add, "x" * 5_000, "y" * 5_000)
    long.result(timeout=30)
    code, out, _ = invoke("show", "--url", engine.url, str(long.id))
    assert f"… (10,002 characters in all; nbjobs.job({long.id}).result() is the value)" in out
    assert len(out) < 10_000  # its output tail (one 10,000-character line printed) is cut too
    result = CliRunner().invoke(cli, ["show", "--url", engine.url, "999999"])
    assert result.exit_code != 0 and "job 999999 does not exist" in str(result.exception)


def test_logs_prints_all_or_the_tail(engine: nbjobs.Engine) -> None:
    GATE.set()
    engine.start_server(workers=1)
    job = engine.enqueue(chatty, 5)
    job.result(timeout=30)
    code, out, _ = invoke("logs", "--url", engine.url, str(job.id))
    assert code == 0 and out == "".join(f"line {i}\n" for i in range(5))
    code, out, _ = invoke("logs", "--url", engine.url, str(job.id), "--tail", "2")
    assert out == "line 3\nline 4\n"
    code, out, _ = invoke("logs", "--url", engine.url, str(job.id), "--tail", "50")
    assert out == "".join(f"line {i}\n" for i in range(5))


def test_logs_follow_prints_output_while_the_job_runs_and_exits_with_its_outcome(
    engine: nbjobs.Engine,
) -> None:
    GATE.clear()
    engine.start_server(workers=1)
    job = engine.enqueue(chatty, 3)
    wait_for(lambda: engine.store.read_log_entries(job.id), timeout=30)
    env = {**os.environ, "NBJOBS_SECRET": SECRET}
    with subprocess.Popen(  # closes its pipes whatever happens (a failure here left them to the next test)
        [sys.executable, "-m", "nbjobs", "logs", "--url", engine.url, str(job.id), "--follow",
         "--interval", "0.05"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            first = proc.stdout.readline()
            assert first == "line 0\n", first or proc.stderr.read()  # at EOF: why the command ended
            assert job.state is nbjobs.JobState.PROCESSING  # it printed while the job was running
            GATE.set()
            out, err = proc.communicate(timeout=60)
        finally:
            GATE.set()
            proc.kill()
            proc.wait(10)
    assert out == "line 1\nline 2\n"
    assert err == f"job {job.id} succeeded\n" and proc.returncode == 0


@pytest.mark.parametrize(("text", "expected"), [
    ("600", timedelta(seconds=600)), ("90m", timedelta(minutes=90)), ("1.5h", timedelta(hours=1.5)),
    ("2d", timedelta(days=2)), ("2D", timedelta(days=2)), ("1w", timedelta(weeks=1)),
    ("1h30m", timedelta(minutes=90)), ("00:10:00", timedelta(minutes=10)), ("0", timedelta(0)),
    ("2026-11-29", None), ("soon", None), ("nan", None), ("inf", None), ("1e30", None),
])
def test_command_line_durations(text: str, expected: timedelta | None) -> None:
    assert duration(text) == expected


def fails() -> None:
    raise ValueError("no")


def test_requeue_and_delete_take_filters_and_ask_first(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=2)
    failed = [engine.options(retries=0, queue=q).enqueue(fails) for q in ("etl", "etl", "web")]
    good = engine.options(queue="etl").enqueue(add, 1)
    engine.wait([*failed, good], timeout=30)
    engine.stop_server()
    runner = CliRunner(env={"NBJOBS_SECRET": SECRET})
    # Asked first; "no" changes nothing.
    etl_failed = ["requeue", "--url", engine.url, "--state", "failed", "--queue", "etl"]
    result = runner.invoke(cli, etl_failed, input="n\n")
    assert "requeue 2 job(s) (state failed, queue etl)?" in result.output and result.exit_code == 1
    assert all(job.state is nbjobs.JobState.FAILED for job in failed)
    result = runner.invoke(cli, etl_failed, input="y\n")
    assert result.exit_code == 0, result.output
    assert [job.state for job in failed] == [nbjobs.JobState.ENQUEUED] * 2 + [nbjobs.JobState.FAILED]
    assert good.state is nbjobs.JobState.SUCCEEDED
    code, out, _ = invoke("delete", "--url", engine.url, "--queue", "etl", "--since", "1h", "--yes")
    assert code == 0 and sorted(out.splitlines()) == sorted(
        [f"job {failed[0].id} deleted", f"job {failed[1].id} deleted", f"job {good.id} deleted"])
    code, out, _ = invoke("requeue", "--url", engine.url, "--state", "failed,deleted", "--yes")  # either
    assert code == 0 and sorted(out.splitlines()) == sorted(f"job {j.id} requeued" for j in [*failed, good])
    code, out, _ = invoke("requeue", "--url", engine.url, "--state", "failed", "--queue", "nowhere")
    assert code == 0 and out == "no job matches (state failed, queue nowhere)\n"
    for args, message in [([], "give the ids of the jobs to requeue, or filters such as --state failed"),
                          (["5", "--state", "failed"], "give job ids or filters")]:
        result = runner.invoke(cli, ["requeue", "--url", engine.url, *args])
        assert result.exit_code == 2 and message in result.output


def test_listings_print_csv_and_json_for_scripts(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1, name="scripted")
    job = engine.enqueue(add, 2, 3)
    job.result(timeout=30)
    code, out, _ = invoke("jobs", "--url", engine.url, "--format", "json")
    (row,) = json.loads(out)
    assert row["id"] == job.id and row["state"] == "succeeded" and row["priority"] == 0  # every column
    assert isinstance(row["duration"], float) and row["created_at"].endswith("Z")  # seconds, ISO times
    code, out, _ = invoke("jobs", "--url", engine.url, "--format", "csv")
    (parsed,) = list(csv.DictReader(io.StringIO(out)))
    assert parsed["id"] == str(job.id) and float(parsed["duration"]) >= 0
    code, out, _ = invoke("history", "--url", engine.url, str(job.id), "--format", "json")
    changes = json.loads(out)
    assert [c["state"] for c in changes] == ["enqueued", "processing", "succeeded"]
    assert isinstance(changes[-1]["data"]["duration"], float)  # an object, not text in text
    code, out, _ = invoke("history", "--url", engine.url, str(job.id), "--format", "csv")
    assert json.loads(list(csv.DictReader(io.StringIO(out)))[-1]["data"])["duration"] >= 0
    code, out, _ = invoke("servers", "--url", engine.url, "--format", "json")
    (server,) = json.loads(out)
    assert server["name"] == "scripted" and len(server["id"]) == 32  # whole ids for scripts
    code, out, _ = invoke("recurring", "--url", engine.url, "--format", "json")
    assert code == 0 and json.loads(out) == []


def test_stats_counts_finished_jobs_per_interval(engine: nbjobs.Engine) -> None:
    engine.start_server(workers=1)
    engine.enqueue(add, 1, 2).result(timeout=30)
    engine.options(retries=0).enqueue(add, "a", 1).wait(timeout=30)  # str + int: fails
    _, out, _ = invoke("stats", "--url", engine.url, "--freq", "1D", "--since", "2d", "--format", "json")
    rows = json.loads(out)
    assert len(rows) in (3, 4)  # the intervals of the last two days, this one included
    assert sum(r["succeeded"] for r in rows) == 1 and sum(r["failed"] for r in rows) == 1
    _, out, _ = invoke("stats", "--url", engine.url)
    assert "succeeded" in out and "failed" in out
    result = CliRunner().invoke(cli, ["stats", "--url", engine.url, "--freq", "often"])
    assert "freq must be a fixed interval" in str(result.exception)


def test_a_listing_cut_at_its_limit_says_so_on_stderr(engine: nbjobs.Engine) -> None:
    engine.enqueue_many(add, [(i,) for i in range(4)])
    _, out, err = invoke("jobs", "--url", engine.url, "--limit", "3", "--format", "json")
    assert len(json.loads(out)) == 3 and "(the newest 3 shown; more match: --limit N or --all)" in err
    _, out, err = invoke("jobs", "--url", engine.url, "--all", "--limit", "3", "--format", "json")
    assert len(json.loads(out)) == 4 and err == ""
    _, out, err = invoke("jobs", "--url", engine.url, "--limit", "4", "--format", "json")
    assert len(json.loads(out)) == 4 and err == ""


def test_queues_show_what_waits_where_and_for_how_long(engine: nbjobs.Engine) -> None:
    clock = engine.clock
    for _ in range(3):
        engine.enqueue(add, 1)
    engine.options(queue="etl").schedule(3600, add, 1)
    first = engine.options(queue="etl").enqueue(add, 1)
    first.then(add, 2)  # awaiting, in its parent's queue
    engine.pause_queue("reports")
    frame = engine.queues()
    assert list(frame["queue"]) == ["default", "etl", "reports"]
    rows = frame.set_index("queue")
    assert rows.loc["default", ["enqueued", "scheduled", "awaiting", "processing"]].tolist() == [3, 0, 0, 0]
    assert rows.loc["etl", ["enqueued", "scheduled", "awaiting", "processing"]].tolist() == [1, 1, 1, 0]
    oldest = engine.jobs("enqueued", queue="default")["enqueued_at"].min()
    wait = rows.loc["default", "longest_wait"]
    assert pd.Timedelta(0) <= wait <= clock.now() - oldest.to_pydatetime()
    assert pd.isna(rows.loc["reports", "longest_wait"]) and bool(rows.loc["reports", "paused"])
    assert not bool(rows.loc["default", "paused"])
    code, out, _ = invoke("queues", "--url", engine.url)
    assert code == 0 and out.splitlines()[0].split() == [
        "queue", "enqueued", "scheduled", "awaiting", "processing", "longest_wait", "paused", "rate", "limit"]
    code, out, _ = invoke("queues", "--url", engine.url, "--format", "json")
    assert {q["queue"]: q["enqueued"] for q in json.loads(out)} == {"default": 3, "etl": 1, "reports": 0}


@pytest.mark.parametrize("command", [
    ["jobs"], ["show", "1"], ["logs", "1"], ["history", "1"], ["wait", "1"], ["servers"], ["queues"],
    ["recurring"], ["trigger", "nightly"], ["requeue", "--state", "failed", "--yes"],
    ["pause-queue", "etl"], ["dashboard"],
])
def test_commands_on_existing_jobs_refuse_a_sqlite_file_that_does_not_exist(
        tmp_path: Path, command: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistyped --url, or `nbjobs jobs` run outside the notebook's folder, created an empty
    database and answered "(none)"."""
    missing = tmp_path / "typo.db"
    result = CliRunner().invoke(cli, [command[0], "--url", f"sqlite:///{missing}", *command[1:]])
    assert isinstance(result.exception, ConfigurationError), result.output
    assert f"there is no nbjobs database at {missing} (nothing was created)" in str(result.exception)
    assert not missing.exists()
    monkeypatch.chdir(tmp_path)  # the default, ./nbjobs.db, in a folder without one
    result = CliRunner().invoke(cli, command, env={"NBJOBS_URL": ""})
    assert "there is no nbjobs database at" in str(result.exception)
    assert list(tmp_path.iterdir()) == []


def test_commands_that_add_jobs_create_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    result = CliRunner().invoke(cli, ["enqueue", "--url", url, f"{HERE}:add", "1", "2"],
                                env={"NBJOBS_SECRET": SECRET})
    assert result.exit_code == 0, result.output
    with nbjobs.connect(url, secret=SECRET) as engine:
        assert engine.jobs()["function"].tolist() == [f"{HERE}:add"]


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:////data/jobs.db", "/data/jobs.db"), ("sqlite:////data/jobs.db?mode=ro", "/data/jobs.db"),
    ("/data/report?v2.db", "/data/report?v2.db"), ("/data/100%41.db", "/data/100%41.db"),
    ("sqlite:///:memory:", None), ("sqlite:///file:jobs?mode=memory&uri=true", None),
    ("postgresql://u@host/db", None),
])
def test_the_file_a_sqlite_url_names(url: str, expected: str | None) -> None:
    assert sqlite_file(url) == expected


def test_rate_queue_sets_shows_and_clears_a_shared_rate(engine: nbjobs.Engine) -> None:
    code, out, _ = invoke("rate-queue", "--url", engine.url, "api", "60/m")
    assert code == 0 and out.strip() == "queue 'api': at most 60/m on all servers together"
    code, out, _ = invoke("rate-queue", "--url", engine.url, "api", "60/m")
    assert "(as it was)" in out
    code, out, _ = invoke("queues", "--url", engine.url, "--format", "json")
    assert [(q["queue"], q["rate"], q["enqueued"]) for q in json.loads(out)] == [("api", "60/m", 0)]
    assert engine.queue_rates() == {"api": "60/m"}
    with pytest.raises(nbjobs.ConfigurationError, match="rate: 'sixty' is not a rate; write N/UNIT"):
        invoke("rate-queue", "--url", engine.url, "api", "sixty")
    code, out, err = invoke("rate-queue", "--url", engine.url, "api")
    assert code == 2 and "give a RATE such as 60/m, or --clear" in err
    code, out, _ = invoke("rate-queue", "--url", engine.url, "api", "--clear")
    assert code == 0 and out.strip() == "queue 'api' has no shared rate" and engine.queue_rates() == {}


def test_limit_queue_sets_shows_and_clears_a_shared_limit(engine: nbjobs.Engine) -> None:
    code, out, _ = invoke("limit-queue", "--url", engine.url, "gpu", "2")
    assert code == 0 and out.strip() == "queue 'gpu': at most 2 running on all servers together"
    code, out, _ = invoke("limit-queue", "--url", engine.url, "gpu", "2")
    assert "(as it was)" in out
    invoke("rate-queue", "--url", engine.url, "gpu", "10/m")  # a rate beside it: both hold
    code, out, _ = invoke("queues", "--url", engine.url, "--format", "json")
    assert [(q["queue"], q["rate"], q["limit"]) for q in json.loads(out)] == [("gpu", "10/m", 2)]
    assert engine.queue_limits() == {"gpu": 2} and engine.queue_rates() == {"gpu": "10/m"}
    code, out, err = invoke("limit-queue", "--url", engine.url, "gpu", "0")
    assert code == 2 and "0 is not in the range x>=1" in err
    code, out, err = invoke("limit-queue", "--url", engine.url, "gpu")
    assert code == 2 and "give a number RUNNING such as 2, or --clear" in err
    code, out, _ = invoke("limit-queue", "--url", engine.url, "gpu", "--clear")
    assert code == 0 and out.strip() == "queue 'gpu' has no shared limit" and engine.queue_limits() == {}
    assert engine.queue_rates() == {"gpu": "10/m"}  # the rate stays
    code, out, _ = invoke("limit-queue", "--url", engine.url, "gpu", "--clear")
    assert out.strip() == "queue 'gpu' has no shared limit (it had none)"
