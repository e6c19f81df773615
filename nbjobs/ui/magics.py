"""`%load_ext nbjobs`: the default engine in this kernel, and the `%%job`, `%job`, `%jobs`, `%nbjobs` magics.

`%%job` cells run **concurrently with the cells after them**, against a snapshot of the notebook's
namespace taken when the job starts; the names the cell assigns are written back into the namespace
when it succeeds (and only then), and `job.result()` is the value of its last expression.

A cell job can only run in the kernel that created it: its code needs that kernel's live namespace.
It is stored as a call of `run_cell(source, kernel_tag)` on a *private queue* of this kernel
(`<queue>@kernel-<id>`, see `model.PRIVATE_QUEUE_MARK`): servers listening to "*" never take it,
only this kernel's server names it. When the extension is unloaded or the kernel shuts down, the
server stops (running jobs finish within the grace period or go back to their queue) and the cell
jobs still waiting are deleted, since no other process can ever run them.
"""

from __future__ import annotations

import argparse
import ast
import atexit
import inspect
import linecache
import logging
import shlex
import sys
import types
from typing import Any

import cloudpickle
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class

from .. import default, private_queues
from ..client import Job
from ..context import current_job_or_none
from ..errors import ConfigurationError, NbJobsError

log = logging.getLogger("nbjobs.ui")

_SIMPLE = (type(None), bool, int, float, str, bytes)
_TOP_LEVEL_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
_loaded: set[int] = set()
_atexit_registered = False


# -- the job body of %%job ------------------------------------------------------------------------


def run_cell(source: str, kernel: str, write_back: bool = True) -> Any:
    """Run a `%%job` cell in this kernel's namespace; return the value of its last expression."""
    if kernel != private_queues.PROCESS_TAG:
        raise ConfigurationError(
            f"this cell job belongs to kernel {kernel} and can only run there (this is "
            f"{private_queues.PROCESS_TAG}); it was stored on that kernel's private queue — delete it"
        )
    if not InteractiveShell.initialized():
        raise ConfigurationError("a %%job cell needs the IPython kernel that created it; none runs here")
    shell = InteractiveShell.instance()
    ctx = current_job_or_none()
    filename = f"<nbjobs cell job {ctx.id if ctx else '?'}>"
    code = shell.transform_cell(source)  # type: ignore[no-untyped-call]
    tree = ast.parse(code, filename)
    last: ast.Expression | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)  # tracebacks
    user_ns = shell.user_ns
    before = dict(user_ns)
    ns = dict(before)  # the cell works on a snapshot; the notebook goes on meanwhile
    # Top-level `await` works as in the notebook: such a cell compiles to coroutines, returned to
    # the executor to run on a loop of their own (and cancelled like any async job).
    body = compile(tree, filename, "exec", flags=_TOP_LEVEL_AWAIT)
    tail = compile(last, filename, "eval", flags=_TOP_LEVEL_AWAIT) if last is not None else None
    if (body.co_flags | (tail.co_flags if tail else 0)) & inspect.CO_COROUTINE:
        return _run_async_cell(body, tail, ns, before, user_ns, write_back)
    exec(body, ns)
    value = eval(tail, ns) if tail is not None else None
    return _finish_cell(value, ns, before, user_ns, write_back)


async def _run_async_cell(
    body: types.CodeType, tail: types.CodeType | None, ns: dict[str, Any], before: dict[str, Any],
    user_ns: dict[str, Any], write_back: bool,
) -> Any:
    """`run_cell` for a cell with top-level `await`: body and last expression on one loop."""
    if body.co_flags & inspect.CO_COROUTINE:
        await eval(body, ns)
    else:
        exec(body, ns)
    value: Any = eval(tail, ns) if tail is not None else None
    if tail is not None and tail.co_flags & inspect.CO_COROUTINE:  # the expression awaits
        value = await value
    return _finish_cell(value, ns, before, user_ns, write_back)


def _finish_cell(
    value: Any, ns: dict[str, Any], before: dict[str, Any], user_ns: dict[str, Any], write_back: bool
) -> Any:
    """Write the names the cell assigned back to the notebook; the last value as stored."""
    if write_back:
        for name, new in ns.items():
            if name.startswith("__") or (name in before and before[name] is new):
                continue
            user_ns[name] = _rehome(new, ns, user_ns)
    return _storable(value)


def _rehome(value: Any, snapshot: dict[str, Any], user_ns: dict[str, Any]) -> Any:
    """A function the cell defined sees the live namespace afterwards, not the job's snapshot."""
    if isinstance(value, types.FunctionType) and value.__globals__ is snapshot:
        fn = types.FunctionType(value.__code__, user_ns, value.__name__, value.__defaults__,
                                value.__closure__)
        fn.__kwdefaults__ = value.__kwdefaults__
        fn.__dict__.update(value.__dict__)
        fn.__qualname__, fn.__doc__ = value.__qualname__, value.__doc__
        fn.__annotations__ = value.__annotations__
        return fn
    return value


def _storable(value: Any) -> Any:
    """The result as stored: the value if it pickles, else its repr (the object stays in the kernel)."""
    if isinstance(value, _SIMPLE):
        return value
    try:
        cloudpickle.dumps(value)
    except Exception as exc:
        log.warning("the cell's last value (%s) cannot be pickled (%s); storing its repr instead",
                    type(value).__name__, exc)
        return repr(value)
    return value


# -- magics -----------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit the kernel
        raise UsageError(f"{self.prog}: {message}\n{self.format_usage()}")


def _cell_parser() -> _Parser:
    p = _Parser(prog="%%job", add_help=False,
                description="Run this cell in the background as a job of this kernel.")
    p.add_argument("--queue", default="default", help="queue name (private to this kernel)")
    p.add_argument("--name", default=None, help="a name shown in tables and the dashboard")
    p.add_argument("--retries", type=int, default=0, help="retries after a failure (default 0)")
    p.add_argument("--timeout", default=None, help="how long before the job is cancelled: seconds or '10m'")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--lock", default=None, metavar="NAME",
                   help="jobs holding the same lock never run at once (cells writing one file, say)")
    p.add_argument("--no-write-back", action="store_true", help="do not assign the cell's names")
    p.add_argument("--after", default=None, metavar="JOBS",
                   help="start once these jobs succeeded: ids (12,13) or names of variables holding "
                        "Jobs or lists of Jobs; the cell then sees what they wrote back")
    p.add_argument("--continue-on", choices=("succeeded", "finished", "failed"), default="succeeded",
                   help="with --after: wait for success (default), for any end, or run only on a failure")
    p.add_argument("--at", default=None, metavar="WHEN",
                   help="run later: a delay ('10m', '2h') or a time ('2026-12-08 02:00', local); the cell "
                        "sees the namespace as it is then")
    return p


def _after_ids(text: str, user_ns: dict[str, Any]) -> list[int]:
    """`--after 12,train_job,runs` as job ids: numbers, or notebook names of Jobs or lists of Jobs."""
    ids: list[int] = []
    for token in (t.strip() for t in text.split(",")):
        if token.isdigit():
            ids.append(int(token))
            continue
        if not token.isidentifier() or token not in user_ns:
            raise UsageError(f"--after {token!r}: give job ids (12,13) or the name of a variable holding "
                             "a Job or a list of Jobs")
        value = user_ns[token]
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if not isinstance(item, Job | int) or isinstance(item, bool):
                raise UsageError(f"--after {token}: {type(item).__name__} is not a Job or a job id")
            ids.append(item.id if isinstance(item, Job) else item)
    if not ids:
        raise UsageError("--after needs at least one job")
    return ids


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


@magics_class  # type: ignore[untyped-decorator]
class NbJobsMagics(Magics):
    """`%%job` (cell as a job), `%job ID` (one job), `%jobs` (dashboard), `%nbjobs` (engine control)."""

    @line_cell_magic  # type: ignore[untyped-decorator]
    def job(self, line: str, cell: str | None = None) -> Any:
        """`%%job [--queue Q] [--name N] [--retries R] [--timeout S] [--lock L]`: run the cell as a job.
        `%job ID`: state, history, output tail and result or traceback of job ID."""
        if cell is None:
            return self._show(line)
        return submit_cell(cell, line)

    def _show(self, line: str) -> None:
        text = line.strip().lstrip("#")
        if not text.isdigit():
            raise UsageError("usage: %job ID (a job id, e.g. %job 42); %%job runs a cell as a job")
        from IPython.display import display

        from .display import details_bundle

        try:
            job = default.default_engine().job(int(text))
        except NbJobsError as exc:
            raise UsageError(str(exc)) from exc
        display(details_bundle(job), raw=True)  # type: ignore[no-untyped-call]

    @line_magic  # type: ignore[untyped-decorator]
    def jobs(self, line: str) -> Any:
        """`%jobs`: the dashboard (or the jobs DataFrame); `%jobs failed`: jobs in one state."""
        engine = default.default_engine()
        state = line.strip() or None
        dashboard = getattr(engine, "dashboard", None)
        if dashboard is not None and state is None:
            return dashboard()
        try:
            return engine.jobs(state=state)
        except NbJobsError as exc:
            raise UsageError(str(exc)) from exc

    @line_magic  # type: ignore[untyped-decorator]
    def nbjobs(self, line: str) -> Any:
        """`%nbjobs config key=value …` | `%nbjobs status` | `%nbjobs start` | `%nbjobs stop`."""
        words = shlex.split(line)
        verb, rest = (words[0], words[1:]) if words else ("status", [])
        if verb == "config":
            if not rest:
                return default.settings()
            changes: dict[str, Any] = {}
            for item in rest:
                key, sep, value = item.partition("=")
                if not sep:
                    raise UsageError(f"%nbjobs config takes key=value pairs, got {item!r}")
                changes[key.strip()] = _parse_value(value.strip())
            try:
                return default.configure(**changes)
            except NbJobsError as exc:
                raise UsageError(str(exc)) from exc
        if verb == "status":
            return default.current_default() or "nbjobs: no default engine yet (it starts on first use)"
        if verb == "start":
            return default.configure()
        if verb == "stop":
            default.close_default()
            return None
        if verb == "help":
            sys.stdout.write(MAGICS_HELP + "\n")
            return None
        raise UsageError(f"unknown %nbjobs command {verb!r}; use config, status, start, stop or help")


#: `%nbjobs help`: every magic on one screen (each one's docstring says more: `%job?`).
MAGICS_HELP = """\
%nbjobs [status]               the default engine and its server
%nbjobs config [key=value …]   show or change its settings (workers=4, queues=default,io, url=…)
%nbjobs start | stop           start the engine and its server | close them
%%job [--name N] [--queue Q] [--at 2h | --after JOBS [--continue-on failed]] [--retries R]
      [--timeout 10m] [--priority P] [--lock L]
                               run the cell in the background; its new names come back when it ends
%job ID                        one job: state, history, output tail, result or traceback
%jobs [STATE]                  the dashboard, or the jobs in one state as a DataFrame"""


def submit_cell(cell: str, line: str = "") -> Job:
    """Enqueue a `%%job` cell on this kernel's private queue; return its Job at once."""
    args = _cell_parser().parse_args(shlex.split(line))
    engine = default.default_engine()
    if engine.server is None or not engine.server.running:
        raise UsageError(
            "%%job cells run only on this kernel's own server, and the default engine has none "
            "(NBJOBS_SERVER=0?). Start it with `%nbjobs start`"
        )
    try:  # compiled, not only parsed: `return` outside a function is caught here too
        compile(InteractiveShell.instance().transform_cell(cell),  # type: ignore[no-untyped-call]
                "<%%job cell>", "exec", flags=_TOP_LEVEL_AWAIT)
    except SyntaxError as exc:  # refuse now, not in a worker later
        raise UsageError(f"the cell does not compile: {exc}") from exc
    first = next((ln.strip() for ln in cell.splitlines() if ln.strip()), "")
    name = args.name or f"%%job: {first[:60]}"
    if args.at is not None and args.after:
        raise UsageError("%%job takes --at or --after, not both: a cell waiting for other jobs starts "
                         "when they end; to run it later, schedule the jobs it waits for")
    after = _after_ids(args.after, InteractiveShell.instance().user_ns) if args.after else None
    call = (run_cell, cell, private_queues.PROCESS_TAG, not args.no_write_back)
    try:
        client = engine.options(queue=default.private_queue(args.queue), name=name, retries=args.retries,
                                timeout=args.timeout, priority=args.priority, lock=args.lock)
        if after is not None:
            return client.after(after, *call, continue_on=args.continue_on)
        if args.at is not None:
            return client.schedule(args.at, *call)
    except NbJobsError as exc:
        raise UsageError(str(exc)) from exc
    return client.enqueue(*call)


# -- extension --------------------------------------------------------------------------------------


#: Grace for running jobs when the kernel exits: a kernel manager kills a kernel that has not exited
#: within its `shutdown_wait_time` (5 s by default), and stopping must be done by then.
KERNEL_EXIT_GRACE = 2.0


def _shutdown() -> None:
    configured = default.settings().get("shutdown_timeout")
    grace = KERNEL_EXIT_GRACE if configured is None else min(float(configured), KERNEL_EXIT_GRACE)
    try:
        default.close_default(timeout=grace)
    except Exception:
        log.exception("stopping the nbjobs default engine at shutdown failed")


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """`%load_ext nbjobs`: start the default engine here and register the magics (twice is harmless)."""
    global _atexit_registered
    import nbjobs

    from . import cells, display  # noqa: F401 - display installs the Job rich display

    cells.install()
    default.default_engine()
    if id(ipython) in _loaded:
        return
    ipython.register_magics(NbJobsMagics)  # type: ignore[no-untyped-call]
    ipython.user_ns.setdefault("nbjobs", nbjobs)
    _loaded.add(id(ipython))
    if not _atexit_registered:
        # Registered after engine.py's own atexit hook, so it runs first (LIFO): stop, then clean up.
        atexit.register(_shutdown)
        _atexit_registered = True


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """`%unload_ext nbjobs`: stop the default engine gracefully and remove the magics."""
    from . import cells

    default.close_default()
    cells.uninstall()
    manager: Any = ipython.magics_manager
    magics = manager.magics
    for kind, names in (("line", ("job", "jobs", "nbjobs")), ("cell", ("job",))):
        for name in names:
            magics[kind].pop(name, None)
    _loaded.discard(id(ipython))
