"""Health of the local runner: pings to a healthchecks.io-style URL, and a status file for Docker.

A ping that fails is logged and forgotten: monitoring must never be the reason a backup fails.
``pgbkp serve`` rewrites the status file at start and around every run; ``pgbkp health`` (the
container's HEALTHCHECK) reads it and says unhealthy when the last run failed, or when no run
succeeded within two schedule periods.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pgbkp import schedule
from pgbkp.config import ConfigError
from pgbkp.redact import redact, register

log = logging.getLogger("pgbkp.health")

DEFAULT_HEALTH_FILE = "/tmp/pgbkp-health.json"
PING_TIMEOUT = 10.0
#: healthchecks.io keeps the first 100 kB of a ping body.
MAX_BODY = 100_000


class Pinger:
    """Pings ``<url>/start``, ``<url>`` and ``<url>/fail``. The URL is a capability (anyone holding it can
    report for us), so it is treated as a secret: logs name only its host."""

    def __init__(self, url: str | None, timeout: float = PING_TIMEOUT) -> None:
        checked = check_url(url)
        self.url = checked.rstrip("/") if checked else None
        self.timeout = timeout
        if self.url:
            register(self.url)

    def start(self, body: str = "") -> bool:
        return self._ping("/start", body)

    def success(self, body: str) -> bool:
        return self._ping("", body)

    def fail(self, body: str) -> bool:
        return self._ping("/fail", body)

    def _ping(self, suffix: str, body: str) -> bool:
        if not self.url:
            return False
        data = body.encode("utf-8")[:MAX_BODY]
        headers = {"Content-Type": "text/plain; charset=utf-8", "User-Agent": "pgbkp"}
        # check_url() allowed http(s) only
        request = urllib.request.Request(self.url + suffix, data=data, method="POST", headers=headers)  # noqa: S310
        host = urllib.parse.urlsplit(self.url).hostname or "?"
        what = suffix.lstrip("/") or "success"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310
                resp.read()
        except urllib.error.HTTPError as exc:
            log.warning("health ping %r to %s failed: HTTP %s (the backup itself is not affected)", what, host,
                        exc.code)
            return False
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            log.warning("health ping %r to %s failed: %s (the backup itself is not affected)", what, host,
                        redact(str(reason)))
            return False
        log.debug("health ping %r to %s sent", what, host)
        return True


def check_url(url: str | None) -> str | None:
    """HEALTHCHECK_URL must be http(s); checked at start so that a typo is not discovered at 3 a.m."""
    url = (url or "").strip()
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("HEALTHCHECK_URL: not an http(s) URL. Fix: e.g. https://hc-ping.com/<your-uuid>.")
    return url


# --------------------------------------------------------------------------------------------------
# The status file


@dataclass
class LastRun:
    started_at: str
    finished_at: str
    status: str  # ok | failed
    summary: str


@dataclass
class Status:
    """What ``pgbkp serve`` knows about itself; times are ISO 8601 with their UTC offset."""

    started_at: str
    schedule: str | None  # None when CRON_ENABLED=false: one run, no period
    timezone: str
    running_since: str | None = None
    last_run: LastRun | None = None
    last_success_at: str | None = None
    next_run_at: str | None = None

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Status:
        last = doc.get("last_run")
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__ and k != "last_run"}
        return cls(**known, last_run=LastRun(**last) if last else None)


def write(path: str | os.PathLike[str], status: Status) -> None:
    """Replace the file atomically, so that a health check never reads half of it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pgbkp-health-", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(status), f, indent=2, ensure_ascii=False)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: str | os.PathLike[str]) -> Status:
    with open(path, encoding="utf-8") as f:
        return Status.from_dict(json.load(f))


def evaluate(status: Status, now: datetime) -> tuple[bool, str]:
    """(healthy, why). Unhealthy when the last run failed, or when nothing succeeded within two schedule
    periods of the last success (of the runner's start, before any success)."""
    tz = ZoneInfo(status.timezone)
    if status.last_run and status.last_run.status != "ok":
        first_line = (status.last_run.summary.strip().splitlines() or ["no summary"])[0]
        return False, f"the last run, started {status.last_run.started_at}, failed: {first_line}"
    if status.schedule is None:
        if status.last_run:
            return True, f"the run started {status.last_run.started_at} succeeded"
        return True, f"the run started {status.running_since or status.started_at} is in progress"
    since = datetime.fromisoformat(status.last_success_at or status.started_at)
    period = schedule.parse(status.schedule, tz).period_after(since)
    deadline = since + 2 * period
    what = f"last success {status.last_success_at}" if status.last_success_at else \
        f"no success since the runner started at {status.started_at}"
    if now > deadline:
        return False, (f"{what}, more than two schedule periods ({_span(period)} each, "
                       f"CRON_SCHEDULE={status.schedule!r}) ago")
    running = f"; a run is in progress since {status.running_since}" if status.running_since else ""
    nxt = f"; next run {status.next_run_at}" if status.next_run_at else ""
    return True, f"{what}{running}{nxt}"


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}min" if seconds % 60 == 0 else f"{seconds}s"
