"""Worker threads resolving a job function while its module is still being imported by another
thread must wait for the import, not fail on the half-initialised module (found by benchmarks/scale.py:
the first jobs of a fresh server failed with FunctionNotFoundError)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from nbjobs.payload import resolve_function


def test_concurrent_first_resolution_waits_for_the_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "slow_import_mod.py").write_text(
        "import time\ntime.sleep(0.3)\n\ndef fn():\n    return 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slow_import_mod", raising=False)
    results: list[object] = []
    errors: list[BaseException] = []

    def resolve() -> None:
        try:
            results.append(resolve_function("slow_import_mod:fn")())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=resolve) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == [] and results == [42, 42, 42, 42]
