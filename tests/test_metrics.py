"""Prometheus metrics, the history, METRICS_TEXTFILE and the HTTP server of `pgbkp serve` (HTTP_ADDR).

Logic on the memory store with a fake dump (exact values from the run's own results); `pgbkp backup` and
`pgbkp serve` against PostgreSQL and the S3 server. Every /metrics is read with prometheus_client's own
parser. The status page in a real browser is in test_statuspage_browser.py.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgbkp import cli, config, history, metrics, redact, runner, schedule
from pgbkp.config import ConfigError, setting
from pgbkp.storage.memory import MemoryStorage
from tests.fakes import FakeDatabase, FakeDumpSource
from tests.helpers import make_bucket
from tests.servers import PgCluster, S3Server
from tests.test_handler_memory import BUCKET, ENV, old_backup
from tests.test_runner import FakeClock, Served, real_backup_env

pytestmark = pytest.mark.usefixtures("forget_test_secrets")

PW, ZIPPW, HC = "pw-Secret-4711", "zip-Secret-0815", "hc-token-9b1e77c2"
START = datetime(2025, 1, 15, 3, 0, 0, tzinfo=UTC)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and labels, parsed by prometheus_client itself."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def db(database: str, connection: str = "main") -> tuple[tuple[str, str], ...]:
    return (("connection", connection), ("database", database))


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def memory_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {**ENV, "PG_URLS": f"main|postgres://u:{PW}@db.invalid/postgres", "ZIP_PASSWORD": ZIPPW,
           "HEALTH_FILE": str(tmp_path / "health.json"), "METRICS_TEXTFILE": str(tmp_path / "pgbkp.prom"),
           "HEALTHCHECK_URL": f"http://127.0.0.1:9/{HC}", "CRON_SCHEDULE": "0 3 * * *", "HTTP_ADDR": "127.0.0.1:0"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env


def memory_runner(env: dict[str, str], store: MemoryStorage, source: FakeDumpSource, clock: FakeClock,
                  stop_after_naps: int = 1) -> runner.Runner:
    """The real runner (make_runner: its monitor from the environment) on the memory store, a fake clock,
    and a sleep that asks it to stop after ``stop_after_naps`` naps."""
    backup = functools.partial(runner.backup_with_handler, storage_for=lambda conn: store, source=source)

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.naps) >= stop_after_naps:
            made.request_stop("test")

    made = runner.make_runner(config.load(env), backup=backup, clock=clock, sleep=sleep, ping_wait=0)
    made._pinger = runner.health.Pinger(None)  # no ping to the fake HEALTHCHECK_URL
    return made


def test_metrics_after_two_runs_across_a_restart_hold_exact_values(memory_env: dict[str, str],
                                                                   tmp_path: Path) -> None:
    store = MemoryStorage([BUCKET])
    old = old_backup(store, "app", 2020)  # retention (RETENTION_DAYS=1) deletes it in the first run
    source = FakeDumpSource({"main": [FakeDatabase("app", b"-- app dump\n" * 50),
                                      FakeDatabase("bad", b"-- half", fail="server closed the connection")]})
    clock = FakeClock(START)
    first = memory_runner(memory_env, store, source, clock)
    assert first.serve() == 0
    run1 = first.monitor.history.snapshot() if first.monitor else {}
    app1 = next(d for d in run1["databases"] if d["database"] == "app")
    assert old not in store.objects[BUCKET]

    # A restart: a new runner reads the same history file; the object is gone so the minute is free again.
    store.objects[BUCKET].clear()
    clock.now += timedelta(hours=1)
    finished = clock.now  # the fake clock does not move during a run
    second = memory_runner(memory_env, store, source, clock)
    assert second.serve() == 0
    assert second.monitor is not None
    doc = second.monitor.history.snapshot()
    app = next(d for d in doc["databases"] if d["database"] == "app")
    [(key, (body, *_))] = list(store.objects[BUCKET].items())
    last = app["backups"][-1]

    got = samples(second.monitor.exposition().decode())
    assert got[("pgbkp_last_success_timestamp_seconds", db("app"))] == finished.timestamp()
    assert ("pgbkp_last_success_timestamp_seconds", db("bad")) not in got  # never succeeded
    assert got[("pgbkp_last_run_timestamp_seconds", db("bad"))] == finished.timestamp()
    assert got[("pgbkp_backup_success", db("app"))] == 1.0
    assert got[("pgbkp_backup_success", db("bad"))] == 0.0
    assert got[("pgbkp_backup_dumped_bytes", db("app"))] == len(b"-- app dump\n" * 50)
    assert got[("pgbkp_backup_dumped_bytes", db("bad"))] == len(b"-- half")
    assert got[("pgbkp_backup_stored_bytes", db("app"))] == len(body)
    assert got[("pgbkp_backup_duration_seconds", db("app"))] == last["seconds"]
    assert got[("pgbkp_backups_total", db("app"))] == 2.0
    assert got[("pgbkp_backup_failures_total", db("app"))] == 0.0
    assert got[("pgbkp_backup_failures_total", db("bad"))] == 2.0
    assert got[("pgbkp_retention_deletions_total", db("app"))] == 1.0  # from the first run, kept across the restart
    nxt = schedule.parse("0 3 * * *", config.load(memory_env).timezone).next_after(finished)
    assert got[("pgbkp_next_run_timestamp_seconds", ())] == nxt.timestamp()
    assert got[("pgbkp_build_info", (("python", __import__("platform").python_version()),
                                     ("version", __import__("pgbkp").__version__)))] == 1.0
    assert app1["backups_total"] == 1 and len(app["backups"]) == 2

    # METRICS_TEXTFILE: the same samples, in a file the collector reads, and nothing else left in the folder.
    text = Path(memory_env["METRICS_TEXTFILE"]).read_text(encoding="utf-8")
    assert samples(text) == got
    assert sorted(p.name for p in tmp_path.iterdir()) == ["health-history.json", "health-history.json.lock",
                                                          "health.json", "pgbkp.prom"]
    assert key.endswith(".zip")


def test_no_secret_reaches_metrics_page_healthz_textfile_or_history(memory_env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    store = MemoryStorage([BUCKET])
    # The second connection cannot be listed: its error names the server (without the password).
    memory_env["PG_URLS"] += f",other|postgres://admin:{PW}@other.invalid/postgres"
    os.environ["PG_URLS"] = memory_env["PG_URLS"]
    source = FakeDumpSource({"main": [FakeDatabase("app", b"-- app\n"), FakeDatabase("bad", b"x", fail=f"boom {PW}")]})
    made = memory_runner(memory_env, store, source, FakeClock(START))
    made.serve()
    server = runner.start_web(config.load(memory_env), made)
    assert server is not None
    try:
        answers = [get(f"{server.url}{path}")[2] for path in ("/metrics", "/", "/healthz")]
    finally:
        server.stop()
    files = [p.read_text(encoding="utf-8") for p in tmp_path.iterdir()]
    page = answers[1]
    assert 'data-database="other/*"' in page and 'data-database="main/bad"' in page  # the failures are shown
    for text in answers + files:
        for secret in (PW, ZIPPW, HC, "postgres://"):
            assert secret not in text


def test_healthz_answers_as_pgbkp_health_does(memory_env: dict[str, str]) -> None:
    store = MemoryStorage([BUCKET])
    source = FakeDumpSource({"main": [FakeDatabase("app", b"-- app\n")]})
    made = memory_runner(memory_env, store, source, FakeClock(START))
    server = runner.start_web(config.load(memory_env), made)
    assert server is not None
    try:
        before = get(f"{server.url}/healthz")
        made.run_once()
        ok = get(f"{server.url}/healthz")
        source.servers["main"][0].fail = "server closed the connection"
        store.objects[BUCKET].clear()
        made.run_once()
        failed = get(f"{server.url}/healthz")
        metrics_answer = get(f"{server.url}/metrics")
        missing = get(f"{server.url}/nothing-here")
        head = urllib.request.urlopen(urllib.request.Request(f"{server.url}/", method="HEAD"), timeout=30)
    finally:
        server.stop()
    assert before[0] == 200 and before[2].startswith("healthy: no success since the runner started")
    assert ok[0] == 200 and ok[2].startswith("healthy: last success ")
    assert failed[0] == 503 and failed[2].startswith("unhealthy: the last run, started ")
    assert failed[2].rstrip("\n").endswith("1 database(s): 1 failed")
    assert metrics_answer[1] == metrics.CONTENT_TYPE
    assert samples(metrics_answer[2])[("pgbkp_backup_failures_total", db("app"))] == 1.0
    assert missing[0] == 404
    assert head.status == 200 and head.read() == b""


def _answer(conn: socket.socket) -> bytes:
    conn.settimeout(120)  # only a broken server would make this wait
    out = b""
    while chunk := conn.recv(65536):
        out += chunk
    return out


def test_clients_that_never_finish_their_request_hold_a_bounded_number_of_threads() -> None:
    """Threads are the runner's too (upload parts, pings): connections that never finish their request get
    at most max_clients, the next one a 503 at once; a slot is free again when its client is answered."""
    from pgbkp import webserver

    app = webserver.App(metrics=lambda: b"", metrics_type="text/plain", healthz=lambda: (True, "fine"),
                        page=lambda: "")
    server = webserver.start(("127.0.0.1", 0), app, max_clients=2)
    idle = [socket.create_connection(server.address) for _ in range(2)]
    try:
        for conn in idle:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        with socket.create_connection(server.address) as third:
            busy = _answer(third)
        idle[0].sendall(b"\r\n")
        answered = _answer(idle[0])
        status, _, body = get(f"{server.url}/healthz")
    finally:
        for conn in idle:
            conn.close()
        server.stop()
    assert busy.startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
    assert busy.endswith(b"\r\n\r\nbusy: too many clients, try again\n")
    assert answered.startswith(b"HTTP/1.0 200 OK\r\n") and answered.endswith(b"\r\n\r\nhealthy: fine\n")
    assert (status, body) == (200, "healthy: fine\n")


def test_the_server_is_read_only(memory_env: dict[str, str]) -> None:
    made = runner.make_runner(config.load(memory_env), backup=lambda stop, obs: runner.Outcome(0, ""))
    server = runner.start_web(config.load(memory_env), made)
    assert server is not None
    try:
        answers = [get_answer(urllib.request.Request(f"{server.url}/metrics", data=b"x", method=method))
                   for method in ("POST", "PUT", "DELETE")]
    finally:
        server.stop()
    for status, allow, body in answers:
        assert (status, allow, body) == (405, "GET, HEAD", "read-only: only GET and HEAD\n")


def get_answer(request: urllib.request.Request) -> tuple[int, str | None, str]:
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.headers["Allow"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Allow"], exc.read().decode()


def test_a_failed_textfile_write_keeps_the_old_file_and_leaves_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pgbkp.prom"
    doc = {"version": 1, "databases": []}
    assert metrics.write_textfile(path, doc)
    before = path.read_text()
    assert samples(before)[("pgbkp_build_info", (("python", __import__("platform").python_version()),
                                                 ("version", __import__("pgbkp").__version__)))] == 1.0

    import prometheus_client.exposition as exposition

    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exposition, "generate_latest", broken)
    with caplog.at_level(logging.WARNING, "pgbkp.metrics"):
        assert not metrics.write_textfile(path, doc)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["pgbkp.prom"]
    assert caplog.messages == [f"cannot write METRICS_TEXTFILE {path}: No space left on device"]


def test_the_history_is_bounded_and_a_damaged_file_is_set_aside(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "h.json"
    h = history.History(path)
    row = {"connection": "c", "database": "d", "status": "ok", "raw_bytes": 1, "object_bytes": 1, "seconds": 0.5}
    for i in range(history.MAX_BACKUPS + 5):
        h.record_run([row], (START + timedelta(days=i)).isoformat())
    again = history.History(path).snapshot()
    [entry] = again["databases"]
    assert len(entry["backups"]) == history.MAX_BACKUPS and entry["backups_total"] == history.MAX_BACKUPS + 5
    assert entry["backups"][0]["at"] == (START + timedelta(days=5)).isoformat()
    path.write_text('{"version": 1, "databases": [{"connection": 5}]}')
    with caplog.at_level(logging.WARNING, "pgbkp.history"):
        assert history.History(path).snapshot() == {"version": 1, "databases": []}
    assert caplog.messages == [f"the history file {path} is not one pgbkp wrote (or an older version): starting a "
                               "new history; it will be replaced at the end of the next run"]


def _row(database: str, status: str = "ok", error: str | None = None) -> dict[str, Any]:
    return {"connection": "c", "database": database, "status": status, "raw_bytes": 1, "object_bytes": 1,
            "seconds": 0.5, "error": error}


def test_writers_of_one_history_file_keep_each_others_records(tmp_path: Path) -> None:
    """pgbkp serve keeps the history in memory; a cron `pgbkp backup` and `pgbkp verify` write the same file
    meanwhile. The runner's next run adds to what they wrote, and its page and /metrics show it at once."""
    path = tmp_path / "h.json"
    serve = history.History(path)
    serve.record_run([_row("a")], "2025-01-15T03:00:00+00:00")
    history.History(path).record_run([_row("b", "failed", "gone")], "2025-01-15T04:00:00+00:00")  # cron
    history.History(path).record_verify("c", "a", "2025-01-15T05:00:00+00:00", True, None)  # pgbkp verify
    seen = {d["database"]: d["backups_total"] for d in serve.snapshot()["databases"]}
    assert seen == {"a": 1, "b": 1}
    serve.record_run([_row("a")], "2025-01-16T03:00:00+00:00")
    doc = history.History(path).snapshot()
    got = {d["database"]: (d["backups_total"], d["failures_total"], d["last_verify"]) for d in doc["databases"]}
    assert got == {"a": (2, 0, {"at": "2025-01-15T05:00:00+00:00", "ok": True, "error": None}), "b": (1, 1, None)}


def test_a_history_writer_that_holds_the_lock_too_long_is_written_past_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import fcntl

    path = tmp_path / "h.json"
    monkeypatch.setattr(history, "LOCK_WAIT_SECONDS", 0.0)
    with open(tmp_path / "h.json.lock", "w") as stuck, caplog.at_level(logging.WARNING, "pgbkp.history"):
        fcntl.flock(stuck.fileno(), fcntl.LOCK_EX)
        history.History(path).record_run([_row("a")], "2025-01-15T03:00:00+00:00")
    assert [d["database"] for d in history.History(path).snapshot()["databases"]] == ["a"]
    assert caplog.messages == [f"the history file {path} stayed locked for 0s: writing it without the lock"]


def test_an_error_is_kept_redacted_then_cut_and_odd_numbers_set_the_file_aside(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    secret = "very-long-secret-4711-0815"
    redact.register(secret)
    error = "x" * (history.MAX_ERROR_CHARS - 10) + secret + "y" * 100_000
    history.History(path).record_run([_row("a", "failed", error)], "2025-01-15T03:00:00+00:00")
    [entry] = history.History(path).snapshot()["databases"]
    kept = entry["backups"][0]["error"]
    assert kept == ("x" * (history.MAX_ERROR_CHARS - 10) + "**redacted**")[:history.MAX_ERROR_CHARS - 1] + "…"
    for value in ("NaN", "Infinity", "1" + "0" * 400):
        path.write_text(path.read_text().replace('"raw_bytes":1', f'"raw_bytes":{value}', 1))
        assert history.History(path).snapshot() == {"version": 1, "databases": []}, value
        path.write_text(path.read_text().replace(f'"raw_bytes":{value}', '"raw_bytes":1', 1))


@pytest.mark.parametrize(("value", "expected"), [
    ("true", ("127.0.0.1", 9187)), ("on", ("127.0.0.1", 9187)), ("false", None), ("", None),
    ("0.0.0.0:9100", ("0.0.0.0", 9100)), ("[::1]:9187", ("::1", 9187)), ("localhost:0", ("localhost", 0)),
])
def test_http_addr_values(value: str, expected: object) -> None:
    assert setting({"HTTP_ADDR": value}, "HTTP_ADDR") == expected


@pytest.mark.parametrize(("value", "message"), [
    ("9187", "HTTP_ADDR: '9187' is not HOST:PORT. Fix: use true (127.0.0.1:9187), false, or HOST:PORT such as "
             "127.0.0.1:9187 or [::1]:9187 (0.0.0.0:9187 listens on every interface)."),
    ("localhost:http", "HTTP_ADDR: the port in 'localhost:http' is not a number from 0 to 65535. Fix: use true "
                       "(127.0.0.1:9187), false, or HOST:PORT such as 127.0.0.1:9187 or [::1]:9187 (0.0.0.0:9187 "
                       "listens on every interface)."),
    ("h:70000", "HTTP_ADDR: the port in 'h:70000' is not a number from 0 to 65535. Fix: use true (127.0.0.1:9187), "
                "false, or HOST:PORT such as 127.0.0.1:9187 or [::1]:9187 (0.0.0.0:9187 listens on every interface)."),
])
def test_http_addr_mistakes_are_one_line_with_the_fix(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as got:
        setting({"HTTP_ADDR": value}, "HTTP_ADDR")
    assert str(got.value) == message


def test_metrics_textfile_mistakes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as got:
        setting({"METRICS_TEXTFILE": "/tmp/pgbkp.txt"}, "METRICS_TEXTFILE")
    assert str(got.value) == ("METRICS_TEXTFILE: '/tmp/pgbkp.txt' does not end in .prom, and node_exporter's "
                              "textfile collector reads only *.prom files. Fix: e.g. "
                              "/var/lib/node_exporter/textfile/pgbkp.prom.")
    with pytest.raises(ConfigError, match=r"^METRICS_TEXTFILE: the folder of '.*' does not exist. Fix: create it"):
        setting({"METRICS_TEXTFILE": str(tmp_path / "nowhere" / "pgbkp.prom")}, "METRICS_TEXTFILE")


def test_a_busy_http_addr_is_a_configuration_error(memory_env: dict[str, str]) -> None:
    made = runner.make_runner(config.load(memory_env), backup=lambda stop, obs: runner.Outcome(0, ""))
    server = runner.start_web(config.load(memory_env), made)
    assert server is not None
    try:
        host, port = server.address
        with pytest.raises(ConfigError) as got:
            runner.start_web(config.load({**memory_env, "HTTP_ADDR": f"{host}:{port}"}), made)
    finally:
        server.stop()
    assert str(got.value).startswith(f"HTTP_ADDR: cannot listen on 127.0.0.1:{port} (")
    assert str(got.value).endswith("Fix: choose a free port and an address of this machine, e.g. 127.0.0.1:9187, "
                                   "or set HTTP_ADDR=false.")


def test_without_prometheus_client_the_settings_say_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Lambda image has no prometheus_client: HTTP_ADDR or METRICS_TEXTFILE there is a clear exit 2."""
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import raises ImportError
    with pytest.raises(ConfigError) as got:
        metrics.require("HTTP_ADDR")
    assert str(got.value) == ("HTTP_ADDR needs the Python package prometheus_client, which this installation lacks. "
                              "Fix: pip install 'pgbkp[runner]' (the runner image and `make install` have it), "
                              "or unset HTTP_ADDR.")


# --------------------------------------------------------------------------------------------------
# Real servers


def test_pgbkp_backup_writes_the_textfile_from_a_real_backup(pg: PgCluster, s3: S3Server, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    name = "metrics_cli_db"
    pg.create_database(name)
    try:
        pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 500) g", name)
        bucket = make_bucket(s3)
        env = {**real_backup_env(pg, s3, bucket, name), "LOG_FILE": "off", "HEALTH_FILE": str(tmp_path / "h.json"),
               "METRICS_TEXTFILE": str(tmp_path / "pgbkp.prom")}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert cli.main(["backup", "--json"]) == 0
    finally:
        pg.drop_database(name)
    [row] = json.loads(capsys.readouterr().out)["results"]
    got = samples((tmp_path / "pgbkp.prom").read_text(encoding="utf-8"))
    assert got[("pgbkp_backup_stored_bytes", db(name))] == row["object_bytes"] > 0
    assert got[("pgbkp_backup_dumped_bytes", db(name))] == row["raw_bytes"] > 0
    assert got[("pgbkp_backup_duration_seconds", db(name))] == row["seconds"]
    assert got[("pgbkp_backup_success", db(name))] == 1.0
    assert got[("pgbkp_backups_total", db(name))] == 1.0
    assert ("pgbkp_next_run_timestamp_seconds", ()) not in got  # no runner, no next run


def test_serve_answers_metrics_over_http_after_a_real_run(pg: PgCluster, s3: S3Server, tmp_path: Path) -> None:
    name = "metrics_serve_db"
    pg.create_database(name)
    try:
        pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 500) g", name)
        bucket = make_bucket(s3)
        env = {**real_backup_env(pg, s3, bucket, name), "HTTP_ADDR": "127.0.0.1:0",
               "HEALTH_FILE": str(tmp_path / "h.json"), "CRON_SCHEDULE": "0 3 * * *"}
        with Served(env) as served:
            url = served.wait_line("serving ").split()[1].removesuffix("/metrics,")
            served.wait_line("next run at ")
            status, _, text = get(f"{url}/metrics")
            health_status, _, _ = get(f"{url}/healthz")
            served.signal(__import__("signal").SIGTERM)
            assert served.finish() == 0
    finally:
        pg.drop_database(name)
    got = samples(text)
    assert status == 200 and health_status == 200
    assert got[("pgbkp_backup_success", db(name))] == 1.0
    assert got[("pgbkp_backup_stored_bytes", db(name))] > 0
    assert ("pgbkp_next_run_timestamp_seconds", ()) in got


def test_a_restore_test_shows_in_metrics_and_on_the_page(tmp_path: Path) -> None:
    kept = history.History(tmp_path / "h.json")
    kept.record_verify("main", "app", "2025-01-15T04:00:00+00:00", False, "restore app: 2 rows, expected 3")
    doc = history.History(tmp_path / "h.json").snapshot()
    got = samples(metrics.exposition(doc).decode())
    assert got[("pgbkp_last_verify_timestamp_seconds", db("app"))] == datetime(2025, 1, 15, 4, tzinfo=UTC).timestamp()
    assert got[("pgbkp_verify_success", db("app"))] == 0.0
    from pgbkp import statuspage

    page = statuspage.render(doc, None, START)
    assert "failed: restore app: 2 rows, expected 3</span>, 2025-01-15 04:00 +0000" in page
