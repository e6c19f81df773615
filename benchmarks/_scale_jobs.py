"""Jobs for benchmarks/scale.py, in an importable module so servers in other processes find them."""

from __future__ import annotations

import os

import procrastinate


def noop() -> None:
    """The benchmark's job: nothing at all."""


#: Procrastinate, for the side-by-side run (its worker imports this module).
app = procrastinate.App(connector=procrastinate.PsycopgConnector(
    conninfo=os.environ.get("SCALE_PROCRASTINATE_DSN", "postgresql://postgres@127.0.0.1/postgres")))


@app.task(name="noop")
def procrastinate_noop() -> None:
    """The same no-op as a Procrastinate task."""
