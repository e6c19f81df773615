"""Values written on the command line: durations ('90m'), times or delays (`--at`), function names.

Pure functions (no click, no database): `cli.py` shows their ValueError as a usage error.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd

from .clock import duration, seconds_of


def ago(text: str | None) -> str | timedelta | None:
    """`--since` as a duration ago when it reads as one ('90m', '1h'), else the time as given (the
    engine reads and checks it)."""
    if text is None:
        return None
    found = duration(text)
    return text if found is None else found


def seconds(text: str) -> float:
    """`--timeout` in seconds: '600', '10m', '1h30m' (the engine checks the range)."""
    found = seconds_of(text)
    if isinstance(found, str):  # read as no duration: given back as it came
        raise ValueError(f"{text!r} is not a duration; write seconds (600) or a duration ('10m', '2h')")
    return float(found)


def when(text: str) -> timedelta | datetime:
    """`--at` as a delay when it reads as one ('10m', or seconds), else a time (naive = local, as
    `schedule` reads it)."""
    delay = duration(text)
    if delay is not None:
        return delay
    try:
        return pd.Timestamp(text).to_pydatetime()
    except ValueError:
        raise ValueError(f"{text!r} is neither a time ('2026-11-29 09:00') nor a delay ('10m', '2h')"
                         ) from None


def function_ref(text: str) -> str:
    """`module:function`, also written `module.function`."""
    if ":" in text:
        return text
    module, dot, attribute = text.rpartition(".")
    if not dot or not module or not attribute:
        raise ValueError(f"write the function as module:function (e.g. reports:build), not {text!r}")
    return f"{module}:{attribute}"
