"""The `nbjobs` command line (click): demo, jobs, requeue, delete, and the admin verbs."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
import pandas as pd

from . import __version__
from . import cli_values as values
from .engine import Engine, default_url
from .errors import ConfigurationError, FunctionNotFoundError, JobFailedError, NbJobsError, ResultTimeoutError
from .model import JobState
from .storage.dialects import sqlite_file
from .ui.display import format_seconds

T = TypeVar("T")

url_option = click.option(
    "--url", default=None, envvar="NBJOBS_URL", show_default="NBJOBS_URL or ./nbjobs.db",
    help="Database URL: sqlite:///path or postgresql://user@host/db.",
)


def _engine(url: str | None, *, create: bool = False) -> Engine:
    return Engine(_database(url, create=create))


def _database(url: str | None, *, create: bool = False) -> str:
    """`url`, or the default. Commands that read or change existing jobs refuse a SQLite file that
    does not exist (`create=False`): opening it would create an empty database and answer "(none)",
    where the user mistyped the path or ran the command outside the notebook's folder."""
    url = url or default_url()
    path = sqlite_file(url)
    if not create and path is not None and not os.path.exists(path):
        raise ConfigurationError(
            f"there is no nbjobs database at {path} (nothing was created); give --url (or NBJOBS_URL), "
            "or run this in the folder holding the notebook's nbjobs.db"
        )
    return url


at_option = click.option("--at", "when", default=None,
                         help="Run later: a time ('2026-11-29 09:00', local) or a delay ('10m', '2h').")

format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
    help="table for people; csv or json (every column, durations in seconds) for scripts.",
)


def _print_frame(frame: pd.DataFrame, fmt: str = "table", table_columns: list[str] | None = None) -> None:
    """A frame as a table (of `table_columns`, if given), or whole as CSV or JSON records."""
    if fmt != "table":
        out = frame.copy()
        for column in out.columns:
            if pd.api.types.is_timedelta64_dtype(out[column]):
                out[column] = out[column].dt.total_seconds()
            elif fmt == "csv" and pd.api.types.is_object_dtype(out[column]):  # history's data: JSON text
                out[column] = out[column].map(lambda v: json.dumps(v) if isinstance(v, dict | list) else v)
        if fmt == "csv":
            click.echo(out.to_csv(index=False), nl=False)
        else:
            click.echo(out.to_json(orient="records", date_format="iso", date_unit="us", force_ascii=False))
        return
    if frame.empty:
        click.echo("(none)")
        return
    shown = frame[table_columns or list(frame.columns)].copy()
    for column in shown.columns:
        if pd.api.types.is_timedelta64_dtype(shown[column]):  # "1h19m09s", "2.3s", "0.2ms"
            shown[column] = shown[column].map(_human_duration)
    with pd.option_context("display.max_columns", None, "display.width", 200,
                           "display.max_colwidth", 60):
        click.echo(shown.to_string(index=False))


def _human_duration(value: pd.Timedelta) -> str:
    if pd.isna(value):
        return ""
    seconds = value.total_seconds()
    return f"{seconds * 1000:.1f}ms" if seconds < 1 else format_seconds(seconds)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nbjobs")
def cli() -> None:
    """nbjobs: background jobs for notebooks and Python."""
    importable_here()


def importable_here() -> None:
    """Put the working folder first on `sys.path`, as `python -m nbjobs` does: a server started in a
    project folder runs (and `show` loads results of) the modules there, as Celery and RQ workers do.
    The console script's own `sys.path` starts at its bin folder, where no job's module lives."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)


@cli.command()
@url_option
def demo(url: str | None) -> None:
    """Run one job of each kind against the database and print their table."""
    from .demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with _engine(url, create=True) as engine:
        click.echo(f"nbjobs {__version__} demo on {engine.url}")
        frame = run_demo(engine)
        _print_frame(frame)
        failed = ", ".join(str(i) for i in frame.loc[frame["state"] == "failed", "id"]) or "ID"
        click.echo(f"\n{len(frame)} jobs in {frame.attrs['elapsed']:.1f}s; `nbjobs jobs` lists them again, "
                   f"`nbjobs show {failed}` shows the failed one's traceback, `nbjobs requeue {failed}` "
                   "retries it.")


@cli.command("jobs")
@url_option
@click.option("--state", default=None, help="Only jobs in this state (e.g. failed; or failed,deleted).")
@click.option("--queue", default=None, help="Only jobs in this queue.")
@click.option("--name", default=None, help="Only jobs with this name.")
@click.option("--lock", default=None, help="Only jobs of this lock (holding it: --state processing).")
@click.option("--recurring", default=None, metavar="ID", help="Only the runs of this recurring job.")
@click.option("--since", default=None, help="Only jobs created since: a time ('2026-11-28 09:00', local) "
              "or a duration ago ('90m', '1h', '2d').")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="Most jobs listed (the newest); --all for every one.")
@click.option("--all", "every", is_flag=True, help="Every matching job (no --limit).")
@format_option
def jobs_cmd(url: str | None, state: str | None, queue: str | None, name: str | None, lock: str | None,
             recurring: str | None, since: str | None, limit: int, every: bool, fmt: str) -> None:
    """List jobs, newest first."""
    with _engine(url) as engine:
        frame = engine.jobs(state=state, queue=queue, name=name, limit=None if every else limit + 1,
                            lock=lock, recurring=recurring, since=values.ago(since))
        cut = not every and len(frame) > limit
        _print_frame(frame.iloc[:limit] if cut else frame, fmt,
                     ["id", "name", "function", "queue", "state", "attempts", "created_at", "duration",
                      "error_type"])
        if cut:  # on stderr: scripts read stdout
            click.echo(f"(the newest {limit} shown; more match: --limit N or --all)", err=True)


def _given(**options: object) -> dict[str, object]:
    """The job options given on the command line (the others are left to the job's defaults)."""
    return {name: value for name, value in options.items() if value is not None}


class _Seconds(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2, not in 8.1
    """Seconds on the command line, as a number or a duration: '600', '10m', '1h30m'."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            seconds = values.seconds(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds < 0:
            self.fail(f"{value!r} is negative; give a duration from 0", param, ctx)
        return seconds


SECONDS = _Seconds()


def _parsed(parse: Callable[[str], T], text: str, param: str) -> T:
    """A command-line value read by `cli_values`, its ValueError shown as click's usage error."""
    try:
        return parse(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param) from None


def _selection(command: Callable[..., None]) -> Callable[..., None]:
    """JOB_IDS, or filters choosing every matching job (after a confirmation, or --yes)."""
    for option in reversed([
        click.argument("job_ids", nargs=-1, type=int),
        click.option("--state", default=None, help="Every job in this state (e.g. failed) instead of ids."),
        click.option("--queue", default=None, help="Every job in this queue (with --state: in both)."),
        click.option("--name", default=None, help="Every job with this name."),
        click.option("--since", default=None, help="Only jobs created since a time, or a duration ago."),
        click.option("-y", "--yes", is_flag=True, help="Do not ask before changing the jobs filters chose."),
    ]):
        command = option(command)
    return command


def _selected(engine: Engine, verb: str, job_ids: tuple[int, ...], state: str | None, queue: str | None,
              name: str | None, since: str | None, yes: bool) -> list[int]:
    """The ids given, or those of every job the filters match, once confirmed."""
    filters = {"state": state, "queue": queue, "name": name, "since": since}
    if job_ids and any(v is not None for v in filters.values()):
        raise click.UsageError("give job ids or filters (--state, --queue, --name, --since), not both")
    if job_ids:
        return list(job_ids)
    if all(v is None for v in filters.values()):
        raise click.UsageError(f"give the ids of the jobs to {verb}, or filters such as --state failed")
    frame = engine.jobs(state=state, queue=queue, name=name, since=values.ago(since), limit=None)
    ids = [int(i) for i in frame["id"]]
    chosen = ", ".join(f"{k} {v}" for k, v in filters.items() if v is not None)
    if not ids:
        click.echo(f"no job matches ({chosen})")
        return []
    if not yes:
        click.confirm(f"{verb} {len(ids)} job(s) ({chosen})?", abort=True)
    return ids


@cli.command()
@url_option
@_selection
def requeue(url: str | None, job_ids: tuple[int, ...], state: str | None, queue: str | None,
            name: str | None, since: str | None, yes: bool) -> None:
    """Put finished jobs back in their queue: JOB_IDS, or every job the filters choose
    (`nbjobs requeue --state failed --queue etl`)."""
    with _engine(url) as engine:
        ids = _selected(engine, "requeue", job_ids, state, queue, name, since, yes)
        if ids:
            _report(engine.requeue(ids), "requeued")


@cli.command()
@url_option
@_selection
def delete(url: str | None, job_ids: tuple[int, ...], state: str | None, queue: str | None,
           name: str | None, since: str | None, yes: bool) -> None:
    """Delete jobs (running ones are asked to stop): JOB_IDS, or every job the filters choose."""
    with _engine(url) as engine:
        ids = _selected(engine, "delete", job_ids, state, queue, name, since, yes)
        if ids:
            _report(engine.delete(ids), "deleted")


#: `nbjobs wait` exits with this when the timeout passed first (as `timeout(1)` does).
WAIT_TIMED_OUT = 124


@cli.command()
@url_option
@click.argument("job_ids", nargs=-1, type=int, required=True)
@click.option("--timeout", default=None, type=SECONDS, help="How long to wait at most: seconds or '10m'.")
def wait(url: str | None, job_ids: tuple[int, ...], timeout: float | None) -> None:
    """Wait until the jobs end, printing each as it does: exit 0 if all succeeded, 1 if one failed
    or was deleted, 124 if the timeout passed first (for scripts and schedulers)."""
    unsuccessful = 0
    with _engine(url) as engine:
        try:
            for job in engine.as_completed(list(job_ids), timeout=timeout):
                record = job.record()
                line = f"job {job.id} {record.state.value}"
                if record.state is JobState.SUCCEEDED:
                    click.echo(line)
                    continue
                unsuccessful += 1
                detail = f": {record.error_type}: {record.error_message}" if record.error_type else ""
                click.echo(line + detail, err=True)
        except ResultTimeoutError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(WAIT_TIMED_OUT)
    if unsuccessful:
        sys.exit(1)


def _report(outcome: pd.DataFrame, done: str) -> None:
    """One line per job; exit 1 if any could not be changed (the others were)."""
    failed = 0
    for row in outcome.to_dict("records"):
        job_id, state, error = int(row["id"]), row["state"], row["error"]
        if pd.isna(error):
            verb = done if state in (done, "enqueued") else f"now {state}"
            click.echo(f"job {job_id} {verb}")
        else:
            failed += 1
            click.echo(f"job {job_id}: {error}", err=True)
    if failed:
        sys.exit(1)


@cli.command()
@url_option
@click.argument("job_id", type=int)
@format_option
def history(url: str | None, job_id: int, fmt: str) -> None:
    """A job's state transitions."""
    with _engine(url) as engine:
        _print_frame(engine.history(job_id), fmt)


@cli.command()
@url_option
@click.argument("job_id", type=int)
def show(url: str | None, job_id: int) -> None:
    """One job in full: its call, history, output tail, and result or traceback (as `%job ID`)."""
    from .ui.display import details_bundle

    with _engine(url) as engine:
        click.echo(details_bundle(engine.job(job_id))["text/plain"])


@cli.command()
@url_option
@click.argument("job_id", type=int)
@click.option("--tail", "tail_lines", default=None, type=click.IntRange(min=1),
              help="Only the last N lines [default: all].")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing new output until the job ends; exit 0 if it succeeded, else 1.")
@click.option("--interval", default=0.5, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds between reads while following.")
def logs(url: str | None, job_id: int, tail_lines: int | None, follow: bool, interval: float) -> None:
    """What job JOB_ID printed and logged (stdout, stderr, logging)."""
    with _engine(url) as engine:
        job = engine.job(job_id)
        state = job.state  # before the first read: a job final now has all its output stored
        entries = engine.store.read_log_entries(job_id)
        if tail_lines is not None:
            entries = _last_lines(entries, tail_lines)
        last = _echo_entries(entries, 0)
        while follow and not state.is_final:
            time.sleep(interval)
            state = job.state
            last = _echo_entries(engine.store.read_log_entries(job_id, after=last), last)
        if follow:
            click.echo(f"job {job_id} {state.value}", err=True)
            if state is not JobState.SUCCEEDED:
                sys.exit(1)


def _last_lines(entries: list[tuple[int, str]], count: int) -> list[tuple[int, str]]:
    """The entries holding the last `count` lines (the first of them cut to its last lines)."""
    kept: list[tuple[int, str]] = []
    for entry_id, text in reversed(entries):
        lines = text.splitlines(keepends=True)
        if len(lines) >= count:
            kept.append((entry_id, "".join(lines[-count:])))
            break
        kept.append((entry_id, text))
        count -= len(lines)
    return kept[::-1]


def _echo_entries(entries: list[tuple[int, str]], last: int) -> int:
    """Print the entries as written (chunks, not lines); the id of the last one printed."""
    for entry_id, text in entries:
        click.echo(text, nl=False)
        last = entry_id
    sys.stdout.flush()
    return last


@cli.command()
@url_option
@click.argument("function")
@click.argument("args", nargs=-1)
@click.option("-k", "--kw", "kwargs", type=(str, str), multiple=True, metavar="NAME VALUE",
              help="A keyword argument (repeatable).")
@click.option("--queue", default=None, help="Queue to run in [default: default].")
@click.option("--priority", default=None, type=int, help="Higher runs first within its queue.")
@click.option("--retries", default=None, type=click.IntRange(min=0), help="Retries after a failed attempt.")
@click.option("--timeout", default=None, type=SECONDS, help="How long an attempt may take: seconds or '10m'.")
@click.option("--key", default=None, help="Unique key: an unfinished job with it is returned instead.")
@click.option("--lock", default=None, help="Jobs holding the same lock never run at once.")
@click.option("--name", default=None, help="Name shown in listings and the dashboard.")
@at_option
@click.option("--wait", is_flag=True, help="Wait until it ends; print its result, or exit 1 with its error.")
def enqueue(url: str | None, function: str, args: tuple[str, ...], kwargs: tuple[tuple[str, str], ...],
            queue: str | None, priority: int | None, retries: int | None, timeout: float | None,
            key: str | None, lock: str | None, name: str | None, when: str | None, wait: bool) -> None:
    """Enqueue FUNCTION (module:function, importable here and where servers run) with ARGS.

    Each ARG and VALUE is read as a Python literal if it is one (3, 1.5, True, None, [1, 2],
    "'quoted'"), else taken as a string: `nbjobs enqueue reports:build 2026-11 -k pages 3`.
    """
    from .notebooks import parse_cli_value
    from .payload import resolve_function

    ref = _parsed(values.function_ref, function, "FUNCTION")
    try:
        fn = resolve_function(ref)
    except FunctionNotFoundError as exc:
        fix = ("run this in the folder of its module, or put that folder on PYTHONPATH"
               if isinstance(exc.__cause__, ImportError) else "check the function's name")
        raise click.BadParameter(f"{ref} cannot be imported here ({exc.__cause__ or exc}); {fix}",
                                 param_hint="FUNCTION") from None
    options = _given(queue=queue, priority=priority, retries=retries, timeout=timeout, key=key, lock=lock,
                     name=name)
    call_args = [parse_cli_value(a) for a in args]
    call_kwargs = {k: parse_cli_value(v) for k, v in kwargs}
    with _engine(url, create=True) as engine:
        client = engine.options(**options)
        job = (client.enqueue(fn, *call_args, **call_kwargs) if when is None
               else client.schedule(_parsed(values.when, when, "--at"), fn, *call_args, **call_kwargs))
        click.echo(f"job {job.id} {job.state.value}")
        if not wait:
            return
        try:
            click.echo(repr(job.result()))
        except JobFailedError as exc:
            click.echo(str(exc), err=True)
            sys.exit(1)


@cli.command("recurring")
@url_option
@format_option
def recurring_cmd(url: str | None, fmt: str) -> None:
    """List recurring jobs: schedule, next and last run, last job, paused, error, window."""
    with _engine(url) as engine:
        frame = engine.recurring_jobs()
        unset = {c for c in ("start", "end") if frame[c].isna().all()}  # no window: two empty columns
        _print_frame(frame, fmt, [c for c in frame.columns if c != "last_skip" and c not in unset])


@cli.command()
@url_option
@click.argument("recurring_id")
def trigger(url: str | None, recurring_id: str) -> None:
    """Run a recurring job once now (its schedule is unchanged); a server picks it up."""
    with _engine(url) as engine:
        click.echo(f"recurring job {recurring_id!r}: job {engine.trigger(recurring_id).id} enqueued")


@cli.command("pause-queue")
@url_option
@click.argument("queue")
def pause_queue_cmd(url: str | None, queue: str) -> None:
    """Stop every server from starting jobs of QUEUE (running ones go on) until `nbjobs resume-queue`."""
    _pause_or_resume(url, queue, pause=True)


@cli.command("resume-queue")
@url_option
@click.argument("queue")
def resume_queue_cmd(url: str | None, queue: str) -> None:
    """Let servers start jobs of a paused QUEUE again."""
    _pause_or_resume(url, queue, pause=False)


@cli.command("rate-queue")
@url_option
@click.argument("queue")
@click.argument("rate", required=False)
@click.option("--clear", is_flag=True, help="Remove the queue's shared rate.")
def rate_queue_cmd(url: str | None, queue: str, rate: str | None, clear: bool) -> None:
    """Start at most RATE jobs of QUEUE ('60/m', '5/s', '10/30s') on all servers together."""
    _check_quota_arguments(rate, clear, "RATE such as 60/m", "rate")
    with _engine(url) as engine:
        changed = engine.set_queue_rate(queue, None if clear else rate)
        now = engine.queue_rates().get(queue)
    _say_quota(queue, "rate", changed, now)


@cli.command("limit-queue")
@url_option
@click.argument("queue")
@click.argument("running", type=click.IntRange(min=1), required=False)
@click.option("--clear", is_flag=True, help="Remove the queue's shared limit.")
def limit_queue_cmd(url: str | None, queue: str, running: int | None, clear: bool) -> None:
    """Run at most RUNNING jobs of QUEUE at once on all servers together."""
    _check_quota_arguments(running, clear, "number RUNNING such as 2", "limit")
    with _engine(url) as engine:
        changed = engine.set_queue_limit(queue, None if clear else running)
        now = engine.queue_limits().get(queue)
    _say_quota(queue, "limit", changed, None if now is None else f"{now} running")


def _check_quota_arguments(value: object, clear: bool, example: str, kind: str) -> None:
    if clear == (value is not None):
        raise click.UsageError(f"give a {example}, or --clear to remove the queue's {kind}")


def _say_quota(queue: str, kind: str, changed: bool, now: str | None) -> None:
    """What holds for the queue after `rate-queue` or `limit-queue`."""
    if now is None:
        click.echo(f"queue {queue!r} has no shared {kind}" + ("" if changed else " (it had none)"))
    else:
        click.echo(f"queue {queue!r}: at most {now} on all servers together"
                   + ("" if changed else " (as it was)"))


def _pause_or_resume(url: str | None, queue: str, *, pause: bool) -> None:
    with _engine(url) as engine:
        changed = engine.pause_queue(queue) if pause else engine.resume_queue(queue)
    done, already = ("paused", "was paused already") if pause else ("resumed", "was not paused")
    click.echo(f"queue {queue!r} {done if changed else already}")


@cli.command()
@url_option
@click.argument("recurring_id")
def pause(url: str | None, recurring_id: str) -> None:
    """Stop a recurring job from firing until `nbjobs resume`."""
    with _engine(url) as engine:
        engine.pause(recurring_id)
        click.echo(f"recurring job {recurring_id!r} paused")


@cli.command()
@url_option
@click.argument("recurring_id")
def resume(url: str | None, recurring_id: str) -> None:
    """Let a paused recurring job fire again, from its next fire time after now."""
    with _engine(url) as engine:
        engine.resume(recurring_id)
        record = engine.store.get_recurring(recurring_id)
        if record is not None and record.next_fire is None and record.end is not None:
            click.echo(f"recurring job {recurring_id!r} resumed, but it has ended: its end, "
                       f"{record.end.isoformat()}, has passed")
            return
        when = record.next_fire.isoformat() if record and record.next_fire else "?"
        click.echo(f"recurring job {recurring_id!r} resumed; next run {when}")


@cli.command("remove-recurring")
@url_option
@click.argument("recurring_id")
def remove_recurring(url: str | None, recurring_id: str) -> None:
    """Delete a recurring job definition (the jobs it created stay)."""
    with _engine(url) as engine:
        removed = engine.remove_recurring(recurring_id)
        click.echo(f"recurring job {recurring_id!r} {'removed' if removed else 'did not exist'}")


def _per_queue(values: tuple[str, ...], option: str, form: str, example: str) -> dict[str, str]:
    """`--limit gpu=1 --limit io=4` as {"gpu": "1", "io": "4"} (values checked by the caller)."""
    out: dict[str, str] = {}
    for value in values:
        queue, _, setting = value.partition("=")
        if not queue.strip() or not setting.strip():
            raise click.BadParameter(f"{value!r}: write {form}, e.g. {example}", param_hint=option)
        out[queue.strip()] = setting.strip()
    return out


def _limits(values: tuple[str, ...]) -> dict[str, int]:
    """`--limit gpu=1 --limit io=4` as {"gpu": 1, "io": 4}."""
    limits = _per_queue(values, "--limit", "QUEUE=N", "gpu=1")
    for queue, number in limits.items():
        if not number.isdigit():
            raise click.BadParameter(f"{queue}={number!r}: write QUEUE=N, e.g. gpu=1", param_hint="--limit")
    return {queue: int(number) for queue, number in limits.items()}


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d %(threadName)s] %(message)s"


@cli.command()
@url_option
@click.option("--workers", default=4, show_default=True, type=click.IntRange(min=1),
              help="Jobs run at once (worker threads; process jobs also use a process pool this size).")
@click.option("--queues", default="*", show_default=True,
              help="Comma-separated queues in priority order; '*' is every queue.")
@click.option("--limit", "limits", multiple=True, metavar="QUEUE=N",
              help="At most N jobs of QUEUE at once on this server (repeatable), e.g. --limit gpu=1.")
@click.option("--rate", "rates", multiple=True, metavar="QUEUE=N/UNIT",
              help="At most N jobs of QUEUE started in any second/minute/hour/day (s, m, h, d) on this "
                   "server (repeatable), e.g. --rate openai=60/m.")
@click.option("--name", default=None, help="Server name shown in `nbjobs servers` [default: host:pid:id].")
@click.option("--heartbeat-interval", default=5.0, show_default=True, type=SECONDS,
              help="Seconds (or '10s') between heartbeats (server row and job leases).")
@click.option("--server-timeout", default=30.0, show_default=True, type=SECONDS,
              help="Seconds (or '1m') without heartbeat after which a server is dead and its jobs return to "
                   "the queue.")
@click.option("--shutdown-timeout", default=10.0, show_default=True, type=SECONDS,
              help="Grace seconds (or '1m') for running jobs on SIGTERM/SIGINT before they return to the "
                   "queue.")
@click.option("--poll-interval", default=0.25, show_default=True, type=SECONDS,
              help="Seconds between checks for work from other processes when no notification exists.")
@click.option("--process-max-jobs", default=None, type=click.IntRange(min=1), metavar="N",
              help="Replace a worker process (executor='process') after N jobs.")
@click.option("--process-max-memory", "process_max_memory_mb", default=None,
              type=click.FloatRange(min=0, min_open=True), metavar="MB",
              help="Replace a worker process that holds more than MB after a job.")
@click.option("--burst", is_flag=True,
              help="Stop (exit 0) once nothing it could run is left: jobs scheduled later are left.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def server(url: str | None, workers: int, queues: str, limits: tuple[str, ...], rates: tuple[str, ...],
           name: str | None, heartbeat_interval: float, server_timeout: float, shutdown_timeout: float,
           poll_interval: float, process_max_jobs: int | None, process_max_memory_mb: float | None,
           burst: bool, log_level: str) -> None:
    """Run a job server in the foreground until SIGTERM/SIGINT (a second signal stops at once), or
    with --burst until the jobs ready to run (and those they lead to) are done."""
    from .server import ServerConfig
    from .server.runner import run_until_stopped

    queue_list = [q.strip() for q in queues.split(",") if q.strip()]
    if not queue_list:
        raise click.BadParameter("name at least one queue, or '*' for every queue", param_hint="--queues")
    limit_map = _limits(limits)
    rate_map = _per_queue(rates, "--rate", "QUEUE=N/UNIT", "openai=60/m")
    # Refuse bad settings before touching logging, signals or the database.
    ServerConfig(workers=workers, queues=tuple(queue_list), heartbeat_interval=heartbeat_interval,
                 server_timeout=server_timeout, limits=limit_map, rates=rate_map).validate()
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT, force=True)
    engine = _engine(url, create=True)
    try:
        code = run_until_stopped(lambda: engine.start_server(
            workers=workers, queues=queue_list, name=name, heartbeat_interval=heartbeat_interval,
            server_timeout=server_timeout, shutdown_timeout=shutdown_timeout, poll_interval=poll_interval,
            limits=limit_map, rates=rate_map, process_max_jobs=process_max_jobs,
            process_max_memory_mb=process_max_memory_mb,
        ), burst=burst, check_every=min(0.5, poll_interval) if burst else 0.5)
    finally:
        engine.close()
    sys.exit(code)


@cli.command("queues")
@url_option
@format_option
def queues_cmd(url: str | None, fmt: str) -> None:
    """Queues with unfinished jobs: counts by state, the oldest waiting job's wait, paused or not,
    shared rate and limit."""
    with _engine(url) as engine:
        _print_frame(engine.queues(), fmt)


@cli.command("stats")
@url_option
@click.option("--freq", default="1h", show_default=True,
              help="Interval width, as pandas writes it: 30s, 10min, 1h, 1D.")
@click.option("--since", default="1d", show_default=True,
              help="From a time ('2026-11-28 09:00', local) or a duration ago ('90m', '2d').")
@format_option
def stats_cmd(url: str | None, freq: str, since: str, fmt: str) -> None:
    """Succeeded and failed jobs per interval, by finish time (as nb.stats())."""
    with _engine(url) as engine:
        frame = engine.stats(freq=freq, since=values.ago(since))
        _print_frame(frame.reset_index(), fmt)


@cli.command("servers")
@url_option
@format_option
def servers_cmd(url: str | None, fmt: str) -> None:
    """List live servers: heartbeats and running jobs."""
    with _engine(url) as engine:
        frame = engine.servers()
        running = engine.store.running_by_server()
        if not frame.empty:
            most = 10 if fmt == "table" else None
            frame["job_ids"] = [",".join(map(str, sorted(running.get(sid, []))[:most]))
                                for sid in frame["id"]]
            if fmt == "table":
                frame["id"] = frame["id"].str[:12]
        _print_frame(frame, fmt)


def _notebook_options(command: Callable[..., None]) -> Callable[..., None]:
    """PATH, its parameters and how it runs: the options `run-notebook` and `recurring-notebook` share."""
    opt = click.option
    options = [
        click.argument("path", type=click.Path(dir_okay=False)),
        opt("-p", "--parameter", "parameters", type=(str, str), multiple=True, metavar="NAME VALUE",
            help="A parameter (repeatable); VALUE is read as a Python literal if it is one, else a "
                 "string. `nbjobs notebook-parameters PATH` lists them."),
        opt("--queue", default=None, help="Queue to run in [default: default]."),
        opt("--retries", default=None, type=click.IntRange(min=0), help="Retries after a failed run."),
        opt("--timeout", default=None, type=SECONDS, help="How long the whole run may take (600, '1h')."),
        opt("--cell-timeout", default=None, type=SECONDS, help="How long each cell may take (60, '2m')."),
        opt("--lock", default=None, help="Runs holding the same lock never run at once (one report file)."),
        opt("--kernel", "kernel_name", default=None, help="Kernel name [default: the notebook's]."),
        opt("--cwd", default=None, help="Working folder of the kernel [default: the notebook's folder]."),
        opt("--output-dir", default=None, help="Where runs are saved [default: nbjobs-runs/ beside it]."),
        opt("--export", "exports", multiple=True, metavar="FORMAT",
            help="Also write the run as FORMAT beside it (repeatable): html, pdf, webpdf, markdown, …"),
        opt("--hide-code", is_flag=True, help="Leave the code out of the exports (outputs only)."),
        opt("--latest", is_flag=True,
            help="Also copy a successful run and its exports to NAME.latest.ipynb, NAME.latest.html, …."),
        opt("--snapshot", is_flag=True,
            help="Store the notebook with the job: runs execute it as it is now, not as the file is then."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _notebook_run(parameters: tuple[tuple[str, str], ...], queue: str | None, retries: int | None,
                  timeout: float | None, cell_timeout: float | None, lock: str | None,
                  kernel_name: str | None, cwd: str | None, output_dir: str | None,
                  exports: tuple[str, ...], hide_code: bool, latest: bool,
                  snapshot: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """`_notebook_options` as `enqueue_notebook` takes them: the parameters, and its keyword arguments."""
    from .notebooks import parse_cli_value

    kwargs: dict[str, Any] = {
        "kernel_name": kernel_name, "cwd": cwd, "output_dir": output_dir, "cell_timeout": cell_timeout,
        "export": exports or None, "hide_code": hide_code, "latest": latest, "snapshot": snapshot,
        **_given(queue=queue, retries=retries, timeout=timeout, lock=lock),
    }
    return {name: parse_cli_value(value) for name, value in parameters}, kwargs


@cli.command("run-notebook")
@url_option
@_notebook_options
@at_option
@click.option("--wait", is_flag=True, help="Wait until the run ends; exit 1 if it failed.")
def run_notebook_cmd(url: str | None, path: str, when: str | None, wait: bool, **how: Any) -> None:
    """Enqueue the notebook PATH as a job (a server runs it); print its id and where it is saved."""
    parameters, kwargs = _notebook_run(**how)
    if when is not None:
        kwargs["at"] = _parsed(values.when, when, "--at")
    with _engine(url, create=True) as engine:
        run = engine.enqueue_notebook(path, parameters, **kwargs)
        saved = ", ".join(map(str, [run.output_path, *run.exports.values()]))
        click.echo(f"job {run.id} {run.state.value}: {saved}")
        if not wait:
            return
        state = run.wait()
        click.echo(f"job {run.id} {state.value}: {saved}")
        if state is not JobState.SUCCEEDED:
            record = run.record()
            if record.error_message:
                click.echo(f"{record.error_type}: {record.error_message}", err=True)
            sys.exit(1)


@cli.command("recurring-notebook")
@url_option
@click.argument("recurring_id")
@click.argument("cron")
@_notebook_options
@click.option("--tz", default=None, help="Time zone the cron expression is read in [default: UTC].")
@click.option("--misfire", type=click.Choice(["once", "skip", "all"]), default=None,
              help="After downtime: one run for the missed fire times (once), none (skip), or each (all).")
@click.option("--misfire-grace", default=None, type=SECONDS,
              help="A fire time more than this late gets no run ('2h').")
@click.option("--overlap", type=click.Choice(["allow", "skip"]), default=None,
              help="skip: no run while the previous one is unfinished.")
@click.option("--start", default=None,
              help="No run before: a time ('2026-12-14 07:00', local) or a delay ('1d').")
@click.option("--end", default=None, help="No run after: a time or a delay ('30d').")
def recurring_notebook_cmd(url: str | None, recurring_id: str, cron: str, path: str, tz: str | None,
                           misfire: str | None, misfire_grace: float | None, overlap: str | None,
                           start: str | None, end: str | None, **how: Any) -> None:
    """Add or update (by ID) a recurring run of the notebook PATH on CRON ('0 7 * * MON-FRI', '6h')."""
    parameters, kwargs = _notebook_run(**how)
    policy = _given(tz=tz, misfire=misfire, misfire_grace=misfire_grace, overlap=overlap, start=start,
                    end=end)
    with _engine(url, create=True) as engine:
        handle = engine.options(**policy).recurring_notebook(recurring_id, cron, path, parameters, **kwargs)
        record = handle.record()
        click.echo(f"recurring job {recurring_id!r}: {record.cron}"
                   f"{'' if record.tz == 'UTC' else f' ({record.tz})'}, next run "
                   f"{record.next_fire.isoformat() if record.next_fire else '?'}")


@cli.command("notebook-parameters")
@click.argument("path", type=click.Path(dir_okay=False))
@format_option
def notebook_parameters_cmd(path: str, fmt: str) -> None:
    """List the parameters the notebook PATH declares in its `parameters` cell, with their defaults."""
    from .default import notebook_parameters

    frame = notebook_parameters(path)
    _print_frame(frame.fillna("") if fmt == "table" else frame, fmt)  # no "None" where nothing is said


@cli.command("dashboard")
@url_option
@click.option("--port", default=8866, show_default=True, type=int)
@click.option("--ip", default="127.0.0.1", show_default=True,
              help="Interface to bind; anything but loopback needs --token.")
@click.option("--allow-actions", is_flag=True, help="Show Requeue/Delete/Cancel (read-only otherwise).")
@click.option("--token", default=None, envvar="NBJOBS_DASHBOARD_TOKEN",
              help="Token visitors must present (?token=…); env NBJOBS_DASHBOARD_TOKEN.")
@click.option("--refresh", default=2.0, show_default=True, type=float, help="Seconds between refreshes.")
def dashboard_cmd(url: str | None, port: int, ip: str, allow_actions: bool, token: str | None,
                  refresh: float) -> None:
    """Serve the dashboard as a web page (Voilà) for people outside a notebook."""
    from .ui.serve import ServeOptions, check, serve

    options = ServeOptions(url=url or default_url(), port=port, ip=ip, allow_actions=allow_actions,
                           token=token, refresh=refresh)
    check(options)
    _database(options.url)  # exists: the page would show an empty database it had just created
    mode = "actions allowed" if allow_actions else "read-only"
    click.echo(f"nbjobs dashboard on http://{ip}:{port}/ ({mode}); Ctrl+C stops it", err=True)
    sys.exit(serve(options))


def main() -> None:
    try:
        cli(standalone_mode=True)
    except NbJobsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
