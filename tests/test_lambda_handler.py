"""The Lambda handler in-process: real PostgreSQL, real S3 (moto server), a fake LambdaContext, and a fake
Lambda client (the one faked boundary) that records the asynchronous self-invocations."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")  # before Powertools' Tracer is made

import boto3
import botocore.config
import pytest

from pgbkp import config, handler_core, keys, lambda_function, settings_secrets
from pgbkp.config import ConfigError
from pgbkp.handler_core import BackupFailedError, Edge, EventError
from pgbkp.pipeline import DatabaseResult, Job, NullObserver, StorageCache
from pgbkp.storage.s3 import S3Storage
from tests.fakes import FakeLambdaClient, FakeLambdaContext
from tests.servers import PgCluster, S3Server

EVENTS = Path(__file__).resolve().parent.parent / "events"
BUCKET = "hl-backups"
ZIP_PASSWORD = "zip-secret-for-lambda-tests"
DBS = ("hl_one", "hl_two", "hl_three")
EVENT_DBS = ("app", "analytics")  # named by events/databases-subset.json
BIG = "hl_big"
LIMITED_ROLE, LIMITED_PASSWORD = "hl_limited", "limited-pass-0123"
BAD, LIMITED_OK = "hl_unreadable", "hl_limited_ok"


@pytest.fixture(scope="module")
def databases(pg: PgCluster) -> Iterator[None]:
    for db in (*DBS, *EVENT_DBS):
        pg.drop_database(db)
        pg.create_database(db)
        pg.psql("CREATE TABLE t AS SELECT i, md5(i::text) AS s FROM generate_series(1, 200) i", db)
    # About 11 MB of SQL: more than one 5 MiB part, so a stop mid-dump has a multipart upload to abort.
    pg.drop_database(BIG)
    pg.create_database(BIG)
    pg.psql("CREATE TABLE t AS SELECT i, md5(i::text) || md5((i + 1)::text) AS s FROM generate_series(1, 160000) i",
            BIG)
    # A second connection as a role that may dump one database and not the other.
    pg.psql(f"DROP ROLE IF EXISTS {LIMITED_ROLE}")
    pg.psql(f"CREATE ROLE {LIMITED_ROLE} LOGIN PASSWORD '{LIMITED_PASSWORD}'")
    for db in (BAD, LIMITED_OK):
        pg.drop_database(db)
        pg.create_database(db)
        pg.psql("CREATE TABLE t AS SELECT 1 AS x", db)
    pg.psql("REVOKE ALL ON t FROM PUBLIC", BAD)
    pg.psql(f"GRANT SELECT ON t TO {LIMITED_ROLE}", LIMITED_OK)
    yield
    for db in (*DBS, *EVENT_DBS, BIG, BAD, LIMITED_OK):
        pg.drop_database(db)
    pg.psql(f"DROP ROLE IF EXISTS {LIMITED_ROLE}")


@pytest.fixture(autouse=True)
def _package_logging_restored() -> Iterator[None]:
    """The handler routes the ``pgbkp`` logger tree into Powertools (as in Lambda); other tests expect it not to be."""
    package = logging.getLogger("pgbkp")
    saved = (list(package.handlers), package.level, package.propagate)
    yield
    package.handlers[:], package.level, package.propagate = saved[0], saved[1], saved[2]


def s3_client(s3: S3Server) -> Any:
    return boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
                        aws_secret_access_key=s3.secret_key, region_name=s3.region,
                        config=botocore.config.Config(s3={"addressing_style": "path"}))


def objects(s3: S3Server) -> dict[str, int]:
    resp = s3_client(s3).list_objects_v2(Bucket=BUCKET)
    return {o["Key"]: o["Size"] for o in resp.get("Contents", [])}


def limited_url(pg: PgCluster) -> str:
    return f"postgresql://{LIMITED_ROLE}:{LIMITED_PASSWORD}@127.0.0.1:{pg.port}/postgres"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, pg: PgCluster, s3: S3Server, databases: None) -> dict[str, str]:
    """The function's environment: connection ``main`` (the superuser) and ``limited``; not in Lambda."""
    s3_client(s3).create_bucket(Bucket=BUCKET)
    values = {
        **s3.env(),
        "PG_URLS": f"main|bucket={BUCKET}|{pg.url()},limited|bucket={BUCKET}|{limited_url(pg)}",
        "ZIP_PASSWORD": ZIP_PASSWORD,
        "PG_BIN_DIR": str(pg.bindir),
        "TIMEZONE": "UTC",
    }
    for name in ("AWS_LAMBDA_FUNCTION_NAME", "PGBKP_LOCAL_RUNNER", "AWS_SAM_LOCAL", "PG_URLS_SECRET_ID",
                 "ZIP_PASSWORD_SECRET_ID", "S3_BUCKET", "GLOBAL_PREFIX", "IGNORE_DATABASES", "RETENTION_DAYS",
                 "RETENTION_WEEKS", "RETENTION_MONTHS", "TIME_SAFETY_MARGIN_SECONDS", "TIME_HARD_MARGIN_SECONDS",
                 "TIME_ESTIMATE_MB_PER_SECOND"):
        monkeypatch.delenv(name, raising=False)
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.fixture
def in_lambda(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> FakeLambdaClient:
    """As deployed: AWS_LAMBDA_FUNCTION_NAME set, and boto3's Lambda client replaced by a recorder."""
    client = FakeLambdaClient()
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", FakeLambdaContext.function_name)
    monkeypatch.setattr(lambda_function, "lambda_client", lambda: client)
    return client


def emf(out: str) -> list[dict[str, Any]]:
    """The EMF documents Powertools Metrics printed."""
    docs = [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]
    for d in docs:
        assert d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "pgbkp"
    return docs


def per_database(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for d in docs:
        if "database" in d:
            assert d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["connection", "database", "service"]]
            out[(d["connection"], d["database"])] = d
    return out


def invocation_metric(docs: list[dict[str, Any]], name: str) -> float:
    [doc] = [d for d in docs if name in d]
    assert doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]
    return float(doc[name][0])


def by_db(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["database"]: r for r in summary["results"]}


# --------------------------------------------------------------------------------------------------
# One connection, a subset, retention, metrics, logs


def test_one_connection_backs_up_every_database_then_retention(
        env: dict[str, str], pg: PgCluster, s3: S3Server, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RETENTION_DAYS", "1")
    old = keys.object_key("", "main", "hl_one", datetime.now() - timedelta(days=30), "main")
    s3_client(s3).put_object(Bucket=BUCKET, Key=old, Body=b"an old backup")

    summary = lambda_function.lambda_handler({"connection": "main"}, FakeLambdaContext())

    assert summary["ok"] and summary["action"] == "backup" and summary["connections"] == ["main"]
    assert summary["handed_off"] == []
    results = by_db(summary)
    assert set(DBS) <= results.keys() and "postgres" in results
    stored = objects(s3)
    for db in DBS:
        r = results[db]
        assert r["status"] == "ok" and r["bucket"] == BUCKET and r["error"] is None
        assert r["key"].startswith(f"main/{db}/main-{db}-") and stored[r["key"]] == r["bytes"] > 0
        assert r["raw_bytes"] > 0 and r["seconds"] >= 0
    assert old not in stored
    assert results["hl_one"]["retention"]["deleted"][0]["key"] == old
    assert results["hl_one"]["retention"]["deleted"][0]["done"] is True

    docs = emf(capsys.readouterr().out)
    metrics = per_database(docs)
    assert {db for _, db in metrics} == set(results)
    one = metrics[("main", "hl_one")]
    assert one["BackupSucceeded"] == [1.0] and one["BackupFailed"] == [0.0] and one["RetentionDeleted"] == [1.0]
    assert one["BackupBytes"] == [float(results["hl_one"]["bytes"])]
    assert one["BackupSeconds"] == [results["hl_one"]["seconds"]]
    assert {m["Name"]: m["Unit"] for m in one["_aws"]["CloudWatchMetrics"][0]["Metrics"]} == {
        "BackupSucceeded": "Count", "BackupFailed": "Count", "BackupBytes": "Bytes", "BackupSeconds": "Seconds",
        "RetentionDeleted": "Count"}
    assert metrics[("main", "hl_two")]["RetentionDeleted"] == [0.0]
    assert invocation_metric(docs, "DatabasesHandedOff") == 0


def test_logs_are_json_with_connection_and_database_and_no_secrets(
        env: dict[str, str], pg: PgCluster) -> None:
    handler = lambda_function.logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    buf = io.StringIO()
    old = handler.setStream(buf)
    try:
        lambda_function.lambda_handler({"connection": "main", "databases": ["hl_two"]}, FakeLambdaContext())
        logging.getLogger("pgbkp.test").error("leak? %s %s", pg.password, ZIP_PASSWORD)
    finally:
        handler.setStream(old)
    text = buf.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    backed_up = [x for x in lines if x["message"].startswith("backed up s3://")]
    assert backed_up and backed_up[0]["connection"] == "main" and backed_up[0]["database"] == "hl_two"
    assert backed_up[0]["service"] == "pgbkp" and backed_up[0]["function_name"] == "pgbkp-test"
    assert next(x for x in lines if x["message"] == "done")["summary"]["ok"] is True
    assert pg.password not in text and ZIP_PASSWORD not in text and "**redacted**" in text


def test_each_database_in_flight_logs_under_its_own_name() -> None:
    """DATABASE_CONCURRENCY: two databases' threads log at the same time; the ``database`` key of each
    line is its own thread's (a process-wide key would name the last one started on every line)."""
    handler = lambda_function.logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    conn = config.load({"PG_URLS": "main|bucket=bkt|postgres://u@h/db"}).connections[0]
    jobs = [Job(conn, name, "b", f"main/{name}/k.zip", datetime(2026, 1, 1)) for name in ("alpha", "beta")]
    observer = lambda_function.EdgeObserver()
    both = threading.Barrier(2, timeout=30)

    def work(job: Job) -> None:
        observer.started(job)
        both.wait()  # both in flight now
        logging.getLogger("pgbkp.test").error("a line of %s", job.database)
        both.wait()
        observer.finished(job, DatabaseResult("main", job.database, status="ok"))
        logging.getLogger("pgbkp.test").error("after %s", job.database)

    buf = io.StringIO()
    old = handler.setStream(buf)
    try:
        threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        handler.setStream(old)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    own = {x["message"]: x.get("database") for x in lines}
    assert own["a line of alpha"] == "alpha" and own["a line of beta"] == "beta"
    assert own["after alpha"] is None and own["after beta"] is None


def test_a_subset_of_databases(env: dict[str, str], s3: S3Server) -> None:
    summary = lambda_function.lambda_handler({"connection": "main", "databases": ["hl_two", "hl_one"]},
                                             FakeLambdaContext())
    assert [r["database"] for r in summary["results"]] == ["hl_two", "hl_one"]
    assert sorted(k.split("/")[1] for k in objects(s3)) == ["hl_one", "hl_two"]


# --------------------------------------------------------------------------------------------------
# Fan-out


@pytest.mark.parametrize("event", [{}, json.loads((EVENTS / "fanout-scheduled.json").read_text())],
                         ids=["empty", "scheduled"])
def test_fan_out_in_lambda_invokes_itself_once_per_connection(
        in_lambda: FakeLambdaClient, s3: S3Server, event: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    summary = lambda_function.lambda_handler(event, FakeLambdaContext())
    assert summary == {"ok": True, "action": "fan-out", "dispatched": ["main", "limited"]}
    assert in_lambda.payloads == [{"connection": "main"}, {"connection": "limited"}]
    assert {(c["FunctionName"], c["InvocationType"]) for c in in_lambda.calls} == {("pgbkp-test", "Event")}
    assert objects(s3) == {}
    assert invocation_metric(emf(capsys.readouterr().out), "ConnectionsDispatched") == 2


def test_fan_out_refused_invoke_fails_the_invocation(in_lambda: FakeLambdaClient) -> None:
    in_lambda.status = 500
    with pytest.raises(handler_core.DispatchError, match=r"main: invoke pgbkp-test .*status 500"):
        lambda_function.lambda_handler({}, FakeLambdaContext())


#: The fix every failed self-invocation names (here for the emulator's default function name).
EMULATOR_FIX = ("Fix: outside AWS Lambda (docker run of the image, under the runtime interface emulator) set "
                "PGBKP_LOCAL_RUNNER=1 to back up the connections in this process; in Lambda, check that the "
                "function's role may lambda:InvokeFunction test_function.")


@pytest.fixture
def emulator_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """``docker run`` of the image: the runtime interface emulator sets AWS_LAMBDA_FUNCTION_NAME (not AWS_SAM_LOCAL)
    and nothing sets a region. Credentials come from the environment, so boto3 never asks instance metadata."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "test_function")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for k, v in {"AWS_CONFIG_FILE": str(tmp_path / "no-config"),
                 "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-creds"),
                 "AWS_ACCESS_KEY_ID": "emulator-key", "AWS_SECRET_ACCESS_KEY": "emulator-secret",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    lambda_function.lambda_client.cache_clear()  # the real boto3 client, made in this environment
    yield
    lambda_function.lambda_client.cache_clear()


def test_fan_out_under_the_emulator_says_how_to_run_in_process(
        env: dict[str, str], emulator_env: None, s3: S3Server) -> None:
    with pytest.raises(handler_core.DispatchError) as err:
        lambda_function.lambda_handler({}, FakeLambdaContext(function_name="test_function"))
    # handler_core words the whole; each connection's part is the edge's.
    for name in ("main", "limited"):
        part = (f'{name}: invoke test_function {{"connection": "{name}"}}: NoRegionError: You must specify a region. '
                f"{EMULATOR_FIX}")
        assert part in str(err.value)
    assert objects(s3) == {}


def _error_lines(raises: type[Exception], event: Any) -> tuple[str, list[dict[str, Any]]]:
    """Invoke the handler, which must raise ``raises``, with the Powertools handler writing to a buffer; the
    exception's message and the edge's ERROR lines (a module may log the cause before them)."""
    handler = lambda_function.logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    buf = io.StringIO()
    old = handler.setStream(buf)
    try:
        with pytest.raises(raises) as err:
            lambda_function.lambda_handler(event, FakeLambdaContext())
    finally:
        handler.setStream(old)
    return str(err.value), [doc for doc in map(json.loads, buf.getvalue().splitlines())
                            if doc["level"] == "ERROR" and doc["location"].startswith("lambda_handler:")]


def test_event_config_and_dispatch_errors_leave_one_json_error_line(
        in_lambda: FakeLambdaClient, monkeypatch: pytest.MonkeyPatch) -> None:
    message, lines = _error_lines(EventError, {"connection": "main", "databases": "x"})
    assert [(d["message"], d["error_type"], d["error"]) for d in lines] == [("failed", "EventError", message)]
    assert "field 'databases'" in message
    assert lines[0]["function_name"] == "pgbkp-test" and lines[0]["service"] == "pgbkp"

    message, lines = _error_lines(ConfigError, {"connection": "nope"})
    assert [(d["message"], d["error_type"], d["error"]) for d in lines] == [("failed", "ConfigError", message)]
    assert "unknown connection 'nope'" in message

    in_lambda.status = 500
    message, lines = _error_lines(handler_core.DispatchError, {})
    assert [(d["message"], d["error_type"], d["error"]) for d in lines] == [("failed", "DispatchError", message)]
    assert 'main: invoke pgbkp-test {"connection": "main"}: status 500. Fix: ' in message

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(handler_core, "handle", broken)
    _, lines = _error_lines(RuntimeError, {"connection": "main"})
    assert [d["message"] for d in lines] == ["failed unexpectedly"]
    assert lines[0]["exception"].startswith("Traceback") and lines[0]["exception"].endswith("RuntimeError: a bug")


def test_fan_out_outside_lambda_runs_connections_here_one_after_another(
        env: dict[str, str], pg: PgCluster, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # The local runner in the Lambda image: the function name may be set, the runner's marker wins.
    client = FakeLambdaClient()
    monkeypatch.setattr(lambda_function, "lambda_client", lambda: client)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "pgbkp-test")
    monkeypatch.setenv("PGBKP_LOCAL_RUNNER", "1")
    monkeypatch.setenv("PG_URLS", f"main|bucket={BUCKET}|{pg.url()},nobucket|bucket=hl-missing|{pg.url()},"
                       f"second|bucket={BUCKET}|{pg.url()}")
    monkeypatch.setenv("IGNORE_DATABASES", ",".join((BIG, BAD, LIMITED_OK, *EVENT_DBS)))
    with pytest.raises(BackupFailedError, match=r"nobucket/hl_one: PG_URLS item 2 \(nobucket\): .*hl-missing") as err:
        handler_core.handle({}, edge=Edge(storage_for=StorageCache(S3Storage)))
    summary = err.value.summary
    assert client.calls == [] and summary["connections"] == ["main", "nobucket", "second"]
    seen = [(r["connection"], r["database"], r["status"]) for r in summary["results"]
            if r["database"] in (*DBS, "*")]
    assert seen == ([("main", db, "ok") for db in sorted(DBS)] + [("nobucket", db, "failed") for db in sorted(DBS)]
                    + [("second", db, "ok") for db in sorted(DBS)])
    assert {k.split("/")[0] for k in objects(s3)} == {"main", "second"}


def test_a_stop_request_leaves_the_rest_not_started(env: dict[str, str], s3: S3Server,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The local runner's shutdown: the database in flight finishes or aborts, nothing new starts."""
    monkeypatch.setenv("DATABASE_CONCURRENCY", "1")  # one in flight
    stop = {"now": False}

    class StopAfterFirst(NullObserver):
        def finished(self, job: Job, result: DatabaseResult) -> None:
            stop["now"] = True

    edge = Edge(storage_for=StorageCache(S3Storage), observers=[StopAfterFirst()], should_stop=lambda: stop["now"])
    with pytest.raises(BackupFailedError) as err:
        handler_core.handle({"connection": "main", "databases": ["hl_one", "hl_two"]}, edge=edge)
    one, two = err.value.summary["results"]
    assert one["status"] == "ok" and two["status"] == "failed"
    assert two["error"].endswith("not started: the run was asked to stop")
    assert err.value.summary["handed_off"] == []


# --------------------------------------------------------------------------------------------------
# The 15-minute limit


def test_time_budget_hands_the_rest_to_a_new_invocation(
        in_lambda: FakeLambdaClient, s3: S3Server, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TIME_SAFETY_MARGIN_SECONDS", "600")
    context = FakeLambdaContext(remaining_ms=300_000)  # under the margin: only the first database starts
    summary = lambda_function.lambda_handler({"connection": "main", "databases": list(DBS)}, context)
    assert [r["database"] for r in summary["results"]] == ["hl_one"]
    assert summary["ok"] and summary["handed_off"] == [{"connection": "main", "databases": ["hl_two", "hl_three"]}]
    assert in_lambda.payloads == [{"connection": "main", "databases": ["hl_two", "hl_three"]}]
    assert in_lambda.calls[0]["InvocationType"] == "Event"
    assert [k.split("/")[1] for k in objects(s3)] == ["hl_one"]
    assert invocation_metric(emf(capsys.readouterr().out), "DatabasesHandedOff") == 2


def test_enough_time_runs_everything_in_one_invocation(in_lambda: FakeLambdaClient, env: dict[str, str]) -> None:
    summary = lambda_function.lambda_handler({"connection": "main", "databases": list(DBS)},
                                             FakeLambdaContext(remaining_ms=800_000))
    assert [r["database"] for r in summary["results"]] == list(DBS) and in_lambda.calls == []


class _ClockJumps:
    """Observer: once a dump has produced more than one part's worth, Lambda's clock is nearly out."""

    def __init__(self, context: FakeLambdaContext, s3: S3Server, after: int) -> None:
        self.context, self.s3, self.after, self.dumped_bytes = context, s3, after, 0
        self.pending_when_tripped: int | None = None

    def started(self, job: Job) -> None:
        self.dumped_bytes = 0

    def dumped(self, job: Job, n: int) -> None:
        self.dumped_bytes += n
        if self.dumped_bytes > self.after and self.pending_when_tripped is None:
            uploads = s3_client(self.s3).list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
            self.pending_when_tripped = len(uploads)
            self.context.remaining_ms = 5_000

    def uploaded(self, job: Job, n: int) -> None:
        pass

    def finished(self, job: Job, result: DatabaseResult) -> None:
        pass


def test_time_out_mid_dump_aborts_the_upload_and_fails_that_database(
        env: dict[str, str], s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_PART_SIZE_MB", "5")
    monkeypatch.setenv("ZIP_COMPRESSION_LEVEL", "0")  # what is dumped is what is uploaded
    monkeypatch.setenv("DATABASE_CONCURRENCY", "1")  # the other database has not started when time runs out
    context = FakeLambdaContext(remaining_ms=600_000)
    clock = _ClockJumps(context, s3, after=7 << 20)
    client = FakeLambdaClient()
    edge = Edge(storage_for=StorageCache(S3Storage), invoker=lambda_function.make_invoker("pgbkp-test"),
                observers=[clock])
    monkeypatch.setattr(lambda_function, "lambda_client", lambda: client)

    with pytest.raises(BackupFailedError) as err:
        handler_core.handle({"connection": "main", "databases": [BIG, "hl_one"]}, context, edge=edge)

    assert clock.pending_when_tripped == 1  # a multipart upload was in flight when time ran out
    [big] = err.value.summary["results"]
    assert big["database"] == BIG and big["status"] == "failed"
    assert "stopped before the dump finished" in big["error"] and "Lambda time limit" in big["error"]
    assert "TIME_HARD_MARGIN_SECONDS=20" in big["error"] and BIG in str(err.value)
    assert s3_client(s3).list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert objects(s3) == {}
    # What had not started yet goes on in a fresh invocation.
    assert client.payloads == [{"connection": "main", "databases": ["hl_one"]}]


def test_no_time_even_for_the_first_database_fails_instead_of_looping(
        in_lambda: FakeLambdaClient, s3: S3Server) -> None:
    with pytest.raises(BackupFailedError, match="not started, 3 s left is under TIME_HARD_MARGIN_SECONDS=20"):
        lambda_function.lambda_handler({"connection": "main", "databases": ["hl_one"]},
                                       FakeLambdaContext(remaining_ms=3_000))
    assert in_lambda.calls == [] and objects(s3) == {}


# --------------------------------------------------------------------------------------------------
# Failures


def test_a_failing_database_fails_the_invocation_after_the_others(
        env: dict[str, str], s3: S3Server, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BackupFailedError) as err:
        lambda_function.lambda_handler({"connection": "limited", "databases": [BAD, LIMITED_OK]},
                                       FakeLambdaContext())
    message = str(err.value)
    assert message.startswith("1 of 2 database backups failed: limited/hl_unreadable: ")
    assert "permission denied" in message and LIMITED_PASSWORD not in message
    results = by_db(err.value.summary)
    assert results[BAD]["status"] == "failed" and results[LIMITED_OK]["status"] == "ok"
    assert list(objects(s3)) == [results[LIMITED_OK]["key"]]
    metrics = per_database(emf(capsys.readouterr().out))
    assert metrics[("limited", BAD)]["BackupFailed"] == [1.0]
    assert metrics[("limited", BAD)]["BackupSucceeded"] == [0.0]
    assert metrics[("limited", LIMITED_OK)]["BackupSucceeded"] == [1.0]


@pytest.mark.parametrize(("event", "message"), [
    ([], "expected a JSON object, got list"),
    ("main", "expected a JSON object, got str"),
    ({"connection": "main", "database": ["x"]}, "unknown key 'database'"),
    ({"connection": True}, "field 'connection': True"),
    ({"connection": -1}, "field 'connection': -1"),
    ({"connection": ""}, "field 'connection': ''"),
    ({"connection": ["main"]}, "field 'connection'"),
    ({"connection": "main", "databases": "hl_one"}, "field 'databases': 'hl_one'"),
    ({"connection": "main", "databases": []}, "field 'databases': []"),
    ({"connection": "main", "databases": ["hl_one", 2]}, "field 'databases'"),
    ({"databases": ["hl_one"]}, "'databases' needs 'connection'"),
    ({"action": "restore", "connection": "main"}, "'restore' is not an action"),
    ({"action": "verify"}, "action 'verify' needs 'connection'"),
])
def test_malformed_events_are_rejected_before_any_work(
        in_lambda: FakeLambdaClient, s3: S3Server, event: Any, message: str) -> None:
    with pytest.raises(EventError, match=re.escape(message)):
        lambda_function.lambda_handler(event, FakeLambdaContext())
    assert in_lambda.calls == [] and objects(s3) == {}


def test_unknown_connection_is_a_config_error_before_any_work_and_a_dropped_database_is_skipped(
        in_lambda: FakeLambdaClient, s3: S3Server) -> None:
    with pytest.raises(ConfigError, match="unknown connection 'nope': PG_URLS defines 'main', 'limited'"):
        lambda_function.lambda_handler({"connection": "nope"}, FakeLambdaContext())
    with pytest.raises(ConfigError, match="unknown connection 7"):
        lambda_function.lambda_handler({"connection": 7}, FakeLambdaContext())
    assert in_lambda.calls == [] and objects(s3) == {}
    # A database dropped since a hand-off named it is skipped; the others are backed up.
    summary = lambda_function.lambda_handler({"connection": "main", "databases": ["hl_one", "missing_db"]},
                                             FakeLambdaContext())
    assert [r["database"] for r in summary["results"]] == ["hl_one"]
    assert [s["database"] for s in summary["skipped"]] == ["missing_db"]


# --------------------------------------------------------------------------------------------------
# Every shipped event


def test_every_event_file_runs_through_the_handler(
        in_lambda: FakeLambdaClient, env: dict[str, str], s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IGNORE_DATABASES", ",".join((*DBS, BIG, BAD, LIMITED_OK)))  # keep it quick
    files = sorted(EVENTS.glob("*.json"))
    assert {f.name for f in files} >= {"connection-by-name.json", "connection-by-index.json", "databases-subset.json",
                                       "fanout-empty.json", "fanout-scheduled.json", "verify.json"}
    for path in files:
        event = json.loads(path.read_text())
        in_lambda.calls.clear()
        request = handler_core.parse_event(event)
        summary = lambda_function.lambda_handler(event, FakeLambdaContext())
        assert summary["ok"], path.name
        if request.fan_out:
            assert summary["dispatched"] == ["main", "limited"], path.name
            assert in_lambda.payloads == [{"connection": "main"}, {"connection": "limited"}], path.name
            continue
        assert in_lambda.calls == [] and summary["connections"] == ["main"], path.name
        names = {r["database"] for r in summary["results"]}
        # Event files that back up the same database in the same minute: the second finds it there.
        again = {s["database"] for s in summary.get("skipped", []) if "already exists under this key" in s["reason"]}
        names |= again
        if request.action == "verify":
            assert {*EVENT_DBS, "postgres"} <= names, path.name  # verify.json runs after the backups (sorted)
            assert all(r["status"] == "ok" for r in summary["results"]), path.name
            app = next(r for r in summary["results"] if r["database"] == "app")
            assert (app["tables"], app["rows"]) == (1, 200), path.name
        elif request.databases:
            assert names == set(request.databases) == set(EVENT_DBS), path.name
        else:
            assert {*EVENT_DBS, "postgres"} <= names and not names & {*DBS, BIG}, path.name


# --------------------------------------------------------------------------------------------------
# Secrets


class _Fetcher:
    def __init__(self, values: dict[tuple[str, str], str]) -> None:
        self.values, self.calls = values, []  # type: ignore[var-annotated]

    def __call__(self, store: str, secret_id: str, max_age: int) -> str:
        self.calls.append((store, secret_id, max_age))
        if (store, secret_id) not in self.values:
            raise LookupError(f"{secret_id} not found")
        return self.values[(store, secret_id)]


@pytest.mark.parametrize(("secret_id", "store", "asked"), [
    ("arn:aws:secretsmanager:us-east-1:123456789012:secret:pgbkp-urls-AbCdEf", "secretsmanager",
     "arn:aws:secretsmanager:us-east-1:123456789012:secret:pgbkp-urls-AbCdEf"),
    ("pgbkp/pg-urls", "secretsmanager", "pgbkp/pg-urls"),
    ("/pgbkp/pg-urls", "ssm", "/pgbkp/pg-urls"),
    ("ssm:pgbkp-pg-urls", "ssm", "pgbkp-pg-urls"),
    ("arn:aws:ssm:us-east-1:123456789012:parameter/pgbkp/pg-urls", "ssm",
     "arn:aws:ssm:us-east-1:123456789012:parameter/pgbkp/pg-urls"),
])
def test_secret_ids_go_to_the_right_store(secret_id: str, store: str, asked: str) -> None:
    fetch = _Fetcher({(store, asked): "postgres://u:pw-from-store@db:5432/postgres"})
    out = settings_secrets.resolve({"PG_URLS_SECRET_ID": secret_id, "OTHER": "kept"}, fetch)
    assert out["PG_URLS"] == "postgres://u:pw-from-store@db:5432/postgres" and out["OTHER"] == "kept"
    assert fetch.calls == [(store, asked, 300)]


def test_secret_resolution_rules() -> None:
    fetch = _Fetcher({("secretsmanager", "zip"): '{"ZIP_PASSWORD": "from-json-object"}',
                      ("ssm", "/empty"): "  ", ("secretsmanager", "other-json"): '{"password": "x"}'})
    plain = {"PG_URLS": "postgres://u@h/db", "ZIP_PASSWORD": "plain"}
    assert settings_secrets.resolve(plain, fetch) == plain and fetch.calls == []
    out = settings_secrets.resolve({"ZIP_PASSWORD_SECRET_ID": "zip", "SECRETS_MAX_AGE_SECONDS": "60"}, fetch)
    assert out["ZIP_PASSWORD"] == "from-json-object" and fetch.calls[-1] == ("secretsmanager", "zip", 60)
    with pytest.raises(ConfigError, match="PG_URLS and PG_URLS_SECRET_ID are both set"):
        settings_secrets.resolve({"PG_URLS": "x", "PG_URLS_SECRET_ID": "y"}, fetch)
    with pytest.raises(ConfigError, match=r"PG_URLS_SECRET_ID: read Secrets Manager secret 'gone': LookupError"):
        settings_secrets.resolve({"PG_URLS_SECRET_ID": "gone"}, fetch)
    with pytest.raises(ConfigError, match="SSM parameter '/empty' is empty"):
        settings_secrets.resolve({"ZIP_PASSWORD_SECRET_ID": "/empty"}, fetch)
    with pytest.raises(ConfigError, match="JSON object without a string 'ZIP_PASSWORD' key"):
        settings_secrets.resolve({"ZIP_PASSWORD_SECRET_ID": "other-json"}, fetch)


def test_secrets_through_powertools_parameters_on_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    from aws_lambda_powertools.utilities import parameters
    from moto import mock_aws

    from pgbkp.redact import redact

    for k, v in {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        parameters.clear_caches()
        arn = boto3.client("secretsmanager").create_secret(
            Name="pgbkp-urls", SecretString="main|bucket=b|postgres://u:moto-pg-pw@db:5432/postgres")["ARN"]
        boto3.client("ssm").put_parameter(Name="/pgbkp/zip", Value="moto-zip-password", Type="SecureString")
        env = {"PG_URLS_SECRET_ID": arn, "ZIP_PASSWORD_SECRET_ID": "/pgbkp/zip"}
        out = settings_secrets.resolve(env)
        assert out["PG_URLS"].endswith("moto-pg-pw@db:5432/postgres") and out["ZIP_PASSWORD"] == "moto-zip-password"
        assert "moto-zip-password" not in redact("zip moto-zip-password")
        # Cached: the secret can change underneath, the function sees it only after max_age.
        boto3.client("ssm").put_parameter(Name="/pgbkp/zip", Value="rotated-zip-pw", Type="SecureString",
                                          Overwrite=True)
        assert settings_secrets.resolve(env)["ZIP_PASSWORD"] == "moto-zip-password"
        with pytest.raises(ConfigError, match="read SSM parameter '/pgbkp/missing'"):
            settings_secrets.resolve({"ZIP_PASSWORD_SECRET_ID": "/pgbkp/missing"})
        parameters.clear_caches()


def test_a_secret_id_without_a_region_says_how_to_pass_one(emulator_env: None) -> None:
    """``docker run`` of the image with a secret id and no region: one line naming the variable, the id and the fix."""
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    with pytest.raises(ConfigError) as err:
        settings_secrets.resolve({"PG_URLS_SECRET_ID": "pgbkp/pg-urls"})
    assert str(err.value) == (
        "PG_URLS_SECRET_ID: read Secrets Manager secret 'pgbkp/pg-urls': NoRegionError: You must specify a region. "
        "Fix: check the id, its region, and that the function's role may read it; outside Lambda, pass "
        "AWS_DEFAULT_REGION and AWS credentials to the container (docker run -e).")
