"""Pure per-queue rate limits: "60/m" parsed, the sliding window that enforces it, and the quotas
all servers keep together (a shared rate, a shared cap on running jobs).

An API's quota says "at most N requests in any minute"; a sliding window over the last period's
start times says exactly that, where a token bucket refilling one token a second would hold a
burst of 60 to one a second. Starts are counted when the server claims a job (a retry is a start
too). The window is in monotonic seconds taken as an argument, so tests drive it with a clock.
"""

from __future__ import annotations

import math
import operator
import re
from collections import deque
from dataclasses import dataclass

from .errors import ConfigurationError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_UNITS.update({f"{word}{plural}": _UNITS[word[0]]
               for word in ("sec", "second", "min", "minute", "hour", "day") for plural in ("", "s")})
#: The most jobs a rate or a limit counts: a 32-bit database integer.
COUNT_MAX = 2**31 - 1
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")


@dataclass(frozen=True, kw_only=True)
class Rate:
    """At most `count` starts in any `period` seconds."""

    count: int
    period: float

    def __str__(self) -> str:
        for unit in ("d", "h", "m", "s"):
            if self.period == _UNITS[unit]:
                return f"{self.count}/{unit}"
        return f"{self.count}/{self.period:g}s"


def parse_rate(text: object, queue: str = "") -> Rate:
    """ "60/m", "5/s", "1000/h", "10/30s" (10 in any 30 seconds), or a Rate as it is."""
    if isinstance(text, Rate):
        return text
    where = f"rates: queue {queue!r}" if queue else "rate"
    match = _RATE.match(text.lower()) if isinstance(text, str) else None
    unit = _UNITS.get(match.group(3)) if match else None
    if match is None or unit is None:
        raise ConfigurationError(
            f"{where}: {text!r} is not a rate; write N/UNIT with UNIT s, m, h or d, e.g. '60/m' "
            "(or N/30s for N in any 30 seconds)"
        )
    count, period = int(match.group(1)), float(match.group(2) or 1) * unit
    if count < 1 or not math.isfinite(period) or period <= 0:
        raise ConfigurationError(
            f"{where}: {text!r} allows no job; give at least 1 job per period longer than 0 "
            "(to run none, leave the queue out of `queues`)"
        )
    if count > COUNT_MAX:
        raise ConfigurationError(f"{where}: {text!r} is more than {COUNT_MAX:,} jobs a period (a database "
                                 "integer); give a smaller count, or no rate")
    return Rate(count=count, period=period)


@dataclass(frozen=True, kw_only=True)
class QueueQuota:
    """What every server together keeps to for one queue: a rate of starts, a most running, or both."""

    rate: Rate | None = None
    running: int | None = None

    def __str__(self) -> str:
        parts = [str(self.rate)] if self.rate else []
        if self.running is not None:
            parts.append(f"{self.running} running")
        return "at most " + ", ".join(parts)


def check_running_limit(value: object, queue: str) -> int:
    """A shared limit's most running jobs: a whole number of at least 1."""
    try:
        running = None if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        running = None
    if running is None or running < 1:
        raise ConfigurationError(
            f"limit for queue {queue!r}: {value!r} is not a number of jobs; give a whole number of at "
            "least 1 (None removes the limit; to run none, pause_queue)"
        )
    if running > COUNT_MAX:
        raise ConfigurationError(f"limit for queue {queue!r}: {value!r} is more than {COUNT_MAX:,} jobs (a "
                                 "database integer); give a smaller number, or None for no limit")
    return running


class RateWindow:
    """The starts of one queue in the last `rate.period` seconds."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._starts: deque[float] = deque()

    def _expire(self, now: float) -> None:
        starts, horizon = self._starts, now - self.rate.period
        while starts and starts[0] <= horizon:
            starts.popleft()

    def room(self, now: float) -> int:
        """How many jobs may start now."""
        self._expire(now)
        return max(0, self.rate.count - len(self._starts))

    def record(self, now: float, started: int) -> None:
        self._starts.extend([now] * started)

    def next_room(self, now: float) -> float | None:
        """When a job may start again if none may now (monotonic seconds), else None."""
        if self.room(now) > 0:
            return None
        return self._starts[len(self._starts) - self.rate.count] + self.rate.period
