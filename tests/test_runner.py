"""`pgbkp serve`: a run at start, then on CRON_SCHEDULE ticks, never overlapping; a clean stop on SIGTERM.

The schedule tests drive the real runner and the real backup (PostgreSQL + S3 server) with a fake clock
and a fake sleep; the signal tests run `pgbkp serve` as a process, as docker-compose does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pgbkp import config, health, pipeline, runner, schedule
from tests.helpers import PGBKP, all_keys, make_bucket, pending_uploads, s3_client
from tests.servers import PgCluster, S3Server

SP = ZoneInfo("America/Sao_Paulo")


class FakeClock:
    """Wall clock and sleep for the runner; a backup 'takes' the time the test says."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.naps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.naps.append(seconds)
        self.now += timedelta(seconds=seconds)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def messages() -> Iterator[list[str]]:
    handler = Records()
    logger = logging.getLogger("pgbkp")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture
def small_db(pg: PgCluster) -> Iterator[str]:
    name = f"runner_{uuid.uuid4().hex[:8]}"
    pg.create_database(name)
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g", name)
    yield name
    pg.drop_database(name)


def real_backup_env(pg: PgCluster, s3: S3Server, bucket: str, db: str) -> dict[str, str]:
    """One connection whose every other database is ignored, so a run backs up exactly ``db``."""
    others = [d for d in pg.databases() if d != db]
    return {**s3.env(), "PG_URLS": f"main|bucket={bucket}|ignore={','.join(others)}|{pg.url()}",
            "TIMEZONE": "America/Sao_Paulo"}


def timed(backup: runner.BackupFn, clock: FakeClock, durations: list[float], calls: list[datetime],
          then: Callable[[], None]) -> runner.BackupFn:
    """The real backup, plus fake time passing; ``then`` runs after the last planned call."""

    def run(should_stop: Callable[[], bool], observer: pipeline.Observer) -> runner.Outcome:
        calls.append(clock.now)
        outcome = backup(should_stop, observer)
        clock.now += timedelta(seconds=durations[len(calls) - 1])
        if len(calls) == len(durations):
            then()
        return outcome

    return run


def test_serve_runs_at_start_then_on_every_tick_and_skips_overlaps(
        pg: PgCluster, s3: S3Server, small_db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        messages: list[str]) -> None:
    bucket = make_bucket(s3)
    for k, v in real_backup_env(pg, s3, bucket, small_db).items():
        monkeypatch.setenv(k, v)
    clock = FakeClock(datetime(2025, 5, 14, 10, 0, 30, tzinfo=SP))
    calls: list[datetime] = []
    holder: dict[str, runner.Runner] = {}
    backup = timed(runner.backup_with_handler, clock, [10, 10, 150, 5], calls,
                   lambda: holder["r"].request_stop("test over"))
    status_file = tmp_path / "health.json"
    r = runner.Runner(backup=backup, schedule=schedule.parse("* * * * *", SP), clock=clock, sleep=clock.sleep,
                      health_file=status_file)
    holder["r"] = r
    assert r.serve() == 0

    def hm(t: datetime) -> str:
        return t.astimezone(SP).strftime("%H:%M:%S")

    # At start, then on the next two ticks; the third run took 150 s, so 10:03 and 10:04 were skipped.
    assert [hm(t) for t in calls] == ["10:00:30", "10:01:00", "10:02:00", "10:05:00"]
    assert max(clock.naps) <= runner.MAX_NAP
    skipped = [m for m in messages if m.startswith("skipped")]
    assert skipped == ["skipped 2 scheduled run(s) at 2025-05-14T10:03:00-03:00, 2025-05-14T10:04:00-03:00: "
                       "the run started at 2025-05-14T10:02:00-03:00 was still going"]
    assert "next run at 2025-05-14T10:01:00-03:00 (America/Sao_Paulo, CRON_SCHEDULE='* * * * *')" in messages
    assert "next run at 2025-05-14T10:05:00-03:00 (America/Sao_Paulo, CRON_SCHEDULE='* * * * *')" in messages
    assert sum(1 for m in messages if m.startswith("run ok")) == 4
    assert all_keys(s3, bucket)  # the real backups landed

    status = health.read(status_file)
    assert status.last_run is not None and status.last_run.status == "ok"
    assert status.last_run.started_at == "2025-05-14T10:05:00-03:00"
    assert status.last_success_at == "2025-05-14T10:05:05-03:00"
    assert status.running_since is None and status.schedule == "* * * * *"
    assert f"main/{small_db}" in status.last_run.summary


def test_cron_disabled_runs_once_with_the_backups_exit_code(tmp_path: Path) -> None:
    for code in (0, 1, 2):
        calls: list[int] = []

        def backup(should_stop: Callable[[], bool], observer: pipeline.Observer, code: int = code,
                   calls: list[int] = calls) -> runner.Outcome:
            calls.append(1)
            return runner.Outcome(code, "summary")

        r = runner.Runner(backup=backup, schedule=None, sleep=lambda s: pytest.fail("no sleeping when run once"),
                          health_file=tmp_path / f"h{code}.json")
        assert r.serve() == code
        assert calls == [1]
        assert health.read(tmp_path / f"h{code}.json").schedule is None


def test_a_run_that_raises_is_a_failed_run_not_a_dead_scheduler(tmp_path: Path) -> None:
    utc = ZoneInfo("UTC")
    clock = FakeClock(datetime(2025, 5, 14, 10, 0, 30, tzinfo=utc))
    holder: dict[str, runner.Runner] = {}
    calls: list[datetime] = []

    def backup(should_stop: Callable[[], bool], observer: pipeline.Observer) -> runner.Outcome:
        calls.append(clock.now)
        if len(calls) == 1:
            raise config.ConfigError("S3_BUCKET: bucket 'x' does not exist")
        if len(calls) == 2:
            raise RuntimeError("boom")
        holder["r"].request_stop("test over")
        return runner.Outcome(0, "ok")

    r = runner.Runner(backup=backup, schedule=schedule.parse("@hourly", utc), clock=clock, sleep=clock.sleep,
                      health_file=tmp_path / "h.json")
    holder["r"] = r
    assert r.serve() == 0
    assert [t.strftime("%H:%M") for t in calls] == ["10:00", "11:00", "12:00"]


def test_stop_request_lets_the_current_database_finish_within_the_grace_period() -> None:
    mono = [100.0]
    r = runner.Runner(backup=lambda s, o: runner.Outcome(0, ""), schedule=None, grace=5, monotonic=lambda: mono[0])
    job = object()
    assert not r.should_stop()
    r._observer.started(job)  # type: ignore[arg-type]
    r.request_stop("SIGTERM")
    assert r.stopping and not r.should_stop()  # the database in flight goes on...
    mono[0] += 4.9
    assert not r.should_stop()
    mono[0] += 0.2
    assert r.should_stop()  # ...until the grace period is over
    r._observer.finished(job, pipeline.DatabaseResult("c", "d"))  # type: ignore[arg-type]
    assert r.should_stop()  # and no new database starts


def test_second_signal_aborts_at_once() -> None:
    r = runner.Runner(backup=lambda s, o: runner.Outcome(0, ""), schedule=None, grace=60, monotonic=lambda: 0.0)
    r._observer.started(object())  # type: ignore[arg-type]
    r.request_stop("SIGTERM")
    assert not r.should_stop()
    r.request_stop("SIGINT")
    assert r.should_stop()


# --------------------------------------------------------------------------------------------------
# pgbkp serve as a process


@pytest.fixture(scope="module")
def big_db(pg: PgCluster) -> Iterator[str]:
    """About 45 MB of dump that compresses poorly: several seconds at level 9 on one thread."""
    name = f"runner_big_{uuid.uuid4().hex[:8]}"
    pg.create_database(name)
    pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) || md5((g * 7)::text) AS h FROM generate_series(1, 600000) g",
            name)
    yield name
    pg.drop_database(name)


def serve(env: dict[str, str]) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "ZIP_", "RETENTION_"))}
    full.update({"LOG_FILE": "off", "HEALTHCHECK_URL": "", "LOG_FORMAT": "json", **env})
    return subprocess.Popen([PGBKP, "serve"], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"pgbkp serve exited ({proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def signal_during_upload(pg: PgCluster, s3: S3Server, db: str, tmp_path: Path, grace: str,
                         ) -> tuple[str, subprocess.CompletedProcess[str], float]:
    bucket = make_bucket(s3)
    status_file = tmp_path / "health.json"
    proc = serve({**real_backup_env(pg, s3, bucket, db), "S3_PART_SIZE_MB": "5", "COMPRESSION_THREADS": "1",
                  "ZIP_COMPRESSION_LEVEL": "9", "SHUTDOWN_GRACE_SECONDS": grace, "HEALTH_FILE": str(status_file)})
    wait_for("a multipart upload", lambda: bool(pending_uploads(s3, bucket)), proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return bucket, done, time.monotonic() - sent


def test_sigterm_during_an_upload_aborts_it_cleanly(pg: PgCluster, s3: S3Server, big_db: str,
                                                    tmp_path: Path) -> None:
    bucket, done, took = signal_during_upload(pg, s3, big_db, tmp_path, grace="0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert took < 10
    assert pending_uploads(s3, bucket) == []
    assert all_keys(s3, bucket) == []  # no partial object either
    log = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    said = [d["message"] for d in log]
    assert "received SIGTERM: no new database will start; the current one has 0s to finish, then its upload " \
           "is aborted" in said
    assert "shutdown grace period (0s) is over: aborting the current upload" in said
    assert any("stopped before the dump finished" in m for m in said)
    assert "runner stopped" in said
    status = health.read(tmp_path / "health.json")
    assert status.last_run is not None and status.last_run.status == "failed"


def test_sigterm_with_grace_lets_the_upload_finish(pg: PgCluster, s3: S3Server, big_db: str,
                                                   tmp_path: Path) -> None:
    bucket, done, _ = signal_during_upload(pg, s3, big_db, tmp_path, grace="60")
    assert done.returncode == 0, done.stderr[-3000:]
    assert pending_uploads(s3, bucket) == []
    [key] = all_keys(s3, bucket)
    assert key.startswith(f"main/{big_db}/")
    head = s3_client(s3).head_object(Bucket=bucket, Key=key)
    assert int(head["Metadata"]["raw-size"]) > 40_000_000
    assert health.read(tmp_path / "health.json").last_run.status == "ok"  # type: ignore[union-attr]


def test_sigterm_while_waiting_for_the_next_tick_exits_at_once(pg: PgCluster, s3: S3Server, small_db: str,
                                                               tmp_path: Path) -> None:
    bucket = make_bucket(s3)
    status_file = tmp_path / "health.json"
    proc = serve({**real_backup_env(pg, s3, bucket, small_db), "CRON_SCHEDULE": "@yearly",
                  "HEALTH_FILE": str(status_file)})
    wait_for("the next run time", lambda: status_file.exists() and health.read(status_file).next_run_at is not None,
             proc)
    assert health.read(status_file).last_run.status == "ok"  # type: ignore[union-attr]
    checked = subprocess.run([PGBKP, "health"], env={**os.environ, "HEALTH_FILE": str(status_file),
                                                     **real_backup_env(pg, s3, bucket, small_db)},
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("healthy: last success ")
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5
    assert proc.returncode == 0, err[-2000:]
    assert "received SIGINT: exiting (no backup in progress)" in err


# --------------------------------------------------------------------------------------------------
# Settings


def test_bad_settings_stop_serve_before_any_backup(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "CRON", "LOG_"))}
    base.update({"PG_URLS": "postgres://u@127.0.0.1:1/postgres", "S3_BUCKET": "bkt", "LOG_FILE": "off",
                 "HEALTH_FILE": str(tmp_path / "h.json")})
    for extra, says in [
        ({"CRON_SCHEDULE": "0 3 * *"}, "CRON_SCHEDULE: '0 3 * *' has 4 fields, not 5. Fix: "),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT: 'xml' is not a format"),
        ({"HEALTHCHECK_URL": "hc-ping.com/abc"}, "HEALTHCHECK_URL: not an http(s) URL"),
        ({"LOG_FILE": "/proc/pgbkp/pg-backup.log"}, "LOG_FILE: cannot write '/proc/pgbkp/pg-backup.log'"),
    ]:
        out = subprocess.run([PGBKP, "serve"], env={**base, **extra}, capture_output=True, text=True, timeout=60,
                             check=False)
        assert out.returncode == 2, (extra, out.stderr)
        assert says in out.stderr, (extra, out.stderr)
        assert not (tmp_path / "h.json").exists()  # nothing ran


@pytest.mark.parametrize(("extra", "says"), [
    ({"CRON_ENABLED": "sometimes"}, "CRON_ENABLED: 'sometimes' is not true or false"),
    ({"SHUTDOWN_GRACE_SECONDS": "-1"}, "SHUTDOWN_GRACE_SECONDS: -1 is out of range"),
    ({"SHUTDOWN_GRACE_SECONDS": "soon"}, "SHUTDOWN_GRACE_SECONDS: 'soon' is not a whole number"),
])
def test_bad_runner_settings_are_config_errors(extra: dict[str, str], says: str) -> None:
    cfg = config.load({"PG_URLS": "postgres://u@127.0.0.1:1/postgres", "S3_BUCKET": "bkt", **extra})
    with pytest.raises(config.ConfigError, match=re.escape(says)):
        runner.make_runner(cfg, backup=lambda stop, obs: runner.Outcome(0, ""))


def test_runner_settings_from_the_environment() -> None:
    cfg = config.load({"PG_URLS": "postgres://u@127.0.0.1:1/postgres", "S3_BUCKET": "bkt", "TIMEZONE": "Europe/Berlin",
                       "CRON_SCHEDULE": "@weekly", "SHUTDOWN_GRACE_SECONDS": "7", "HEALTH_FILE": "/x/h.json"})
    r = runner.make_runner(cfg, backup=lambda stop, obs: runner.Outcome(0, ""))
    assert r.schedule == schedule.Schedule("@weekly", ZoneInfo("Europe/Berlin"))
    assert r.grace == 7 and r.status.timezone == "Europe/Berlin"
    once = runner.make_runner(config.load({**cfg.env, "CRON_ENABLED": "false"}),
                              backup=lambda stop, obs: runner.Outcome(0, ""))
    assert once.schedule is None and once.status.schedule is None


def test_log_file_default_and_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pgbkp import logs

    assert logs.log_file_path("off") is None and logs.log_file_path("") is None
    assert logs.log_file_path(str(tmp_path / "x.log")) == tmp_path / "x.log"
    monkeypatch.setattr(logs, "DEFAULT_LOG_FILE", str(tmp_path / "pg-backup.log"))
    assert logs.log_file_path(None) == tmp_path / "pg-backup.log"  # writable folder: the default applies
    monkeypatch.setattr(logs, "DEFAULT_LOG_FILE", str(tmp_path / "missing" / "pg-backup.log"))
    assert logs.log_file_path(None) is None  # no such folder (not in a container): no file


def test_log_file_gets_plain_redacted_lines(tmp_path: Path) -> None:
    from pgbkp import logs
    from pgbkp.redact import Secret

    secret = Secret(f"file-secret-{uuid.uuid4().hex}")
    path = tmp_path / "sub" / "pg-backup.log"
    for fmt in ("text", None):
        handler = logs.add_file(path, fmt)
        try:
            logging.getLogger("pgbkp.runner").warning("connecting with %s", secret.reveal())
        finally:
            logging.getLogger("pgbkp").removeHandler(handler)
            handler.close()
    text_line, json_line = path.read_text(encoding="utf-8").splitlines()
    assert text_line.endswith("WARNING connecting with **redacted**")
    assert json.loads(json_line)["message"] == "connecting with **redacted**"
