"""Health: healthchecks.io-style pings (against a local HTTP server that records them), the status file,
and `pgbkp health`, the container's HEALTHCHECK."""

from __future__ import annotations

import http.server
import logging
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pgbkp import health, pipeline, runner, schedule
from tests.helpers import PGBKP, make_bucket
from tests.servers import PgCluster, S3Server, free_port

SP = ZoneInfo("America/Sao_Paulo")


@dataclass
class Recorder:
    url: str
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, body
    status: int = 200


@pytest.fixture
def hc() -> Iterator[Recorder]:
    """A local stand-in for hc-ping.com: records every request, answers ``status``."""
    port = free_port()
    rec = Recorder(f"http://127.0.0.1:{port}/ping/{uuid.uuid4()}")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8")
            rec.requests.append(("POST", self.path, body))
            self.send_response(rec.status)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep(logging.WARNING)
    logger = logging.getLogger("pgbkp")
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def once(backup: runner.BackupFn, pinger: health.Pinger, tmp_path: Path) -> runner.Runner:
    r = runner.Runner(backup=backup, schedule=None, pinger=pinger, health_file=tmp_path / "h.json")
    r.serve()
    return r


def test_pings_start_then_success_with_the_summary_of_a_real_backup(
        hc: Recorder, pg: PgCluster, s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    db = f"health_{uuid.uuid4().hex[:8]}"
    pg.create_database(db)
    try:
        bucket = make_bucket(s3)
        others = ",".join(d for d in pg.databases() if d != db)
        for k, v in {**s3.env(), "PG_URLS": f"main|bucket={bucket}|ignore={others}|{pg.url()}"}.items():
            monkeypatch.setenv(k, v)
        once(runner.backup_with_handler, health.Pinger(hc.url), tmp_path)
    finally:
        pg.drop_database(db)
    base = path_of(hc.url)
    assert [(m, p) for m, p, _ in hc.requests] == [("POST", base + "/start"), ("POST", base)]
    body = hc.requests[1][2]
    assert body.startswith("1 database(s): all ok\nok       main/" + db + " s3://" + bucket + "/main/" + db + "/")
    assert "dumped" in body and "stored" in body


def test_pings_fail_with_the_error_when_a_database_fails(hc: Recorder, tmp_path: Path) -> None:
    def failing(should_stop: Callable[[], bool], observer: pipeline.Observer) -> runner.Outcome:
        rows = [{"connection": "main", "database": "shop", "bucket": "b", "key": "main/shop/x.zip", "status": "failed",
                 "raw_bytes": 0, "object_bytes": 0, "seconds": 0.5, "error": "pg_dump: permission denied"}]
        return runner.Outcome(1, runner.summarize(rows), rows)

    once(failing, health.Pinger(hc.url + "/"), tmp_path)
    base = path_of(hc.url)
    assert [p for _, p, _ in hc.requests] == [base + "/start", base + "/fail"]
    assert "failed   main/shop s3://b/main/shop/x.zip" in hc.requests[1][2]
    assert "pg_dump: permission denied" in hc.requests[1][2]


def test_a_failing_ping_is_logged_and_never_fails_the_backup(hc: Recorder, tmp_path: Path,
                                                              warnings: list[str]) -> None:
    hc.status = 500
    dead = f"http://127.0.0.1:{free_port()}/ping/{uuid.uuid4()}"

    def ok(should_stop: Callable[[], bool], observer: pipeline.Observer) -> runner.Outcome:
        return runner.Outcome(0, "1 database(s): all ok")

    for url in (hc.url, dead):
        r = runner.Runner(backup=ok, schedule=None, pinger=health.Pinger(url, timeout=2),
                          health_file=tmp_path / "h.json")
        assert r.serve() == 0
    assert "health ping 'start' to 127.0.0.1 failed: HTTP 500 (the backup itself is not affected)" in warnings
    assert any(w.startswith("health ping 'success' to 127.0.0.1 failed: ") and "refused" in w for w in warnings)
    assert not any(hc.url.split("/ping/")[1] in w for w in warnings)  # the URL is a secret


def test_no_url_no_ping() -> None:
    assert health.Pinger(None).start() is False
    assert health.Pinger("  ").success("x") is False


def test_a_url_that_is_not_http_is_a_config_error() -> None:
    from pgbkp.config import ConfigError

    with pytest.raises(ConfigError, match="HEALTHCHECK_URL: not an http"):
        health.Pinger("ftp://example.com/x")


# --------------------------------------------------------------------------------------------------
# The status file and its verdict


def status(**kw: object) -> health.Status:
    base: dict[str, object] = {"started_at": "2025-05-14T03:00:00-03:00", "schedule": "0 3 * * *",
                               "timezone": "America/Sao_Paulo"}
    base.update(kw)
    return health.Status(**base)  # type: ignore[arg-type]


def last(status_: str, at: str = "2025-05-14T03:00:00-03:00", summary: str = "1 database(s): all ok") -> health.LastRun:
    return health.LastRun(at, at, status_, summary)


def test_healthy_within_two_periods_of_the_last_success() -> None:
    s = status(last_run=last("ok"), last_success_at="2025-05-14T03:10:00-03:00",
               next_run_at="2025-05-15T03:00:00-03:00")
    ok, why = health.evaluate(s, datetime(2025, 5, 16, 3, 9, tzinfo=SP))
    assert ok, why
    assert why == "last success 2025-05-14T03:10:00-03:00; next run 2025-05-15T03:00:00-03:00"
    ok, why = health.evaluate(s, datetime(2025, 5, 16, 3, 11, tzinfo=SP))
    assert not ok
    assert why == ("last success 2025-05-14T03:10:00-03:00, more than two schedule periods (1d each, "
                   "CRON_SCHEDULE='0 3 * * *') ago")


def test_unhealthy_when_the_last_run_failed() -> None:
    s = status(last_run=last("failed", summary="1 database(s): 1 failed, 0 not started\nfailed   main/x ..."),
               last_success_at="2025-05-13T03:10:00-03:00")
    ok, why = health.evaluate(s, datetime(2025, 5, 14, 3, 20, tzinfo=SP))
    assert not ok
    assert why == ("the last run, started 2025-05-14T03:00:00-03:00, failed: "
                   "1 database(s): 1 failed, 0 not started")


def test_first_run_in_progress_is_healthy_until_two_periods_pass() -> None:
    s = status(schedule="@hourly", running_since="2025-05-14T03:00:00-03:00")
    assert health.evaluate(s, datetime(2025, 5, 14, 4, 59, tzinfo=SP)) == (
        True, "no success since the runner started at 2025-05-14T03:00:00-03:00; a run is in progress since "
              "2025-05-14T03:00:00-03:00")
    ok, why = health.evaluate(s, datetime(2025, 5, 14, 5, 1, tzinfo=SP))
    assert not ok and "more than two schedule periods (1h each" in why


def test_period_is_measured_in_real_time_across_dst() -> None:
    berlin = "Europe/Berlin"
    s = status(timezone=berlin, schedule="30 2 * * *", last_run=last("ok", "2026-03-28T02:30:00+01:00"),
               last_success_at="2026-03-28T02:31:00+01:00")
    # The next run, on the short day, is at 03:00 +02: 23.5 h after the last; "one period" is that gap.
    assert schedule.parse("30 2 * * *", ZoneInfo(berlin)).period_after(
        datetime.fromisoformat("2026-03-28T02:31:00+01:00")) == timedelta(hours=23, minutes=30)
    assert health.evaluate(s, datetime.fromisoformat("2026-03-30T02:30:00+02:00"))[0]
    assert not health.evaluate(s, datetime.fromisoformat("2026-03-30T02:32:00+02:00"))[0]


def test_run_once_mode_only_looks_at_the_last_run() -> None:
    s = status(schedule=None, last_run=last("ok"))
    assert health.evaluate(s, datetime(2030, 1, 1, tzinfo=UTC))[0]


def test_status_file_round_trip_is_atomic_json(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "h.json"
    s = status(last_run=last("ok"), last_success_at="2025-05-14T03:10:00-03:00")
    health.write(path, s)
    assert health.read(path) == s
    assert [p.name for p in path.parent.iterdir()] == ["h.json"]  # no temp file left


def run_health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "HEALTH"))}
    base.update({"PG_URLS": "postgres://u@127.0.0.1:1/postgres", "S3_BUCKET": "bkt", **env})
    return subprocess.run([PGBKP, "health"], env=base, capture_output=True, text=True, check=False)


def test_pgbkp_health_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    out = run_health({"HEALTH_FILE": str(path)})
    assert out.returncode == 1
    assert out.stdout == f"unhealthy: no status file {path}: pgbkp serve has not started (or HEALTH_FILE differs)\n"

    now = datetime.now(SP).replace(microsecond=0)
    health.write(path, status(started_at=(now - timedelta(hours=1)).isoformat(), last_run=last("ok"),
                              last_success_at=(now - timedelta(hours=1)).isoformat()))
    out = run_health({"HEALTH_FILE": str(path)})
    assert (out.returncode, out.stdout.split(":")[0]) == (0, "healthy"), out

    health.write(path, status(last_run=last("failed"), last_success_at=now.isoformat()))
    out = run_health({"HEALTH_FILE": str(path)})
    assert (out.returncode, out.stdout.split(":")[0]) == (1, "unhealthy"), out

    health.write(path, status(last_run=last("ok"), last_success_at=(now - timedelta(days=3)).isoformat()))
    out = run_health({"HEALTH_FILE": str(path)})
    assert out.returncode == 1 and "more than two schedule periods" in out.stdout

    path.write_text("{not json", encoding="utf-8")
    out = run_health({"HEALTH_FILE": str(path)})
    assert out.returncode == 1 and out.stdout.startswith(f"unhealthy: cannot read the status file {path}")

    other = tmp_path / "other.json"
    health.write(other, status(last_run=last("ok"), last_success_at=now.isoformat()))
    out = subprocess.run([PGBKP, "health", "--file", str(other)], capture_output=True, text=True, check=False,
                         env={**os.environ, "PG_URLS": "postgres://u@127.0.0.1:1/postgres", "S3_BUCKET": "bkt"})
    assert out.returncode == 0, out
