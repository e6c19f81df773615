"""A real IPython shell with `%load_ext nbjobs` on a fresh SQLite file, torn down after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from nbjobs import capture, default


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("NBJOBS_URL", f"sqlite:///{tmp_path / 'kernel.db'}")
    monkeypatch.setenv("NBJOBS_SECRET", "ui-test-secret")
    monkeypatch.setenv("NBJOBS_WORKERS", "2")
    ip = InteractiveShell.instance()
    result = ip.run_cell("%load_ext nbjobs")
    result.raise_error()
    try:
        yield ip
    finally:
        ip.run_cell("%unload_ext nbjobs")
        default.close_default(timeout=1)
        default._settings.clear()
        capture.uninstall()
        for name in [n for n in ip.user_ns if not n.startswith("_") and n not in ip.user_ns_hidden]:
            ip.user_ns.pop(name, None)
