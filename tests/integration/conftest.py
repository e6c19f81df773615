"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import nbjobs


@pytest.fixture
def nb(tmp_path: Path) -> Iterator[nbjobs.Engine]:
    """An engine on a SQLite file with a server in this process (most tests need one backend only)."""
    eng = nbjobs.connect(f"sqlite:///{tmp_path / 'jobs.db'}", secret="test-secret")
    eng.start_server(workers=2, scheduler_interval=0.05)
    yield eng
    eng.close()
