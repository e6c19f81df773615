"""`nbjobs dashboard`: the same dashboard as a standalone web page, served by Voilà.

Safe by default: it binds 127.0.0.1, is read-only unless actions are allowed, and refuses any other
interface without a token (the page shows function names, arguments and tracebacks). The database
URL and token reach Voilà through its environment, never through the notebook file or argv.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError

NOTEBOOK = "nbjobs-dashboard.ipynb"


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    url: str
    port: int = 8866
    ip: str = "127.0.0.1"
    allow_actions: bool = False
    token: str | None = None
    refresh: float = 2.0


def is_loopback(ip: str) -> bool:
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False  # a host name: treat as reachable from elsewhere


def check(options: ServeOptions) -> None:
    """Refuse an exposed, unauthenticated dashboard before anything starts."""
    if not is_loopback(options.ip) and not options.token:
        raise ConfigurationError(
            f"refusing to serve the dashboard on {options.ip} without a token: anyone who can reach "
            "it would see job arguments and tracebacks. Pass --token SECRET (or NBJOBS_DASHBOARD_TOKEN), "
            "or bind --ip 127.0.0.1"
        )
    if options.token is not None and len(options.token) < 16:
        raise ConfigurationError("the dashboard token is too short; use at least 16 random characters")
    if not 0 < options.port < 65536:
        raise ConfigurationError(f"port must be 1-65535, got {options.port}")


def notebook(options: ServeOptions) -> dict[str, object]:
    """The one-cell notebook Voilà runs: connect (URL from the environment) and show the dashboard."""
    source = (
        "import nbjobs\n"
        "engine = nbjobs.connect()  # NBJOBS_URL, set by `nbjobs dashboard`\n"
        f"engine.dashboard(read_only={not options.allow_actions}, refresh={options.refresh!r})"
    )
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "dashboard", "metadata": {},
                   "outputs": [], "source": source}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def command(options: ServeOptions, folder: Path) -> tuple[list[str], dict[str, str]]:
    """The Voilà command line and environment for serving `folder`/page.

    The token goes into a config file in `folder`/config (Voilà reads `voila.json` from its config
    folder), so it never shows in the process list; the page folder holds only the notebook.
    """
    argv = [sys.executable, "-m", "voila", str(folder / "page" / NOTEBOOK), "--no-browser",
            f"--port={options.port}", f"--Voila.ip={options.ip}", "--Voila.port_retries=0",
            "--VoilaConfiguration.show_tracebacks=False"]
    env = dict(os.environ, NBJOBS_URL=options.url)
    if options.token:
        env["JUPYTER_CONFIG_DIR"] = str(folder / "config")
    return argv, env


def prepare(options: ServeOptions) -> tuple[Path, list[str], dict[str, str]]:
    """Check the options and write the notebook (and token config) to a fresh private folder."""
    check(options)
    if not _has_voila():
        raise ConfigurationError("the standalone dashboard needs Voilà: pip install 'nbjobs[dashboard]'")
    folder = Path(tempfile.mkdtemp(prefix="nbjobs-dashboard-"))  # mode 0700
    (folder / "page").mkdir()
    (folder / "page" / NOTEBOOK).write_text(json.dumps(notebook(options)))
    if options.token:
        (folder / "config").mkdir()
        config = folder / "config" / "voila.json"
        config.touch(mode=0o600)
        config.write_text(json.dumps({"Voila": {"token": options.token}}))
    argv, env = command(options, folder)
    return folder, argv, env


def serve(options: ServeOptions) -> int:
    """Run Voilà until interrupted; return its exit code."""
    folder, argv, env = prepare(options)
    proc = subprocess.Popen(argv, env=env, cwd=folder / "page")
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait(timeout=15)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _has_voila() -> bool:
    import importlib.util

    return importlib.util.find_spec("voila") is not None
