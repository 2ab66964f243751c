"""Tests for the pure retention planner (pgbkp.retention)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgbkp.retention import Backup, Decision, Plan, Policy, local_midnight, local_today, lock_date, plan


def bk(stamp: str, name: str = "db") -> Backup:
    """Backup from a compact ``YYYYmmdd_HHMM`` stamp, keyed like a real object."""
    taken = datetime.strptime(stamp, "%Y%m%d_%H%M")
    return Backup(key=f"{name}_{stamp}.zip", taken=taken)


def keys(decisions: tuple[Decision, ...]) -> set[str]:
    return {d.backup.key for d in decisions}


def reasons_of(p: Plan, key: str) -> tuple[str, ...]:
    for d in (*p.keep, *p.delete):
        if d.backup.key == key:
            return d.reasons
    raise KeyError(key)


# --------------------------------------------------------------------------- Policy


def test_policy_describe_and_enabled() -> None:
    assert Policy().describe() == "off"
    assert not Policy().enabled
    assert Policy(days=7, weeks=4, months=12).describe() == "7 calendar days, 4 ISO weeks, 12 months"
    assert Policy(days=1).describe() == "1 calendar day"
    assert Policy(weeks=1, months=1).describe() == "1 ISO week, 1 month"
    assert Policy(months=3).enabled
    assert Policy(days=7, keep_last=3).describe() == "7 calendar days, at least the 3 newest"
    assert Policy(keep_last=3).describe() == "off"  # a floor under no rule deletes nothing: still off
    assert not Policy(keep_last=3).enabled


@pytest.mark.parametrize("kwargs", [{"days": -1}, {"weeks": -2}, {"months": -3}, {"keep_last": 0},
                                    {"keep_last": -1}])
def test_policy_rejects_negative(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="retention policy"):
        Policy(**kwargs)


def test_policy_rejects_non_int() -> None:
    with pytest.raises(TypeError):
        Policy(days="7")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Policy(days=True)
    with pytest.raises(TypeError):
        Policy(days=1, keep_last=True)


def test_backup_rejects_aware_datetime() -> None:
    with pytest.raises(ValueError, match="naive"):
        Backup("k", datetime(2026, 1, 1, tzinfo=UTC))


def test_protect_rejects_plain_string() -> None:
    with pytest.raises(TypeError, match="protect"):
        plan([bk("20261120_0300")], date(2026, 11, 20), Policy(days=1), protect="db_20261120_0300.zip")


# --------------------------------------------------------------------------- examples


def test_days_1_keeps_only_today() -> None:
    today = date(2026, 11, 20)
    yesterday_late = bk("20261119_2359")
    today_midnight = bk("20261120_0000")
    p = plan([yesterday_late, today_midnight], today, Policy(days=1))
    assert keys(p.keep) == {today_midnight.key}
    assert keys(p.delete) == {yesterday_late.key}
    assert reasons_of(p, yesterday_late.key) == ("older than 1 calendar day",)
    assert reasons_of(p, today_midnight.key) == ("newest of 2026-11-20",)


def test_days_7_several_per_day() -> None:
    today = date(2026, 11, 20)
    backups = []
    for offset in range(10):
        d = today - timedelta(days=offset)
        for hhmm in ("0300", "1200", "2100"):
            backups.append(bk(f"{d:%Y%m%d}_{hhmm}"))
    p = plan(backups, today, Policy(days=7))
    expected_keep = {f"db_{today - timedelta(days=o):%Y%m%d}_2100.zip" for o in range(7)}
    assert keys(p.keep) == expected_keep
    assert keys(p.delete) == {b.key for b in backups} - expected_keep
    assert reasons_of(p, "db_20261120_1200.zip") == ("not the newest of 2026-11-20",)
    assert reasons_of(p, "db_20261114_0300.zip") == ("not the newest of 2026-11-14",)
    assert reasons_of(p, "db_20261113_2100.zip") == ("older than 7 calendar days",)
    # Newest first, both lists.
    assert [d.backup.taken for d in p.keep] == sorted((d.backup.taken for d in p.keep), reverse=True)
    assert [d.backup.taken for d in p.delete] == sorted((d.backup.taken for d in p.delete), reverse=True)


def forty_days() -> list[Backup]:
    """The worked example from docs/retention.md: 40 daily backups plus a few manual ones."""
    today = date(2026, 11, 20)
    out = []
    for offset in range(40):
        d = today - timedelta(days=offset)
        out.append(bk(f"{d:%Y%m%d}_0300"))
        if d.day in (3, 14, 20, 29):
            out.append(bk(f"{d:%Y%m%d}_1530"))
    return out


def test_forty_days_with_weeks_and_months() -> None:
    backups = forty_days()
    assert len(backups) == 46
    p = plan(backups, date(2026, 11, 20), Policy(days=7, weeks=4, months=6))
    expected = {
        "db_20261120_1530.zip": (
            "newest of 2026-11-20",
            "newest of ISO week 2026-W47",
            "newest of month 2026-11",
        ),
        "db_20261119_0300.zip": ("newest of 2026-11-19",),
        "db_20261118_0300.zip": ("newest of 2026-11-18",),
        "db_20261117_0300.zip": ("newest of 2026-11-17",),
        "db_20261116_0300.zip": ("newest of 2026-11-16",),
        "db_20261115_0300.zip": ("newest of 2026-11-15", "newest of ISO week 2026-W46"),
        "db_20261114_1530.zip": ("newest of 2026-11-14",),
        "db_20261108_0300.zip": ("newest of ISO week 2026-W45",),
        "db_20261101_0300.zip": ("newest of ISO week 2026-W44",),
        "db_20261031_0300.zip": ("newest of month 2026-10",),
    }
    assert {d.backup.key: d.reasons for d in p.keep} == expected
    assert [d.backup.key for d in p.keep] == list(expected)  # newest first
    assert len(p.delete) == 36
    assert reasons_of(p, "db_20261120_0300.zip") == (
        "not the newest of 2026-11-20",
        "not the newest of ISO week 2026-W47",
        "not the newest of month 2026-11",
    )
    assert reasons_of(p, "db_20261025_0300.zip") == (
        "older than 7 calendar days",
        "older than 4 ISO weeks",
        "not the newest of month 2026-10",
    )


def test_forty_days_with_keep_last() -> None:
    """docs/retention.md's worked example: RETENTION_KEEP_LAST=10 keeps the three of the 10 newest that no
    rule keeps (today's 03:00, the 14th's 03:00, the 13th), each with its reason; the rules' keepers are
    unchanged, and reason nothing new."""
    backups = forty_days()
    today = date(2026, 11, 20)
    base = plan(backups, today, Policy(days=7, weeks=4, months=6))
    p = plan(backups, today, Policy(days=7, weeks=4, months=6, keep_last=10))
    floor = {"db_20261120_0300.zip", "db_20261114_0300.zip", "db_20261113_0300.zip"}
    assert keys(p.keep) == keys(base.keep) | floor
    assert (len(p.keep), len(p.delete)) == (13, 33)
    for key in floor:
        assert reasons_of(p, key) == ("one of the 10 newest",)
    assert {d.backup.key: d.reasons for d in p.keep if d.backup.key not in floor} == \
        {d.backup.key: d.reasons for d in base.keep}
    assert [d.backup.key for d in p.keep][:3] == ["db_20261120_1530.zip", "db_20261120_0300.zip",
                                                  "db_20261119_0300.zip"]


def test_keep_last_keeps_old_backups_when_the_job_stopped() -> None:
    """Backups stopped months ago: the rules would keep only the newest; keep_last=3 keeps three."""
    backups = [bk("20260101_0300"), bk("20260102_0300"), bk("20260103_0300"), bk("20260104_0300")]
    p = plan(backups, date(2026, 11, 20), Policy(days=7, keep_last=3))
    assert [(d.backup.key, d.reasons, d.keep_until) for d in p.keep] == [
        ("db_20260104_0300.zip", ("one of the 3 newest",), None),
        ("db_20260103_0300.zip", ("one of the 3 newest",), None),
        ("db_20260102_0300.zip", ("one of the 3 newest",), None),
    ]
    assert [(d.backup.key, d.reasons) for d in p.delete] == [("db_20260101_0300.zip", ("older than 7 calendar days",))]


def test_keep_last_larger_than_the_history_keeps_everything() -> None:
    backups = [bk("20260101_0300"), bk("20261120_0300")]
    p = plan(backups, date(2026, 11, 20), Policy(days=1, keep_last=5))
    assert p.delete == ()
    assert [d.reasons for d in p.keep] == [("newest of 2026-11-20",), ("one of the 5 newest",)]


def test_keep_last_does_nothing_with_retention_off() -> None:
    backups = forty_days()
    assert plan(backups, date(2026, 11, 20), Policy(keep_last=3)) == plan(backups, date(2026, 11, 20), Policy())


def test_forty_days_weeks_only_and_months_only() -> None:
    backups = forty_days()
    today = date(2026, 11, 20)
    weeks = plan(backups, today, Policy(weeks=2))
    assert keys(weeks.keep) == {"db_20261120_1530.zip", "db_20261115_0300.zip"}
    months = plan(backups, today, Policy(months=12))
    # Only two months have backups; the older ten buckets are simply empty.
    assert keys(months.keep) == {"db_20261120_1530.zip", "db_20261031_0300.zip"}


def test_future_dated_backups_are_kept() -> None:
    today = date(2026, 11, 20)
    tomorrow = bk("20261121_0100")
    next_year = bk("20271120_0300")
    today_b = bk("20261120_0300")
    old = bk("20261101_0300")
    p = plan([tomorrow, next_year, today_b, old], today, Policy(days=1))
    assert keys(p.keep) == {tomorrow.key, next_year.key, today_b.key}
    assert keys(p.delete) == {old.key}
    assert reasons_of(p, tomorrow.key) == ("dated after today",)
    # The future backup does not displace today's newest from its day bucket.
    assert reasons_of(p, today_b.key) == ("newest of 2026-11-20",)


def test_future_dated_same_iso_week_does_not_steal_week_slot() -> None:
    today = date(2026, 11, 18)  # Wednesday of 2026-W47
    friday = bk("20261120_0300")  # future, same ISO week
    wednesday = bk("20261118_0300")
    monday = bk("20261116_0300")
    p = plan([friday, wednesday, monday], today, Policy(weeks=1))
    assert keys(p.keep) == {friday.key, wednesday.key}
    assert reasons_of(p, wednesday.key) == ("newest of ISO week 2026-W47",)
    assert reasons_of(p, monday.key) == ("not the newest of ISO week 2026-W47",)


def test_protect_overrides_rules() -> None:
    today = date(2026, 11, 20)
    just_written = bk("20261120_0300")
    later_same_day = bk("20261120_0400")  # e.g. a concurrent run
    old = bk("20261001_0300")
    p = plan([just_written, later_same_day, old], today, Policy(days=1), protect={just_written.key, old.key})
    assert keys(p.keep) == {just_written.key, later_same_day.key, old.key}
    assert p.delete == ()
    assert reasons_of(p, just_written.key) == ("protected: written by this run",)
    assert reasons_of(p, old.key) == ("protected: written by this run",)


def test_protect_unknown_key_is_ignored() -> None:
    p = plan([bk("20261120_0300")], date(2026, 11, 20), Policy(days=1), protect=["not-there"])
    assert keys(p.keep) == {"db_20261120_0300.zip"}


def test_all_old_keeps_newest() -> None:
    today = date(2026, 11, 20)
    backups = [bk("20260101_0300"), bk("20260102_0300"), bk("20260102_0100")]
    p = plan(backups, today, Policy(days=3, weeks=2, months=1))
    assert [d.backup.key for d in p.keep] == ["db_20260102_0300.zip"]
    assert p.keep[0].reasons == ("newest backup, always kept",)
    assert keys(p.delete) == {"db_20260101_0300.zip", "db_20260102_0100.zip"}


def test_empty_input() -> None:
    assert plan([], date(2026, 11, 20), Policy(days=7)) == Plan(keep=(), delete=())
    assert plan([], date(2026, 11, 20), Policy()) == Plan(keep=(), delete=())


def test_retention_off_keeps_everything() -> None:
    backups = forty_days()
    p = plan(backups, date(2026, 11, 20), Policy(days=0, weeks=0, months=0))
    assert p.delete == ()
    assert keys(p.keep) == {b.key for b in backups}
    assert all(d.reasons == ("retention off",) for d in p.keep)


def test_duplicate_keys_count_once_and_ties_break_by_key() -> None:
    today = date(2026, 11, 20)
    a = Backup("a", datetime(2026, 11, 20, 3, 0))
    b = Backup("b", datetime(2026, 11, 20, 3, 0))
    p = plan([a, b, a, b, a], today, Policy(days=1))
    # Equal timestamps: the larger key counts as newer.
    assert [d.backup for d in p.keep] == [b]
    assert [d.backup for d in p.delete] == [a]
    assert plan([b, a], today, Policy(days=1)) == p


def test_duplicate_key_with_conflicting_times_is_order_independent() -> None:
    today = date(2026, 11, 20)
    early = Backup("x", datetime(2026, 11, 19, 3, 0))
    late = Backup("x", datetime(2026, 11, 20, 3, 0))
    p1 = plan([early, late], today, Policy(days=1))
    p2 = plan([late, early], today, Policy(days=1))
    assert p1 == p2
    assert [d.backup for d in p1.keep] == [late]


def test_accepts_any_iterable() -> None:
    p = plan((bk(s) for s in ("20261120_0300", "20261119_0300")), date(2026, 11, 20), Policy(days=1))
    assert keys(p.keep) == {"db_20261120_0300.zip"}


# --------------------------------------------------------------------------- calendar boundaries


def test_days_window_crosses_month_end() -> None:
    today = date(2026, 3, 1)
    backups = [bk("20260228_2359"), bk("20260227_0300"), bk("20260226_2359"), bk("20260301_0000")]
    p = plan(backups, today, Policy(days=3))
    assert keys(p.keep) == {"db_20260301_0000.zip", "db_20260228_2359.zip", "db_20260227_0300.zip"}
    assert keys(p.delete) == {"db_20260226_2359.zip"}


def test_days_window_across_leap_day() -> None:
    today = date(2028, 3, 1)
    backups = [bk("20280301_0300"), bk("20280229_0300"), bk("20280228_2359")]
    p = plan(backups, today, Policy(days=2))
    assert keys(p.keep) == {"db_20280301_0300.zip", "db_20280229_0300.zip"}
    assert reasons_of(p, "db_20280229_0300.zip") == ("newest of 2028-02-29",)
    assert keys(p.delete) == {"db_20280228_2359.zip"}


def test_thirty_days_from_march_first_non_leap_year() -> None:
    # 2026 is not a leap year: 30 calendar days back from 1 March starts on 31 January.
    backups = [bk("20260131_0000"), bk("20260130_2359"), bk("20260301_0300")]
    p = plan(backups, date(2026, 3, 1), Policy(days=30))
    assert keys(p.keep) == {"db_20260131_0000.zip", "db_20260301_0300.zip"}
    assert keys(p.delete) == {"db_20260130_2359.zip"}


def test_days_window_crosses_year_end() -> None:
    today = date(2027, 1, 1)
    backups = [bk("20270101_0100"), bk("20261231_2300"), bk("20261231_0100"), bk("20261230_2359")]
    p = plan(backups, today, Policy(days=2))
    assert keys(p.keep) == {"db_20270101_0100.zip", "db_20261231_2300.zip"}
    assert reasons_of(p, "db_20261231_0100.zip") == ("not the newest of 2026-12-31",)
    assert reasons_of(p, "db_20261230_2359.zip") == ("older than 2 calendar days",)


def test_iso_week_53_spans_new_year() -> None:
    # 2026-12-28 (Mon) .. 2027-01-03 (Sun) is ISO week 2026-W53; 2027-01-04 starts 2027-W01.
    assert date(2027, 1, 2).isocalendar()[:2] == (2026, 53)
    assert date(2027, 1, 4).isocalendar()[:2] == (2027, 1)
    today = date(2027, 1, 2)
    backups = [
        bk("20270102_0300"),
        bk("20270101_0300"),
        bk("20261228_0300"),
        bk("20261227_0300"),  # Sunday of 2026-W52
        bk("20261221_0300"),  # Monday of 2026-W52
        bk("20261220_0300"),  # Sunday of 2026-W51
    ]
    p = plan(backups, today, Policy(weeks=2))
    assert {d.backup.key: d.reasons for d in p.keep} == {
        "db_20270102_0300.zip": ("newest of ISO week 2026-W53",),
        "db_20261227_0300.zip": ("newest of ISO week 2026-W52",),
    }
    assert reasons_of(p, "db_20270101_0300.zip") == ("not the newest of ISO week 2026-W53",)
    assert reasons_of(p, "db_20261220_0300.zip") == ("older than 2 ISO weeks",)


def test_iso_week_one_starts_in_previous_calendar_year() -> None:
    # 2024-12-30 (Mon) belongs to ISO week 2025-W01.
    today = date(2025, 1, 1)
    backups = [bk("20241230_0300"), bk("20241229_0300"), bk("20241223_0300"), bk("20241222_0300")]
    p = plan(backups, today, Policy(weeks=2))
    assert {d.backup.key: d.reasons for d in p.keep} == {
        "db_20241230_0300.zip": ("newest of ISO week 2025-W01",),
        "db_20241229_0300.zip": ("newest of ISO week 2024-W52",),
    }
    assert reasons_of(p, "db_20241222_0300.zip") == ("older than 2 ISO weeks",)


def test_months_cross_year_end() -> None:
    today = date(2027, 1, 2)
    backups = [bk("20270102_0300"), bk("20261231_0300"), bk("20261201_0300"), bk("20261130_2359")]
    p = plan(backups, today, Policy(months=2))
    assert {d.backup.key: d.reasons for d in p.keep} == {
        "db_20270102_0300.zip": ("newest of month 2027-01",),
        "db_20261231_0300.zip": ("newest of month 2026-12",),
    }
    assert reasons_of(p, "db_20261201_0300.zip") == ("not the newest of month 2026-12",)
    assert reasons_of(p, "db_20261130_2359.zip") == ("older than 2 months",)


def test_months_from_day_31_and_leap_february() -> None:
    today = date(2028, 3, 31)
    backups = [bk("20280331_0300"), bk("20280229_2300"), bk("20280201_0300"), bk("20280131_2359")]
    p = plan(backups, today, Policy(months=2))
    assert keys(p.keep) == {"db_20280331_0300.zip", "db_20280229_2300.zip"}
    assert keys(p.delete) == {"db_20280201_0300.zip", "db_20280131_2359.zip"}


def test_twelve_months_back_crosses_year() -> None:
    today = date(2026, 5, 15)
    backups = [bk("20250601_0000"), bk("20250531_2359"), bk("20260515_0300")]
    p = plan(backups, today, Policy(months=12))
    assert keys(p.keep) == {"db_20250601_0000.zip", "db_20260515_0300.zip"}
    assert reasons_of(p, "db_20250531_2359.zip") == ("older than 12 months",)


# --------------------------------------------------------------------------- local_today

SAO_PAULO = ZoneInfo("America/Sao_Paulo")
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "tz", "expected"),
    [
        # Brazil DST start: 2018-11-04 00:00 -03 jumped to 01:00 -02 (03:00Z).
        (utc(2018, 11, 4, 2, 59), SAO_PAULO, date(2018, 11, 3)),
        (utc(2018, 11, 4, 3, 0), SAO_PAULO, date(2018, 11, 4)),
        # Inside DST the local day starts at 02:00Z, not 03:00Z.
        (utc(2018, 12, 1, 1, 59), SAO_PAULO, date(2018, 11, 30)),
        (utc(2018, 12, 1, 2, 0), SAO_PAULO, date(2018, 12, 1)),
        # Brazil DST end: 2019-02-17 00:00 -02 fell back to 2019-02-16 23:00 -03 (02:00Z),
        # so the hour 23:00-23:59 of the 16th happens twice and the 17th starts at 03:00Z.
        (utc(2019, 2, 17, 1, 59), SAO_PAULO, date(2019, 2, 16)),
        (utc(2019, 2, 17, 2, 0), SAO_PAULO, date(2019, 2, 16)),
        (utc(2019, 2, 17, 2, 59), SAO_PAULO, date(2019, 2, 16)),
        (utc(2019, 2, 17, 3, 0), SAO_PAULO, date(2019, 2, 17)),
        # No DST since 2019: -03 all year.
        (utc(2026, 11, 20, 2, 59), SAO_PAULO, date(2026, 11, 19)),
        (utc(2026, 11, 20, 3, 0), SAO_PAULO, date(2026, 11, 20)),
        # Berlin spring forward (2026-03-29 02:00 CET -> 03:00 CEST at 01:00Z).
        (utc(2026, 3, 28, 22, 59), BERLIN, date(2026, 3, 28)),
        (utc(2026, 3, 28, 23, 0), BERLIN, date(2026, 3, 29)),
        (utc(2026, 3, 29, 21, 59), BERLIN, date(2026, 3, 29)),
        (utc(2026, 3, 29, 22, 0), BERLIN, date(2026, 3, 30)),
        # Berlin fall back (2026-10-25 03:00 CEST -> 02:00 CET at 01:00Z).
        (utc(2026, 10, 24, 21, 59), BERLIN, date(2026, 10, 24)),
        (utc(2026, 10, 24, 22, 0), BERLIN, date(2026, 10, 25)),
        (utc(2026, 10, 25, 22, 59), BERLIN, date(2026, 10, 25)),
        (utc(2026, 10, 25, 23, 0), BERLIN, date(2026, 10, 26)),
        # UTC is the identity, including year end.
        (utc(2026, 12, 31, 23, 59), ZoneInfo("UTC"), date(2026, 12, 31)),
        (utc(2027, 1, 1, 0, 0), ZoneInfo("UTC"), date(2027, 1, 1)),
        # Year end in Sao Paulo: still 2026 locally for three hours of 2027Z.
        (utc(2027, 1, 1, 2, 59), SAO_PAULO, date(2026, 12, 31)),
    ],
)
def test_local_today(now: datetime, tz: ZoneInfo, expected: date) -> None:
    assert local_today(now, tz) == expected


def test_local_today_accepts_non_utc_aware_input() -> None:
    now = datetime(2026, 11, 20, 0, 30, tzinfo=BERLIN)  # 23:30Z on the 19th
    assert local_today(now, ZoneInfo("UTC")) == date(2026, 11, 19)
    assert local_today(now, SAO_PAULO) == date(2026, 11, 19)


def test_local_today_rejects_naive() -> None:
    with pytest.raises(ValueError, match="aware"):
        local_today(datetime(2026, 11, 20, 3, 0), SAO_PAULO)


def test_days_1_right_after_local_midnight_in_sao_paulo() -> None:
    # 03:05Z is 00:05 local: yesterday's 23:59 local backup is already "yesterday".
    today = local_today(utc(2026, 11, 20, 3, 5), SAO_PAULO)
    p = plan([bk("20261119_2359"), bk("20261120_0005")], today, Policy(days=1))
    assert keys(p.keep) == {"db_20261120_0005.zip"}
    assert keys(p.delete) == {"db_20261119_2359.zip"}


# --------------------------------------------------------------------------- properties

TODAY_RANGE = st.dates(min_value=date(2018, 1, 1), max_value=date(2030, 12, 31))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Backup], date, Policy, frozenset[str]]:
    today = draw(TODAY_RANGE)
    # Minutes relative to the end of today; mostly past, a little future (clock skew).
    end_of_today = datetime.combine(today, datetime.min.time()) + timedelta(days=1)
    offsets = st.integers(min_value=-120 * 24 * 60, max_value=3 * 24 * 60)
    # A small key alphabet makes duplicate keys (and equal timestamps) likely.
    entries = draw(
        st.lists(
            st.tuples(st.integers(min_value=0, max_value=60), offsets),
            max_size=40,
        )
    )
    backups = [Backup(f"k{k:02d}", end_of_today + timedelta(minutes=m)) for k, m in entries]
    policy = draw(
        st.builds(
            Policy,
            days=st.integers(min_value=0, max_value=15),
            weeks=st.integers(min_value=0, max_value=8),
            months=st.integers(min_value=0, max_value=5),
            keep_last=st.integers(min_value=1, max_value=6),
        )
    )
    all_keys = sorted({b.key for b in backups})
    protect = draw(st.frozensets(st.sampled_from(all_keys), max_size=3)) if all_keys else frozenset()
    return backups, today, policy, protect


# database=None: no .hypothesis/ directory in the shared working tree.
PROPS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def unique(backups: list[Backup]) -> dict[str, Backup]:
    """The planner's view of duplicates: one per key, the newest timestamp wins."""
    out: dict[str, Backup] = {}
    for b in backups:
        if b.key not in out or (b.taken, b.key) > (out[b.key].taken, out[b.key].key):
            out[b.key] = b
    return out


@PROPS
@given(scenarios())
def test_prop_partition(scn: tuple[list[Backup], date, Policy, frozenset[str]]) -> None:
    backups, today, policy, protect = scn
    p = plan(backups, today, policy, protect=protect)
    kept, deleted = keys(p.keep), keys(p.delete)
    assert kept.isdisjoint(deleted)
    assert kept | deleted == set(unique(backups))
    assert len(p.keep) + len(p.delete) == len(unique(backups))
    assert {d.backup for d in (*p.keep, *p.delete)} == set(unique(backups).values())


@PROPS
@given(scenarios())
def test_prop_never_deletes_newest_and_never_everything(
    scn: tuple[list[Backup], date, Policy, frozenset[str]],
) -> None:
    backups, today, policy, protect = scn
    p = plan(backups, today, policy, protect=protect)
    if backups:
        newest = max(unique(backups).values(), key=lambda b: (b.taken, b.key))
        assert newest.key in keys(p.keep)
        assert p.keep
    else:
        assert p == Plan((), ())


@PROPS
@given(scenarios())
def test_prop_protect_and_future_never_deleted(
    scn: tuple[list[Backup], date, Policy, frozenset[str]],
) -> None:
    backups, today, policy, protect = scn
    p = plan(backups, today, policy, protect=protect)
    for d in p.delete:
        assert d.backup.key not in protect
        assert d.backup.taken.date() <= today


@PROPS
@given(scenarios())
def test_prop_reasons_nonempty_and_ordered(scn: tuple[list[Backup], date, Policy, frozenset[str]]) -> None:
    backups, today, policy, protect = scn
    p = plan(backups, today, policy, protect=protect)
    for d in (*p.keep, *p.delete):
        assert d.reasons
        assert all(isinstance(r, str) and r for r in d.reasons)
    for group in (p.keep, p.delete):
        order = [(d.backup.taken, d.backup.key) for d in group]
        assert order == sorted(order, reverse=True)


@PROPS
@given(scenarios())
def test_prop_idempotent(scn: tuple[list[Backup], date, Policy, frozenset[str]]) -> None:
    backups, today, policy, protect = scn
    once = plan(backups, today, policy, protect=protect)
    twice = plan([d.backup for d in once.keep], today, policy, protect=protect)
    assert twice.delete == ()
    assert twice.keep == once.keep


@PROPS
@given(scenarios(), st.randoms(use_true_random=False))
def test_prop_input_order_irrelevant(
    scn: tuple[list[Backup], date, Policy, frozenset[str]], rnd: random.Random
) -> None:
    backups, today, policy, protect = scn
    shuffled = list(backups)
    rnd.shuffle(shuffled)
    assert plan(shuffled, today, policy, protect=protect) == plan(backups, today, policy, protect=protect)


@PROPS
@given(scenarios())
def test_prop_days_only_one_per_day(scn: tuple[list[Backup], date, Policy, frozenset[str]]) -> None:
    backups, today, policy, _ = scn
    days_only = Policy(days=max(policy.days, 1))
    p = plan(backups, today, days_only)
    window_start = today - timedelta(days=days_only.days - 1)
    kept_past = [d.backup for d in p.keep if d.backup.taken.date() <= today]
    per_day = Counter(b.taken.date() for b in kept_past)
    assert all(n == 1 for n in per_day.values())
    # Every day in the window that has a backup keeps exactly its newest one.
    by_day: dict[date, Backup] = {}
    for b in unique(backups).values():
        d = b.taken.date()
        if not window_start <= d <= today:
            continue
        if d not in by_day or (b.taken, b.key) > (by_day[d].taken, by_day[d].key):
            by_day[d] = b
    assert set(by_day.values()) <= set(kept_past)
    # Past backups outside the window survive only as the overall newest safety net.
    outside = [b for b in kept_past if b.taken.date() < window_start]
    assert len(outside) <= 1
    for b in outside:
        assert reasons_of(p, b.key) == ("newest backup, always kept",)


@PROPS
@given(scenarios())
def test_prop_retention_off_keeps_all(scn: tuple[list[Backup], date, Policy, frozenset[str]]) -> None:
    backups, today, _, protect = scn
    p = plan(backups, today, Policy(), protect=protect)
    assert p.delete == ()
    assert keys(p.keep) == set(unique(backups))


@PROPS
@given(scenarios())
def test_prop_keep_last_keeps_the_n_newest(scn: tuple[list[Backup], date, Policy, frozenset[str]]) -> None:
    """restic's --keep-last: with any rule on, the N newest are kept whatever their age; keep_last only ever
    adds keepers (to the plan of N=1), with its reason only where nothing else keeps them."""
    backups, today, policy, protect = scn
    if not policy.enabled:
        policy = Policy(days=1, keep_last=policy.keep_last)
    n = policy.keep_last
    p = plan(backups, today, policy, protect=protect)
    newest = sorted(unique(backups).values(), key=lambda b: (b.taken, b.key), reverse=True)[:n]
    assert {b.key for b in newest} <= keys(p.keep)
    floor_only = Policy(policy.days, policy.weeks, policy.months)  # keep_last=1
    one = plan(backups, today, floor_only, protect=protect)
    assert keys(p.keep) == keys(one.keep) | {b.key for b in newest}
    reason = "newest backup, always kept" if n == 1 else f"one of the {n} newest"
    for d in p.keep:
        if reason in d.reasons:
            assert d.reasons == (reason,)
            assert d.backup.key in {b.key for b in newest}
            assert d.keep_until is None  # no date: a lock need not (and cannot) cover it
        else:
            assert d == next(o for o in one.keep if o.backup.key == d.backup.key)


# --------------------------------------------------------------------------- Object Lock dates


def test_keep_until_counts_only_periods_that_are_over() -> None:
    """Friday 2026-11-20, 7 days, 4 ISO weeks, 6 months: a kept backup's keep_until is the end of the windows
    of the periods it is the newest of that are over; a period still open (today, this week, this month)
    may yet get a newer backup, so it does not count."""
    backups = [bk("20261120_0300"), bk("20261119_0300"), bk("20261115_0300"), bk("20261108_0300"),
               bk("20261031_0300"), bk("20261030_0300")]
    p = plan(backups, date(2026, 11, 20), Policy(days=7, weeks=4, months=6))
    assert {d.backup.key: d.keep_until for d in p.keep} == {
        "db_20261120_0300.zip": None,  # today, this week, this month: all open
        "db_20261119_0300.zip": date(2026, 11, 26),  # its day is over: 7 days
        "db_20261115_0300.zip": date(2026, 12, 7),  # week 2026-W46 is over: 4 weeks from Monday 11-09
        "db_20261108_0300.zip": date(2026, 11, 30),  # week 2026-W45: 4 weeks from Monday 11-02
        "db_20261031_0300.zip": date(2027, 4, 1),  # month 2026-10 is over: 6 months from 10-01
    }
    assert [d.keep_until for d in p.delete] == [None]


def test_keep_until_is_none_for_safety_nets() -> None:
    p = plan([bk("20260101_0300")], date(2026, 11, 20), Policy(days=7), protect={"db_20260101_0300.zip"})
    assert [(d.reasons, d.keep_until) for d in p.keep] == [(("protected: written by this run",), None)]


@pytest.mark.parametrize(("day", "policy", "expected"), [
    (date(2026, 11, 20), Policy(days=7), date(2026, 11, 27)),
    (date(2026, 11, 20), Policy(days=1, weeks=9, months=9), date(2026, 11, 21)),  # the finest rule only
    (date(2026, 11, 19), Policy(weeks=2), date(2026, 11, 30)),  # a Thursday: 2 weeks from Monday 11-16
    (date(2026, 11, 16), Policy(weeks=1), date(2026, 11, 23)),  # a Monday
    (date(2026, 11, 30), Policy(months=3), date(2027, 2, 1)),
    (date(2026, 12, 15), Policy(months=1), date(2027, 1, 1)),
    (date(9999, 12, 30), Policy(days=7), date.max),  # a name far in the future never crashes a run
    (date(9999, 12, 30), Policy(months=1), date.max),
])
def test_lock_date_is_the_end_of_the_finest_window(day: date, policy: Policy, expected: date) -> None:
    assert lock_date(day, policy) == expected


def test_lock_date_needs_a_policy() -> None:
    with pytest.raises(ValueError, match="retention is off"):
        lock_date(date(2026, 11, 20), Policy())


@pytest.mark.parametrize(("day", "tz", "expected"), [
    (date(2026, 11, 27), "America/Sao_Paulo", datetime(2026, 11, 27, 3, 0, tzinfo=UTC)),
    (date(2026, 4, 1), "Europe/Lisbon", datetime(2026, 3, 31, 23, 0, tzinfo=UTC)),  # summer time, UTC+1
    (date(2026, 3, 8), "America/Havana", datetime(2026, 3, 8, 5, 0, tzinfo=UTC)),  # no 00:00 that day
])
def test_local_midnight(day: date, tz: str, expected: datetime) -> None:
    assert local_midnight(day, ZoneInfo(tz)) == expected


@PROPS
@given(scenarios())
def test_prop_kept_until_keep_until(scn: tuple[list[Backup], date, Policy, frozenset[str]]) -> None:
    """What Object Lock relies on: a backup with keep_until is still kept by a rule on the day before it,
    whatever happens in between (the periods it is the newest of are over, so nothing can take its place)."""
    backups, today, policy, _ = scn
    p = plan(backups, today, policy)
    for d in p.keep:
        if d.keep_until is None:
            continue
        assert d.keep_until > today
        last_day = plan(backups, d.keep_until - timedelta(days=1), policy)
        assert any(r.startswith("newest of ") for r in reasons_of(last_day, d.backup.key))
    assert all(d.keep_until is None for d in p.delete)
