"""Per-job output capture: what a job prints or logs is stored with the job, not shown in a cell.

`sys.stdout` and `sys.stderr` are replaced once per process by proxies that route each write by the
job running in the writing thread (`context.current_job_or_none()`): a job's writes go to its buffer,
every other write goes to the stream that was there before (in Jupyter, ipykernel's OutStream, so
the notebook's own output is untouched). A root logging handler, present while jobs run, routes
records emitted inside a job the same way. Buffers are written to storage by one flusher thread at a
bounded rate (at most one transaction per job per `interval`) and once more, synchronously, when the
job ends, so `job.logs()` is complete by the time the job is final.

Limits: threads a job starts itself do not inherit its context, so their output is not captured;
writes to `sys.stdout.buffer` (bytes) and output of C code writing to file descriptor 1 bypass the
proxies. Worker processes capture their own output (see `executors.process`) and send it back.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TextIO

from .clock import Clock, SystemClock
from .context import JobContext, current_job_or_none
from .storage import Store

log = logging.getLogger("nbjobs.capture")

#: (time, stream, text): the unit stored by `Store.append_logs`.
Chunk = tuple[datetime, str, str]
#: Called with (stream, text) for every write routed to a job.
Sink = Callable[[str, str], None]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
TRUNCATED_NOTE = "\n[nbjobs: output truncated after {limit} bytes; later output of this job was dropped]\n"


class JobOutput:
    """One job's output waiting to be stored; consecutive writes to one stream are merged."""

    def __init__(self, job_id: int, clock: Clock, max_bytes: int = DEFAULT_MAX_BYTES,
                 on_dirty: Callable[[], None] | None = None) -> None:
        self.job_id = job_id
        self._clock = clock
        self._max = max_bytes
        self._size = 0
        self._truncated = False
        self._pending: list[list[Any]] = []  # [at, stream, [texts]]
        self._lock = threading.Lock()
        self._on_dirty = on_dirty

    def write(self, stream: str, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._truncated:
                return
            was_empty = not self._pending
            room = self._max - self._size
            self._size += len(text)
            if len(text) > room:
                self._truncated = True
                self._append(stream, text[:room])
                self._append("stderr", TRUNCATED_NOTE.format(limit=self._max))
            else:
                self._append(stream, text)
        if was_empty and self._on_dirty is not None:
            self._on_dirty()

    def _append(self, stream: str, text: str) -> None:
        if not text:
            return
        if self._pending and self._pending[-1][1] == stream:
            self._pending[-1][2].append(text)
        else:
            self._pending.append([self._clock.now(), stream, [text]])

    def take(self) -> list[Chunk]:
        """Remove and return what is pending, as stored chunks."""
        with self._lock:
            pending, self._pending = self._pending, []
        return [(at, stream, "".join(texts)) for at, stream, texts in pending]


# -- the process-wide router ------------------------------------------------------------------------


class _Router:
    """Maps running job contexts to their sinks; shared by every engine of the process."""

    def __init__(self) -> None:
        self.routes: dict[JobContext, Sink] = {}
        self.lock = threading.Lock()

    def sink(self) -> Sink | None:
        ctx = current_job_or_none()
        if ctx is None:
            return None
        return self.routes.get(ctx)


_router = _Router()


class StreamProxy(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: a job's writes go to its sink, the rest to `original`."""

    def __init__(self, original: TextIO, name: str) -> None:
        super().__init__()
        self.original = original
        self.stream_name = name

    def write(self, s: str) -> int:
        sink = _router.sink()
        if sink is None:
            return self.original.write(s)
        sink(self.stream_name, s)
        return len(s)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        # Not once the original is closed: a proxy dropped late (at exit, after the test runner's or
        # kernel's stream closed) is flushed by io's finalizer, which printed "Exception ignored".
        if _router.sink() is None and not getattr(self.original, "closed", False):
            self.original.flush()

    def isatty(self) -> bool:
        return bool(self.original.isatty())

    def fileno(self) -> int:
        return self.original.fileno()

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.original, "errors", None)

    def __getattr__(self, name: str) -> Any:
        # ipykernel calls OutStream-only methods (set_parent, …) on sys.stdout: pass them through.
        return getattr(self.original, name)


class JobLogHandler(logging.Handler):
    """Root handler: records emitted inside a job go to the job's output (stream "log")."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        sink = _router.sink()
        if sink is not None:
            try:
                sink("log", self.format(record) + "\n")
            except Exception:
                self.handleError(record)
            return
        # Outside jobs, keep Python's behaviour: our handler must not silence `logging.lastResort`.
        last = logging.lastResort
        if last is not None and record.levelno >= last.level and not self._others_handle(record):
            last.handle(record)

    def _others_handle(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(h is not self for h in logger.handlers):
                return True
            if not logger.propagate:
                return False
            logger = logger.parent
        return False


_handler = JobLogHandler()


def install() -> None:
    """Put the proxies on sys.stdout/sys.stderr (idempotent).

    Called at every job start, so a stream someone replaced since (a kernel restart of its I/O,
    `contextlib.redirect_stdout` left in place) is wrapped again rather than bypassed.
    """
    if isinstance(sys.stdout, StreamProxy) and isinstance(sys.stderr, StreamProxy):
        return  # the usual case: no lock for the worker threads to queue on
    with _router.lock:
        for name in ("stdout", "stderr"):
            current = getattr(sys, name)
            if current is not None and not isinstance(current, StreamProxy):
                setattr(sys, name, StreamProxy(current, name))


def uninstall() -> None:
    """Restore the original streams if our proxies are still in place, and remove the handler."""
    with _router.lock:
        for name in ("stdout", "stderr"):
            current = getattr(sys, name)
            if isinstance(current, StreamProxy):
                setattr(sys, name, current.original)
        logging.getLogger().removeHandler(_handler)


@contextlib.contextmanager
def routed(ctx: JobContext, sink: Sink) -> Iterator[None]:
    """Route writes made under `ctx` to `sink` while the block runs."""
    install()
    root = logging.getLogger()
    with _router.lock:
        _router.routes[ctx] = sink
        # The handler sits on the root logger only while jobs run: a root logger with a handler
        # turns `logging.basicConfig()` into a no-op, and a notebook calls it between jobs.
        if _handler not in root.handlers:
            root.addHandler(_handler)
    try:
        yield
    finally:
        with _router.lock:
            _router.routes.pop(ctx, None)
            if not _router.routes:
                root.removeHandler(_handler)


# -- storing ----------------------------------------------------------------------------------------


class OutputCapture:
    """An engine's capture: a RunWrapper for its server and a flusher thread writing to its store."""

    def __init__(self, store: Store, clock: Clock | None = None, *, interval: float = 0.5,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self.interval = interval
        self.max_bytes = max_bytes
        self._outputs: dict[int, JobOutput] = {}
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def wrap(self, ctx: JobContext) -> Iterator[None]:
        """The RunWrapper: capture everything the job prints or logs while it runs."""
        out = JobOutput(ctx.id, self.clock, self.max_bytes, on_dirty=self._dirty.set)
        with self._lock:
            self._outputs[ctx.id] = out
        self._ensure_thread()
        try:
            with routed(ctx, out.write):
                yield
        finally:
            with self._lock:
                self._outputs.pop(ctx.id, None)
            self._store(out.job_id, out.take())

    def _store(self, job_id: int, chunks: Sequence[Chunk]) -> None:
        if not chunks:
            return
        try:
            self.store.append_logs(job_id, chunks)
        except Exception:  # losing output must never fail the job or kill the flusher
            log.exception("could not store output of job %d", job_id)

    def _ensure_thread(self) -> None:
        if self._thread is not None:  # started once, for the capture's life: no lock needed to see it
            return
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="nbjobs-output", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            # Let writes accumulate for one interval: bounded rate, few rows.
            self._stop.wait(self.interval)
            self._dirty.clear()
            self.flush()

    def flush(self) -> None:
        """Store what every running job has printed so far."""
        with self._lock:
            outputs = list(self._outputs.values())
        for out in outputs:
            self._store(out.job_id, out.take())

    def close(self) -> None:
        """Stop the flusher after a last flush (running jobs still store their output at the end)."""
        self._stop.set()
        self._dirty.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.flush()


def as_shown(text: str) -> str:
    """Output as a terminal shows it: a carriage return goes back to the start of its line and what
    follows overwrites it, and a cursor-up (ESC [ A) goes back a line, so progress bars redrawn in
    place (tqdm, nested ones too; Keras) read as their last state, not as every redraw one after
    the other. Lines so overwritten lose their trailing blanks. Stored output keeps every write."""
    if "\r" not in text and "\x1b[" not in text:
        return text
    lines, row, col = [""], 0, 0
    redrawn: set[int] = set()
    for token in _CONTROL.split(text):
        if token in ("\n", "\r\n"):
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            col = 0
            redrawn.add(row)
        elif (up := _CURSOR_UP.fullmatch(token)) is not None:
            row, col = max(0, row - int(up.group(1) or 1)), 0
            redrawn.add(row)
        elif token:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token):]
            col += len(token)
    return "\n".join(line.rstrip(" ") if index in redrawn else line for index, line in enumerate(lines))


_CURSOR_UP = re.compile(r"\x1b\[(\d*)A")
_CONTROL = re.compile(r"(\r\n|\r|\n|\x1b\[\d*A)")
