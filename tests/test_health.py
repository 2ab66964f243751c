"""Health: healthchecks.io-style pings (against a local HTTP server that records them), the status file,
and `pgbkp health`, the container's HEALTHCHECK."""

from __future__ import annotations

import argparse
import http.server
import json
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

from pgbkp import config, health, output, pipeline, runner, schedule
from tests.helpers import PGBKP, make_bucket
from tests.servers import PgCluster, S3Server, free_port
from tests.slowhttp import Dribbler, dribbling

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
        return runner.Outcome(1, output.summary_text(rows), rows)

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


def test_one_ping_in_line_for_pgbkp_backup(hc: Recorder, warnings: list[str]) -> None:
    """health.ping(): what a one-shot command calls when it has nothing else to do while it waits."""
    assert health.ping(hc.url, "fail", "1 database(s): 1 failed") is True
    assert health.ping(None, "start") is False
    assert hc.requests == [("POST", path_of(hc.url) + "/fail", "1 database(s): 1 failed")]
    hc.status = 503
    assert health.ping(hc.url + "/", "start") is False
    assert warnings == ["health ping 'start' to 127.0.0.1 failed: HTTP 503 (the backup itself is not affected)"]
    with pytest.raises(ValueError, match="ping: kind 'begin' is not one of start, success, fail"):
        health.ping(hc.url, "begin")


def test_no_url_no_ping() -> None:
    assert health.Pinger(None).start() is False
    assert health.Pinger("  ").success("x") is False


@pytest.mark.parametrize(("url", "says"), [
    ("ftp://example.com/x", "HEALTHCHECK_URL: not an http(s) URL. Fix: e.g. https://hc-ping.com/<your-uuid>."),
    ("https://hc-ping.com:99999/abc", "HEALTHCHECK_URL: the port is not a number from 0 to 65535. Fix: "),
    ("https://hc-ping.com/abc def", "HEALTHCHECK_URL: contains a space or a control character. Fix: "),
    ("https://hc-ping.com/abc\ndef", "HEALTHCHECK_URL: contains a space or a control character. Fix: "),
])
def test_a_url_that_is_not_http_is_a_config_error(url: str, says: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        health.Pinger(url)
    assert str(err.value).startswith(says)


# --------------------------------------------------------------------------------------------------
# A slow endpoint: a header at once, then a byte when the test says


class FakeTimers:
    """Deadlines that expire when the test says, not when a clock does."""

    def __init__(self) -> None:
        self.made: list[FakeTimers.Timer] = []

    class Timer:
        def __init__(self, seconds: float, action: Callable[[], None]) -> None:
            self.seconds, self.action = seconds, action
            self.started = self.cancelled = False

        def start(self) -> None:
            self.started = True

        def cancel(self) -> None:
            self.cancelled = True

        def fire(self) -> None:
            if self.started and not self.cancelled:
                self.action()

    def __call__(self, seconds: float, action: Callable[[], None]) -> FakeTimers.Timer:
        self.made.append(FakeTimers.Timer(seconds, action))
        return self.made[-1]

    def fire_all(self) -> None:
        for t in list(self.made):
            t.fire()


@pytest.fixture
def slow() -> Iterator[Dribbler]:
    with dribbling() as server:
        yield server


def settle(pinger: health.Pinger, timers: FakeTimers | None, server: Dribbler) -> None:
    """End every ping still going, so that none logs into the next test: the server goes away (pings
    after it are refused at once) and every deadline expires."""
    server.close()
    if timers:
        timers.fire_all()
    assert pinger.flush(30)


def test_a_ping_has_a_total_deadline_not_a_per_read_timeout(slow: Dribbler, warnings: list[str]) -> None:
    """Each byte comes well within the per-read timeout; the deadline ends the exchange all the same."""
    timers = FakeTimers()
    pinger = health.Pinger(slow.url, timeout=60, timer=timers)
    assert pinger.start("run started") is True
    assert slow.arrived.wait(30)
    slow.give(3)  # the answer is on its way, a byte at a time
    [deadline] = timers.made
    assert (deadline.seconds, deadline.started, deadline.cancelled) == (60, True, False)
    deadline.fire()
    slow.wait_hung_up(1)  # the deadline closed the connection
    assert pinger.flush(30)  # the ping is over: dropped
    assert pinger.idle
    assert warnings == ["health ping 'start' to 127.0.0.1 got no complete answer within 60s: dropped (the backup "
                        "itself is not affected)"]
    assert (slow.sent, slow.answered) == (3, 0)
    assert deadline.cancelled  # its exchange is over: the timer is not left to fire


def test_a_ping_answered_within_its_deadline_is_sent(slow: Dribbler, warnings: list[str]) -> None:
    timers = FakeTimers()
    pinger = health.Pinger(slow.url, timeout=60, timer=timers)
    pinger.success("ok")
    assert slow.arrived.wait(30)
    slow.give(100)
    assert pinger.flush(30)
    assert warnings == []
    assert slow.answered == 1
    [deadline] = timers.made
    assert deadline.cancelled  # the answer came first


def test_a_slow_endpoint_never_delays_a_run(slow: Dribbler, tmp_path: Path, warnings: list[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The run starts while the start ping is stuck, and finishes, its status written, while it still is.
    (Pinging in line, as it once did, the runner would wait here for the ping's 600 s.)"""
    monkeypatch.setattr(health, "EXIT_PING_WAIT", 0, raising=False)  # exit without waiting for the pings
    seen: list[tuple[bool, int]] = []

    def backup(should_stop: Callable[[], bool], observer: pipeline.Observer) -> runner.Outcome:
        assert slow.arrived.wait(30)  # the start ping is in flight...
        seen.append((slow.requests == [path_of(slow.url) + "/start"], slow.answered))  # ...and unanswered
        return runner.Outcome(0, "1 database(s): all ok")

    pinger = health.Pinger(slow.url, 600)
    r = runner.Runner(backup=backup, schedule=None, pinger=pinger, health_file=tmp_path / "h.json")
    try:
        assert r.serve() == 0
        assert seen == [(True, 0)]
        status = health.read(tmp_path / "h.json")
        assert status.last_run is not None and status.last_run.status == "ok"
        assert (slow.answered, slow.hung_up) == (0, 0)  # the start ping is still stuck; success waits behind it
        assert warnings == ["exiting with 2 health ping(s) to 127.0.0.1 not sent or not answered (the backup "
                            "itself is not affected)"]
    finally:
        settle(pinger, None, slow)


def test_a_second_stop_request_skips_the_wait_for_pings(slow: Dribbler, tmp_path: Path,
                                                       warnings: list[str]) -> None:
    timers = FakeTimers()
    pinger = health.Pinger(slow.url, timer=timers)

    def backup(should_stop: Callable[[], bool], observer: pipeline.Observer) -> runner.Outcome:
        assert slow.arrived.wait(30)  # the start ping is stuck
        r.request_stop("received SIGTERM")
        r.request_stop("received SIGTERM")
        return runner.Outcome(0, "1 database(s): all ok")

    r = runner.Runner(backup=backup, schedule=None, pinger=pinger, ping_wait=3600, health_file=tmp_path / "h.json")
    try:
        assert r.serve() == 0  # at once, not after an hour
        assert warnings == ["received SIGTERM: exiting (no backup in progress)",
                            "exiting with 2 health ping(s) to 127.0.0.1 not sent or not answered (the backup "
                            "itself is not affected)"]
    finally:
        settle(pinger, timers, slow)


def test_pings_queued_behind_a_stuck_one_are_bounded(slow: Dribbler, warnings: list[str]) -> None:
    timers = FakeTimers()
    pinger = health.Pinger(slow.url, timer=timers)
    try:
        pinger.start()
        assert slow.arrived.wait(30)
        for i in range(health.MAX_QUEUED_PINGS + 2):
            pinger.fail(f"run {i}")
        assert warnings == ["health ping 'fail' to 127.0.0.1 dropped: 7 later pings are waiting behind a slow "
                            "endpoint"] * 2
    finally:
        settle(pinger, timers, slow)


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


# --------------------------------------------------------------------------------------------------
# Whatever the status file holds: one line, exit 0 or 1


FIX = "Fix: restart pgbkp serve, which rewrites it, and make sure nothing else writes that file."


def good_doc() -> dict[str, object]:
    now = datetime.now(SP).replace(microsecond=0)
    return {"started_at": (now - timedelta(hours=1)).isoformat(), "schedule": "0 3 * * *",
            "timezone": "America/Sao_Paulo", "running_since": None,
            "last_run": {"started_at": now.isoformat(), "finished_at": now.isoformat(), "status": "ok",
                         "summary": "1 database(s): all ok"},
            "last_success_at": now.isoformat(), "next_run_at": None}


def with_field(path: str, value: object) -> dict[str, object]:
    doc = good_doc()
    inner: dict[str, object] = doc
    *parents, name = path.split(".")
    for p in parents:
        inner = inner[p]  # type: ignore[assignment]
    inner[name] = value
    return doc


def without(name: str) -> dict[str, object]:
    doc = good_doc()
    del doc[name]
    return doc


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = health.cmd_health(None, argparse.Namespace(file=str(path)))
    out = capsys.readouterr()
    assert out.err == ""
    return code, out.out


@pytest.mark.parametrize(("doc", "says"), [
    ([], "the top level is an array, not an object. " + FIX),
    ("healthy", "the top level is a string, not an object. " + FIX),
    (None, "the top level is null, not an object. " + FIX),
    (with_field("started_at", "2025-05-14T03:00:00"), "field 'started_at': '2025-05-14T03:00:00' has no UTC "
                                                      "offset. " + FIX),
    (with_field("started_at", "yesterday"), "field 'started_at': 'yesterday' is not an ISO 8601 time. " + FIX),
    (with_field("started_at", 1747000000), "field 'started_at' is a number, not a string. " + FIX),
    (without("started_at"), "field 'started_at' is missing. " + FIX),
    (with_field("schedule", "61 * * * *"), "field 'schedule': '61 * * * *' is not a cron expression this "
                                           "version understands. " + FIX),
    (with_field("schedule", ["0 3 * * *"]), "field 'schedule' is an array, not a string or null. " + FIX),
    (without("schedule"), "field 'schedule' is missing. " + FIX),
    (with_field("timezone", 5), "field 'timezone' is a number, not a string. " + FIX),
    (with_field("timezone", "Mars/Olympus"), "field 'timezone': 'Mars/Olympus' is not a time zone. " + FIX),
    (with_field("timezone", "../../etc/passwd"), "field 'timezone': '../../etc/passwd' is not a time zone. " + FIX),
    (with_field("running_since", True), "field 'running_since' is true or false, not a string or null. " + FIX),
    (with_field("last_success_at", "2025-05-14T03:00:00"), "field 'last_success_at': '2025-05-14T03:00:00' has "
                                                           "no UTC offset. " + FIX),
    (with_field("next_run_at", {}), "field 'next_run_at' is an object, not a string or null. " + FIX),
    (with_field("last_run", []), "field 'last_run' is an array, not an object. " + FIX),
    (with_field("last_run", "ok"), "field 'last_run' is a string, not an object. " + FIX),
    (with_field("last_run.status", "great"), "field 'last_run.status': 'great' is not ok or failed. " + FIX),
    (with_field("last_run.summary", None), "field 'last_run.summary' is null, not a string. " + FIX),
    (with_field("last_run.started_at", "2025-05-14T03:00"), "field 'last_run.started_at': '2025-05-14T03:00' has "
                                                            "no UTC offset. " + FIX),
    (with_field("last_run.finished_at", 3.5), "field 'last_run.finished_at' is a number, not a string. " + FIX),
    (with_field("schedule", "x" * 500), "field 'schedule': '" + "x" * 56 + "... is not a cron expression this "
                                        "version understands. " + FIX),
])
def test_a_status_file_of_the_wrong_shape_is_unhealthy_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: object, says: str) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert check(path, capsys) == (1, f"unhealthy: cannot read the status file {path}: {says}\n")


@pytest.mark.parametrize(("content", "says"), [
    (b"\xff\xfe{\x00}\x00", "it is not UTF-8 text. " + FIX),
    (b"[" * 200_000 + b"]" * 200_000, "its JSON is nested too deeply. " + FIX),
    (b'{"started_at": ' + b"9" * 5000 + b"}", "it holds a value no JSON reader here accepts (a number thousands of "
     "digits long?). " + FIX),
    (b"{not json", "it is not JSON (Expecting property name enclosed in double quotes at line 1 column 2). " + FIX),
    (b"", "it is not JSON (Expecting value at line 1 column 1). " + FIX),
])
def test_a_status_file_that_is_not_json_is_unhealthy_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, says: str) -> None:
    path = tmp_path / "h.json"
    path.write_bytes(content)
    assert check(path, capsys) == (1, f"unhealthy: cannot read the status file {path}: {says}\n")


def test_a_huge_or_special_status_file_is_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(health.MAX_STATUS_BYTES + 1)  # sparse: costs no disk
    assert check(huge, capsys) == (1, f"unhealthy: cannot read the status file {huge}: it is larger than 16 MiB, "
                                      f"far more than pgbkp serve writes. {FIX}\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer for ever
    directory = tmp_path / "dir"
    directory.mkdir()
    link = tmp_path / "link"
    link.symlink_to(fifo)
    fix = "Fix: point HEALTH_FILE (or --file) at the file pgbkp serve writes."
    for path, kind in [(fifo, "a FIFO"), (directory, "a directory"), (link, "a FIFO"),
                       (Path("/dev/null"), "a character device")]:
        assert check(path, capsys) == (
            1, f"unhealthy: cannot read the status file {path}: it is {kind}, not a regular file. {fix}\n")


def test_what_the_file_says_is_shown_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lone surrogate used to crash the printing; an escape sequence would have reached the terminal."""
    path = tmp_path / "h.json"
    doc = with_field("last_run.status", "failed")
    doc["last_run"]["summary"] = "bad \ud800 \x1b[31mred\x1b[0m\nsecond line"  # type: ignore[index]
    path.write_text(json.dumps(doc), encoding="utf-8")
    started = doc["last_run"]["started_at"]  # type: ignore[index]
    assert check(path, capsys) == (1, f"unhealthy: the last run, started {started}, failed: bad \\ud800 "
                                      "\\x1b[31mred\\x1b[0m\n")


def test_unknown_fields_are_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps({**good_doc(), "written_by": "a newer pgbkp", "pid": 7}), encoding="utf-8")
    code, out = check(path, capsys)
    assert (code, out.split(":")[0]) == (0, "healthy")


def test_pgbkp_health_never_exits_2_nor_shows_a_traceback(tmp_path: Path) -> None:
    """The issue's three: a schedule that no longer parses, JSON that is not an object, a naive time."""
    cases = [("schedule.json", with_field("schedule", "0 3 * *"),
              "field 'schedule': '0 3 * *' is not a cron expression this version understands."),
             ("list.json", [1, 2], "the top level is an array, not an object."),
             ("naive.json", with_field("started_at", "2025-05-14T03:00:00"),
              "field 'started_at': '2025-05-14T03:00:00' has no UTC offset.")]
    for name, doc, says in cases:
        (tmp_path / name).write_text(json.dumps(doc), encoding="utf-8")
        out = subprocess.run([PGBKP, "health", "--file", str(tmp_path / name)], capture_output=True, text=True,
                             check=False, env={k: v for k, v in os.environ.items() if not k.startswith("PG")})
        assert (out.returncode, out.stderr) == (1, ""), (name, out)
        assert out.stdout == f"unhealthy: cannot read the status file {tmp_path / name}: {says} {FIX}\n"


# --------------------------------------------------------------------------------------------------
# Where the status file goes


def test_health_file_refuses_what_a_rename_would_replace(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    directory = tmp_path / "dir"
    directory.mkdir()
    link = tmp_path / "link-to-fifo"
    link.symlink_to(fifo)
    fix = f"Fix: point HEALTH_FILE at a new path or a regular file, e.g. {health.default_file()}."
    for path, shown, kind in [(fifo, str(fifo), "a FIFO"), (directory, str(directory), "a directory"),
                              (link, f"{link} (-> {fifo})", "a FIFO")]:
        env = {"PG_URLS": "postgres://u@127.0.0.1:1/postgres", "S3_BUCKET": "bkt", "HEALTH_FILE": str(path)}
        with pytest.raises(config.ConfigError) as err:
            runner.make_runner(config.load(env), backup=lambda stop, obs: runner.Outcome(0, ""))
        assert str(err.value) == (f"HEALTH_FILE: {shown!r} is {kind}, not a regular file, and each status write "
                                  f"replaces it. {fix}")
        with pytest.raises(config.ConfigError):
            health.write(path, status())
    assert fifo.is_fifo() and directory.is_dir() and link.is_symlink()  # all left as they were
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "fifo", "link-to-fifo"]  # no temp file either


def test_a_symlinked_health_file_is_written_through_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real" / "h.json"
    real.parent.mkdir()
    real.write_text("{}", encoding="utf-8")
    link = tmp_path / "h.json"
    link.symlink_to(real)
    health.write(link, status(last_run=last("ok")))
    assert link.is_symlink()  # the link is kept, the file it names is replaced
    assert health.read(link) == health.read(real) == status(last_run=last("ok"))


def test_a_runner_that_cannot_write_its_status_file_logs_it_and_goes_on(tmp_path: Path,
                                                                       warnings: list[str]) -> None:
    path = tmp_path / "h.json"
    r = runner.Runner(backup=lambda s, o: runner.Outcome(0, "ok"), schedule=None, health_file=path)
    os.mkfifo(path)  # became a FIFO after the start
    assert r.serve() == 0
    fix = f"Fix: point HEALTH_FILE at a new path or a regular file, e.g. {health.default_file()}."
    said = (f"cannot write the health status file: HEALTH_FILE: {str(path)!r} is a FIFO, not a regular file, and "
            f"each status write replaces it. {fix}")
    assert warnings == [said, said]  # when the run started, and when it ended
    assert path.is_fifo()


def test_the_default_status_file_is_per_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 0)
    assert health.default_file() == "/tmp/pgbkp-health.json"  # the container's, as the original named it
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    assert health.default_file() == "/tmp/pgbkp-health-1000.json"
    assert health.file_for({}) == "/tmp/pgbkp-health-1000.json"
    assert health.file_for({"HEALTH_FILE": "  "}) == "/tmp/pgbkp-health-1000.json"
    assert health.file_for({"HEALTH_FILE": "/srv/h.json"}) == "/srv/h.json"
