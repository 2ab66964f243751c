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
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pgbkp import config, health, pipeline, runner, schedule
from tests.helpers import PGBKP, all_keys, make_bucket, pending_uploads
from tests.s3proxy import Gate, S3Proxy
from tests.servers import PgCluster, S3Server
from tests.slowhttp import dribbling

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
    """The real backup at the first call, plus fake time passing; ``then`` runs after the last planned call.

    Later calls repeat the first outcome: object names carry the real minute, and a second backup under
    the same name is refused, so only one real backup fits in a test that runs within a minute."""
    first: list[runner.Outcome] = []

    def run(should_stop: Callable[[], bool], observer: pipeline.Observer) -> runner.Outcome:
        calls.append(clock.now)
        outcome = first[0] if first else backup(should_stop, observer)
        first[:] = [outcome]
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


class Served:
    """`pgbkp serve` as a process, as docker-compose runs it. A thread reads its log (JSON lines) as they
    come, so a test can act once a given line has appeared: signals are sent at known points."""

    def __init__(self, env: dict[str, str]) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "ZIP_", "RETENTION_"))}
        full.update({"LOG_FILE": "off", "HEALTHCHECK_URL": "", "LOG_FORMAT": "json", **env})
        self.proc = subprocess.Popen([PGBKP, "serve"], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def said(self) -> list[str]:
        """The log's messages (JSON lines), in order."""
        with self._cond:
            return [json.loads(line)["message"] for line in self.lines if line.startswith("{")]

    def wait_line(self, prefix: str) -> str:
        """Wait until a log message starts with ``prefix``; fail if the process exits first."""

        def found() -> str | None:
            return next((m for m in self.said if m.startswith(prefix)), None)

        with self._cond:
            self._cond.wait_for(lambda: found() is not None or self._eof, timeout=120)
        message = found()
        if message is None:
            self.kill()
            pytest.fail(f"pgbkp serve never logged {prefix!r} (exit {self.proc.poll()}):\n"
                        + "\n".join(self.lines[-30:]))
        return message

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def finish(self) -> int:
        """Wait for the exit (a hang guard, not a time limit), then for the whole log."""
        try:
            code = self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("pgbkp serve did not exit:\n" + "\n".join(self.lines[-30:]))
        self._reader.join(timeout=60)
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()
        self.proc.stdout.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def big_upload_env(pg: PgCluster, s3: S3Server, proxy: S3Proxy, bucket: str, db: str, grace: str,
                   status_file: Path) -> dict[str, str]:
    """A multipart upload (5 MB parts) through ``proxy``, where a test can hold its parts."""
    return {**real_backup_env(pg, s3, bucket, db), "S3_ENDPOINT": proxy.endpoint, "S3_PART_SIZE_MB": "5",
            "COMPRESSION_THREADS": "1", "ZIP_COMPRESSION_LEVEL": "1", "SHUTDOWN_GRACE_SECONDS": grace,
            "HEALTH_FILE": str(status_file)}


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[S3Proxy]:
    with S3Proxy(s3.endpoint) as p:
        yield p


def parts_held(proxy: S3Proxy) -> Gate:
    """Hold every part at the proxy: once one arrives, the database is mid-upload, and stays so."""
    return proxy.hold(lambda r: r.operation == "UploadPart")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_during_an_upload_aborts_it_cleanly(pg: PgCluster, s3: S3Server, proxy: S3Proxy, big_db: str,
                                                          tmp_path: Path, sig: signal.Signals) -> None:
    """SIGHUP (a closed terminal, a reload) stops as SIGTERM does: it used to kill the process mid-upload."""
    bucket = make_bucket(s3)
    gate = parts_held(proxy)
    with Served(big_upload_env(pg, s3, proxy, bucket, big_db, "0", tmp_path / "health.json")) as served:
        gate.wait_arrived(120)
        served.signal(sig)
        served.wait_line("shutdown grace period (0s) is over: aborting the current upload")  # parts still held
        gate.release()  # a part landing after the abort must not revive the upload either
        assert served.finish() == 0, served.lines[-30:]
    assert pending_uploads(s3, bucket) == []
    assert all_keys(s3, bucket) == []  # no partial object either
    said = served.said
    assert f"received {sig.name}: no new database will start; the current one has 0s to finish, then its upload " \
           "is aborted" in said
    assert "shutdown grace period (0s) is over: aborting the current upload" in said
    assert any("stopped before the dump finished" in m or "stopped while parts were in flight" in m for m in said)
    assert said[-1] == "runner stopped"
    status = health.read(tmp_path / "health.json")
    assert status.last_run is not None and status.last_run.status == "failed"
    assert status.running_since is None


def test_sigterm_with_grace_lets_the_upload_finish(pg: PgCluster, s3: S3Server, proxy: S3Proxy, big_db: str,
                                                   tmp_path: Path) -> None:
    bucket = make_bucket(s3)
    gate = parts_held(proxy)
    with Served(big_upload_env(pg, s3, proxy, bucket, big_db, "600", tmp_path / "health.json")) as served:
        gate.wait_arrived(120)
        served.signal(signal.SIGTERM)
        served.wait_line("received SIGTERM: no new database will start; the current one has 600s to finish")
        gate.release()  # the store answers again, within the grace period
        assert served.finish() == 0, served.lines[-30:]
    assert pending_uploads(s3, bucket) == []
    [key] = all_keys(s3, bucket)
    assert key.startswith(f"main/{big_db}/")
    last = health.read(tmp_path / "health.json").last_run
    assert last is not None and last.status == "ok"
    assert f"ok       main/{big_db} s3://{bucket}/{key} " in last.summary


def test_a_second_signal_aborts_while_a_part_is_stuck(pg: PgCluster, s3: S3Server, proxy: S3Proxy, big_db: str,
                                                      tmp_path: Path) -> None:
    """The store holds every part; the first signal leaves the long grace period running, the second one
    (a SIGHUP here) ends it: the upload is aborted while its parts are still in flight, and serve exits."""
    bucket = make_bucket(s3)
    status_file = tmp_path / "health.json"
    gate = parts_held(proxy)
    with Served(big_upload_env(pg, s3, proxy, bucket, big_db, "600", status_file)) as served:
        gate.wait_arrived(120)
        served.signal(signal.SIGTERM)
        served.wait_line("received SIGTERM: no new database will start; the current one has 600s to finish")
        served.signal(signal.SIGHUP)
        served.wait_line("shutdown grace period (0s) is over: aborting the current upload")  # parts still held
        gate.release()
        assert served.finish() == 0, served.lines[-30:]
    assert pending_uploads(s3, bucket) == []
    assert all_keys(s3, bucket) == []
    said = served.said
    assert "received SIGHUP again: aborting the current database now" in said
    assert "shutdown grace period (0s) is over: aborting the current upload" in said
    assert said[-1] == "runner stopped"
    last = health.read(status_file).last_run
    assert last is not None and last.status == "failed"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_while_waiting_for_the_next_tick_exits(pg: PgCluster, s3: S3Server, small_db: str,
                                                             tmp_path: Path, sig: signal.Signals) -> None:
    bucket = make_bucket(s3)
    status_file = tmp_path / "health.json"
    with Served({**real_backup_env(pg, s3, bucket, small_db), "CRON_SCHEDULE": "@yearly",
                 "HEALTH_FILE": str(status_file)}) as served:
        served.wait_line("next run at ")
        assert health.read(status_file).last_run.status == "ok"  # type: ignore[union-attr]
        checked = subprocess.run([PGBKP, "health"], env={**os.environ, "HEALTH_FILE": str(status_file),
                                                         **real_backup_env(pg, s3, bucket, small_db)},
                                 capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.startswith("healthy: last success ")
        served.signal(sig)
        assert served.finish() == 0, served.lines[-30:]
    assert served.said[-2:] == [f"received {sig.name}: exiting (no backup in progress)", "runner stopped"]


def test_a_slow_health_endpoint_never_blocks_serve(pg: PgCluster, s3: S3Server, small_db: str,
                                                   tmp_path: Path) -> None:
    """The endpoint answers a header, then nothing: the run starts and ends all the same, `pgbkp health`
    says so, and SIGTERM ends serve. It used to wait for the start ping for ever."""
    bucket = make_bucket(s3)
    status_file = tmp_path / "health.json"
    with dribbling() as slow:
        env = {**real_backup_env(pg, s3, bucket, small_db), "CRON_SCHEDULE": "@yearly",
               "HEALTH_FILE": str(status_file), "HEALTHCHECK_URL": slow.url}
        with Served(env) as served:
            assert slow.arrived.wait(120)  # the start ping is in flight, its answer stalled after the headers
            served.wait_line("next run at ")  # the run is over and the status written: the ping is still stuck
            assert slow.answered == 0
            status = health.read(status_file)
            assert status.last_run is not None and status.last_run.status == "ok"
            assert status.running_since is None
            checked = subprocess.run([PGBKP, "health", "--file", str(status_file)], capture_output=True, text=True,
                                     check=False)
            assert checked.returncode == 0 and checked.stdout.startswith("healthy: last success "), checked
            served.signal(signal.SIGTERM)
            assert served.finish() == 0, served.lines[-30:]
        assert slow.answered == 0  # serve exited without ever getting an answer
    assert all_keys(s3, bucket)
    said = served.said
    assert "received SIGTERM: exiting (no backup in progress)" in said
    assert said[-1] == "runner stopped"
    token = slow.url.rsplit("/", 1)[1]
    assert token not in "\n".join(served.lines) + served.stdout  # the URL's token is a secret


def test_ticks_skipped_during_the_first_run_are_logged(tmp_path: Path, messages: list[str]) -> None:
    clock = FakeClock(datetime(2025, 5, 14, 10, 0, 30, tzinfo=SP))
    holder: dict[str, runner.Runner] = {}
    calls: list[datetime] = []

    def backup(should_stop: Callable[[], bool], observer: pipeline.Observer) -> runner.Outcome:
        calls.append(clock.now)
        if len(calls) == 1:
            clock.now += timedelta(seconds=150)  # the first run, at start, takes 2.5 min
        else:
            holder["r"].request_stop("test over")
        return runner.Outcome(0, "ok")

    r = runner.Runner(backup=backup, schedule=schedule.parse("* * * * *", SP), clock=clock, sleep=clock.sleep,
                      health_file=tmp_path / "h.json")
    holder["r"] = r
    assert r.serve() == 0
    assert [t.strftime("%H:%M:%S") for t in calls] == ["10:00:30", "10:04:00"]
    assert [m for m in messages if m.startswith("skipped")] == [
        "skipped 3 scheduled run(s) at 2025-05-14T10:01:00-03:00, 2025-05-14T10:02:00-03:00, "
        "2025-05-14T10:03:00-03:00: the run started at 2025-05-14T10:00:30-03:00 was still going"]


# --------------------------------------------------------------------------------------------------
# Settings


def test_bad_settings_stop_serve_before_any_backup(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "CRON", "LOG_"))}
    base.update({"PG_URLS": "postgres://u@127.0.0.1:1/postgres", "S3_BUCKET": "bkt", "LOG_FILE": "off",
                 "HEALTH_FILE": str(tmp_path / "h.json")})
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # a device would do as well; a FIFO needs no privilege to make
    for extra, says in [
        ({"CRON_SCHEDULE": "0 3 * *"}, "CRON_SCHEDULE: '0 3 * *' has 4 fields, not 5. Fix: "),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT: 'xml' is not a format"),
        ({"HEALTHCHECK_URL": "hc-ping.com/abc"}, "HEALTHCHECK_URL: not an http(s) URL"),
        ({"LOG_FILE": "/proc/pgbkp/pg-backup.log"}, "LOG_FILE: cannot write '/proc/pgbkp/pg-backup.log'"),
        ({"HEALTH_FILE": str(fifo)}, f"pgbkp: configuration error: HEALTH_FILE: {str(fifo)!r} is a FIFO, not a "
                                     "regular file, and each status write replaces it. Fix: point HEALTH_FILE at a "
                                     "new path or a regular file, e.g. /tmp/pgbkp-health.json.\n"),
    ]:
        out = subprocess.run([PGBKP, "serve"], env={**base, **extra}, capture_output=True, text=True, timeout=60,
                             check=False)
        assert out.returncode == 2, (extra, out.stderr)
        assert says in out.stderr, (extra, out.stderr)
        assert not (tmp_path / "h.json").exists()  # nothing ran
    assert fifo.is_fifo()


@pytest.mark.parametrize(("extra", "says"), [
    ({"CRON_ENABLED": "sometimes"}, "CRON_ENABLED: 'sometimes' is not true or false"),
    ({"SHUTDOWN_GRACE_SECONDS": "-1"}, "SHUTDOWN_GRACE_SECONDS: -1 is out of range"),
    ({"SHUTDOWN_GRACE_SECONDS": "soon"}, "SHUTDOWN_GRACE_SECONDS: 'soon' is not a whole number"),
    ({"AGE_RECIPIENTS": "age1qqqq"}, "AGE_RECIPIENTS: recipient 1 (age1qqqq…): not a valid age1… public key"),
    ({"AGE_RECIPIENTS": "age1qqqq", "PG_URLS": "x|age=off|postgres://u@127.0.0.1:1/postgres,"
                                               "y|age=age1zzzz|postgres://u@127.0.0.1:1/postgres"},
     "PG_URLS item 2 (y): field 'age': recipient 1 (age1zzzz…): not a valid age1… public key"),
])
def test_bad_runner_settings_are_config_errors(extra: dict[str, str], says: str) -> None:
    """Each stops ``pgbkp serve`` with exit 2 before any backup (make_runner runs before the first one)."""
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
