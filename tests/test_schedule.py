"""CRON_SCHEDULE: aliases, TIMEZONE, and the daylight-saving days of America/Sao_Paulo and Europe/Berlin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from pgbkp import schedule
from pgbkp.config import ConfigError

SP = ZoneInfo("America/Sao_Paulo")
BERLIN = ZoneInfo("Europe/Berlin")


def runs(expr: str, tz: ZoneInfo, start: datetime, n: int) -> list[str]:
    """The next n runs as local ISO times with their UTC offset (which shows the DST side)."""
    return [t.isoformat() for t in islice(schedule.parse(expr, tz).times_after(start), n)]


def test_default_is_three_in_the_morning_in_timezone() -> None:
    sched = schedule.parse(None, SP)
    assert sched.expression == "0 3 * * *"
    start = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)  # 09:00 in Sao Paulo
    assert sched.next_after(start).isoformat() == "2025-06-11T03:00:00-03:00"
    assert sched.next_after(start).astimezone(UTC) == datetime(2025, 6, 11, 6, 0, tzinfo=UTC)
    assert schedule.parse("  ", SP).expression == "0 3 * * *"


def test_same_expression_means_local_time_of_its_zone() -> None:
    start = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
    assert schedule.parse("0 3 * * *", BERLIN).next_after(start).astimezone(UTC) == datetime(
        2025, 1, 16, 2, 0, tzinfo=UTC)
    assert schedule.parse("0 3 * * *", ZoneInfo("UTC")).next_after(start).astimezone(UTC) == datetime(
        2025, 1, 16, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize(("alias", "expected"), [
    ("@hourly", ["2025-05-14T11:00:00-03:00", "2025-05-14T12:00:00-03:00"]),
    ("@daily", ["2025-05-15T00:00:00-03:00", "2025-05-16T00:00:00-03:00"]),
    ("@midnight", ["2025-05-15T00:00:00-03:00", "2025-05-16T00:00:00-03:00"]),
    ("@weekly", ["2025-05-18T00:00:00-03:00", "2025-05-25T00:00:00-03:00"]),  # Sundays
    ("@monthly", ["2025-06-01T00:00:00-03:00", "2025-07-01T00:00:00-03:00"]),
    ("@yearly", ["2026-01-01T00:00:00-03:00", "2027-01-01T00:00:00-03:00"]),
    ("@annually", ["2026-01-01T00:00:00-03:00", "2027-01-01T00:00:00-03:00"]),
    ("@DAILY", ["2025-05-15T00:00:00-03:00", "2025-05-16T00:00:00-03:00"]),
])
def test_aliases(alias: str, expected: list[str]) -> None:
    start = datetime(2025, 5, 14, 10, 30, tzinfo=SP)  # a Wednesday
    assert runs(alias, SP, start, 2) == expected


def test_next_run_is_strictly_after_now() -> None:
    sched = schedule.parse("* * * * *", SP)
    now = datetime(2025, 5, 14, 10, 30, tzinfo=SP)
    assert sched.next_after(now) == datetime(2025, 5, 14, 10, 31, tzinfo=SP)
    assert sched.next_after(now + timedelta(seconds=59.5)) == datetime(2025, 5, 14, 10, 31, tzinfo=SP)


def test_sao_paulo_2018_11_04_midnight_does_not_exist() -> None:
    # Clocks jumped from 00:00 to 01:00 (-03 -> -02): a midnight job runs once, at 01:00.
    start = datetime(2018, 11, 2, 12, 0, tzinfo=SP)
    assert runs("@daily", SP, start, 3) == [
        "2018-11-03T00:00:00-03:00", "2018-11-04T01:00:00-02:00", "2018-11-05T00:00:00-02:00"]
    assert runs("30 0 * * *", SP, start, 3) == [
        "2018-11-03T00:30:00-03:00", "2018-11-04T01:00:00-02:00", "2018-11-05T00:30:00-02:00"]
    # Unaffected hours keep their local time; the day between is 23 hours of real time.
    assert runs("0 3 * * *", SP, start, 3) == [
        "2018-11-03T03:00:00-03:00", "2018-11-04T03:00:00-02:00", "2018-11-05T03:00:00-02:00"]
    assert schedule.parse("0 3 * * *", SP).period_after(start + timedelta(hours=12)) == timedelta(hours=23)


def test_sao_paulo_2019_02_17_hour_before_midnight_repeats() -> None:
    # At 00:00 on 17 Feb clocks went back to 23:00 of the 16th (-02 -> -03): 23:xx happened twice.
    start = datetime(2019, 2, 15, 12, 0, tzinfo=SP)
    assert runs("30 23 * * *", SP, start, 3) == [  # once per day, at the first 23:30
        "2019-02-15T23:30:00-02:00", "2019-02-16T23:30:00-02:00", "2019-02-17T23:30:00-03:00"]
    assert runs("@daily", SP, start, 3) == [
        "2019-02-16T00:00:00-02:00", "2019-02-17T00:00:00-03:00", "2019-02-18T00:00:00-03:00"]
    # An hourly job follows real time: 23:00 comes twice, one hour apart.
    hourly = runs("@hourly", SP, datetime(2019, 2, 16, 21, 30, tzinfo=SP), 4)
    assert hourly == ["2019-02-16T22:00:00-02:00", "2019-02-16T23:00:00-02:00", "2019-02-16T23:00:00-03:00",
                      "2019-02-17T00:00:00-03:00"]


def test_sao_paulo_has_no_dst_since_2019() -> None:
    start = datetime(2025, 11, 1, 12, 0, tzinfo=SP)
    assert runs("@daily", SP, start, 3) == [
        "2025-11-02T00:00:00-03:00", "2025-11-03T00:00:00-03:00", "2025-11-04T00:00:00-03:00"]


def test_berlin_2026_03_29_spring_forward() -> None:
    # 02:00 -> 03:00 (+01 -> +02): a 02:30 job runs at 03:00 that day, once.
    start = datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN)
    assert runs("30 2 * * *", BERLIN, start, 3) == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]
    assert runs("0 3 * * *", BERLIN, start, 2) == ["2026-03-29T03:00:00+02:00", "2026-03-30T03:00:00+02:00"]
    assert runs("*/30 * * * *", BERLIN, datetime(2026, 3, 29, 1, 0, tzinfo=BERLIN), 3) == [
        "2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00"]


def test_berlin_2026_10_25_fall_back() -> None:
    # 03:00 -> 02:00 (+02 -> +01): 02:xx happens twice; a 02:30 job runs once, at the first.
    start = datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN)
    assert runs("30 2 * * *", BERLIN, start, 3) == [
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"]
    # Asked during the second 02:10, after the first 02:30 already ran: the next one is tomorrow.
    second_pass = datetime(2026, 10, 25, 2, 10, fold=1, tzinfo=BERLIN)
    assert runs("30 2 * * *", BERLIN, second_pass, 1) == ["2026-10-26T02:30:00+01:00"]
    assert runs("@hourly", BERLIN, datetime(2026, 10, 25, 1, 30, tzinfo=BERLIN), 3) == [
        "2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"]
    assert schedule.parse("0 4 * * *", BERLIN).period_after(start - timedelta(hours=11)) == timedelta(hours=25)


@pytest.mark.parametrize(("expr", "says"), [
    ("61 * * * *", "not a valid cron expression"),
    ("* * *", "has 3 fields, not 5"),
    ("0 0 3 * * *", "has 6 fields, not 5"),
    ("@reboot", "unknown alias"),
    ("0 3 * * MON-FRX", "not a valid cron expression"),
    ("0 0 31 2 *", "not a valid cron expression"),
])
def test_bad_expression_names_the_variable_and_the_fix(expr: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        schedule.parse(expr, SP)
    msg = str(err.value)
    assert msg.startswith("CRON_SCHEDULE: ")
    assert says in msg
    assert "Fix: " in msg and "0 3 * * *" in msg


def test_times_after_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        schedule.parse("@daily", SP).next_after(datetime(2025, 1, 1))
