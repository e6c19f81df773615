"""The pure rate parts: "60/m" parsing, the sliding window, and the shared quotas' checks."""

from __future__ import annotations

import pytest

from nbjobs.errors import ConfigurationError
from nbjobs.rates import QueueQuota, Rate, RateWindow, check_running_limit, parse_rate


@pytest.mark.parametrize(
    ("text", "count", "period", "shown"),
    [("60/m", 60, 60, "60/m"), ("5/s", 5, 1, "5/s"), (" 10 / 30s ", 10, 30, "10/30s"),
     ("3/minutes", 3, 60, "3/m"), ("1000/hour", 1000, 3600, "1000/h"), ("1/day", 1, 86400, "1/d"),
     ("2/1.5h", 2, 5400, "2/5400s"), ("7/SEC", 7, 1, "7/s")],
)
def test_rates_parse(text: str, count: int, period: float, shown: str) -> None:
    rate = parse_rate(text)
    assert (rate.count, rate.period, str(rate)) == (count, period, shown)
    assert parse_rate(rate) is rate


@pytest.mark.parametrize(
    ("text", "message"),
    [("10/ms", "'10/ms' is not a rate; write N/UNIT"), ("60", "not a rate"), ("60/week", "not a rate"),
     ("-1/s", "not a rate"), (60, "60 is not a rate"), ("0/m", "allows no job"), ("5/0s", "allows no job"),
     ("2147483648/s", "'2147483648/s' is more than 2,147,483,647 jobs a period")],
)
def test_bad_rates_name_the_queue_and_the_form(text: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        parse_rate(text, "api")
    assert "rates: queue 'api'" in str(info.value)


def test_the_window_slides_over_the_last_period() -> None:
    window = RateWindow(Rate(count=3, period=60))
    assert window.room(0) == 3 and window.next_room(0) is None
    window.record(0, 2)
    window.record(10, 1)
    assert window.room(10) == 0 and window.next_room(10) == 60  # the oldest start leaves first
    assert window.room(59.9) == 0
    assert window.room(60) == 2  # both starts at 0 are a full period old
    window.record(60, 2)
    assert window.room(60) == 0 and window.next_room(60) == 70
    assert window.room(70) == 1 and window.room(120) == 3


def test_a_shared_limit_is_a_whole_number_a_database_holds() -> None:
    assert check_running_limit(2, "gpu") == 2
    assert check_running_limit(2**31 - 1, "gpu") == 2**31 - 1
    for bad in (0, -3, True, 2.0, "2", None):
        with pytest.raises(ConfigurationError, match=r"limit for queue 'gpu': .* is not a number of jobs"):
            check_running_limit(bad, "gpu")
    with pytest.raises(ConfigurationError, match=r"is more than 2,147,483,647 jobs .* None for no limit"):
        check_running_limit(2**31, "gpu")


def test_a_quota_says_what_it_holds_to() -> None:
    rate = Rate(count=60, period=60)
    assert str(QueueQuota(rate=rate)) == "at most 60/m"
    assert str(QueueQuota(running=2)) == "at most 2 running"
    assert str(QueueQuota(rate=rate, running=2)) == "at most 60/m, 2 running"
