"""Retention planning: decide which backups to keep and which to delete.

The planner is a pure function so that every decision can be explained and
tested without a bucket or a clock: the caller lists the objects, parses their
timestamps, reads "now" once, and applies the resulting plan.  Scoping (only
this database's own files are candidates) and ordering (plan only after this
run's upload is verified) are the caller's job, not the planner's.

Rules, in short:

* ``days=N`` keeps calendar days: today and the N-1 days before it, and within
  that window only the newest backup of each day.
* ``weeks=W`` additionally keeps the newest backup of each of the last W ISO
  weeks (the current week is the first); ``months=M`` the newest of each of the
  last M calendar months (the current month is the first).
* ``keep_last=N`` (restic's ``--keep-last``) keeps the N newest backups whatever
  their age; N=1, the default, is "never delete the newest".  It is a floor
  under the rules above, not a rule of its own: with days, weeks and months all
  0 retention is off and nothing is deleted, whatever N is.
* Safety nets: the N newest backups, ``protect`` keys and backups dated after
  today are never deleted.  All values 0 means retention is off.

For S3 Object Lock the same rules give dates: :func:`lock_date` is the day a
new backup's lock ends (the end of the finest rule's window), and a kept
decision's ``keep_until`` is the day the rules stop keeping it, once the
periods it is the newest of are over (so no later backup can take its place).
``keep_last`` gives no date: what it keeps depends on backups not yet taken, so
no lock is made to cover it (a backup it keeps stays, unlocked, until it leaves
the N newest).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = [
    "Backup",
    "Decision",
    "Plan",
    "Policy",
    "local_midnight",
    "local_today",
    "lock_date",
    "plan",
    "reason_keep_last",
]

REASON_OFF = "retention off"
REASON_FUTURE = "dated after today"
REASON_PROTECTED = "protected: written by this run"
REASON_NEWEST = "newest backup, always kept"


def reason_keep_last(n: int) -> str:
    """Why ``keep_last`` keeps a backup no rule keeps: N=1 is today's "never delete the newest"."""
    return REASON_NEWEST if n == 1 else f"one of the {n} newest"


@dataclass(frozen=True)
class Backup:
    """One candidate object; ``taken`` is the naive local time from its filename."""

    key: str
    taken: datetime

    def __post_init__(self) -> None:
        # Mixing aware and naive datetimes would fail deep inside sorting; the
        # filename carries local wall-clock time, so it must arrive naive.
        if self.taken.tzinfo is not None:
            raise ValueError(f"retention backup {self.key!r}: taken must be a naive local datetime")


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


@dataclass(frozen=True)
class Policy:
    """How much history to keep; each of days, weeks and months at 0 switches that rule off.
    ``keep_last`` (at least 1) is the floor of newest backups always kept while any rule is on."""

    days: int = 0
    weeks: int = 0
    months: int = 0
    keep_last: int = 1

    def __post_init__(self) -> None:
        for name in ("days", "weeks", "months", "keep_last"):
            value = getattr(self, name)
            # bool is an int subclass; True as "1 day" would be a config bug.
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"retention policy {name}: expected int, got {type(value).__name__}")
            if value < 0:
                raise ValueError(f"retention policy {name}: must be >= 0, got {value}")
        if self.keep_last < 1:  # 0 would let the rules delete every backup there is
            raise ValueError(f"retention policy keep_last: must be >= 1, got {self.keep_last}")

    @property
    def enabled(self) -> bool:
        return bool(self.days or self.weeks or self.months)

    def describe(self) -> str:
        """Human summary for logs, e.g. ``7 calendar days, 4 ISO weeks, 12 months``."""
        parts = []
        if self.days:
            parts.append(_plural(self.days, "calendar day"))
        if self.weeks:
            parts.append(_plural(self.weeks, "ISO week"))
        if self.months:
            parts.append(_plural(self.months, "month"))
        if parts and self.keep_last > 1:
            parts.append(f"at least the {self.keep_last} newest")
        return ", ".join(parts) if parts else "off"


@dataclass(frozen=True)
class Decision:
    """A backup and every reason it is kept (or, in ``Plan.delete``, deleted).

    ``keep_until``: for a kept backup, the local date from which the rules stop keeping it, counted
    only over the periods (day, ISO week, month) it is the newest of and that are over, so that no
    later backup can take its place; None when no such period exists yet, or only a safety net keeps it.
    """

    backup: Backup
    reasons: tuple[str, ...]
    keep_until: date | None = None


@dataclass(frozen=True)
class Plan:
    """The outcome of :func:`plan`; both tuples are ordered newest first."""

    keep: tuple[Decision, ...]
    delete: tuple[Decision, ...]


def local_today(now_utc: datetime, tz: ZoneInfo) -> date:
    """The calendar date of ``now_utc`` in ``tz``.

    Kept here (rather than calling ``date.today()``) so the day boundary,
    including around DST changes, is decided in one tested place.
    """
    if now_utc.tzinfo is None or now_utc.utcoffset() is None:
        raise ValueError("local_today: now_utc must be timezone-aware")
    return now_utc.astimezone(tz).date()


def _shift_days(d: date, n: int) -> date:
    return d + timedelta(days=n)


def _shift_weeks(d: date, n: int) -> date:
    return d - timedelta(days=d.weekday()) + timedelta(weeks=n)


def _shift_months(d: date, n: int) -> date:
    index = d.year * 12 + d.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


# The first day of the period ``n`` periods after the one holding ``d`` (the day, its ISO week, its
# month): with n = the rule's count, the first day the rule no longer keeps a backup taken on ``d``.
_Shift = Callable[[date, int], date]


def _windows(policy: Policy) -> list[tuple[int, _Shift]]:
    """The rules that are on, finest first, as (count, shift); the same order as ``plan``'s rules."""
    pairs = ((policy.days, _shift_days), (policy.weeks, _shift_weeks), (policy.months, _shift_months))
    return [(n, shift) for n, shift in pairs if n]


def _after(shift: _Shift, d: date, n: int) -> date:
    try:
        return shift(d, n)
    except (OverflowError, ValueError):  # past year 9999: as good as never
        return date.max


def lock_date(day: date, policy: Policy) -> date:
    """The local date whose start ends the Object Lock of a backup taken on ``day``: the end of the
    window of the finest rule that is on (``day + days``; else the Monday ``weeks`` weeks after its
    week's; else the 1st of the month ``months`` after its month). Exact for a schedule as frequent as
    that rule; a backup a coarser rule keeps longer is extended later (``Decision.keep_until``)."""
    windows = _windows(policy)
    if not windows:
        raise ValueError("retention lock_date: retention is off, so there is no date to lock until")
    n, shift = windows[0]
    return _after(shift, day, n)


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The start of ``day`` in ``tz``, in UTC. Where midnight does not exist (a DST change at 00:00),
    the moment the day starts."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


# A rule maps a date to the label of its bucket, or None when the date falls
# outside the rule's window.  Each in-window bucket keeps its newest backup.
_Bucket = Callable[[date], str | None]


def _day_rule(today: date, days: int) -> tuple[_Bucket, str]:
    first = today - timedelta(days=days - 1)

    def bucket(d: date) -> str | None:
        return d.isoformat() if d >= first else None

    return bucket, f"older than {_plural(days, 'calendar day')}"


def _week_rule(today: date, weeks: int) -> tuple[_Bucket, str]:
    first_monday = today - timedelta(days=today.weekday() + 7 * (weeks - 1))

    def bucket(d: date) -> str | None:
        if d < first_monday:
            return None
        iso = d.isocalendar()
        return f"ISO week {iso.year}-W{iso.week:02d}"

    return bucket, f"older than {_plural(weeks, 'ISO week')}"


def _month_rule(today: date, months: int) -> tuple[_Bucket, str]:
    first_index = today.year * 12 + today.month - 1 - (months - 1)

    def bucket(d: date) -> str | None:
        if d.year * 12 + d.month - 1 < first_index:
            return None
        return f"month {d.year}-{d.month:02d}"

    return bucket, f"older than {_plural(months, 'month')}"


def _order(b: Backup) -> tuple[datetime, str]:
    return (b.taken, b.key)


def _unique_newest_first(backups: Iterable[Backup]) -> list[Backup]:
    by_key: dict[str, Backup] = {}
    for b in backups:
        seen = by_key.get(b.key)
        # Same key twice is one object; if the timestamps disagree, pick one
        # deterministically so the plan does not depend on input order.
        if seen is None or _order(b) > _order(seen):
            by_key[b.key] = b
    return sorted(by_key.values(), key=_order, reverse=True)


def plan(
    backups: Iterable[Backup],
    today: date,
    policy: Policy,
    *,
    protect: Collection[str] = (),
) -> Plan:
    """Split ``backups`` into keep and delete, each decision with its reasons.

    ``today`` is the local calendar date (see :func:`local_today`).  ``protect``
    names keys that must survive whatever the rules say, typically the object
    this run has just uploaded.
    """
    if isinstance(protect, str):
        raise TypeError("retention plan: protect must be a collection of keys, not a single str")
    ordered = _unique_newest_first(backups)
    if not policy.enabled:
        return Plan(keep=tuple(Decision(b, (REASON_OFF,)) for b in ordered), delete=())

    keep: dict[str, list[str]] = {b.key: [] for b in ordered}
    drop: dict[str, list[str]] = {b.key: [] for b in ordered}
    until: dict[str, date] = {}

    rules: list[tuple[_Bucket, str]] = []
    if policy.days:
        rules.append(_day_rule(today, policy.days))
    if policy.weeks:
        rules.append(_week_rule(today, policy.weeks))
    if policy.months:
        rules.append(_month_rule(today, policy.months))

    # Future-dated backups (clock skew) are kept and stay out of the buckets,
    # so they cannot displace the real newest backup of today's day/week/month.
    current = [b for b in ordered if b.taken.date() <= today]
    for (bucket_of, too_old), (count, shift) in zip(rules, _windows(policy), strict=True):
        filled: set[str] = set()
        for b in current:  # newest first: the first one seen in a bucket wins
            label = bucket_of(b.taken.date())
            if label is None:
                drop[b.key].append(too_old)
            elif label in filled:
                drop[b.key].append(f"not the newest of {label}")
            else:
                filled.add(label)
                keep[b.key].append(f"newest of {label}")
                if _after(shift, b.taken.date(), 1) <= today:  # its period is over: it stays the newest
                    end = _after(shift, b.taken.date(), count)
                    until[b.key] = max(until.get(b.key, end), end)

    protected = set(protect)
    for b in ordered:
        if b.taken.date() > today:
            keep[b.key].append(REASON_FUTURE)
        if b.key in protected:
            keep[b.key].append(REASON_PROTECTED)
    # The floor: the N newest (future-dated ones count, as they are kept anyway), each with this
    # reason only when nothing else keeps it, so a plan lists the floor where it made the difference.
    for b in ordered[:policy.keep_last]:
        if not keep[b.key]:
            keep[b.key].append(reason_keep_last(policy.keep_last))

    return Plan(
        keep=tuple(Decision(b, tuple(keep[b.key]), until.get(b.key)) for b in ordered if keep[b.key]),
        delete=tuple(Decision(b, tuple(drop[b.key])) for b in ordered if not keep[b.key]),
    )
