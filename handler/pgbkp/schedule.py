"""CRON_SCHEDULE: when the local runner backs up, as a cron expression evaluated in TIMEZONE.

The expression is parsed and iterated by ``cronsim``, which follows Debian cron on daylight-saving
days: a fixed-time job whose local time does not exist that day (the clocks jump over it) runs at the
first valid minute after, and one whose local time happens twice runs once, at the first. Jobs that
repeat every minute or hour (``*`` in the minute or hour field) simply follow real elapsed time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from pgbkp.config import ConfigError

DEFAULT_SCHEDULE = "0 3 * * *"

#: The aliases Vixie/Debian cron accept, as their 5-field forms (``@reboot`` is not a schedule).
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_FIX = ("Fix: use 5 fields (minute hour day-of-month month day-of-week), e.g. CRON_SCHEDULE='0 3 * * *', "
        f"or one of {', '.join(ALIASES)}.")


@dataclass(frozen=True)
class Schedule:
    """A checked cron expression in a time zone; :meth:`next_after` gives the next run."""

    expression: str
    timezone: ZoneInfo

    @property
    def fields(self) -> str:
        """The 5-field form (aliases expanded)."""
        return ALIASES.get(self.expression.lower(), self.expression)

    def times_after(self, when: datetime) -> Iterator[datetime]:
        """Run times strictly after ``when`` (an aware datetime), in TIMEZONE, in order."""
        if when.tzinfo is None:
            raise ValueError("times_after needs an aware datetime")
        start = when.astimezone(self.timezone)
        for t in CronSim(self.fields, start):
            # cronsim iterates fixed-time expressions on the wall clock, so from the second pass of a
            # repeated hour it can return the first pass, which is already over: skip those.
            if t.astimezone(UTC) > when.astimezone(UTC):
                yield t

    def next_after(self, when: datetime) -> datetime:
        return next(self.times_after(when))

    def period_after(self, when: datetime) -> timedelta:
        """The gap between the two runs that follow ``when``: what "one schedule period" means there."""
        it = self.times_after(when)
        first = next(it)
        return next(it).astimezone(UTC) - first.astimezone(UTC)


def parse(expression: str | None, timezone: ZoneInfo) -> Schedule:
    """Check a CRON_SCHEDULE value (empty means the default) and bind it to TIMEZONE."""
    expr = " ".join((expression or "").split()) or DEFAULT_SCHEDULE
    fields = ALIASES.get(expr.lower())
    if fields is None:
        if expr.startswith("@"):
            raise ConfigError(f"CRON_SCHEDULE: unknown alias {expr!r}. {_FIX}")
        if len(expr.split()) != 5:
            raise ConfigError(f"CRON_SCHEDULE: {expr!r} has {len(expr.split())} fields, not 5. {_FIX}")
        fields = expr
    try:
        next(CronSim(fields, datetime.now(timezone)))
    except CronSimError as exc:
        raise ConfigError(f"CRON_SCHEDULE: {expr!r} is not a valid cron expression ({exc}). {_FIX}") from None
    except StopIteration:
        raise ConfigError(f"CRON_SCHEDULE: {expr!r} never matches a date (e.g. 30 February). {_FIX}") from None
    return Schedule(expr, timezone)
