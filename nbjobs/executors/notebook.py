"""Run a notebook as a job: parameters injected, a fresh kernel through nbclient, the run saved.

`run_notebook` is an ordinary importable job function, so any server runs notebook jobs (the kernel's
own server, `nbjobs server` processes on other machines) with the usual queues, retries and timeouts.
It owns the kernel's whole life: whatever happens (success, a failing cell, a cell timeout, a
cancellation or the job's timeout, an error in nbjobs) the kernel is shut down before it returns,
and the executed or partially executed notebook is saved.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import context, notebooks
from ..clock import SystemClock, seconds_of
from ..errors import (
    InvalidJobError,
    JobCancelled,
    NoParametersCellWarning,
    NotebookCellError,
    NotebookCellTimeoutError,
    NotebookError,
    UnknownParameterWarning,
    caller_stacklevel,
    is_seconds,
)

if TYPE_CHECKING:
    from nbformat import NotebookNode

log = logging.getLogger("nbjobs.executor.notebook")

#: The function reference stored with every notebook job.
NOTEBOOK_FUNCTION = "nbjobs.executors.notebook:run_notebook"
LOG_FLUSH_SECONDS = 0.5  #: captured output is written at most this often (and at the end)
#: While it runs, the run's notebook is saved at most this often when it changed (and at the end), so
#: `run.notebook()` and Jupyter show the cells done so far, as papermill does.
CHECKPOINT_SECONDS = 2.0
CHECKPOINT_COST = 20  #: a save that took t seconds waits at least 20 t before the next (5 % at most)
WATCH_SECONDS = 0.1  #: how often a running notebook checks for cancellation
INTERRUPT_GRACE = 2.0  #: after an interrupt, seconds a cell gets to stop before the kernel is killed

_clock = SystemClock()


class _Output:
    """Buffers the kernel's stream output and stores it as the job's captured output, in batches."""

    def __init__(self, ctx: context.JobContext | None) -> None:
        self.ctx = ctx
        self.chunks: list[tuple[Any, str, str]] = []
        self.last_flush = time.monotonic()

    def write(self, stream: str, text: str) -> None:
        if text:
            self.chunks.append((_clock.now(), stream, text))

    def maybe_flush(self) -> None:
        if self.chunks and time.monotonic() - self.last_flush >= LOG_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        chunks, self.chunks = self.chunks, []
        self.last_flush = time.monotonic()
        if not chunks:
            return
        if self.ctx is None or self.ctx.log_sink is None:
            # No store at hand (a direct call, a worker process): this process's own streams, where
            # a process executor's capture picks them up.
            for _, stream, text in chunks:
                (sys.stderr if stream == "stderr" else sys.stdout).write(text)
            return
        try:
            self.ctx.append_logs(chunks)
        except Exception:  # losing output must not fail the notebook
            log.exception("could not store output of job %s", self.ctx.id)


class _Checkpoint:
    """Saves the run so far while it runs: at once when something first changed, then at most every
    `CHECKPOINT_SECONDS`, so the file is never more than that behind (a long cell's output included).
    A notebook so large that writing it takes long is saved less often: the gap is at least
    `CHECKPOINT_COST` times the last save's duration, so saving takes at most 1/that of the time."""

    def __init__(self, nb: NotebookNode, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.nb = nb
        self.path = path
        self.clock = clock
        self.changed = False
        self.next_save = -math.inf
        self.saves = 0

    def mark(self) -> None:
        self.changed = True

    def maybe_save(self) -> None:
        began = self.clock()
        if not self.changed or began < self.next_save:
            return
        self.changed = False
        try:
            _save(self.nb, self.path)
            self.saves += 1
        except Exception:  # a full disk mid-run: the final save says so, and the run goes on
            log.exception("could not save the run so far to %s", self.path)
        took = self.clock() - began
        self.next_save = began + max(CHECKPOINT_SECONDS, CHECKPOINT_COST * took)


def _runs(cell: NotebookNode) -> bool:
    """A cell the kernel executes: code with something in it."""
    return cell.get("cell_type") == "code" and bool(cell.get("source", "").strip())


def _client_class() -> type[Any]:
    """nbclient is imported on first use: `import nbjobs` stays fast for jobs that never run notebooks."""
    from nbclient import NotebookClient

    class _Client(NotebookClient):  # type: ignore[misc]
        """NotebookClient that reports stream output as it arrives, remembers the running cell, reports
        progress by code cell ("cell 3 of 8", the execution count it will show) and checkpoints."""

        def __init__(self, nb: NotebookNode, *, output: _Output, ctx: context.JobContext | None,
                     checkpoint: _Checkpoint | None = None, **kwargs: Any) -> None:
            super().__init__(nb, **kwargs)
            self._nbjobs_output = output
            self._nbjobs_ctx = ctx
            self._nbjobs_checkpoint = checkpoint
            self.cell_index = -1
            code = [i for i, c in enumerate(nb.cells) if _runs(c)]
            self._ordinals = {index: n for n, index in enumerate(code, 1)}

        async def async_execute_cell(self, cell: NotebookNode, cell_index: int, *args: Any,
                                     **kwargs: Any) -> NotebookNode:
            ctx = self._nbjobs_ctx
            if ctx is not None:
                ctx.check_cancelled()  # an interrupt between cells would not stop the run
            ordinal = self._ordinals.get(cell_index)
            if ordinal is not None:
                self.cell_index = cell_index
                if ctx is not None:
                    total = len(self._ordinals)
                    ctx.set_progress((ordinal - 1) / total, f"cell {ordinal} of {total}")
            done = await super().async_execute_cell(cell, cell_index, *args, **kwargs)
            if ordinal is not None and self._nbjobs_checkpoint is not None:
                self._nbjobs_checkpoint.mark()
            return done

        def output(self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None,
                   cell_index: int) -> NotebookNode | None:
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                self._nbjobs_output.write(content.get("name", "stdout"), content.get("text", ""))
            elif kind == "error":
                tb = notebooks.strip_ansi("\n".join(content.get("traceback") or []))
                self._nbjobs_output.write("stderr", tb + "\n")
            if self._nbjobs_checkpoint is not None:
                self._nbjobs_checkpoint.mark()
            return super().output(outs, msg, display_id, cell_index)

    return _Client


class _Run:
    """One execution: the kernel, the client, and the watch for cancellation."""

    def __init__(self, nb: NotebookNode, *, kernel_name: str, cwd: Path, cell_timeout: float | None,
                 ctx: context.JobContext | None, output: _Output,
                 checkpoint: _Checkpoint | None = None) -> None:
        from jupyter_client.manager import AsyncKernelManager

        self.ctx = ctx
        self.output = output
        # The kernel is reached over Unix sockets in a folder of its own (mode 0700, with its
        # connection file) rather than TCP on localhost: no port any local user could connect to,
        # and no "running over TCP without encryption" warning from every run in a server's log.
        # Other systems keep TCP.
        self.sockets = tempfile.mkdtemp(prefix="nbjobs-kernel-") if os.name == "posix" else None
        transport = {} if self.sockets is None else {
            "transport": "ipc", "ip": os.path.join(self.sockets, "kernel"),
            "connection_file": os.path.join(self.sockets, "kernel.json"),
        }
        self.km = AsyncKernelManager(kernel_name=kernel_name, **transport)
        self.client = _client_class()(
            nb, output=output, ctx=ctx, checkpoint=checkpoint, km=self.km, kernel_name=kernel_name,
            # timeout_func, not timeout=: nbclient's trait takes whole seconds only.
            timeout_func=(lambda _cell: cell_timeout) if cell_timeout else None, interrupt_on_timeout=False,
            shutdown_kernel="immediate", resources={"metadata": {"path": str(cwd)}},
        )
        self.cwd = cwd
        self.checkpoint = checkpoint
        self.interrupted_at: float | None = None

    def execute(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        task = asyncio.ensure_future(self.client.async_execute(cleanup_kc=True, cwd=str(self.cwd),
                                                               env=_kernel_env(self.ctx)))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=WATCH_SECONDS)
                self.output.maybe_flush()
                if self.checkpoint is not None and not task.done():
                    self.checkpoint.maybe_save()
                if task.done() or self.ctx is None or not self.ctx.cancelled:
                    continue
                if self.interrupted_at is None:
                    self.interrupted_at = time.monotonic()
                    log.info("job %d cancelled (%s): interrupting its kernel", self.ctx.id,
                             self.ctx.cancel_reason)
                    await self._interrupt()
                elif time.monotonic() - self.interrupted_at > INTERRUPT_GRACE:
                    # The cell ignores the interrupt: stop waiting; the kernel is killed below.
                    raise JobCancelled(f"job {self.ctx.id} was cancelled ({self.ctx.cancel_reason})")
            task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await self._shutdown()

    async def _interrupt(self) -> None:
        try:
            if self.km.has_kernel:
                await self.km.interrupt_kernel()
        except Exception:
            log.exception("could not interrupt the kernel")

    async def _shutdown(self) -> None:
        """The guarantee: no kernel outlives its job, whatever nbclient did or did not do."""
        try:
            await self._stop_kernel()
        finally:
            if self.sockets is not None:
                shutil.rmtree(self.sockets, ignore_errors=True)

    async def _stop_kernel(self) -> None:
        kc = getattr(self.client, "kc", None)
        if kc is not None:  # nbclient stops its channels unless its task was cancelled first
            kc.stop_channels()
        try:
            if self.km.has_kernel:
                await self.km.shutdown_kernel(now=True)
        except Exception:
            log.exception("could not shut down the kernel; killing it")
            try:
                await self.km._kill_kernel()  # jupyter_client has no public "kill now, ask nothing"
            except Exception:
                log.exception("could not kill the kernel")


def _kernel_env(ctx: context.JobContext | None) -> dict[str, str]:
    """The kernel's environment: this process's, with the job's database as NBJOBS_URL, so that
    `nbjobs.enqueue` in the notebook adds jobs where this one came from (not to an `nbjobs.db` beside
    the notebook), through a client engine (NBJOBS_SERVER=0: the kernel ends with the run, and the
    servers run what it enqueues). The signing key is found as any client finds it (NBJOBS_SECRET or
    the key file), never put in the environment here."""
    env = dict(os.environ)
    if ctx is not None and ctx.has_engine:
        env.update(NBJOBS_URL=ctx.engine.url, NBJOBS_SERVER="0")
    return env


def _save(nb: NotebookNode, path: Path) -> None:
    import nbformat

    _write(path, nbformat.writes(nb).encode("utf-8"))  # type: ignore[no-untyped-call]


def _write(path: Path, data: bytes) -> None:
    """Write atomically, so a reader never sees half a notebook or report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _error(exc: BaseException, cell_index: int, source: Path, out: Path) -> BaseException:
    """Turn what nbclient raised into the job's error: which cell, what it raised, where the run is."""
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    where = f"the partially executed notebook is saved at {out}"
    if isinstance(exc, NoSuchKernel):
        err: NotebookError = NotebookError(
            f"kernel {exc.name!r} is not installed where this job ran, so {source.name} could not start; "
            "install it there (`jupyter kernelspec list` shows what is) or pass kernel_name=",
            output_path=str(out),
        )
    elif isinstance(exc, CellTimeoutError):
        err = NotebookCellTimeoutError(
            f"cell {cell_index} of {source.name} ran longer than its cell_timeout; {where}",
            cell_index=cell_index, ename="CellTimeoutError", evalue=str(exc).splitlines()[0],
            traceback=str(exc), output_path=str(out),
        )
    elif isinstance(exc, CellExecutionError):
        tb = notebooks.strip_ansi(exc.traceback)
        err = NotebookCellError(
            f"cell {cell_index} of {source.name} raised {exc.ename}: {exc.evalue}; {where}",
            cell_index=cell_index, ename=exc.ename, evalue=exc.evalue, traceback=tb, output_path=str(out),
        )
        err.add_note(f"Cell {cell_index} traceback (from the kernel):\n{tb}")
    elif isinstance(exc, DeadKernelError):
        running = f"cell {cell_index}" if cell_index >= 0 else "the first cell"
        err = NotebookError(f"the kernel died while running {running} of {source.name}; {where}",
                            output_path=str(out))
    else:
        return exc
    err.__cause__ = None
    return err


def notebook_call(
    path: str | os.PathLike[str],
    parameters: Mapping[str, Any] | None = None,
    *,
    kernel_name: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    cell_timeout: float | str | timedelta | None = None,
    export: str | Sequence[str] | None = None,
    hide_code: bool = False,
    latest: bool = False,
    snapshot: bool = False,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Check a notebook job at enqueue and return the arguments of its `run_notebook` call.

    Raises InvalidJobError for a missing or unreadable notebook, a bad parameter or option, so nothing
    is stored that would only fail in a worker. Paths are made absolute here: servers may run elsewhere.
    """
    source, parsed = _read(path)
    params = notebooks.check_parameters(parameters)
    overwritten = notebooks.overwritten_parameters(parsed, params)
    if overwritten:
        warnings.warn(
            f"{source.name} has no cell tagged {notebooks.PARAMETERS_TAG!r}, and its own code assigns "
            f"{', '.join(overwritten)}: the parameters are set before its first cell, so that code "
            f"overwrites them. Tag the cell that sets their defaults {notebooks.PARAMETERS_TAG!r} (the "
            "parameters are set right after it, as papermill does)",
            NoParametersCellWarning, stacklevel=caller_stacklevel())
    unknown = notebooks.undeclared_parameters(parsed, params)
    if unknown:
        names = ", ".join(repr(name) + (f" (did you mean {near!r}?)" if near else "")
                          for name, near in unknown)
        warnings.warn(
            f"{source.name} does not declare {names} in its {notebooks.PARAMETERS_TAG!r} cell: the run "
            "sets the name, but the notebook's code does not read it (it uses its own defaults). Check "
            "the spelling; `nbjobs.notebook_parameters(path)` lists what it declares",
            UnknownParameterWarning, stacklevel=caller_stacklevel())
    if kernel_name is not None and (not isinstance(kernel_name, str) or not kernel_name):
        raise InvalidJobError(f"kernel_name must be a kernel's name such as 'python3', got {kernel_name!r}")
    _warn_if_kernel_missing(notebooks.kernel_name(parsed, kernel_name), source)
    per_cell = seconds_of(cell_timeout)
    if per_cell is not None and not is_seconds(per_cell, zero=False):
        raise InvalidJobError(f"cell_timeout must be a positive number of seconds, a duration such as '2m' "
                              f"or a timedelta, got {cell_timeout!r}; leave it out for no limit")
    folder = Path(cwd).expanduser().absolute() if cwd is not None else None
    if folder is not None and not folder.is_dir():
        raise InvalidJobError(f"cwd {folder} is not a folder; give the folder the notebook should run in "
                              "(by default, the notebook's own)")
    runs = Path(output_dir).expanduser().absolute() if output_dir is not None else None
    if runs is not None and runs.exists() and not runs.is_dir():
        raise InvalidJobError(f"output_dir {runs} is a file; give a folder for the executed notebooks "
                              "(created if missing)")
    formats = notebooks.check_export(export)
    hidden = notebooks.check_hide_code(hide_code, formats)
    kwargs: dict[str, Any] = {
        "kernel_name": kernel_name,
        "cwd": str(folder) if folder is not None else None,
        "output_dir": str(runs) if runs is not None else None,
        "cell_timeout": float(per_cell) if per_cell is not None else None,
    }
    if formats:  # only when given: runs stored by versions without `export` read the same
        kwargs["export"] = list(formats)
    if hidden:
        kwargs["hide_code"] = True
    if notebooks.check_flag("latest", latest):
        kwargs["latest"] = True
    if notebooks.check_flag("snapshot", snapshot):
        kwargs["snapshot"] = notebooks.snapshot_text(parsed)
    return (str(source), params), kwargs


def _read(path: str | os.PathLike[str]) -> tuple[Path, NotebookNode]:
    """The notebook at `path` (made absolute) and its parsed content; InvalidJobError if it cannot be."""
    source = Path(path).expanduser().absolute()
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidJobError(f"notebook {source} does not exist; check the path (relative paths start "
                              f"at {Path.cwd()})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidJobError(f"notebook {source} cannot be read: {exc}") from None
    return source, notebooks.parse_notebook(text, str(source))


def read_parameters(path: str | os.PathLike[str]) -> list[notebooks.NotebookParameter]:
    """The parameters the notebook at `path` declares in its `parameters` cell (papermill's
    `inspect_notebook`), with their defaults."""
    return notebooks.declared_parameters(_read(path)[1])


def _warn_if_kernel_missing(name: str, source: Path) -> None:
    """Say at enqueue that the run's kernel is not installed here, where a run would fail: a warning,
    not an error, since the server that runs it may be another machine, which has it."""
    from jupyter_client.kernelspec import KernelSpecManager

    try:
        installed = KernelSpecManager().find_kernel_specs()
    except Exception:  # a broken kernelspec folder: the run will say what is wrong
        return
    if name not in installed:
        here = ", ".join(sorted(installed)) or "none"
        warnings.warn(
            f"kernel {name!r} for {source.name} is not installed here ({here} are): a server on this "
            "machine would fail the run. Pass kernel_name=, install the kernel, or make sure the servers "
            "that run it have it", UserWarning, stacklevel=caller_stacklevel())


def run_notebook(
    path: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    kernel_name: str | None = None,
    cwd: str | None = None,
    output_dir: str | None = None,
    cell_timeout: float | None = None,
    export: Sequence[str] = (),
    hide_code: bool = False,
    latest: bool = False,
    snapshot: str | None = None,
) -> dict[str, Any]:
    """Execute the notebook at `path` with `parameters` in a fresh kernel and save the run, and its
    exports (`export=["html"]`: `report.12.html` beside `report.12.ipynb`; `hide_code`: outputs
    only, for readers of a report), failed runs included. With `latest`, a successful run and its
    exports are also copied to `report.latest.ipynb`, `report.latest.html` (a failed one leaves them).
    `snapshot`: the notebook as it was at enqueue (its JSON), run instead of the file as it is now.

    Returns `{"output_path", "kernel_name", "parameters", "cells", "exports"}`; raises
    NotebookCellError for a failing cell and JobCancelled when the job was cancelled (or timed out)
    while running. An export that fails after a successful run fails the job, naming the saved run.
    """
    ctx = context.current_job_or_none()
    source = Path(path)
    text = snapshot if snapshot is not None else source.read_text(encoding="utf-8")
    nb = notebooks.parse_notebook(text, str(source))
    params = notebooks.check_parameters(parameters)
    nb = notebooks.inject_parameters(nb, params)
    run_id: int | str = ctx.id if ctx is not None else _clock.now().strftime("%Y%m%dT%H%M%S%f")
    out = notebooks.output_path(source, output_dir, run_id)
    kernel = notebooks.kernel_name(nb, kernel_name)
    folder = Path(cwd) if cwd else source.parent
    output = _Output(ctx)
    nb.metadata["nbjobs"] = {
        "input_path": str(source), "parameters": params, "kernel_name": kernel,
        "job_id": ctx.id if ctx else None, "attempt": ctx.attempt if ctx else None,
        "started_at": _clock.now().isoformat(), "status": "running",
    }
    if snapshot is not None:
        nb.metadata["nbjobs"]["snapshot"] = True  # the notebook as enqueued, not the file now
    run = _Run(nb, kernel_name=kernel, cwd=folder, cell_timeout=cell_timeout, ctx=ctx, output=output,
               checkpoint=_Checkpoint(nb, out))
    status = "failed"
    exports: dict[str, str] = {}
    try:
        run.execute()
        status = "succeeded"
    except Exception as exc:
        if ctx is not None and ctx.cancelled:
            status = "cancelled"
            nb.metadata["nbjobs"]["reason"] = ctx.cancel_reason
            raise JobCancelled(f"job {ctx.id} was cancelled while running {source.name} "
                               f"({ctx.cancel_reason}); the partial run is saved at {out}") from None
        raise _error(exc, run.client.cell_index, source, out) from None
    finally:
        nb.metadata["nbjobs"].update(status=status, finished_at=_clock.now().isoformat())
        output.flush()
        _save(nb, out)
        if export and status != "succeeded":  # a failed run's report shows where it failed
            try:
                _export(nb, out, export, hide_code)
            except Exception:  # the run's own error is the job's
                log.exception("could not export the failed run %s", out)
    if export:
        exports = _export(nb, out, export, hide_code)
    copies = _copy_latest([out, *map(Path, exports.values())]) if latest else []
    log.info("notebook %s ran in kernel %s; saved to %s", source, kernel, out,
             extra={"action": "notebook_done", "job_id": ctx.id if ctx else None})
    done = {"output_path": str(out), "kernel_name": kernel, "parameters": params,
            "cells": len(nb.cells), "exports": exports}
    if copies:
        done["latest"] = copies
    return done


def _copy_latest(files: Sequence[Path]) -> list[str]:
    """Copy a successful run and its exports to their `latest` names, each replaced atomically."""
    written = []
    for source in files:
        target = notebooks.latest_path(source)
        try:
            _write(target, source.read_bytes())
        except OSError as exc:
            raise NotebookError(f"the run is saved at {files[0]}, but copying {source.name} to "
                                f"{target} failed: {exc}") from exc
        written.append(str(target))
    return written


def _export(nb: NotebookNode, run: Path, formats: Sequence[str], hide_code: bool = False) -> dict[str, str]:
    """Write the run in each format beside it (nbconvert); the files written, by format. Without its
    code (`hide_code`): input cells and prompts left out, as papermill's report mode shows a run."""
    from nbconvert.exporters import get_exporter

    hidden = {"exclude_input": True, "exclude_input_prompt": True, "exclude_output_prompt": True}
    written: dict[str, str] = {}
    for name in formats:
        try:
            target = notebooks.export_path(run, name)
            exporter = get_exporter(name)(**(hidden if hide_code else {}))  # type: ignore[no-untyped-call]
            body, _ = exporter.from_notebook_node(nb)
            _write(target, body.encode("utf-8") if isinstance(body, str) else body)
        except Exception as exc:
            raise NotebookError(f"the run is saved at {run}, but exporting it as {name} failed: "
                                f"{type(exc).__name__}: {exc}") from exc
        written[name] = str(target)
    return written
