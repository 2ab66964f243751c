"""One path for every backup (issue 10): ``pgbkp backup``, ``pgbkp serve`` and Lambda all go through
``handler_core.handle``, report one result shape, and one failing database or connection never stops the
others. Real PostgreSQL and S3 where the item involves them; the in-memory store where it does not.
"""

from __future__ import annotations

import http.server
import json
import logging
import stat
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pgbkp import config, handler_core, keys, pipeline
from pgbkp.storage.memory import MemoryStorage
from pgbkp.storage.s3 import S3Storage
from tests.helpers import all_keys, make_bucket, run_cli
from tests.servers import PgCluster, S3Server

#: The documented result schema (README.md, "Result"): every entry of ``results`` has exactly these keys.
RESULT_KEYS = {"connection", "database", "bucket", "key", "status", "raw_bytes", "object_bytes", "bytes",
               "size_estimate", "seconds", "error", "retention", "kind", "note"}
SUMMARY_KEYS = {"ok", "action", "connections", "results", "skipped", "handed_off"}


def others(pg: PgCluster, *keep: str) -> str:
    """Every database of the cluster but ``keep``, for IGNORE_DATABASES: the test sees only its own."""
    return ",".join(d for d in pg.databases() if d not in keep)


# --------------------------------------------------------------------------------------------------
# A database the backup user may not CONNECT to


@dataclass
class Limited:
    user: str
    password: str
    open_db: str
    closed_db: str

    def url(self, pg: PgCluster) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{pg.port}/postgres"


@pytest.fixture
def limited(pg: PgCluster) -> Iterator[Limited]:
    """A non-superuser, one empty database it may dump, and one it has no CONNECT privilege on."""
    tag = uuid.uuid4().hex[:8]
    who = Limited(f"op_user_{tag}", f"op-pass-{tag}", f"op_open_{tag}", f"op_closed_{tag}")
    pg.psql(f"CREATE ROLE {who.user} LOGIN PASSWORD '{who.password}'")
    try:
        with pg.temporary_database(who.open_db), pg.temporary_database(who.closed_db):
            pg.psql(f"REVOKE CONNECT ON DATABASE {who.closed_db} FROM PUBLIC")
            yield who
    finally:
        pg.psql(f"DROP ROLE IF EXISTS {who.user}")


def test_a_database_without_connect_does_not_stop_a_selection(pg: PgCluster, s3: S3Server,
                                                              limited: Limited) -> None:
    bucket = make_bucket(s3)
    res = run_cli(["backup", "-d", limited.open_db, "--json"],
                  {**s3.env(), "S3_BUCKET": bucket, "PG_URLS": f"lim|{limited.url(pg)}"})
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert [(r["database"], r["status"]) for r in summary["results"]] == [(limited.open_db, "ok")]
    assert [k.split("/")[1] for k in all_keys(s3, bucket)] == [limited.open_db]


def test_a_database_without_connect_fails_alone_with_a_fix(pg: PgCluster, s3: S3Server, limited: Limited) -> None:
    bucket = make_bucket(s3)
    res = run_cli(["backup", "--json"], {**s3.env(), "S3_BUCKET": bucket, "PG_URLS": f"lim|{limited.url(pg)}",
                                         "IGNORE_DATABASES": others(pg, limited.open_db, limited.closed_db)})
    assert res.returncode == 1, res.stderr
    summary = json.loads(res.stdout)
    assert set(summary) == SUMMARY_KEYS and all(set(r) == RESULT_KEYS for r in summary["results"])
    by_db = {r["database"]: r for r in summary["results"]}
    assert sorted(by_db) == sorted([limited.open_db, limited.closed_db])
    assert by_db[limited.open_db]["status"] == "ok"
    closed = by_db[limited.closed_db]
    assert closed["status"] == "failed" and closed["raw_bytes"] == 0
    assert closed["error"] == (
        f"PG_URLS item 1 (lim): user '{limited.user}' may not connect to database '{limited.closed_db}' (no CONNECT "
        f'privilege). Fix: GRANT CONNECT ON DATABASE "{limited.closed_db}" TO "{limited.user}", or skip it with '
        "ignore= or IGNORE_DATABASES.")
    assert [k.split("/")[1] for k in all_keys(s3, bucket)] == [limited.open_db]
    assert limited.password not in res.stdout + res.stderr


def test_an_ignored_database_without_connect_is_skipped(pg: PgCluster, s3: S3Server, limited: Limited) -> None:
    bucket = make_bucket(s3)
    ignored = others(pg, limited.open_db)
    res = run_cli(["backup", "--json"], {**s3.env(), "S3_BUCKET": bucket, "PG_URLS": f"lim|{limited.url(pg)}",
                                         "IGNORE_DATABASES": ignored})
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert [(r["database"], r["status"]) for r in summary["results"]] == [(limited.open_db, "ok")]
    skipped = {s["database"]: s for s in summary["skipped"]}
    assert skipped[limited.closed_db] == {"connection": "lim", "database": limited.closed_db,
                                          "reason": "ignored (IGNORE_DATABASES or ignore=)"}
    assert sorted(skipped) == sorted(ignored.split(","))


# --------------------------------------------------------------------------------------------------
# A hand-off that names a database dropped in the meantime


def test_a_hand_off_naming_a_dropped_database_backs_up_the_rest(
        pg: PgCluster, s3: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    bucket = make_bucket(s3)
    cfg = config.load({**s3.env(), "PG_URLS": f"main|bucket={bucket}|{pg.url()}", "TIMEZONE": "UTC"})
    with pg.temporary_database(f"op_gone_{uuid.uuid4().hex[:8]}") as gone:
        pass  # created, then dropped: as if dropped after the hand-off was sent
    with pg.temporary_database(f"op_here_{uuid.uuid4().hex[:8]}") as here, caplog.at_level(logging.WARNING):
        summary = handler_core.handle({"connection": "main", "databases": [gone, here]}, config=cfg,
                                      edge=handler_core.Edge(storage_for=pipeline.StorageCache(S3Storage)))
        assert summary["ok"] is True
        assert [(r["database"], r["status"]) for r in summary["results"]] == [(here, "ok")]
        [skip] = summary["skipped"]
        assert skip["connection"] == "main" and skip["database"] == gone
        assert skip["reason"].startswith(f"no database {gone!r} on {pg.user}@127.0.0.1:{pg.port}/postgres "
                                         "(dropped, or misspelt?); the others go on. Found: ")
        assert [k.split("/")[1] for k in all_keys(s3, bucket)] == [here]
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "pgbkp.pipeline"]
    assert warning.getMessage() == f"skipped {gone}: {skip['reason']}"


# --------------------------------------------------------------------------------------------------
# --dry-run plans exactly what the real run does


class _FixedClock(datetime):
    """pipeline's ``datetime`` with ``now()`` fixed: plan and retention see one instant."""

    at = datetime(2026, 3, 10, 15, 30, tzinfo=UTC)

    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return cls.at.astimezone(tz) if tz is not None else cls.at.replace(tzinfo=None)


def test_dry_run_deletes_exactly_what_the_real_run_deletes(pg: PgCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """RETENTION_DAYS=1: the real run's backup becomes the newest of today, so an earlier backup of today
    goes ("not the newest of today"). The dry run must say so too, though its backup does not exist yet."""
    monkeypatch.setattr(pipeline, "datetime", _FixedClock)
    store = MemoryStorage(["bkt"])
    cfg = config.load({"PG_URLS": f"main|bucket=bkt|{pg.url()}", "RETENTION_DAYS": "1", "TIMEZONE": "UTC"})
    with pg.temporary_database(f"op_dry_{uuid.uuid4().hex[:8]}") as db:
        earlier_today = keys.object_key("", "main", db, datetime(2026, 3, 10, 3, 0), "main")
        yesterday = keys.object_key("", "main", db, datetime(2026, 3, 9, 3, 0), "main")
        for key in (earlier_today, yesterday):
            store.put("bkt", key, b"zip")

        def deletions(dry_run: bool) -> dict[str, list[str]]:
            run = pipeline.run(cfg, pipeline.plan(cfg, databases=[db]), storage_for=lambda conn: store,
                               dry_run=dry_run)
            [result] = run.results
            assert result.status == ("dry-run" if dry_run else "ok"), result.error
            return {a.key: a.reasons for a in result.retention if a.action == "delete"}

        planned = deletions(dry_run=True)
        assert sorted(k.key for k in store.list("bkt", "")) == sorted([earlier_today, yesterday])  # nothing changed
        done = deletions(dry_run=False)
    assert planned == done == {earlier_today: ["not the newest of 2026-03-10"],
                               yesterday: ["older than 1 calendar day"]}


# --------------------------------------------------------------------------------------------------
# A failed result says how much was dumped


@pytest.fixture
def dump_then_fail(pg: PgCluster, tmp_path: Path) -> Path:
    """PG_BIN_DIR whose pg_dump writes exactly 8,000,000 bytes, then fails."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pg_dump").write_text(
        "#!/bin/sh\n"
        "case \"$1\" in --version) echo 'pg_dump (PostgreSQL) 18.0'; exit 0;; esac\n"
        "head -c 8000000 /dev/zero | tr '\\0' 'x'\n"
        "echo 'pg_dump: error: simulated failure after 8 MB' >&2\n"
        "exit 1\n")
    (bindir / "pg_dump").chmod(stat.S_IRWXU)
    (bindir / "psql").symlink_to(pg.bindir / "psql")
    return bindir


def test_a_failed_result_counts_the_bytes_dumped(pg: PgCluster, dump_then_fail: Path) -> None:
    store = MemoryStorage(["bkt"])
    cfg = config.load({"PG_URLS": f"main|bucket=bkt|{pg.url()}", "PG_BIN_DIR": str(dump_then_fail)})
    run = pipeline.run(cfg, pipeline.plan(cfg, databases=["postgres"]), storage_for=lambda conn: store)
    [result] = run.results
    assert result.status == "failed" and "simulated failure after 8 MB" in (result.error or "")
    assert result.raw_bytes == 8_000_000 and result.object_bytes == 0
    assert list(store.list("bkt", "")) == [] and store.pending == {}


def test_the_summary_shows_the_bytes_dumped_before_the_failure(pg: PgCluster, s3: S3Server,
                                                               dump_then_fail: Path) -> None:
    bucket = make_bucket(s3)
    res = run_cli(["backup", "-d", "postgres"], {**s3.env(), "PG_URLS": f"main|bucket={bucket}|{pg.url()}",
                                                 "PG_BIN_DIR": str(dump_then_fail), "LOG_FORMAT": "json"})
    assert res.returncode == 1, res.stderr
    [row] = [line for line in res.stdout.splitlines() if line.startswith("main/postgres ")]
    assert row.split()[2:5] == ["8.0", "MB", "0"]  # dumped 8.0 MB, stored 0 B


# --------------------------------------------------------------------------------------------------
# pgbkp backup honours LOG_FILE and HEALTHCHECK_URL, as pgbkp serve does


@dataclass
class Pings:
    url: str
    seen: list[tuple[str, str]] = field(default_factory=list)  # path, body


@pytest.fixture
def pings() -> Iterator[Pings]:
    """A local stand-in for a healthchecks.io check: records each ping."""
    token = uuid.uuid4().hex

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8")
            rec.seen.append((self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec = Pings(f"http://127.0.0.1:{server.server_address[1]}/ping/{token}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_backup_pings_and_writes_the_log_file(pg: PgCluster, s3: S3Server, pings: Pings, tmp_path: Path) -> None:
    bucket = make_bucket(s3)
    log_file = tmp_path / "logs" / "pg-backup.log"
    env = {**s3.env(), "PG_URLS": f"main|bucket={bucket}|{pg.url()}", "HEALTHCHECK_URL": pings.url,
           "LOG_FILE": str(log_file), "LOG_FORMAT": "json"}
    with pg.temporary_database(f"op_ping_{uuid.uuid4().hex[:8]}") as db:
        res = run_cli(["backup", "-d", db], env)
        assert res.returncode == 0, res.stderr
        path = pings.url.split("/", 3)[3]
        assert [p for p, _ in pings.seen] == [f"/{path}/start", f"/{path}"]
        body = pings.seen[1][1]
        assert body.startswith(f"1 database(s): all ok\n{'ok':<8} main/{db} s3://{bucket}/main/{db}/")
        logged = [json.loads(line)["message"] for line in log_file.read_text(encoding="utf-8").splitlines()]
        assert any(m.startswith(f"backed up s3://{bucket}/main/{db}/") for m in logged), logged
        token = pings.url.rsplit("/", 1)[1]
        assert token not in res.stdout + res.stderr + log_file.read_text(encoding="utf-8")

        pings.seen.clear()
        assert run_cli(["backup", "-d", db, "--dry-run"], env).returncode == 0
        assert pings.seen == []  # a dry run is no run: it neither starts nor ends the check

        failing = {**env, "PG_URLS": f"main|bucket=op-missing-{uuid.uuid4().hex[:8]}|{pg.url()}"}
        assert run_cli(["backup", "-d", db], failing).returncode == 1
        assert [p for p, _ in pings.seen] == [f"/{path}/start", f"/{path}/fail"]
        assert pings.seen[1][1].startswith(f"1 database(s): 1 failed\n{'failed':<8} main/{db} ")


# --------------------------------------------------------------------------------------------------
# The Lambda fan-out


def test_a_failed_fan_out_is_logged_as_an_error_not_as_dispatched(caplog: pytest.LogCaptureFixture) -> None:
    cfg = config.load({"PG_URLS": "one|postgres://u@h1/db,two|postgres://u@h2/db", "S3_BUCKET": "bkt"})

    def refused(payload: dict[str, Any]) -> None:
        raise handler_core.DispatchError(f"invoke pgbkp {json.dumps(payload)}: status 500")

    with caplog.at_level(logging.INFO, logger="pgbkp"), pytest.raises(handler_core.DispatchError):
        handler_core.handle({}, config=cfg, edge=handler_core.Edge(storage_for=lambda conn: MemoryStorage(),
                                                                   invoker=refused))
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "pgbkp.handler_core"]
    assert records == [("ERROR", 'fan-out: invoke this function for 2 connection(s) failed: one: invoke pgbkp '
                                 '{"connection": "one"}: status 500; two: invoke pgbkp {"connection": "two"}: '
                                 "status 500 (dispatched: none)")]


def test_command_line_requests_are_not_events() -> None:
    """dry_run and several connections come only from the command line: an event cannot carry them."""
    with pytest.raises(handler_core.EventError, match="unknown key 'dry_run'"):
        handler_core.parse_event({"connection": "main", "dry_run": True})
    request = handler_core.Request(connections=("a", "b"), dry_run=True)
    assert handler_core.parse_event(request) is request and not request.fan_out


def test_every_setting_is_checked_before_any_work() -> None:
    cfg = config.load({"PG_URLS": "postgres://u@127.0.0.1:1/db", "S3_BUCKET": "bkt",
                       "PG_LOCK_WAIT_TIMEOUT_SECONDS": "soon"})
    with pytest.raises(config.ConfigError, match="PG_LOCK_WAIT_TIMEOUT_SECONDS: 'soon' is not a whole number"):
        handler_core.handle({"connection": 0}, config=cfg,
                            edge=handler_core.Edge(storage_for=lambda conn: MemoryStorage()))


def test_dry_run_and_real_results_have_one_shape() -> None:
    """summarize() is the one builder: a dry-run entry has the same keys as a real one."""
    real = handler_core.summarize(pipeline.DatabaseResult("c", "d", "b", "k", "ok", 10, 5, 1.0))
    dry = handler_core.summarize(pipeline.DatabaseResult("c", "d", "b", "k", "dry-run", size_estimate=99))
    assert set(real) == set(dry) == RESULT_KEYS
    assert real["bytes"] == real["object_bytes"] == 5 and dry["size_estimate"] == 99
    assert real["retention"] == {"deleted": [], "kept": 0, "locked": []}
