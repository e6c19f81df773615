"""Run an example notebook from notebooks/ the way a user would: a fresh kernel (nbclient), in a copy.

The notebook and the folders it uses are copied into a temporary folder, so its runs, databases and
saved outputs never land in the repository; the kernel gets its database and nbjobs home through its
environment.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient
from nbformat import NotebookNode

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def execute(name: str, workdir: Path, env: Mapping[str, str], *, folders: tuple[str, ...] = (),
            timeout: float = 180) -> NotebookNode:
    """Execute notebooks/<name> in a copy under `workdir` with `env` added to the kernel's environment."""
    for folder in folders:
        shutil.copytree(NOTEBOOKS / folder, workdir / folder, ignore=shutil.ignore_patterns("nbjobs-runs"))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=int(timeout), kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env={**os.environ, **env})
    nbformat.write(nb, workdir / name)  # kept with the test's files for a look after a failure
    return nb


def text(nb: NotebookNode) -> str:
    """Everything the notebook's cells printed or displayed as text, in order."""
    parts: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)
