"""Time for nbjobs: nothing reads the wall clock directly, so time-dependent logic is testable.

`SystemClock` is the real one. `ManualClock` only moves when a test calls `advance()` or `set()`,
and its `wait()` returns as soon as the awaited event is set or the manual time passes the deadline.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from typing import Any, Protocol


def utcnow() -> datetime:
    """Aware UTC now (used only by SystemClock and as a default)."""
    return datetime.now(UTC)


def ensure_utc(value: datetime) -> datetime:
    """Return an aware UTC datetime; naive values are taken as UTC (databases may drop the zone)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def user_time(value: object) -> datetime | None:
    """A time a person gave, as aware UTC: a datetime or pandas Timestamp (naive = local time), a
    date (its local midnight) or an ISO string ("2026-12-01 07:00", read by pandas); None for
    anything else. One reading for `schedule(when)` and the `since`/`until` filters, which read a
    string that is a `duration` ("1h") as one before they come here."""
    found: object = value
    if isinstance(value, str):
        import pandas as pd  # loaded by then: the views and the engine use it

        try:
            found = pd.Timestamp(value.strip()).to_pydatetime()
        except (ValueError, OverflowError):
            return None
    if isinstance(found, date) and not isinstance(found, datetime):
        found = datetime.combine(found, dt_time())
    if not isinstance(found, datetime):
        return None
    try:  # pandas reads some text as a time in year 1 ("10 minutes"), with no local offset there
        return ensure_utc(found.astimezone() if found.tzinfo is None else found)
    except (ValueError, OverflowError):
        return None


#: '90m', '1.5h', '2d': the short forms (pandas warns on a lower-case 'd' and reads a bare '10' as ns).
_SHORT_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def duration(text: str) -> timedelta | None:
    """A duration: seconds ('600'), a short form ('90m', '2d'), or what pandas reads ('1h30m',
    '1 day', '00:10:00'); None if the text is none of these."""
    text = text.strip()
    short = _SHORT_DURATION.fullmatch(text.lower())
    try:
        if short:
            return timedelta(**{_UNITS[short[2]]: float(short[1])})
        return timedelta(seconds=float(text))
    except OverflowError:  # beyond datetime's calendar: no duration
        return None
    except ValueError:  # not a number (nan included)
        pass
    import pandas as pd  # loaded by then: the views and the engine use it

    try:
        found = pd.Timedelta(text)
    except (ValueError, OverflowError):
        return None
    return None if pd.isna(found) else found.to_pytimedelta()


def seconds_of(value: Any) -> Any:
    """Seconds from a timedelta or a duration text ('10m', '1h30m', as `schedule` takes them);
    anything else as given, for the caller's check to refuse."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str) and (found := duration(value)) is not None:
        return found.total_seconds()
    return value


class Clock(Protocol):
    """What every loop and policy asks for the time."""

    def now(self) -> datetime:
        """Aware UTC now."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Block until `event` is set (True) or `timeout` seconds of this clock pass (False)."""
        ...

    def wait_until(self, event: threading.Event, deadline: float | None) -> bool:
        """`wait` up to a `monotonic()` time: a deadline taken from one reading of the clock is
        not pushed back by time passing between that reading and the wait."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return utcnow()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return event.wait(timeout)

    def wait_until(self, event: threading.Event, deadline: float | None) -> bool:
        return event.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))


class ManualClock:
    """A clock that tests move by hand; waits end when the event fires or the manual time is reached."""

    _REAL_POLL = 0.005

    def __init__(self, start: datetime | None = None) -> None:
        self._now = ensure_utc(start or datetime(2026, 1, 1, tzinfo=UTC))
        self._mono = 0.0
        self._cond = threading.Condition()

    def now(self) -> datetime:
        with self._cond:
            return self._now

    def monotonic(self) -> float:
        with self._cond:
            return self._mono

    def advance(self, seconds: float | timedelta) -> datetime:
        """Move time forward and wake every waiter whose deadline passed."""
        delta = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        with self._cond:
            self._now += delta
            self._mono += delta.total_seconds()
            self._cond.notify_all()
            return self._now

    def set(self, when: datetime) -> None:
        """Jump to `when` (forward only)."""
        when = ensure_utc(when)
        with self._cond:
            if when < self._now:
                raise ValueError("ManualClock only moves forward")
            self._mono += (when - self._now).total_seconds()
            self._now = when
            self._cond.notify_all()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        with self._cond:
            deadline = None if timeout is None else self._mono + max(0.0, timeout)
        return self.wait_until(event, deadline)

    def wait_until(self, event: threading.Event, deadline: float | None) -> bool:
        while True:
            if event.is_set():
                return True
            with self._cond:
                if deadline is not None and self._mono >= deadline:
                    return event.is_set()
                # Events do not notify our condition, so poll them briefly in real time.
                self._cond.wait(self._REAL_POLL)
