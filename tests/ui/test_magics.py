"""The extension and magics in a real IPython InteractiveShell."""

from __future__ import annotations

import sys
import traceback
from datetime import UTC, datetime, timedelta

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import nbjobs
from nbjobs import Job, JobState, client, context, default, private_queues
from nbjobs.errors import JobFailedError
from nbjobs.rates import Rate
from nbjobs.ui import cells
from tests.conftest import wait_for


def run(ip: InteractiveShell, code: str) -> object:
    result = ip.run_cell(code)
    result.raise_error()
    return result.result


def test_load_starts_the_default_engine_and_loading_twice_is_harmless(shell: InteractiveShell) -> None:
    engine = default.current_default()
    assert engine is not None and engine.server is not None and engine.server.running
    assert shell.user_ns["nbjobs"] is nbjobs
    server = engine.server
    nbjobs.load_ipython_extension(shell)
    run(shell, "%load_ext nbjobs")
    assert default.current_default() is engine and engine.server is server
    assert len(engine.servers()) == 1


def test_a_function_defined_in_a_cell_runs_as_a_job(shell: InteractiveShell) -> None:
    run(shell, "def square(x):\n    print('squaring', x)\n    return x * x\n")
    job = run(shell, "nbjobs.enqueue(square, 7)")
    assert isinstance(job, nbjobs.Job)
    assert job.result(timeout=30) == 49
    assert job.logs() == "squaring 7\n"


def test_job_cell_runs_in_the_background_and_writes_names_back(shell: InteractiveShell) -> None:
    run(shell, "base = 16")
    job = run(shell, "%%job --name fit --timeout 10m\nimport math\ny = math.sqrt(base)\n"
                     "def helper():\n    return y * 2\nprint('fitted')\ny + 1")
    assert isinstance(job, nbjobs.Job)
    assert job.result(timeout=30) == 5.0
    assert shell.user_ns["y"] == 4.0 and "math" in shell.user_ns
    helper = shell.user_ns["helper"]
    assert helper.__globals__ is shell.user_ns  # sees later changes to the notebook's names
    run(shell, "y = 10")
    assert helper() == 20
    record = job.record()
    assert record.name == "fit" and record.options.retries == 0 and record.options.timeout == 600
    assert record.queue == f"default@{private_queues.PROCESS_TAG}"
    assert job.logs() == "fitted\n"


def test_a_failing_job_cell_writes_nothing_back(shell: InteractiveShell) -> None:
    job = run(shell, "%%job --queue heavy\nz = 1\n1 / 0")
    with pytest.raises(JobFailedError) as err:
        job.result(timeout=30)
    assert "ZeroDivisionError" in str(err.value.remote_traceback)
    assert "z" not in shell.user_ns
    assert job.record().queue == f"heavy@{private_queues.PROCESS_TAG}"


def test_bad_options_and_syntax_errors_are_refused_at_the_cell(shell: InteractiveShell) -> None:
    engine = default.current_default()
    assert engine is not None
    before = len(engine.jobs())
    assert shell.run_cell("%%job --retries many\nx = 1").error_in_exec is not None
    assert "timeout must be" in str(shell.run_cell("%%job --timeout soon\nx = 1").error_in_exec)
    assert shell.run_cell("%%job\nx = (").error_in_exec is not None
    queues_before = set(private_queues.registered())
    for queue in ("' io'", "''", "'*'"):  # the message names the queue as written, not its private form
        error = shell.run_cell(f"%%job --queue {queue}\nx = 1").error_in_exec
        assert error is not None and "@kernel" not in str(error), (queue, error)
    assert set(private_queues.registered()) == queues_before  # no private queue registered for them
    assert len(engine.jobs()) == before


def test_job_line_magic_shows_state_history_output_and_result(shell: InteractiveShell) -> None:
    run(shell, "def shout(word, api_key=None):\n    print(word.upper())\n    return word * 2\n")
    job = run(shell, "nbjobs.enqueue(shout, 'hey', api_key='s3cret')")
    job.result(timeout=30)
    with capture_output() as cap:
        run(shell, f"%job {job.id}")
    (shown,) = cap.outputs
    assert "succeeded" in shown.data["text/html"]
    assert "HEY" in shown.data["text/plain"] and "'heyhey'" in shown.data["text/plain"]
    assert "claimed (attempt 1)" in shown.data["text/plain"]
    # The call as stored, its secrets masked as the dashboard masks them.
    assert "call: __main__:shout(word='hey', api_key=***)" in shown.data["text/plain"]
    assert "shout(word=&#x27;hey&#x27;, api_key=***)" in shown.data["text/html"]
    assert "s3cret" not in shown.data["text/plain"] + shown.data["text/html"]


def test_magics_answer_mistakes_with_a_usage_message(shell: InteractiveShell) -> None:
    with capture_output() as cap:
        for line in ("%job 999999", "%job abc", "%jobs sucessful", "%nbjobs frobnicate"):
            assert shell.run_cell(line).error_in_exec is not None
    assert "job 999999 does not exist" in cap.stderr
    assert "usage: %job ID" in cap.stderr
    assert "unknown job state 'sucessful'" in cap.stderr
    assert "unknown %nbjobs command 'frobnicate'; use config, status, start, stop or help" in cap.stderr
    assert "Traceback" not in cap.stdout + cap.stderr
    with capture_output() as cap:
        run(shell, "%nbjobs help")
    assert "%%job [--name N]" in cap.stdout and "%jobs [STATE]" in cap.stdout
    assert "--at 2h" in cap.stdout and "--continue-on failed" in cap.stdout


def test_jobs_magic_shows_the_dashboard_or_the_jobs_frame(shell: InteractiveShell) -> None:
    run(shell, "def one():\n    return 1\n")
    run(shell, "nbjobs.enqueue(one).result(timeout=30)")
    shown = run(shell, "%jobs succeeded")
    assert list(shown["state"]) == ["succeeded"]  # type: ignore[index]
    assert run(shell, "%jobs") is not None


def test_config_magic_restarts_the_server_with_new_settings(shell: InteractiveShell) -> None:
    run(shell, "%nbjobs config workers=1 shutdown_timeout=0.5 keep_succeeded=30d")
    engine = default.current_default()
    assert engine is not None and engine.server is not None
    assert engine.server.config.workers == 1 and engine.server.config.keep_succeeded == 30 * 86400
    assert shell.run_cell("%nbjobs config no_such_setting=1").error_in_exec is not None
    server, before = engine.server, default.settings()
    # Refused settings change nothing: the running server and engine stay, and the values are not
    # kept for the next start (a mistyped value used to stop the server and leave none).
    for bad in ("workers=abc", "poll_interval=-1", "url=sqlite:////no/such/folder/x.db", "secret=''"):
        assert shell.run_cell(f"%nbjobs config {bad}").error_in_exec is not None, bad
        assert default.current_default() is engine and engine.server is server and server.running, bad
    assert default.settings() == before
    assert run(shell, "nbjobs.enqueue(abs, -3).result(timeout=10)") == 3
    run(shell, "%nbjobs config workers=2 \"limits={'gpu': 1}\" \"rates={'api': '60/m'}\"")
    assert engine.server.config.limits == {"gpu": 1}
    assert engine.server.dispatcher.config.limits == {"gpu": 1}
    assert engine.server.dispatcher.config.rates == {"api": Rate(count=60, period=60)}


def test_unload_stops_the_server_and_leaves_nothing_processing(shell: InteractiveShell) -> None:
    run(shell, "%nbjobs config workers=1 shutdown_timeout=0.3")
    run(shell, "import threading\ngate = threading.Event()")
    running = run(shell, "%%job\nwhile not gate.wait(0.01):\n    nbjobs.check_cancelled()")
    waiting = run(shell, "%%job\n2 + 2")
    engine = default.current_default()
    assert engine is not None
    assert cells.note_cells in client.SUBMIT_HOOKS and cells.in_its_cell in context.RUN_HOOKS
    wait_for(lambda: running.state is JobState.PROCESSING)
    run(shell, "%unload_ext nbjobs")
    assert cells.note_cells not in client.SUBMIT_HOOKS and cells.in_its_cell not in context.RUN_HOOKS
    assert default.current_default() is None
    assert engine.server is None
    states = {running.state, waiting.state}
    assert states == {JobState.DELETED}
    assert "jobs" not in shell.magics_manager.magics["line"]


def test_a_job_cell_with_top_level_await_runs_like_a_notebook_cell(shell: InteractiveShell) -> None:
    run(shell, "import asyncio\nasync def fetch(x):\n    await asyncio.sleep(0.01)\n    return x * 3\n")
    job = run(shell, "%%job\nparts = [await fetch(i) for i in range(3)]\nprint('fetched', parts)\n"
                     "sum(parts) + await fetch(1)")
    assert job.result(timeout=30) == 12
    assert shell.user_ns["parts"] == [0, 3, 6]  # assigned names come back, as from any job cell
    assert job.logs() == "fetched [0, 3, 6]\n"


def test_an_async_job_cell_is_cancelled_at_its_await(shell: InteractiveShell) -> None:
    job = run(shell, "%%job\nimport asyncio\nawait asyncio.sleep(60)\nnever = True")
    wait_for(lambda: job.state is JobState.PROCESSING)
    job.cancel()
    assert job.wait(timeout=10) is JobState.DELETED
    assert "never" not in shell.user_ns


def test_a_cell_that_cannot_compile_is_refused_before_it_is_stored(shell: InteractiveShell) -> None:
    engine = default.current_default()
    assert engine is not None
    before = len(engine.jobs())
    with capture_output():
        assert shell.run_cell("%%job\nreturn 5").error_in_exec is not None  # parses, does not compile
    assert len(engine.jobs()) == before


def test_a_job_cell_after_other_jobs_starts_when_they_succeeded_and_sees_their_names(
    shell: InteractiveShell,
) -> None:
    run(shell, "import threading\ngate = threading.Event()")
    first = run(shell, "%%job --name first\ngate.wait(30)\nstage = 1\nstage")
    shell.user_ns["first"] = first
    second = run(shell, "%%job --after first\nstage2 = stage + 1\nstage2")
    third = run(shell, f"%%job --after {first.id},{second.id}\nstage3 = stage2 + 1")
    assert second.state is JobState.AWAITING and third.state is JobState.AWAITING
    shell.user_ns["gate"].set()
    assert second.result(timeout=30) == 2  # the first cell's names were written back before it began
    third.wait(timeout=30)
    assert shell.user_ns["stage3"] == 3
    assert sorted(p.id for p in third.parents()) == [first.id, second.id]


def test_a_job_cell_continuing_on_failure_runs_only_when_its_parent_failed(shell: InteractiveShell) -> None:
    failing = run(shell, "%%job --retries 0\nraise ValueError('no data')")
    fine = run(shell, "%%job\nok = 1")
    shell.user_ns.update(failing=failing, fine=fine)
    alert = run(shell, f"%%job --after failing --continue-on failed\n"
                       f"alerted = nbjobs.job({failing.id}).state")
    spared = run(shell, "%%job --after fine --continue-on failed\nspared = True")
    alert.wait(timeout=30)
    assert shell.user_ns["alerted"] is JobState.FAILED
    assert spared.wait(timeout=30) is JobState.DELETED and "spared" not in shell.user_ns


def test_a_job_cell_at_a_later_time_is_scheduled_and_sees_the_namespace_of_then(
    shell: InteractiveShell,
) -> None:
    run(shell, "x = 1")
    before = datetime.now(UTC)
    later = run(shell, "%%job --at 1h --name nightly\ny = x * 10\ny")
    assert isinstance(later, Job) and later.state is JobState.SCHEDULED
    run_at = later.record().run_at
    assert run_at is not None and timedelta(minutes=59) < run_at - before < timedelta(minutes=61)
    assert later.record().name == "nightly"
    run(shell, "x = 7")
    later.requeue()  # now instead of in an hour
    assert later.result(timeout=30) == 70  # the namespace as it is when the cell runs
    assert shell.user_ns["y"] == 70
    engine = default.current_default()
    assert engine is not None
    count = len(engine.jobs())
    with capture_output() as cap:
        assert shell.run_cell("%%job --at soon\nz = 1").error_in_exec is not None
        assert shell.run_cell("%%job --at 1h --after later\nz = 1").error_in_exec is not None
    assert "when 'soon' is not a time" in cap.stderr
    assert "%%job takes --at or --after, not both" in cap.stderr
    assert len(engine.jobs()) == count  # nothing stored by a refusal


def test_after_names_that_are_not_jobs_are_refused_at_the_cell(shell: InteractiveShell) -> None:
    engine = default.current_default()
    assert engine is not None
    before = len(engine.jobs())
    run(shell, "not_a_job = 'x'")
    with capture_output():
        assert shell.run_cell("%%job --after not_a_job\nx = 1").error_in_exec is not None
        assert shell.run_cell("%%job --after missing_name\nx = 1").error_in_exec is not None
        assert shell.run_cell("%%job --after 999999\nx = 1").error_in_exec is not None  # no such job
    assert len(engine.jobs()) == before


def test_job_cells_holding_one_lock_run_one_after_the_other(shell: InteractiveShell) -> None:
    run(shell, "import threading\nhold = threading.Event()")
    first = run(shell, "%%job --lock results.csv\nhold.wait(30)\nwritten = ['first']")
    wait_for(lambda: first.state is JobState.PROCESSING)
    second = run(shell, "%%job --lock results.csv\nwritten = written + ['second']\nwritten")
    other = run(shell, "%%job\nfree = 1")
    other.wait(timeout=30)  # a worker was free all along …
    assert second.state is JobState.ENQUEUED  # … and still the second cell waits for the lock
    assert second.record().options.lock == "results.csv"
    shell.user_ns["hold"].set()
    assert second.result(timeout=30) == ["first", "second"]


def test_a_failed_job_of_a_cell_function_runs_again_in_a_cell_for_debug(shell: InteractiveShell) -> None:
    run(shell, "def parse(text):\n    return int(text)\n")
    job = run(shell, "job = nbjobs.options(retries=0).enqueue(parse, 'x1')\njob")
    assert job.wait(timeout=30) is JobState.FAILED
    with capture_output():
        result = shell.run_cell("job.run_here()")
    assert isinstance(result.error_in_exec, ValueError)
    # what %debug opens: the traceback IPython keeps, whose last frame is the job's function
    frames = [frame.f_code.co_name for frame, _ in traceback.walk_tb(sys.last_traceback)]
    assert frames[-1] == "parse" and job.state is JobState.FAILED
    with capture_output() as cap:
        run(shell, f"%job {job.id}")
    (shown,) = cap.outputs  # %job says how to get there
    assert f"nbjobs.job({job.id}).run_here() runs it again in a cell" in shown.data["text/plain"]
