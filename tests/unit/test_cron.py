"""Pure tests of cron parsing, fire times across daylight saving, and the missed-run policies."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from nbjobs.cron import (
    COUNT_CAP,
    SKIP_GRACE,
    CronSchedule,
    due_fires,
    every_from_timedelta,
    iter_fires,
    next_fire,
    parse_schedule,
    prev_fire,
    runs_allowed,
    upcoming_fire,
    validate_policies,
)
from nbjobs.errors import ConfigurationError, InvalidScheduleError
from nbjobs.model import CRON_MAX, JobState


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def fires_between(schedule: CronSchedule, start: datetime, end: datetime) -> list[datetime]:
    out = []
    for instant in iter_fires(schedule, start):
        if instant > end:
            return out
        out.append(instant)
    raise AssertionError("unreachable")


def local_days(schedule: CronSchedule, fires: list[datetime]) -> Counter[date]:
    return Counter(f.astimezone(schedule.zone).date() for f in fires)


# -- parsing ------------------------------------------------------------------------------------------
def test_five_fields_default_utc() -> None:
    s = parse_schedule("0 9 * * MON-FRI")
    assert (s.tz, s.has_seconds, s.hourly, s.fields) == ("UTC", False, False, "0 9 * * MON-FRI")
    # Friday 10:00 -> Monday 09:00
    assert next_fire(s, utc(2026, 1, 2, 10)) == utc(2026, 1, 5, 9)


def test_six_fields_put_seconds_first() -> None:
    s = parse_schedule("*/10 * * * * *")
    assert s.has_seconds and s.hourly
    assert fires_between(s, utc(2026, 1, 1, 12), utc(2026, 1, 1, 12, 0, 40)) == [
        utc(2026, 1, 1, 12, 0, 10), utc(2026, 1, 1, 12, 0, 20),
        utc(2026, 1, 1, 12, 0, 30), utc(2026, 1, 1, 12, 0, 40),
    ]
    # second 15, minute 30, hour 9 (croniter's own default would read the last field as seconds)
    assert next_fire(parse_schedule("15 30 9 * * *"), utc(2026, 1, 1)) == utc(2026, 1, 1, 9, 30, 15)


@pytest.mark.parametrize(
    ("alias", "after", "expected"),
    [
        ("@hourly", utc(2026, 5, 5, 10, 30), utc(2026, 5, 5, 11)),
        ("@daily", utc(2026, 5, 5, 10, 30), utc(2026, 5, 6)),
        ("@midnight", utc(2026, 5, 5, 10, 30), utc(2026, 5, 6)),
        ("@weekly", utc(2026, 5, 5, 10, 30), utc(2026, 5, 10)),  # next Sunday
        ("@monthly", utc(2026, 5, 5, 10, 30), utc(2026, 6, 1)),
        ("@yearly", utc(2026, 5, 5, 10, 30), utc(2027, 1, 1)),
        ("@annually", utc(2026, 5, 5, 10, 30), utc(2027, 1, 1)),
        ("@DAILY", utc(2026, 5, 5, 10, 30), utc(2026, 5, 6)),
    ],
)
def test_aliases(alias: str, after: datetime, expected: datetime) -> None:
    s = parse_schedule(alias)
    assert s.expr == alias
    assert next_fire(s, after) == expected


def test_whitespace_is_normalised_and_str_names_the_zone() -> None:
    s = parse_schedule("  0   9 * *  1 ", "Europe/Berlin")
    assert s.expr == "0 9 * * 1"
    assert str(s) == "0 9 * * 1 (Europe/Berlin)"
    assert str(parse_schedule("@daily")) == "@daily"
    assert s == parse_schedule("0 9 * * 1", "Europe/Berlin")


@pytest.mark.parametrize(
    ("expr", "named"),
    [
        ("* * * *", "has 4 fields"),
        ("* * * * * * *", "has 7 fields"),
        ("61 * * * *", "minute field '61'"),
        ("0 24 * * *", "hour field '24'"),
        ("0 0 32 * *", "day-of-month field '32'"),
        ("0 0 * 13 *", "month field '13'"),
        ("0 9 * * MONX", "day-of-week field 'MONX'"),
        ("60 * * * * *", "second field '60'"),
        ("0 61 * * * *", "minute field '61'"),
        ("@fortnightly", "unknown cron alias '@fortnightly'"),
        ("", "empty cron expression"),
        ("   ", "empty cron expression"),
        ("R * * * *", "minute field 'R'"),
        ("0 H * * *", "hour field 'H'"),
        ("0 0 30 2 *", "never fires"),
    ],
)
def test_invalid_expressions_name_the_bad_part(expr: str, named: str) -> None:
    with pytest.raises(InvalidScheduleError) as info:
        parse_schedule(expr)
    assert named in str(info.value)


def test_error_message_says_how_to_fix() -> None:
    with pytest.raises(InvalidScheduleError, match=r"allowed: 0-59"):
        parse_schedule("61 * * * *")
    with pytest.raises(InvalidScheduleError, match=r"use 5 \(minute hour"):
        parse_schedule("* * *")


def test_an_expression_longer_than_its_column_is_refused_with_the_fix() -> None:
    every_second_minute = ",".join(str(m) for m in range(0, 60, 2))
    longest = f"{every_second_minute} " + ",".join(str(h) for h in range(24)) + " * * *"
    assert len(longest) <= CRON_MAX
    assert parse_schedule(longest).expr == longest  # lists up to the width are fine
    too_long = f"{','.join(str(s) for s in range(60))} {','.join(str(m) for m in range(60))} * * * *"
    assert len(too_long) > CRON_MAX
    with pytest.raises(InvalidScheduleError, match=rf"at most {CRON_MAX}: write ranges"):
        parse_schedule(too_long)


def test_month_and_day_names_are_not_mistaken_for_random_fields() -> None:
    s = parse_schedule("0 9 * MAR,APR THU")
    assert next_fire(s, utc(2026, 3, 1)) == utc(2026, 3, 5, 9)


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "", "Europe/", "../etc/passwd", "CEST"])
def test_unknown_time_zone(tz: str) -> None:
    with pytest.raises(InvalidScheduleError, match=r"unknown time zone .*IANA name"):
        parse_schedule("0 9 * * *", tz)


def test_a_zone_is_found_in_any_case_and_a_near_miss_is_named() -> None:
    assert parse_schedule("0 9 * * *", "europe/berlin").tz == "Europe/Berlin"  # stored as IANA spells it
    assert parse_schedule("0 9 * * *", "utc").tz == "UTC"
    near_miss = r"'America/NewYork' \(did you mean 'America/New_York'\?\)"
    with pytest.raises(InvalidScheduleError, match=near_miss):
        parse_schedule("0 9 * * *", "America/NewYork")


def test_schedule_errors_are_configuration_errors() -> None:
    assert issubclass(InvalidScheduleError, ConfigurationError)
    assert issubclass(InvalidScheduleError, ValueError)


@pytest.mark.parametrize(
    ("expr", "hourly"),
    [
        ("*/15 * * * *", True), ("0 * * * *", True), ("5 0-23 * * *", True), ("0 */1 * * *", True),
        ("*/10 * * * * *", True), ("@hourly", True), ("30 2 * * *", False), ("*/5 2 * * *", False),
        ("0 1-3 * * *", False), ("0 */2 * * *", False), ("@daily", False),
    ],
)
def test_hourly_flag(expr: str, hourly: bool) -> None:
    assert parse_schedule(expr).hourly is hourly


# -- next and previous fire ---------------------------------------------------------------------------
def test_next_fire_is_strictly_after_and_utc() -> None:
    s = parse_schedule("*/15 * * * *", "Asia/Tokyo")
    assert next_fire(s, utc(2026, 1, 1, 0, 15)) == utc(2026, 1, 1, 0, 30)
    assert next_fire(s, utc(2026, 1, 1, 0, 14, 59, 999999)) == utc(2026, 1, 1, 0, 15)
    result = next_fire(s, datetime(2026, 1, 1, 9, 15, tzinfo=ZoneInfo("Asia/Tokyo")))
    assert result == utc(2026, 1, 1, 0, 30) and result.tzinfo is UTC


def test_naive_datetimes_are_taken_as_utc() -> None:
    s = parse_schedule("0 12 * * *")
    assert next_fire(s, datetime(2026, 1, 1, 11)) == utc(2026, 1, 1, 12)
    assert prev_fire(s, datetime(2026, 1, 1, 13)) == utc(2026, 1, 1, 12)


def test_local_time_follows_the_zone_offset() -> None:
    s = parse_schedule("0 9 * * *", "Europe/Berlin")
    assert next_fire(s, utc(2026, 1, 10)) == utc(2026, 1, 10, 8)  # CET, UTC+1
    assert next_fire(s, utc(2026, 7, 10)) == utc(2026, 7, 10, 7)  # CEST, UTC+2


def test_prev_fire() -> None:
    s = parse_schedule("*/15 * * * *")
    assert prev_fire(s, utc(2026, 1, 1, 0, 15)) == utc(2026, 1, 1, 0, 15)
    assert prev_fire(s, utc(2026, 1, 1, 0, 14, 59)) == utc(2026, 1, 1, 0, 0)
    assert prev_fire(parse_schedule("0 9 * * MON-FRI"), utc(2026, 1, 5, 8)) == utc(2026, 1, 2, 9)


# Spring forward and fall back, 2026: Berlin 03-29 02:00->03:00 and 10-25 03:00->02:00;
# New York 03-08 02:00->03:00 and 11-01 02:00->01:00.
DST_DAYS = [
    ("Europe/Berlin", date(2026, 3, 29), date(2026, 10, 25)),
    ("America/New_York", date(2026, 3, 8), date(2026, 11, 1)),
]


@pytest.mark.parametrize(("tz", "spring", "autumn"), DST_DAYS)
def test_daily_job_in_the_gap_fires_once_at_the_end_of_the_gap(tz: str, spring: date, autumn: date) -> None:
    s = parse_schedule("30 2 * * *", tz)
    fires = fires_between(s, utc(2026, 3, 1), utc(2026, 4, 15))
    per_day = local_days(s, fires)
    assert set(per_day.values()) == {1}
    assert len(per_day) == 45  # every local day from 03-01 to 04-14, the DST day included
    on_the_day = [f for f in fires if f.astimezone(s.zone).date() == spring]
    # 02:30 does not exist: it fires once, when the clock jumps (03:00 summer time)
    assert [f.astimezone(s.zone).strftime("%H:%M %Z") for f in on_the_day] in (["03:00 CEST"], ["03:00 EDT"])
    # the days around keep 02:30
    day_before = [f for f in fires if f.astimezone(s.zone).date() == spring - timedelta(days=1)]
    assert day_before[0].astimezone(s.zone).strftime("%H:%M") == "02:30"


@pytest.mark.parametrize(("tz", "spring", "autumn"), DST_DAYS)
def test_repeated_wall_time_fires_once_on_fall_back(tz: str, spring: date, autumn: date) -> None:
    zone = ZoneInfo(tz)
    # 02:30 is repeated in Berlin, 01:30 in New York
    expr = "30 2 * * *" if tz == "Europe/Berlin" else "30 1 * * *"
    s = parse_schedule(expr, tz)
    fires = fires_between(s, utc(2026, 10, 1), utc(2026, 11, 30))
    assert set(local_days(s, fires).values()) == {1}
    on_the_day = [f for f in fires if f.astimezone(zone).date() == autumn]
    assert len(on_the_day) == 1
    local = on_the_day[0].astimezone(zone)
    assert (local.hour, local.minute) == ((2, 30) if tz == "Europe/Berlin" else (1, 30))
    assert local.fold == 0 and local.dst()  # the first occurrence, still summer time


def test_explicit_dst_instants() -> None:
    berlin = parse_schedule("30 2 * * *", "Europe/Berlin")
    assert next_fire(berlin, utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1)  # 03:00 CEST
    assert next_fire(berlin, utc(2026, 3, 29, 1)) == utc(2026, 3, 30, 0, 30)  # 02:30 CEST
    assert next_fire(berlin, utc(2026, 10, 24, 12)) == utc(2026, 10, 25, 0, 30)  # 02:30 CEST
    assert next_fire(berlin, utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 26, 1, 30)  # not 02:30 CET
    ny = parse_schedule("30 2 * * *", "America/New_York")
    assert next_fire(ny, utc(2026, 3, 7, 12)) == utc(2026, 3, 8, 7)  # 03:00 EDT
    assert next_fire(ny, utc(2026, 10, 31, 12)) == utc(2026, 11, 1, 7, 30)  # 02:30 EST, once
    ny1 = parse_schedule("30 1 * * *", "America/New_York")
    assert next_fire(ny1, utc(2026, 10, 31, 12)) == utc(2026, 11, 1, 5, 30)  # 01:30 EDT
    assert next_fire(ny1, utc(2026, 11, 1, 5, 30)) == utc(2026, 11, 2, 6, 30)  # not 01:30 EST


@pytest.mark.parametrize(("tz", "spring", "autumn"), DST_DAYS)
def test_hourly_schedules_keep_real_time_rhythm(tz: str, spring: date, autumn: date) -> None:
    zone = ZoneInfo(tz)
    s = parse_schedule("*/15 * * * *", tz)
    for day, hours in ((spring, 23), (autumn, 25)):
        start = datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)
        end = (datetime(day.year, day.month, day.day, tzinfo=zone) + timedelta(days=1)).astimezone(UTC)
        fires = fires_between(s, start - timedelta(seconds=1), end - timedelta(seconds=1))
        assert len(fires) == hours * 4
        assert {b - a for a, b in pairwise(fires)} == {timedelta(minutes=15)}
    hourly = parse_schedule("0 * * * *", tz)
    fall = datetime(autumn.year, autumn.month, autumn.day, tzinfo=zone).astimezone(UTC)
    day_fires = fires_between(hourly, fall - timedelta(seconds=1), fall + timedelta(hours=24, minutes=59))
    assert len(day_fires) == 25


def test_hourly_at_minute_five_does_not_fire_twice_after_the_gap() -> None:
    s = parse_schedule("5 * * * *", "Europe/Berlin")
    assert fires_between(s, utc(2026, 3, 29, 0), utc(2026, 3, 29, 2)) == [
        utc(2026, 3, 29, 0, 5), utc(2026, 3, 29, 1, 5),  # 01:05 CET, then 03:05 CEST
    ]


def test_every_ten_seconds_across_fall_back() -> None:
    s = parse_schedule("*/10 * * * * *", "Europe/Berlin")
    fires = fires_between(s, utc(2026, 10, 25, 0, 50), utc(2026, 10, 25, 1, 10))
    assert len(fires) == 20 * 6
    assert {b - a for a, b in pairwise(fires)} == {timedelta(seconds=10)}


def test_non_hourly_schedule_inside_the_repeated_hour_runs_through_it_once() -> None:
    s = parse_schedule("*/20 2 * * *", "Europe/Berlin")
    assert fires_between(s, utc(2026, 10, 24, 23), utc(2026, 10, 25, 3)) == [
        utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 0, 20), utc(2026, 10, 25, 0, 40),
    ]
    # spring: the three wall times are all missing, so one fire at the jump
    assert fires_between(s, utc(2026, 3, 28, 23), utc(2026, 3, 29, 3)) == [utc(2026, 3, 29, 1)]


def test_midnight_gap_santiago() -> None:
    # Chile springs forward at midnight: 2026-09-06 00:00 does not exist (00:00 -> 01:00).
    s = parse_schedule("@daily", "America/Santiago")
    fires = fires_between(s, utc(2026, 9, 4, 12), utc(2026, 9, 8, 12))
    assert [f.astimezone(s.zone).strftime("%m-%d %H:%M") for f in fires] == [
        "09-05 00:00", "09-06 01:00", "09-07 00:00", "09-08 00:00",
    ]


# A reference written independently of nbjobs.cron: walk every minute (or second) of real time and
# decide from the wall clock alone whether it fires, by the documented rules.
def _matches(expanded: list[list[object]], wall: datetime, seconds: bool) -> bool:
    values = [wall.minute, wall.hour, wall.day, wall.month, (wall.weekday() + 1) % 7]
    if seconds:
        values.append(wall.second)
    elif wall.second:
        return False
    return all(field == ["*"] or value in field for field, value in zip(expanded, values, strict=True))


def reference_fires(expr: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    s = parse_schedule(expr, tz)
    zone = ZoneInfo(tz)
    expanded = croniter(s.fields, second_at_beginning=s.has_seconds).expanded
    step = timedelta(seconds=1 if s.has_seconds else 60)
    out = []
    u = start
    while u <= end:
        local = u.astimezone(zone)
        wall = local.replace(tzinfo=None)
        fire = _matches(expanded, wall, s.has_seconds)
        if not s.hourly:
            repeated = wall.replace(tzinfo=zone, fold=0).utcoffset() != wall.replace(
                tzinfo=zone, fold=1
            ).utcoffset()
            if fire and repeated and local.fold == 1:
                fire = False  # a named wall time fires at its first occurrence only
            before = (u - step).astimezone(zone)
            jump = local.utcoffset() - before.utcoffset()  # type: ignore[operator]
            if not fire and jump > timedelta(0):
                # the clock skipped (before, wall): fire at the jump if a skipped wall time matches
                w = before.replace(tzinfo=None) + step
                while w < wall and not fire:
                    fire = _matches(expanded, w, s.has_seconds)
                    w += step
        if fire:
            out.append(u)
        u += step
    return out


REFERENCE_CASES = [
    (expr, tz, day)
    for tz, day in [
        ("Europe/Berlin", date(2026, 3, 29)), ("Europe/Berlin", date(2026, 10, 25)),
        ("America/New_York", date(2026, 3, 8)), ("America/New_York", date(2026, 11, 1)),
        ("America/Santiago", date(2026, 9, 6)), ("America/Santiago", date(2026, 4, 5)),
        ("Australia/Lord_Howe", date(2026, 10, 4)), ("Australia/Lord_Howe", date(2026, 4, 5)),
    ]
    for expr in [
        "30 2 * * *", "*/15 * * * *", "5 * * * *", "*/20 2 * * *", "0 0 * * *", "30 23 * * *",
        "0 1-3 * * *", "15,45 0-3 * * *",
    ]
]


@pytest.mark.parametrize(("expr", "tz", "day"), REFERENCE_CASES)
def test_fires_match_reference_around_transitions(expr: str, tz: str, day: date) -> None:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=14)
    end = start + timedelta(hours=40)
    s = parse_schedule(expr, tz)
    expected = reference_fires(expr, tz, start, end)
    assert fires_between(s, start - timedelta(seconds=1), end) == expected
    # next_fire and prev_fire from every quarter hour agree with the reference as well
    probe = start
    while probe < end - timedelta(hours=4):
        after = [f for f in expected if f > probe]
        before = [f for f in expected if f <= probe]
        if after:
            assert next_fire(s, probe) == after[0], probe
        if before:
            assert prev_fire(s, probe) == before[-1], probe
        probe += timedelta(minutes=15)


@pytest.mark.parametrize(
    ("tz", "transition"),
    [("Europe/Berlin", utc(2026, 10, 25, 1)), ("America/New_York", utc(2026, 3, 8, 7))],
)
def test_seconds_schedule_matches_reference(tz: str, transition: datetime) -> None:
    start = transition - timedelta(minutes=20)
    end = transition + timedelta(minutes=20)
    s = parse_schedule("*/7 */20 * * * *", tz)
    expected = reference_fires("*/7 */20 * * * *", tz, start, end)
    assert expected
    assert fires_between(s, start - timedelta(seconds=1), end) == expected
    for probe in (start + timedelta(minutes=m, seconds=3) for m in range(0, 40, 5)):
        before = [f for f in expected if f <= probe]
        if before:
            assert prev_fire(s, probe) == before[-1], probe
        assert next_fire(s, probe) == next(f for f in expected if f > probe), probe


# -- missed runs ----------------------------------------------------------------------------------------
Q = parse_schedule("*/15 * * * *")


def test_not_due_yet_changes_nothing() -> None:
    plan = due_fires(Q, utc(2026, 1, 1, 10, 15), utc(2026, 1, 1, 10, 14, 59))
    assert (plan.fires, plan.next_fire, plan.due, plan.missed) == ((), utc(2026, 1, 1, 10, 15), 0, 0)


@pytest.mark.parametrize("misfire", ["once", "skip", "all"])
def test_on_time_fire_runs_under_every_policy(misfire: str) -> None:
    plan = due_fires(Q, utc(2026, 1, 1, 10, 15), utc(2026, 1, 1, 10, 15, 0, 300000), misfire, 10)
    assert plan.fires == (utc(2026, 1, 1, 10, 15),)
    assert (plan.next_fire, plan.due, plan.missed, plan.missed_capped) == (
        utc(2026, 1, 1, 10, 30), 1, 0, False,
    )


def test_once_folds_missed_fires_into_the_latest() -> None:
    plan = due_fires(Q, utc(2026, 1, 1, 10), utc(2026, 1, 1, 11, 7), "once")
    assert plan.fires == (utc(2026, 1, 1, 11),)
    assert (plan.due, plan.missed, plan.next_fire) == (5, 4, utc(2026, 1, 1, 11, 15))


def test_skip_runs_nothing_after_downtime() -> None:
    plan = due_fires(Q, utc(2026, 1, 1, 10), utc(2026, 1, 1, 11, 7), "skip")
    assert (plan.fires, plan.due, plan.missed, plan.next_fire) == ((), 5, 5, utc(2026, 1, 1, 11, 15))


def test_skip_still_runs_the_fire_that_is_just_due() -> None:
    now = utc(2026, 1, 1, 11) + SKIP_GRACE
    plan = due_fires(Q, utc(2026, 1, 1, 10), now, "skip")
    assert (plan.fires, plan.missed) == ((utc(2026, 1, 1, 11),), 4)
    late = due_fires(Q, utc(2026, 1, 1, 11), now + timedelta(microseconds=1), "skip")
    assert (late.fires, late.missed) == ((), 1)
    custom = due_fires(Q, utc(2026, 1, 1, 11), utc(2026, 1, 1, 11, 1), "skip", grace=timedelta(minutes=2))
    assert custom.fires == (utc(2026, 1, 1, 11),)


def test_a_misfire_grace_drops_fire_times_later_than_it_under_every_policy() -> None:
    last, now, grace = utc(2026, 1, 1, 10), utc(2026, 1, 1, 11, 7), timedelta(minutes=30)
    every = due_fires(Q, last, now, "all", grace=grace)
    assert every.fires == (utc(2026, 1, 1, 10, 45), utc(2026, 1, 1, 11))  # 22 and 7 minutes late
    assert (every.due, every.missed) == (5, 3)
    once = due_fires(Q, last, now, "once", grace=timedelta(minutes=5))
    assert (once.fires, once.missed) == ((), 5)  # the latest is 7 minutes late
    assert due_fires(Q, last, now, "once", grace=grace).fires == (utc(2026, 1, 1, 11),)
    assert due_fires(Q, last, now, "skip", grace=grace).fires == (utc(2026, 1, 1, 11),)
    with pytest.raises(InvalidScheduleError, match="misfire_grace must be a positive duration"):
        due_fires(Q, last, now, "once", grace=timedelta(0))


def test_all_creates_one_per_missed_fire_bounded_by_limit() -> None:
    plan = due_fires(Q, utc(2026, 1, 1, 10), utc(2026, 1, 1, 11, 7), "all", 100)
    assert plan.fires == tuple(utc(2026, 1, 1, 10, 0) + timedelta(minutes=15 * i) for i in range(5))
    assert (plan.due, plan.missed) == (5, 0)
    limited = due_fires(Q, utc(2026, 1, 1, 10), utc(2026, 1, 1, 11, 7), "all", 2)
    assert limited.fires == (utc(2026, 1, 1, 10, 45), utc(2026, 1, 1, 11))  # the latest two
    assert (limited.due, limited.missed) == (5, 3)


def test_a_stored_plan_off_the_schedule_still_counts() -> None:
    plan = due_fires(Q, utc(2026, 1, 1, 10, 7), utc(2026, 1, 1, 10, 50), "all")
    assert plan.fires == (utc(2026, 1, 1, 10, 7), utc(2026, 1, 1, 10, 15), utc(2026, 1, 1, 10, 30),
                          utc(2026, 1, 1, 10, 45))
    assert due_fires(Q, utc(2026, 1, 1, 10, 7), utc(2026, 1, 1, 10, 8), "once").fires == (
        utc(2026, 1, 1, 10, 7),
    )


def test_long_outage_of_a_seconds_schedule_is_capped_and_cheap() -> None:
    s = parse_schedule("* * * * * *")
    last, now = utc(2026, 1, 1), utc(2026, 1, 8, 12, 0, 0, 500000)
    once = due_fires(s, last, now, "once")
    assert once.fires == (utc(2026, 1, 8, 12),)
    assert once.missed_capped and once.due == COUNT_CAP and once.missed == COUNT_CAP - 1
    assert once.next_fire == utc(2026, 1, 8, 12, 0, 1)
    every = due_fires(s, last, now, "all", 3)
    assert every.fires == (utc(2026, 1, 8, 11, 59, 58), utc(2026, 1, 8, 11, 59, 59), utc(2026, 1, 8, 12))
    assert every.missed_capped and every.missed == COUNT_CAP - 3
    assert due_fires(s, last, now, "skip").fires == (utc(2026, 1, 8, 12),)  # just due: 0.5 s late


def test_missed_runs_across_spring_forward() -> None:
    s = parse_schedule("30 2 * * *", "Europe/Berlin")
    plan = due_fires(s, utc(2026, 3, 28, 1, 30), utc(2026, 3, 30, 12), "all")
    assert plan.fires == (utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30))
    assert plan.next_fire == utc(2026, 3, 31, 0, 30)
    once = due_fires(s, utc(2026, 3, 28, 1, 30), utc(2026, 3, 30, 12), "once")
    assert (once.fires, once.missed) == ((utc(2026, 3, 30, 0, 30),), 2)


@pytest.mark.parametrize(
    ("misfire", "limit", "overlap", "message"),
    [
        ("sometimes", 1, "allow", "unknown misfire policy 'sometimes'"),
        ("all", 0, "allow", "misfire_limit must be a whole number"),
        ("all", True, "allow", "misfire_limit must be a whole number"),
        ("once", 1, "never", "unknown overlap policy 'never'"),
    ],
)
def test_policy_validation(misfire: str, limit: int, overlap: str, message: str) -> None:
    with pytest.raises(InvalidScheduleError, match=message):
        validate_policies(misfire, limit, overlap)
    if overlap == "allow":
        with pytest.raises(InvalidScheduleError, match=message):
            due_fires(Q, utc(2026, 1, 1), utc(2026, 1, 1, 1), misfire, limit)


def test_runs_allowed_by_overlap_policy() -> None:
    assert runs_allowed("allow", 3, JobState.PROCESSING) == 3
    assert runs_allowed("allow", 0, None) == 0
    assert runs_allowed("skip", 1, None) == 1
    assert runs_allowed("skip", 3, JobState.SUCCEEDED) == 1
    assert runs_allowed("skip", 1, JobState.FAILED) == 1
    assert runs_allowed("skip", 1, JobState.DELETED) == 1
    for unfinished in (JobState.ENQUEUED, JobState.PROCESSING, JobState.SCHEDULED, JobState.AWAITING):
        assert runs_allowed("skip", 2, unfinished) == 0
    assert runs_allowed("skip", 0, None) == 0


# -- intervals ------------------------------------------------------------------------------------------
def test_an_interval_fires_every_so_much_real_time_counted_from_the_epoch() -> None:
    every = parse_schedule("@every 1h 30m")
    assert every.expr == "@every 1h30m" and every.every == 5400 and str(every) == "@every 1h30m"
    assert parse_schedule("@EVERY 90M").expr == "@every 1h30m"
    fires = list(_take(iter_fires(every, utc(2026, 11, 28, 16, 20)), 4))
    assert fires == [utc(2026, 11, 28, 16, 30), utc(2026, 11, 28, 18), utc(2026, 11, 28, 19, 30),
                     utc(2026, 11, 28, 21)]
    assert next_fire(every, utc(2026, 11, 28, 16, 30)) == utc(2026, 11, 28, 18)  # strictly after
    assert prev_fire(every, utc(2026, 11, 28, 16, 30)) == utc(2026, 11, 28, 16, 30)  # at or before
    assert prev_fire(every, utc(2026, 11, 28, 17, 59, 59)) == utc(2026, 11, 28, 16, 30)
    assert parse_schedule("90m").expr == parse_schedule(" 1H30m ").expr == "@every 1h30m"  # alone, too
    seven = parse_schedule("@every 7s")  # what "*/7 * * * * *" cannot say: it jumps 56 → 0
    gaps = {b - a for a, b in pairwise(_take(iter_fires(seven, utc(2026, 3, 29, 0, 59, 50)), 20))}
    assert gaps == {timedelta(seconds=7)}


def test_an_interval_keeps_its_rhythm_over_daylight_saving_and_long_outages() -> None:
    hourly = parse_schedule("@every 1h")
    # 2026-03-29 is the spring-forward day in Europe; an interval is real time: 24 fires that day
    day = list(_take(iter_fires(hourly, utc(2026, 3, 28, 23, 59)), 24))
    assert day[0] == utc(2026, 3, 29) and day[-1] == utc(2026, 3, 29, 23)
    plan = due_fires(hourly, utc(2026, 3, 29), utc(2026, 3, 29, 5, 10), misfire="all")
    assert plan.fires == tuple(utc(2026, 3, 29, h) for h in range(6))
    assert plan.next_fire == utc(2026, 3, 29, 6)
    plan = due_fires(parse_schedule("@every 1s"), utc(2026, 1, 1), utc(2026, 1, 8), misfire="once")
    assert plan.fires == (utc(2026, 1, 8),) and plan.missed_capped  # a week of seconds, counted cheaply
    assert plan.next_fire == utc(2026, 1, 8, 0, 0, 1)


@pytest.mark.parametrize(("expr", "tz", "message"), [
    ("@every", "UTC", "unknown cron alias"),
    ("@every 90", "UTC", "'90' in '@every 90' is not a duration; write whole numbers with units"),
    ("@every 1.5h", "UTC", "is not a duration"),
    ("@every 0s", "UTC", "is 0 seconds; use 1 second to 366 days"),
    ("0s", "UTC", "is 0 seconds; use 1 second to 366 days"),
    ("90", "UTC", "has 1 fields; use 5 (minute hour day-of-month month day-of-week) or 6 with seconds "
                  "first (second minute hour day-of-month month day-of-week), or an interval such as '10m'"),
    ("@every 400d", "UTC", "use 1 second to 366 days"),
    ("@every 2h", "Europe/Paris", "a time zone (Europe/Paris) would change nothing: leave tz out"),
])
def test_bad_intervals_are_refused_naming_the_fix(expr: str, tz: str, message: str) -> None:
    with pytest.raises(InvalidScheduleError, match=re.escape(message)):
        parse_schedule(expr, tz)


def test_a_timedelta_is_an_interval_of_whole_seconds() -> None:
    assert every_from_timedelta(timedelta(minutes=90)) == "@every 1h30m"
    assert every_from_timedelta(timedelta(days=1, seconds=5)) == "@every 1d5s"
    with pytest.raises(InvalidScheduleError, match="whole number of seconds"):
        every_from_timedelta(timedelta(milliseconds=1500))


def _take(it: Iterator[datetime], n: int) -> list[datetime]:
    return [value for value, _ in zip(it, range(n), strict=False)]


# -- windows (start, end) -------------------------------------------------------------------------------
def test_a_window_bounds_the_fire_times_of_a_cron_expression() -> None:
    s = parse_schedule("0 9 * * *", "Europe/Berlin", start=utc(2026, 12, 8, 8), end=utc(2026, 12, 10, 8))
    assert list(iter_fires(s, utc(2026, 12, 1))) == [utc(2026, 12, 8, 8), utc(2026, 12, 9, 8),
                                                     utc(2026, 12, 10, 8)]  # both ends inclusive
    assert list(iter_fires(s, utc(2026, 12, 9, 8))) == [utc(2026, 12, 10, 8)]
    assert upcoming_fire(s, utc(2026, 12, 10, 8)) is None
    with pytest.raises(InvalidScheduleError, match="never fires after"):
        next_fire(s, utc(2026, 12, 10, 8))
    assert prev_fire(s, utc(2027, 1, 1)) == utc(2026, 12, 10, 8)
    assert prev_fire(s, utc(2026, 12, 8, 7)) is None  # before the start


def test_an_interval_with_a_start_counts_from_it() -> None:
    start = utc(2026, 12, 8, 9, 15)
    s = parse_schedule("@every 2h", start=start)
    assert _take(iter_fires(s, utc(2026, 12, 1)), 3) == [
        start, utc(2026, 12, 8, 11, 15), utc(2026, 12, 8, 13, 15),
    ]
    assert next_fire(s, utc(2026, 12, 8, 12)) == utc(2026, 12, 8, 13, 15)
    assert prev_fire(s, utc(2026, 12, 8, 12)) == utc(2026, 12, 8, 11, 15)
    # without a start the grid is the epoch's
    assert next_fire(parse_schedule("@every 2h"), utc(2026, 12, 8, 9, 15)) == utc(2026, 12, 8, 10)


def test_due_fires_stop_at_the_end_and_then_plan_nothing() -> None:
    s = parse_schedule("@every 2h", start=utc(2026, 12, 8, 9, 15), end=utc(2026, 12, 8, 15, 15))
    inside = due_fires(s, utc(2026, 12, 8, 9, 15), utc(2026, 12, 8, 12), "all")
    assert inside.fires == (utc(2026, 12, 8, 9, 15), utc(2026, 12, 8, 11, 15))
    assert inside.next_fire == utc(2026, 12, 8, 13, 15)
    # the scheduler comes back after the end: the last fire times inside the window are due, no later
    late = due_fires(s, utc(2026, 12, 8, 13, 15), utc(2026, 12, 9), "all")
    assert late.fires == (utc(2026, 12, 8, 13, 15), utc(2026, 12, 8, 15, 15))
    assert late.next_fire is None and late.missed == 0
    once = due_fires(s, utc(2026, 12, 8, 13, 15), utc(2026, 12, 9), "once")
    assert (once.fires, once.next_fire, once.missed) == ((utc(2026, 12, 8, 15, 15),), None, 1)
    assert due_fires(s, utc(2026, 12, 8, 13, 15), utc(2026, 12, 9), "skip").fires == ()  # long missed
    # the last fire time on time: it runs, and nothing is planned after it
    last = due_fires(s, utc(2026, 12, 8, 15, 15), utc(2026, 12, 8, 15, 15, 1), "skip")
    assert (last.fires, last.next_fire) == ((utc(2026, 12, 8, 15, 15),), None)


def test_a_long_outage_inside_a_window_is_capped_at_its_end() -> None:
    s = parse_schedule("* * * * * *", end=utc(2026, 1, 8, 12))
    plan = due_fires(s, utc(2026, 1, 1), utc(2026, 1, 9), "all", 2)
    assert plan.fires == (utc(2026, 1, 8, 11, 59, 59), utc(2026, 1, 8, 12))
    assert plan.missed_capped and plan.next_fire is None


def test_an_end_before_the_start_is_refused() -> None:
    with pytest.raises(InvalidScheduleError, match=r"is before start .*give an end after the start"):
        parse_schedule("@daily", start=utc(2026, 12, 9), end=utc(2026, 12, 8))
