"""Run jobs in a pool of worker processes (`executor="process"`): CPU-bound work, hard timeouts.

Why processes: a CPU-bound job on a thread holds the GIL and freezes the notebook; in a child process
it does not, and a job that overruns its `timeout=` (or is cancelled) can be stopped for sure by
terminating its process, which no thread allows.

How:
- One child per slot (the pool has as many slots as the server has workers), started lazily from a
  `forkserver` (a clean, single-threaded process that preloads nbjobs; falling back to `spawn` where
  forkserver does not exist). A job waiting for other jobs lends its slot (`context.Waiting`): the
  server then runs one more worker thread, and a process job run there gets a one-off child.
  Never `fork`: forking a kernel that runs threads can deadlock the child.
- The parent sends the job's *signed* payload and the signing key travels once, at child start-up, over
  the process pipe (never the environment). The child verifies, decodes and runs it; functions from a
  notebook (`__main__`) are loaded from the cloudpickled copy the payload carries
  (`Codec.load_function(prefer_live=False)`), others are imported by reference. The child follows the
  parent's `sys.path` and working directory at each job, so modules the notebook can import resolve.
- Timeout and cancellation: the dispatcher sets the job's cancel flag (on timeout, cancel, shutdown);
  the waiting worker thread sees it and terminates the child (SIGTERM, then SIGKILL). The slot's next
  job starts a new child.
- Children are not daemonic, so a job may start processes of its own (a multiprocessing Pool, a
  ProcessPoolExecutor, joblib), which a daemonic process may not. Each child leads a process group of
  its own, and terminating it signals the group: what the job started goes with it. Open pools are
  closed at exit before multiprocessing's exit handler, which waits for non-daemonic processes.
- A child outlives no server: a thread in it checks every `SERVER_CHECK_SECONDS` that the server
  process (and its own parent, the forkserver) still exists, and when not (the server was killed
  with -9 or by the out-of-memory killer) kills its process group and exits. The reaper gives the
  job to another server; left running, it would run twice at once (the pipe closing tells the child
  only between jobs).
- A child that dies mid-job (killed, out of memory, segfault) fails the attempt with
  `WorkerCrashedError`; the job's retry policy applies. Nothing hangs: the parent waits on the pipe
  and the process sentinel together.
- Inside the child, `nbjobs.current_job()` works; `set_progress()` is forwarded to the parent (and so
  to storage); `check_cancelled()` never fires there, because cancellation terminates the process.

Output: the child buffers what the job writes to `sys.stdout`/`sys.stderr` (a `capture.JobOutput`,
merged and capped as a thread job's) and a flusher thread sends it as `("output", chunks)` messages at
most every `OUTPUT_FLUSH_SECONDS` while the job runs; the rest goes with the result, under the same lock,
so no output can arrive after it. The parent stores each batch as it comes (`on_output(ctx, chunks)`
if one was given, else `ctx.append_logs`): a long job's prints can be followed while it runs, and
what a job printed before it was terminated for its timeout or cancelled is kept.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from multiprocessing.connection import Connection, wait
from typing import Any

from .. import context, tqdm_progress
from ..capture import JobOutput
from ..clock import Clock, SystemClock
from ..errors import USER_CODE_ERRORS, JobCancelled, WorkerCrashedError
from ..model import PAYLOAD_MAX, ClaimedJob
from ..payload import Codec, Signer
from ..processes import pid_alive
from .coroutines import complete
from .thread import RunResult, failed_result

log = logging.getLogger("nbjobs.executor")

#: Receives the captured output of one process job: (time, stream, text) chunks.
OutputSink = Callable[[context.JobContext, Sequence[tuple[datetime, str, str]]], None]

_TERMINATE_GRACE = 1.0  #: seconds between SIGTERM and SIGKILL of a child that must stop
OUTPUT_FLUSH_SECONDS = 0.5  #: a running job's output reaches the parent at most this often
SERVER_CHECK_SECONDS = 1.0  #: how soon a worker process notices that its server died


def _mp_context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        # Children fork from a server that already imported nbjobs: start-up takes milliseconds.
        ctx.set_forkserver_preload(["nbjobs.executors.process"])
        return ctx
    return multiprocessing.get_context("spawn")


# -- child side ---------------------------------------------------------------------------------
class _Capture(io.TextIOBase):
    """A text stream whose writes go to the running job's output buffer."""

    def __init__(self, name: str, output: JobOutput) -> None:
        self.name_ = name
        self.output = output

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.output.write(self.name_, text)
        return len(text)


class _Channel:
    """The child's end of the pipe. Every message goes through `send` under one lock, since the job's
    own threads (progress, waits) and the output flusher send too; the running job's output is sent
    as it is written, at most every OUTPUT_FLUSH_SECONDS, so a long job's prints reach storage while
    it runs and what a job printed before it was terminated (timeout, cancellation) is kept."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.output: JobOutput | None = None
        self._dirty = threading.Event()
        self._flusher: threading.Thread | None = None

    def send(self, kind: str, body: Any) -> None:
        with self.lock:
            self.conn.send((kind, body))

    def begin_job(self, job_id: int) -> JobOutput:
        """A fresh output buffer for the job about to run (capped as a thread job's is)."""
        output = JobOutput(job_id, SystemClock(), on_dirty=self._dirty.set)
        with self.lock:
            self.output = output
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="nbjobs-output", daemon=True)
            self._flusher.start()
        return output

    def _flush_loop(self) -> None:
        while True:
            self._dirty.wait()
            time.sleep(OUTPUT_FLUSH_SECONDS)  # let writes gather: bounded messages and store writes
            self._dirty.clear()
            with self.lock:
                chunks = self.output.take() if self.output is not None else []
                if chunks:
                    try:
                        self.conn.send(("output", chunks))
                    except OSError:  # the parent is gone: so is the job
                        return

    def finish(self, reply: dict[str, Any]) -> None:
        """Send the job's result with the rest of its output: none of it can follow the result."""
        with self.lock:
            output, self.output = self.output, None
            reply["output"] = output.take() if output is not None else []
            reply["resident_mb"] = _resident_mb()
            self.conn.send(("result", reply))


def _resident_mb() -> float | None:
    """This process's resident memory now, in MB (Linux's /proc); None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _child_main(conn: Connection, key: bytes, server_pid: int | None = None) -> None:
    """The loop of one worker process: run jobs sent by the parent until told to stop."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A group of its own: the processes a job starts (a multiprocessing Pool, joblib) are stopped
    # with it when it is terminated (timeout, cancellation), not left behind.
    with contextlib.suppress(OSError, AttributeError):
        os.setpgid(0, 0)
    if server_pid is not None:
        threading.Thread(target=_die_with_server, args=(server_pid, os.getppid()), daemon=True,
                         name="nbjobs-watch-server").start()
    codec = Codec(Signer(key))
    channel = _Channel(conn)
    tqdm_progress.install()  # tqdm bars in this process's jobs report their progress
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        channel.finish(_child_run(codec, channel, msg))


def _die_with_server(server_pid: int, parent_pid: int) -> None:
    """End this worker, and what its job started, once the server is gone (kill -9, out of memory):
    the reaper returns the job to its queue for another server, and a job still running here would
    run twice at once. A pipe closing tells only between jobs; a job may run for hours."""
    while True:
        time.sleep(SERVER_CHECK_SECONDS)
        if os.getppid() != parent_pid or not pid_alive(server_pid):
            with contextlib.suppress(OSError, AttributeError):
                os.killpg(os.getpgid(0), signal.SIGKILL)  # our group: we lead it
            os._exit(1)


def _child_run(codec: Codec, channel: _Channel, msg: dict[str, Any]) -> dict[str, Any]:
    codec.max_bytes = msg.get("max_payload", codec.max_bytes)
    if msg["sys_path"] != sys.path:
        sys.path[:] = msg["sys_path"]
    with contextlib.suppress(OSError):
        if os.getcwd() != msg["cwd"]:
            os.chdir(msg["cwd"])
    started = datetime.now(UTC)
    output = channel.begin_job(msg["id"])

    def reply(result: RunResult) -> dict[str, Any]:
        out = {k: v for k, v in result.__dict__.items() if k != "exc_type"}
        try:
            out["exc_type"] = pickle.dumps(result.exc_type) if result.exc_type else None
        except Exception:  # a class defined somewhere the parent cannot import
            out["exc_type"] = None
        return out

    try:
        call = codec.decode_call(msg["payload"])
        fn = codec.load_function(msg["function"], call, prefer_live=False)
    except Exception as exc:  # bad signature, missing function, broken pickle: no retry helps
        return reply(failed_result(exc, started=started, finished=datetime.now(UTC), retryable=False))

    def progress(job_id: int, fraction: float | None, message: str | None) -> None:
        channel.send("progress", (fraction, message))

    opener = msg.get("engine_opener")
    ctx = context.JobContext(id=msg["id"], attempt=msg["attempt"], function=msg["function"],
                             queue=msg["queue"], recurring_id=msg["recurring_id"], progress_sink=progress,
                             slot_lender=_ParentSlot(channel), database=msg.get("database"),
                             engine_source=None if opener is None else
                             functools.partial(_engine_in_child, opener, codec.signer.key))
    token = context.activate(ctx)
    try:
        with contextlib.redirect_stdout(_Capture("stdout", output)), \
                contextlib.redirect_stderr(_Capture("stderr", output)):
            value = complete(fn(*call.args, **call.kwargs), ctx)
    except JobCancelled as exc:
        result = failed_result(exc, started=started, finished=datetime.now(UTC))
        return reply(RunResult(**{**result.__dict__, "cancelled": True}))
    except USER_CODE_ERRORS as exc:  # sys.exit() in a job fails the job, not the worker process
        return reply(failed_result(exc, started=started, finished=datetime.now(UTC)))
    finally:
        context.deactivate(token)
    try:
        encoded = codec.dumps(value, msg["serializer"], what="the job's return value")
    except USER_CODE_ERRORS as exc:
        return reply(failed_result(exc, started=started, finished=datetime.now(UTC), retryable=False))
    return reply(RunResult(started_at=started, finished_at=datetime.now(UTC), ok=True, result=encoded))


#: One client engine per database in a worker process, opened by the first job that asks for it.
_CHILD_ENGINES: dict[Any, Any] = {}


def _engine_in_child(opener: functools.partial[Any], key: bytes) -> Any:
    """`current_job().engine` in a worker process: a client on the server's database (no server of
    its own: the jobs it enqueues are run by the servers, as any others)."""
    which = (opener.func, opener.args, tuple(sorted(opener.keywords.items())))
    engine = _CHILD_ENGINES.get(which)
    if engine is None:
        engine = _CHILD_ENGINES[which] = opener(secret=key)
    return engine


class _ParentSlot:
    """The child's side of lending: the parent's worker thread waits on our pipe, so it is the parent
    that lends and reclaims the job's slot (`_Slot.run`)."""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    def lend(self) -> None:
        self._channel.send("wait", True)

    def reclaim(self) -> None:
        self._channel.send("wait", False)


# -- parent side --------------------------------------------------------------------------------
class _Slot:
    """One worker process (started on demand) and the pipe to it."""

    def __init__(self, mp: Any, key: bytes) -> None:
        self._mp = mp
        self._key = key
        self.process: Any = None
        self.conn: Connection | None = None
        self.jobs_run = 0  #: by the current child

    def _ensure(self) -> tuple[Any, Connection]:
        if self.process is None or not self.process.is_alive() or self.conn is None:
            self.kill()
            parent, child = self._mp.Pipe(duplex=True)
            # Not daemonic: a job may start processes of its own (a daemonic one may not). Pools are
            # closed at exit before multiprocessing waits for what is left (`close_open_pools`).
            proc = self._mp.Process(target=_child_main, args=(child, self._key, os.getpid()),
                                    name="nbjobs-process-worker", daemon=False)
            proc.start()
            child.close()
            self.process, self.conn = proc, parent
            self.jobs_run = 0
        return self.process, self.conn

    def run(self, job: ClaimedJob, ctx: context.JobContext, store_output: Callable[[Any], None],
            engine_opener: functools.partial[Any] | None = None, max_payload: int = PAYLOAD_MAX,
            ) -> tuple[dict[str, Any] | None, str]:
        """Run one job, storing its output as it comes; returns (reply, "") or (None, why it has no
        reply)."""
        msg = {
            "id": job.id, "attempt": job.attempts, "function": job.function, "payload": job.payload,
            "queue": job.options.queue, "recurring_id": job.recurring_id,
            "serializer": job.options.serializer, "sys_path": list(sys.path), "cwd": os.getcwd(),
            "engine_opener": engine_opener, "database": ctx.database, "max_payload": max_payload,
        }
        proc, conn = self._ensure()
        try:
            conn.send(msg)
        except OSError:  # the idle child died since we last looked (killed from outside): start anew
            self.kill()
            proc, conn = self._ensure()
            conn.send(msg)
        while True:
            if ctx.cancelled:
                self.kill()
                return None, "cancelled"
            ready = wait([conn, proc.sentinel], timeout=0.05)
            if conn in ready:
                try:
                    kind, body = conn.recv()
                except (EOFError, OSError):
                    pass  # the child died after or while writing: fall through to the crash report
                else:
                    if kind == "result":
                        self.jobs_run += 1
                        return body, ""
                    if kind == "output":
                        store_output(body)
                    elif kind == "progress" and ctx.progress_sink is not None:
                        try:
                            ctx.set_progress(*body)
                        except Exception:
                            log.exception("progress report of job %d failed", job.id)
                    elif kind == "wait":
                        try:
                            if body:
                                ctx.begin_wait()
                            else:
                                ctx.end_wait()
                        except JobCancelled:
                            pass  # seen at the top of this loop: the child is terminated
                    continue
            if proc.sentinel in ready or not proc.is_alive():
                proc.join(timeout=1.0)
                code = proc.exitcode
                self.kill()
                return None, f"exit code {code}" if code is None or code >= 0 else \
                    f"signal {signal.Signals(-code).name}"

    def kill(self) -> None:
        proc, conn = self.process, self.conn
        self.process = self.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        if proc is not None and proc.is_alive():
            _signal_group(proc, signal.SIGTERM)
            proc.join(_TERMINATE_GRACE)
            _signal_group(proc, signal.SIGKILL)  # what the job started too, even once the child is gone
            proc.join(_TERMINATE_GRACE)
        elif proc is not None:
            _signal_group(proc, signal.SIGKILL)  # the child died: processes its job left behind

    def close(self) -> None:
        """Ask an idle child to exit; kill it if it does not."""
        proc, conn = self.process, self.conn
        if proc is not None and conn is not None and proc.is_alive():
            with contextlib.suppress(Exception):
                conn.send(None)
            proc.join(_TERMINATE_GRACE)
        self.kill()


def _signal_group(proc: Any, signum: int) -> None:
    """Signal the child's process group (itself and the processes its job started), or the child
    alone if it has not made its group yet."""
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError, AttributeError):
        with contextlib.suppress(Exception):
            if proc.is_alive():
                os.kill(proc.pid, signum)


#: Pools not closed yet: `close_open_pools` at exit, before multiprocessing's own exit handler
#: waits for the (non-daemonic) worker processes (see `engine._close_process_pools`).
_open_pools: weakref.WeakSet[ProcessExecutor] = weakref.WeakSet()


def close_open_pools() -> None:
    for pool in list(_open_pools):
        with contextlib.suppress(Exception):
            pool.close()


class ProcessExecutor:
    """The `process` executor: call it from a worker thread with a claimed job; it blocks until done."""

    def __init__(
        self, *, size: int, signer: Signer, clock: Clock, on_output: OutputSink | None = None,
        engine_opener: functools.partial[Any] | None = None, max_payload: int = PAYLOAD_MAX,
        max_jobs: int | None = None, max_memory_mb: float | None = None,
    ) -> None:
        self._mp = _mp_context()
        #: A child is replaced after this many jobs, or after a job that leaves it above this memory.
        self._max_jobs = max_jobs
        self._max_memory_mb = max_memory_mb
        #: Opens, given `secret=`, an engine on the server's database: `current_job().engine` in a child
        #: (a partial of a module-level function, so it travels to the child by reference).
        self._engine_opener = engine_opener
        self._max_payload = max_payload
        self._clock = clock
        self._on_output = on_output
        self._key = signer.key
        self._slots: list[_Slot] = [_Slot(self._mp, signer.key) for _ in range(max(1, size))]
        self._idle: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        for slot in self._slots:
            self._idle.put(slot)
        self._extra: set[_Slot] = set()
        self._extra_lock = threading.Lock()
        self._closed = threading.Event()
        _open_pools.add(self)

    def _take_slot(self) -> tuple[_Slot, bool]:
        """An idle slot; a one-off extra one when a waiting job lent its worker (more worker threads
        than slots), so the jobs it waits for do not wait for its process."""
        try:
            return self._idle.get_nowait(), False
        except queue.Empty:
            slot = _Slot(self._mp, self._key)
            with self._extra_lock:
                self._extra.add(slot)
            return slot, True

    def __call__(self, job: ClaimedJob, ctx: context.JobContext) -> RunResult:
        started = self._clock.now()
        slot, extra = self._take_slot()
        try:
            if self._closed.is_set():
                raise RuntimeError("the process pool was closed")
            reply, why = slot.run(job, ctx, functools.partial(self._store_output, ctx), self._engine_opener,
                                  self._max_payload)
            if reply is not None:
                self._retire_if_spent(slot, job.id, reply.pop("resident_mb", None))
        finally:
            if extra:
                slot.close()
                with self._extra_lock:
                    self._extra.discard(slot)
            else:
                self._idle.put(slot)
        finished = self._clock.now()
        if reply is None:
            if why == "cancelled":
                exc: BaseException = JobCancelled(f"job {job.id} was cancelled ({ctx.cancel_reason}); "
                                                  "its worker process was terminated")
                return RunResult(**{**failed_result(exc, started=started, finished=finished).__dict__,
                                    "cancelled": True})
            crash = WorkerCrashedError(
                f"the worker process running job {job.id} died ({why}) before reporting a result; "
                "it may have run out of memory or crashed in native code"
            )
            return failed_result(crash, started=started, finished=finished)
        self._store_output(ctx, reply.pop("output", []))
        exc_blob = reply.pop("exc_type", None)
        exc_type = None
        if exc_blob is not None:
            with contextlib.suppress(Exception):
                exc_type = pickle.loads(exc_blob)  # written by our own child
        return RunResult(**reply, exc_type=exc_type)

    def _retire_if_spent(self, slot: _Slot, job_id: int, resident_mb: float | None) -> None:
        """Replace the slot's child (its next job starts a fresh one) once it ran `max_jobs` jobs or
        holds more than `max_memory_mb` after one."""
        if self._max_jobs is not None and slot.jobs_run >= self._max_jobs:
            why = f"it ran {slot.jobs_run} jobs"
        elif (self._max_memory_mb is not None and resident_mb is not None
              and resident_mb > self._max_memory_mb):
            why = f"job {job_id} left it holding {resident_mb:,.0f} MB"
        else:
            return
        log.info("replacing worker process %s: %s", slot.process.pid if slot.process else "?", why,
                 extra={"action": "process_recycled", "job_id": job_id})
        slot.close()

    def _store_output(self, ctx: context.JobContext, chunks: Sequence[tuple[datetime, str, str]]) -> None:
        if not chunks:
            return
        try:
            if self._on_output is not None:
                self._on_output(ctx, chunks)
            else:
                ctx.append_logs(chunks)
        except Exception:  # losing output must not fail the job
            log.exception("storing the output of job %d failed", ctx.id)

    def close(self) -> None:
        """Stop every worker process (idle ones exit, busy ones are terminated)."""
        self._closed.set()
        with self._extra_lock:
            extra = list(self._extra)
        for slot in [*self._slots, *extra]:
            slot.close()
