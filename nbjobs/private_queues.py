"""This process's private queues: `<queue>@kernel-<tag>`, served only by servers of this process.

Two kinds of job can run only in the process that enqueued them: a `%%job` cell (it runs in the
kernel's namespace) and a job of a notebook function that could not be copied into it (it uses
objects that cannot be pickled, or too much of the notebook's data; `copies.function_copy`). Such
jobs go to a private queue named after their queue and this process, which no server listening to
`"*"` takes (`model.PRIVATE_QUEUE_MARK`); every server this process runs serves every private queue
of this process, from when it is named or when the server starts, whichever is later.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from typing import Protocol

from .errors import ConfigurationError
from .model import PRIVATE_QUEUE_MARK, padded_queue

#: Names this process's private queues: a kernel restart gets a new tag (its namespace is new too).
PROCESS_TAG = f"kernel-{uuid.uuid4().hex[:12]}"


class ServesQueues(Protocol):
    def add_queue(self, queue: str, *, first: bool = True) -> None: ...


_lock = threading.Lock()
_queues: dict[str, None] = {}  # insertion-ordered set
_servers: weakref.WeakSet[ServesQueues] = weakref.WeakSet()


def _forget_in_child() -> None:
    """A forked child is not the process these queues belong to: it neither serves them nor, at its
    exit, deletes their jobs."""
    global _lock, _servers
    _lock = threading.Lock()  # it may have been held by another thread at the fork
    _queues.clear()
    _servers = weakref.WeakSet()


os.register_at_fork(after_in_child=_forget_in_child)


def private_queue(name: str = "default") -> str:
    """This process's private queue for `name`, served by this process's servers from now on."""
    if not name.strip() or name == "*":  # checked on `name`, so the error names what was written
        raise ConfigurationError(f"queue must be a non-empty name (not '*'), got {name!r}")
    if (padding := padded_queue(name)) is not None:
        raise ConfigurationError(padding)
    if PRIVATE_QUEUE_MARK in name:
        raise ConfigurationError(
            f"queue names for jobs that run only in this process must not contain {PRIVATE_QUEUE_MARK!r}: "
            f"{name!r}"
        )
    queue = f"{name}{PRIVATE_QUEUE_MARK}{PROCESS_TAG}"
    with _lock:
        if queue in _queues:
            return queue
        _queues[queue] = None
        servers = list(_servers)
    for server in servers:
        server.add_queue(queue)
    return queue


def is_private_here(queue: str) -> bool:
    return queue.endswith(f"{PRIVATE_QUEUE_MARK}{PROCESS_TAG}")


def registered() -> list[str]:
    """The private queues named in this process so far."""
    with _lock:
        return list(_queues)


def serve_here(server: ServesQueues) -> None:
    """Have `server` (starting in this process) serve every private queue, now and when named."""
    with _lock:
        _servers.add(server)
        queues = list(_queues)
    for queue in reversed(queues):  # each goes first: they end in the order they were named
        server.add_queue(queue)


def stop_serving(server: ServesQueues) -> None:
    with _lock:
        _servers.discard(server)


def serving() -> bool:
    """Whether a server of this process serves the private queues now."""
    with _lock:
        return len(_servers) > 0
