"""Whether a process of this host still runs: how a reaper knows a local server is dead at once, and
how a worker process knows that its server is gone."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs. A zombie does not: a killed kernel stays one until its parent
    collects it, which a busy or careless parent may not do for long."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:  # no /proc (macOS), or the process is gone meanwhile: the signal said it exists
        return False
    # "pid (comm) state …": the name may hold spaces and parentheses, so read after the last ")".
    return stat[stat.rfind(b")") + 2:][:1] == b"Z"
