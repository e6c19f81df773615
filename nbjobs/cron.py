"""Cron schedules for recurring jobs: parsing, next fire times across daylight saving, missed runs.

Pure logic on croniter and zoneinfo: no I/O, no threads, no storage; every function takes the time
it reasons about as an argument. Datetimes in and out are aware UTC.

Expressions
    Five fields (``minute hour day-of-month month day-of-week``) or six, where the extra field is
    **seconds and comes first** (``second minute hour …``), as in Quartz, Spring and Hangfire's
    Cronos: ``"*/10 * * * * *"`` fires every 10 seconds. croniter itself puts seconds *last* by
    default; we always pass ``second_at_beginning=True``. Aliases: ``@yearly``/``@annually``,
    ``@monthly``, ``@weekly``, ``@daily``/``@midnight``, ``@hourly``. Day-of-month and day-of-week
    both restricted means either matches (Vixie cron). croniter's random (``R``) and hashed (``H``)
    fields are refused: every server must compute the same fire times.

Daylight saving (the expression is matched against the wall clock of the schedule's time zone)
    An *hourly* schedule is one whose hour field matches every hour (``*``, ``0-23``, ``*/1``); it
    describes an interval of real time, so it keeps its rhythm in real time: wall times that do not
    exist (spring forward) are simply skipped, and wall times that occur twice (fall back) fire
    twice, once per real instant.

    Any other schedule names wall-clock hours and fires **once per matching wall time**:

    - spring forward: a wall time inside the gap fires at the first instant after the jump, i.e.
      ``30 2 * * *`` in Europe/Berlin fires at 03:00 CEST on the last Sunday of March (what Vixie
      cron and Cronos do; 03:30 would drift away from the named hour and could collide with a real
      03:30 fire). Several wall times in one gap collapse into that single fire.
    - fall back: a repeated wall time fires only at its first occurrence (summer time), not again an
      hour later.

    Cronos also repeats schedules whose minute or second field is an interval (e.g. ``*/5 2 * * *``);
    we do not: a schedule that names hour 2 runs through hour 2 once.

Intervals
    ``@every 90m`` (``d``, ``h``, ``m``, ``s``, combined as in ``@every 1h30m``; or ``90m`` alone, or
    a ``timedelta`` given to ``recurring``) fires every so much real time, what cron cannot say (every
    90 minutes, every 7 seconds), as APScheduler's interval trigger and Celery beat's timedelta
    schedules do. The fire times are the Unix epoch plus whole multiples of the interval (``@every
    90m``: 00:00, 01:30, 03:00 … UTC), so every server computes the same ones with nothing stored, as
    cron steps are aligned; daylight saving does not touch them, and a time zone is refused as
    meaningless.

Windows (``start``, ``end``)
    A definition may be bounded, as APScheduler's start and end dates: no fire time before ``start``
    or after ``end`` (both inclusive, aware UTC, stored with the definition). An interval given a
    ``start`` counts from it instead of the epoch (``@every 2h`` from 09:15 fires 09:15, 11:15 …), which
    is what a person giving both means; a cron expression only starts there. Once no fire time is
    left the plan's next fire is None: the definition has ended, and stays listed, with its history.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterBadDateError, CroniterError, croniter

from .clock import ensure_utc
from .errors import InvalidScheduleError
from .model import CRON_MAX, UNFINISHED_STATES, JobState

MisfirePolicy = Literal["once", "skip", "all"]
OverlapPolicy = Literal["allow", "skip"]
MISFIRE_POLICIES: tuple[str, ...] = get_args(MisfirePolicy)
OVERLAP_POLICIES: tuple[str, ...] = get_args(OverlapPolicy)

#: With ``misfire="skip"``, the most recent due fire still runs if it is at most this late: it is
#: "just due", late only by the scheduler's tick (≤ 1 s), database latency or a pause of the process,
#: not missed during downtime.
SKIP_GRACE = timedelta(seconds=15)

#: Missed fire times are counted one by one up to this many; beyond it the count is a lower bound
#: (`FirePlan.missed_capped`), so a week-long outage of a per-second schedule stays cheap.
COUNT_CAP = 1000

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_FIELDS_5 = ("minute", "hour", "day-of-month", "month", "day-of-week")
_FIELDS_6 = ("second", *_FIELDS_5)
_RANGES = {
    "second": "0-59",
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31 or L",
    "month": "1-12 or JAN-DEC",
    "day-of-week": "0-6 (0 = Sunday) or SUN-SAT",
}
_RANDOM_OR_HASHED = re.compile(r"(?<![A-Za-z])[HRhr](?![A-Za-z])")
_ONE_SECOND = timedelta(seconds=1)
_ONE_MICROSECOND = timedelta(microseconds=1)
#: A reference start for validation: any fixed date works, croniter only checks a match exists.
_PROBE_START = datetime(2000, 1, 1)
_EVERY = re.compile(r"@every\s+(.*)", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+)([dhms])")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
#: An interval written alone ('10m', '1h30m', as `schedule` and `timeout` take durations).
_LONE_DURATION = re.compile(r"(?:\d+[dhms])+", re.IGNORECASE)
EVERY_MAX = 366 * 86400  #: the longest interval, in seconds (a year: longer ones are a date)
#: Where interval fire times are counted from.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, kw_only=True)
class CronSchedule:
    """A validated cron expression in a time zone; build it with `parse_schedule`."""

    expr: str  #: the expression as given (whitespace normalised; aliases kept)
    tz: str  #: IANA time zone name
    fields: str  #: the five or six fields croniter is given (aliases expanded)
    has_seconds: bool  #: six fields, the first being seconds
    hourly: bool  #: the hour field matches every hour (DST rules differ, see the module docstring)
    zone: ZoneInfo = field(repr=False, compare=False)
    every: int | None = None  #: `@every …`: the interval in seconds (then `fields` is unused)
    start: datetime | None = None  #: no fire time before it (an interval counts from it)
    end: datetime | None = None  #: no fire time after it

    @property
    def origin(self) -> datetime:
        """Where an interval's fire times are counted from."""
        return self.start if self.start is not None else _EPOCH

    def __str__(self) -> str:
        return self.expr if self.tz == "UTC" else f"{self.expr} ({self.tz})"


@dataclass(frozen=True, kw_only=True)
class FirePlan:
    """What to do about the fire times that are due now (`due_fires`)."""

    fires: tuple[datetime, ...]  #: fire times to create one job each for, oldest first
    #: The next fire time to store (strictly after now, or the untouched plan); None once the
    #: schedule's `end` leaves none.
    next_fire: datetime | None
    due: int  #: fire times that were due (planned one included); a lower bound if `missed_capped`
    missed: int  #: due fire times that get no job of their own (folded into one, or skipped)
    missed_capped: bool = False  #: counting stopped at `COUNT_CAP`; `due` and `missed` are at least


# -- parsing ----------------------------------------------------------------------------------------
def parse_zone(tz: str) -> ZoneInfo:
    """The zoneinfo zone for an IANA name; an unknown name raises InvalidScheduleError."""
    name = (tz or "").strip()
    try:
        if not name:
            raise ValueError("empty")
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    known = _zone_names()
    if name.lower() in known:  # 'europe/berlin': the zone, under its own spelling
        return ZoneInfo(known[name.lower()])
    close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.75)
    hint = f" (did you mean {known[close[0]]!r}?)" if close else ""
    raise InvalidScheduleError(
        f"unknown time zone {tz!r}{hint}; use an IANA name such as 'UTC', 'Europe/Berlin' or "
        "'America/New_York' (see zoneinfo.available_timezones())"
    )


@functools.cache
def _zone_names() -> dict[str, str]:
    """Every zone this machine knows, by its lower-case name (read once: it lists files)."""
    return {name.lower(): name for name in available_timezones()}


def parse_schedule(
    expr: str, tz: str = "UTC", *, start: datetime | None = None, end: datetime | None = None
) -> CronSchedule:
    """Validate a cron expression (5 fields, 6 with leading seconds, or an alias) in time zone `tz`,
    fired only between `start` and `end` when they are given.

    Raises InvalidScheduleError naming the bad field or the unknown zone, and how to write it.
    """
    schedule = _parse_expression(expr, tz)
    if start is None and end is None:
        return schedule
    start = None if start is None else ensure_utc(start)
    end = None if end is None else ensure_utc(end)
    check_window(start, end)
    return replace(schedule, start=start, end=end)


def check_window(start: datetime | None, end: datetime | None) -> None:
    """Refuse an end before the start."""
    if start is not None and end is not None and end < start:
        raise InvalidScheduleError(
            f"end {end.isoformat()} is before start {start.isoformat()}; give an end after the start"
        )


def _parse_expression(expr: str, tz: str) -> CronSchedule:
    if not isinstance(expr, str) or not expr.strip():
        raise InvalidScheduleError(
            f"empty cron expression {expr!r}; give five fields like '0 9 * * MON-FRI', six with "
            "leading seconds like '*/10 * * * * *', or an alias such as '@daily'"
        )
    zone = parse_zone(tz)
    text = " ".join(expr.split())
    if _LONE_DURATION.fullmatch(text):  # '10m', '1h30m': no cron expression has one field
        text = f"@every {text}"
    every = _every_seconds(text)
    if every is not None:
        if zone.key != "UTC":
            raise InvalidScheduleError(
                f"{text!r} is an interval of real time, counted from 1970-01-01 00:00 UTC (or the "
                f"start); a time zone "
                f"({zone.key}) would change nothing: leave tz out, or write a cron expression for "
                "wall-clock times"
            )
        return CronSchedule(expr=format_every(every), tz="UTC", fields="", has_seconds=True, hourly=True,
                            zone=zone, every=every)
    if len(text) > CRON_MAX:
        raise InvalidScheduleError(
            f"cron expression {text[:40]!r}… is {len(text)} characters; use at most {CRON_MAX}: write "
            "ranges (1-5) and steps (*/10) instead of long lists"
        )
    if text.startswith("@"):
        fields = ALIASES.get(text.lower())
        if fields is None:
            raise InvalidScheduleError(
                f"unknown cron alias {text!r}; use one of {', '.join(ALIASES)}, an interval such as "
                "'@every 90m', or write the fields"
            )
    else:
        fields = text
    parts = fields.split(" ")
    if len(parts) not in (5, 6):
        raise InvalidScheduleError(
            f"cron expression {text!r} has {len(parts)} fields; use 5 (minute hour day-of-month "
            "month day-of-week) or 6 with seconds first (second minute hour day-of-month month "
            "day-of-week), or an interval such as '10m'"
        )
    has_seconds = len(parts) == 6
    names = _FIELDS_6 if has_seconds else _FIELDS_5
    for name, part in zip(names, parts, strict=True):
        if _RANDOM_OR_HASHED.search(part):
            raise InvalidScheduleError(
                f"{name} field {part!r} of cron expression {text!r} uses a random or hashed value "
                "(R/H), which would fire at different times on different servers; write a fixed value"
            )
    try:
        probe = croniter(fields, _PROBE_START, second_at_beginning=has_seconds)
    except CroniterError:
        raise _field_error(text, parts, names) from None
    try:
        probe.get_next(datetime)
    except CroniterBadDateError:
        raise InvalidScheduleError(
            f"cron expression {text!r} never fires (no date matches, e.g. 30 February); check the "
            "day-of-month and month fields"
        ) from None
    hour_values = probe.expanded[1]  # croniter keeps minute, hour, … first and moves seconds last
    hourly = hour_values == ["*"] or len(set(hour_values)) == 24
    return CronSchedule(
        expr=text, tz=zone.key, fields=fields, has_seconds=has_seconds, hourly=hourly, zone=zone
    )


def _every_seconds(text: str) -> int | None:
    """The interval of an `@every …` expression in seconds; None for any other expression."""
    match = _EVERY.fullmatch(text)
    if match is None:
        return None
    spec = match.group(1).replace(" ", "").lower()
    parts = _DURATION_PART.findall(spec)
    if not parts or "".join(n + unit for n, unit in parts) != spec:
        raise InvalidScheduleError(
            f"interval {match.group(1)!r} in {text!r} is not a duration; write whole numbers with units "
            "d, h, m or s, e.g. '@every 90m', '@every 1h30m' or '@every 10s'"
        )
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in parts)
    if not 1 <= seconds <= EVERY_MAX:
        raise InvalidScheduleError(
            f"interval of {text!r} is {seconds} seconds; use 1 second to 366 days (for a fixed date, "
            "schedule() a single job)"
        )
    return seconds


def format_every(seconds: int) -> str:
    """`@every 1h30m` for 5400: the canonical text of an interval (largest units first)."""
    out, rest = [], seconds
    for unit, size in _UNIT_SECONDS.items():
        count, rest = divmod(rest, size)
        if count:
            out.append(f"{count}{unit}")
    return "@every " + "".join(out)


def every_from_timedelta(interval: timedelta) -> str:
    """A timedelta given as a schedule, as `@every …`; whole seconds only."""
    seconds = interval.total_seconds()
    if seconds != int(seconds) or not 1 <= seconds <= EVERY_MAX:
        raise InvalidScheduleError(
            f"an interval must be a whole number of seconds from 1 second to 366 days, got {interval!r}"
        )
    return format_every(int(seconds))


def _field_error(text: str, parts: list[str], names: tuple[str, ...]) -> InvalidScheduleError:
    """Find which field croniter refuses by trying each one alone among wildcards."""
    for index, (name, part) in enumerate(zip(names, parts, strict=True)):
        alone = ["*"] * len(parts)
        alone[index] = part
        try:
            croniter(" ".join(alone), _PROBE_START, second_at_beginning=len(parts) == 6)
        except CroniterError as exc:
            return InvalidScheduleError(
                f"{name} field {part!r} of cron expression {text!r} is not valid ({exc}); allowed: "
                f"{_RANGES[name]}, with *, lists (a,b), ranges (a-b) and steps (*/n)"
            )
    return InvalidScheduleError(
        f"cron expression {text!r} is not valid; check that its fields fit together"
    )


# -- wall time to instants ----------------------------------------------------------------------------
def _local(schedule: CronSchedule, instant: datetime) -> datetime:
    """Naive wall time of `instant` in the schedule's zone, floored to the second."""
    return instant.astimezone(schedule.zone).replace(tzinfo=None, microsecond=0)


def _fold_span(schedule: CronSchedule, naive: datetime) -> timedelta:
    """How long the wall clock repeats around `naive` (zero unless `naive` occurs twice)."""
    first = naive.replace(tzinfo=schedule.zone, fold=0).utcoffset()
    second = naive.replace(tzinfo=schedule.zone, fold=1).utcoffset()
    if first is None or second is None or first <= second:
        return timedelta(0)
    return first - second


def _transition(zone: ZoneInfo, lo: datetime, hi: datetime) -> datetime:
    """The first UTC instant in (lo, hi] that has hi's offset: where a gap ends (whole seconds)."""
    target = hi.astimezone(zone).utcoffset()
    low, high = int(lo.timestamp()), int(hi.timestamp())
    while high - low > 1:
        mid = (low + high) // 2
        if datetime.fromtimestamp(mid, UTC).astimezone(zone).utcoffset() == target:
            high = mid
        else:
            low = mid
    return datetime.fromtimestamp(high, UTC)


def _instants(schedule: CronSchedule, naive: datetime) -> tuple[tuple[datetime, ...], datetime | None]:
    """The UTC instants a matching wall time fires at, and the end of its gap if it does not exist.

    Ordinary time: one instant. Repeated time: the first, plus the second for hourly schedules.
    Missing time: the instant the gap ends for other schedules, none for hourly ones.
    """
    zone = schedule.zone
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return (first,), None
    if first.astimezone(zone).replace(tzinfo=None) == naive:  # exists twice: fold=0 is the earlier
        return ((first, second) if schedule.hourly else (first,)), None
    # Missing: fold=1 applies the new offset (before the jump), fold=0 the old one (after it).
    gap_end = _transition(zone, second, first)
    return (() if schedule.hourly else (gap_end,)), gap_end


def _cron(schedule: CronSchedule, start: datetime) -> croniter:
    return croniter(schedule.fields, start, second_at_beginning=schedule.has_seconds)


# -- fire times ----------------------------------------------------------------------------------------
def iter_fires(schedule: CronSchedule, after: datetime) -> Iterator[datetime]:
    """Every fire time strictly after `after`, ascending, each real instant once (endless unless
    the schedule has an `end`)."""
    after = ensure_utc(after)
    if schedule.start is not None and after < schedule.start:
        after = schedule.start - _ONE_MICROSECOND  # a fire time at the start itself is one
    if schedule.end is None:
        yield from _unbounded_fires(schedule, after)
        return
    for instant in _unbounded_fires(schedule, after):
        if instant > schedule.end:
            return
        yield instant


def _unbounded_fires(schedule: CronSchedule, after: datetime) -> Iterator[datetime]:
    if schedule.every is not None:
        step = timedelta(seconds=schedule.every)
        instant = schedule.origin + ((after - schedule.origin) // step + 1) * step
        while True:
            yield instant
            instant += step
    zone = schedule.zone
    local = after.astimezone(zone)
    start = local.replace(tzinfo=None, microsecond=0)
    # Wall time from which the second pass of a repeated hour is still owed (hourly schedules).
    owed: datetime | None = None
    span = _fold_span(schedule, start)
    if span and local.fold == 1:
        # `after` is in the second pass: every first-pass instant is past, so resume the wall
        # clock after the repeated hour and owe only the rest of the second pass.
        region_start = _local(schedule, _transition(zone, after - span, after))
        owed = start if schedule.hourly else None
        start = region_start + span
    elif span and schedule.hourly:
        # `after` is in the first pass: the whole second pass is still to come.
        owed = _local(schedule, _transition(zone, after, after + span))
    it = _cron(schedule, start - _ONE_SECOND)
    last = after
    while True:
        try:
            naive: datetime | None = it.get_next(datetime)
        except CroniterBadDateError:
            naive = None
        found, gap_end = _instants(schedule, naive) if naive is not None else ((), None)
        if len(found) == 2:
            # First pass now; the second pass follows once the wall clock leaves the repeated hour.
            if owed is None:
                owed = _local(schedule, _transition(zone, found[0], found[1]))
        elif owed is not None:
            for instant in _second_pass(schedule, owed):
                if instant > last:
                    last = instant
                    yield instant
            owed = None
        if naive is None:
            return
        if found and found[0] > last:
            last = found[0]
            yield last
        if gap_end is not None:
            # Past the gap: an hourly schedule skips its missing wall times, any other has just
            # fired once for all of them at the gap's end.
            it = _cron(schedule, _local(schedule, gap_end) - (_ONE_SECOND if not found else timedelta(0)))


def _second_pass(schedule: CronSchedule, start: datetime) -> Iterator[datetime]:
    """Second-pass instants of the repeated wall times from `start` to the end of the repeat."""
    it = _cron(schedule, start - _ONE_SECOND)
    while True:
        try:
            found, _ = _instants(schedule, it.get_next(datetime))
        except CroniterBadDateError:
            return
        if len(found) != 2:
            return
        yield found[1]


def next_fire(schedule: CronSchedule, after: datetime) -> datetime:
    """The first fire time strictly after `after` (aware UTC in and out)."""
    found = upcoming_fire(schedule, after)
    if found is None:
        raise InvalidScheduleError(
            f"cron expression {schedule.expr!r} never fires after {after.isoformat()}"
        )
    return found


def upcoming_fire(schedule: CronSchedule, after: datetime) -> datetime | None:
    """The first fire time strictly after `after`, or None when the schedule's end leaves none."""
    for instant in iter_fires(schedule, after):
        return instant
    return None


def prev_fire(schedule: CronSchedule, at: datetime) -> datetime | None:
    """The latest fire time at or before `at`, or None if there is none (within croniter's range, or
    the schedule's window)."""
    at = ensure_utc(at)
    if schedule.end is not None:
        at = min(at, schedule.end)
    found = _unbounded_prev(schedule, at)
    if found is not None and schedule.start is not None and found < schedule.start:
        return None
    return found


def _unbounded_prev(schedule: CronSchedule, at: datetime) -> datetime | None:
    if schedule.every is not None:
        step = timedelta(seconds=schedule.every)
        return schedule.origin + ((at - schedule.origin) // step) * step
    zone = schedule.zone
    local = at.astimezone(zone)
    start = local.replace(tzinfo=None, microsecond=0)
    span = _fold_span(schedule, start)
    second_pass = bool(span) and local.fold == 1
    if second_pass:
        # Every first-pass wall time of the repeated hour, even one later than at's, is past.
        start = _local(schedule, _transition(zone, at - span, at)) + span - _ONE_SECOND
    it = _cron(schedule, start + _ONE_SECOND)
    best: datetime | None = None
    while True:
        try:
            naive = it.get_prev(datetime)
        except CroniterBadDateError:
            return best
        found, gap_end = _instants(schedule, naive)
        if not found:
            if gap_end is not None:  # hourly schedule in a gap: jump to where the gap starts
                it = _cron(schedule, _local(schedule, gap_end - _ONE_SECOND) + _ONE_SECOND)
            continue
        for instant in found:
            if instant <= at and (best is None or instant > best):
                best = instant
        if found[-1] <= at:
            return best  # every earlier wall time fires earlier still
        if found[0] <= at and not second_pass:
            return best  # the repeats of earlier wall times are after `at` too


# -- missed runs and overlap ---------------------------------------------------------------------------
def validate_policies(misfire: str, limit: int, overlap: str, grace: timedelta | None = None) -> None:
    """Check a recurring definition's policies; raise InvalidScheduleError saying what is allowed."""
    if grace is not None and grace <= timedelta(0):
        raise InvalidScheduleError(
            f"misfire_grace must be a positive duration such as '2h', got {grace.total_seconds()} s; "
            "leave it out to run late fire times however late"
        )
    if misfire not in MISFIRE_POLICIES:
        raise InvalidScheduleError(
            f"unknown misfire policy {misfire!r}; use 'once' (one run for all missed fire times), "
            "'skip' (none, wait for the next) or 'all' (one per missed fire time, up to misfire_limit)"
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidScheduleError(f"misfire_limit must be a whole number of at least 1, got {limit!r}")
    if overlap not in OVERLAP_POLICIES:
        raise InvalidScheduleError(
            f"unknown overlap policy {overlap!r}; use 'allow' (runs may overlap) or 'skip' (a fire is "
            "skipped while the previous run is unfinished)"
        )


def due_fires(
    schedule: CronSchedule,
    last_planned: datetime,
    now: datetime,
    misfire: str = "once",
    limit: int = 100,
    *,
    grace: timedelta | None = None,
) -> FirePlan:
    """Decide which due fire times get a job now, and the next fire time to store.

    `last_planned` is the stored next fire time: the oldest fire time not handled yet. Every fire
    time from it up to `now` is due:

    - ``once``: one job, standing for the latest due fire time; the others are counted as missed.
    - ``skip``: one job for the latest due fire time only if it is at most `grace` old (default
      `SKIP_GRACE`: just due, not missed while no scheduler ran); every other due fire time is missed.
    - ``all``: one job per due fire time, the latest `limit` of them; older ones are missed.

    With `grace` (APScheduler's misfire grace time), a fire time more than that late gets no job
    under any policy: ``once`` then runs the latest only if it is that recent, ``all`` those that are.
    """
    validate_policies(misfire, limit, "allow", grace)
    last_planned, now = ensure_utc(last_planned), ensure_utc(now)
    if last_planned > now:
        return FirePlan(fires=(), next_fire=last_planned, due=0, missed=0)
    # One forward walk from the plan counts what is due, keeps the latest `limit` fire times and
    # finds the next one; only after a long outage (COUNT_CAP) do we jump back from `now` instead.
    recent: deque[datetime] = deque([last_planned], maxlen=limit)
    due, capped = 1, False
    upcoming: datetime | None = None
    for instant in iter_fires(schedule, last_planned):
        if instant > now:
            upcoming = instant
            break
        if due >= COUNT_CAP:
            capped = True
            break
        due += 1
        recent.append(instant)
    if capped:
        upcoming = upcoming_fire(schedule, now)
    latest = recent[-1]
    if capped:
        latest = max(latest, prev_fire(schedule, now) or latest)
        recent = deque([latest], maxlen=limit)
        cursor = prev_fire(schedule, latest - timedelta(microseconds=1))
        while cursor is not None and cursor > last_planned and len(recent) < limit:
            recent.appendleft(cursor)
            cursor = prev_fire(schedule, cursor - timedelta(microseconds=1))
        if len(recent) < limit:
            recent.appendleft(last_planned)
    fires: tuple[datetime, ...]
    if misfire == "once":
        fires = (latest,)
    elif misfire == "skip":
        fires = (latest,) if now - latest <= (SKIP_GRACE if grace is None else grace) else ()
    else:
        fires = tuple(recent)
    if grace is not None:
        fires = tuple(f for f in fires if now - f <= grace)
    due = max(due, len(fires))
    return FirePlan(
        fires=fires, next_fire=upcoming, due=due, missed=due - len(fires), missed_capped=capped
    )


def runs_allowed(overlap: str, planned: int, previous: JobState | None) -> int:
    """How many of `planned` new runs (the latest ones) may start, given the previous run's state.

    ``allow``: all of them. ``skip``: none while the previous run is unfinished (enqueued, running,
    waiting for a retry…), else at most one, since runs of one fire would overlap each other.
    """
    if overlap == "allow" or planned <= 0:
        return max(planned, 0)
    if previous is not None and previous in UNFINISHED_STATES:
        return 0
    return 1
