"""Notifications (pgbkp.notify) over real protocols on 127.0.0.1: a JSON webhook receiver (http.server),
an SMTP server (aiosmtpd), a receiver that hangs, one that refuses, one that answers 500.

The logic runs through handler_core.handle on MemoryStorage with a fake dump; each entry point
(``pgbkp backup``, the runner, the Lambda handler) is then shown to send exactly one message for a failed
run, the first and the last on real PostgreSQL and S3 (moto) servers.
"""

from __future__ import annotations

import email
import email.policy
import functools
import io
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")  # before Powertools' Tracer is made

import pytest
from aiosmtpd.controller import Controller

from pgbkp import cli, config, handler_core, lambda_function, logs, notify, runner, settings_secrets
from pgbkp.config import ConfigError
from pgbkp.handler_core import BackupFailedError
from pgbkp.storage.memory import MemoryStorage
from tests.fakes import FakeDatabase, FakeDumpSource, FakeLambdaClient, FakeLambdaContext
from tests.servers import PgCluster, S3Server, free_port

BUCKET = "bkt"
ENV = {"PG_URLS": "main|postgres://u@db.invalid/postgres", "S3_BUCKET": BUCKET, "TIMEZONE": "UTC",
       "COMPRESSION_THREADS": "1"}
#: Secrets a webhook URL carries: the basic-auth password and a token in the path.
HOOK_PASSWORD, HOOK_TOKEN = "hook-password-4f8a1c", "T0KEN9b2e7d41aa"


# --------------------------------------------------------------------------------------------------
# Receivers


@dataclass
class Receiver:
    """An HTTP server that records each POST (path, Authorization header, JSON body) and answers
    ``status``; with ``hold`` set, each request waits for that event before it answers (a hung service)."""

    server: ThreadingHTTPServer
    posts: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    hold: threading.Event | None = None
    got: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "hook", *, secret: bool = False) -> str:
        auth = f"pgbkp:{HOOK_PASSWORD}@" if secret else ""
        return f"json://{auth}127.0.0.1:{self.port}/{path}" + (f"/{HOOK_TOKEN}" if secret else "")

    def messages(self) -> list[dict[str, Any]]:
        """The result documents: the ``message`` of each JSON body, parsed."""
        return [json.loads(p["body"]["message"]) for p in self.posts]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = box[0]
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            rec.posts.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            rec.got.set()
            if rec.hold is not None:
                rec.hold.wait()
            self.send_response(rec.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Receiver(server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield box[0]
    if box[0].hold is not None:
        box[0].hold.set()
    server.shutdown()
    server.server_close()
    thread.join()


@dataclass
class Mailbox:
    port: int
    mails: list[email.message.EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(email.message_from_bytes(envelope.content, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[Mailbox]:
    box = Mailbox(free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


@pytest.fixture(autouse=True)
def _clean(forget_test_secrets: None) -> Iterator[None]:
    """Put back the ``pgbkp`` logger (``pgbkp backup`` and the Lambda handler configure it) and let every
    notification thread end before the next test."""
    package = logging.getLogger("pgbkp")
    saved = (list(package.handlers), package.level, package.propagate)
    yield
    package.handlers[:], package.level, package.propagate = saved[0], saved[1], saved[2]
    for thread in threading.enumerate():
        if thread.name == "pgbkp-notify":
            thread.join()


def run(env: dict[str, str], source: FakeDumpSource, event: Any = None) -> dict[str, Any]:
    """handle() on a memory store; the summary, whether or not a database failed."""
    store = MemoryStorage([BUCKET])
    edge = handler_core.Edge(storage_for=lambda conn: store, source=source)
    try:
        return handler_core.handle(event or {"connection": "main"}, config=config.load(env), edge=edge)
    except BackupFailedError as exc:
        return exc.summary


def failing_source() -> FakeDumpSource:
    return FakeDumpSource({"main": [FakeDatabase("app", b"-- app\n" * 5),
                                    FakeDatabase("shop", b"-- half a dump", fail="connection lost")]})


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pgbkp.notify" and r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------------------------------
# What a message holds


def test_a_json_webhook_gets_the_title_and_each_database_as_structured_data(receiver: Receiver) -> None:
    summary = run({**ENV, "NOTIFY_URLS": receiver.url()}, failing_source())

    [post] = receiver.posts
    assert post["path"] == "/hook"
    body = post["body"]
    assert (body["title"], body["type"]) == ("pg-bkp: 1 of 2 backups failed on main", "failure")
    [doc] = receiver.messages()
    assert doc["title"] == body["title"]
    assert {k: doc[k] for k in summary} == summary  # the result document of pgbkp backup --json, whole
    app, shop = doc["results"]
    assert (shop["database"], shop["status"], shop["raw_bytes"], shop["object_bytes"]) == ("shop", "failed", 14, 0)
    assert shop["error"] == "pg_dump 'shop': connection lost; the dump is incomplete"
    assert shop["key"].startswith("main/shop/") and shop["bucket"] == BUCKET
    assert (app["database"], app["status"], app["raw_bytes"]) == ("app", "ok", 35)
    assert app["object_bytes"] > 0 and app["seconds"] >= 0
    assert doc["text"] == "\n".join([
        f"main/shop: FAILED after {shop['seconds']:.1f} s (14 B dumped, 0 B stored)",
        f"  object (not written): s3://{BUCKET}/{shop['key']}",
        "  error: pg_dump 'shop': connection lost; the dump is incomplete",
        f"main/app: ok in {app['seconds']:.1f} s (35 B dumped, {app['object_bytes']} B stored)",
        f"  object: s3://{BUCKET}/{app['key']}",
    ])


def test_an_email_has_the_title_as_subject_and_the_databases_in_its_body(smtp: Mailbox) -> None:
    url = f"mailto://127.0.0.1:{smtp.port}?from=pgbkp@example.com&to=ops@example.com"
    summary = run({**ENV, "NOTIFY_URLS": url}, failing_source())

    [mail] = smtp.mails
    assert mail["Subject"] == "pg-bkp: 1 of 2 backups failed on main"
    assert (mail["From"], mail["To"]) == ("pgbkp@example.com", "ops@example.com")
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    shop = summary["results"][1]
    assert text.splitlines()[:3] == [
        f"main/shop: FAILED after {shop['seconds']:.1f} s (14 B dumped, 0 B stored)",
        f"  object (not written): s3://{BUCKET}/{shop['key']}",
        "  error: pg_dump 'shop': connection lost; the dump is incomplete",
    ]


def test_notify_on_decides_which_runs_send(receiver: Receiver) -> None:
    ok = FakeDumpSource({"main": [FakeDatabase("app")]})
    run({**ENV, "NOTIFY_URLS": receiver.url("default")}, ok)
    run({**ENV, "NOTIFY_URLS": receiver.url("never"), "NOTIFY_ON": "never"}, failing_source())
    run({**ENV, "NOTIFY_URLS": receiver.url("always"), "NOTIFY_ON": "always"}, ok)
    run({**ENV, "NOTIFY_URLS": receiver.url("failure"), "NOTIFY_ON": "failure"}, failing_source())

    assert [(p["path"], p["body"]["type"], p["body"]["title"]) for p in receiver.posts] == [
        ("/always", "success", "pg-bkp: 1 backup ok on main"),
        ("/failure", "failure", "pg-bkp: 1 of 2 backups failed on main"),
    ]


def test_a_dry_run_sends_nothing(receiver: Receiver) -> None:
    run({**ENV, "NOTIFY_URLS": receiver.url(), "NOTIFY_ON": "always"}, failing_source(),
        handler_core.Request(dry_run=True))
    assert receiver.posts == []


def test_each_target_gets_one_message_about_its_own_connections(receiver: Receiver) -> None:
    """notify= replaces NOTIFY_URLS for its connection; notify=off silences one; several connections that
    share a target are in one message."""
    env = {**ENV, "NOTIFY_URLS": receiver.url("global"), "NOTIFY_ON": "always",
           "PG_URLS": f"a|notify={receiver.url('a')}|postgres://u@h1/db,b|postgres://u@h2/db,"
                      "c|notify=off|postgres://u@h3/db,d|postgres://u@h4/db"}
    source = FakeDumpSource({name: [FakeDatabase("app", fail="boom" if name == "d" else None)]
                             for name in "abcd"})
    run(env, source, handler_core.Request())

    by_path = {p["path"]: p for p in receiver.posts}
    assert sorted(by_path) == ["/a", "/global"]
    assert by_path["/a"]["body"]["title"] == "pg-bkp: 1 backup ok on a"
    assert by_path["/global"]["body"]["title"] == "pg-bkp: 1 of 2 backups failed on b, d"
    docs = {p["path"]: json.loads(p["body"]["message"]) for p in receiver.posts}
    assert [(r["connection"], r["database"], r["status"]) for r in docs["/global"]["results"]] == [
        ("b", "app", "ok"), ("d", "app", "failed")]
    assert docs["/global"]["connections"] == ["b", "d"] and docs["/global"]["ok"] is False


def test_a_verify_with_nothing_to_verify_says_so(receiver: Receiver) -> None:
    env = {**ENV, "NOTIFY_URLS": receiver.url()}
    with pytest.raises(BackupFailedError):
        handler_core.handle({"action": "verify", "connection": "main"}, config=config.load(env),
                            edge=handler_core.Edge(storage_for=lambda conn: MemoryStorage([BUCKET])))
    [post] = receiver.posts
    assert post["body"]["title"] == "pg-bkp: no restore test ran on main"
    assert json.loads(post["body"]["message"])["text"] == "main: no backups found to verify"


# --------------------------------------------------------------------------------------------------
# A notification never delays or fails a backup


def test_a_hung_receiver_holds_the_run_only_until_the_deadline(receiver: Receiver,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    receiver.hold = threading.Event()
    with caplog.at_level(logging.INFO, logger="pgbkp.notify"):
        summary = run({**ENV, "NOTIFY_URLS": receiver.url(secret=True), "NOTIFY_TIMEOUT_SECONDS": "1"},
                      failing_source())
        assert receiver.got.is_set()  # the request reached the receiver, which is still holding it
        assert [r["status"] for r in summary["results"]] == ["ok", "failed"]  # the result as without
        receiver.hold.set()
        for thread in threading.enumerate():
            if thread.name == "pgbkp-notify":
                thread.join()
    assert warnings_of(caplog) == [  # once, and nothing when the late one ends
        "notification to NOTIFY_URLS URL 1 (json://) did not go out within NOTIFY_TIMEOUT_SECONDS (1 s): left "
        "behind (the backups themselves are not affected)"]


def test_in_lambda_the_wait_ends_before_the_invocation_does(receiver: Receiver,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """NOTIFY_TIMEOUT_SECONDS is longer than the invocation has left: the wait stops 2 s before its end."""
    receiver.hold = threading.Event()
    env = {**ENV, "NOTIFY_URLS": receiver.url(), "NOTIFY_TIMEOUT_SECONDS": "300", "TIME_SAFETY_MARGIN_SECONDS": "0",
           "TIME_HARD_MARGIN_SECONDS": "1"}
    store = MemoryStorage([BUCKET])
    with caplog.at_level(logging.WARNING, logger="pgbkp.notify"), pytest.raises(BackupFailedError):
        handler_core.handle({"connection": "main"}, FakeLambdaContext(remaining_ms=2500), config=config.load(env),
                            edge=handler_core.Edge(storage_for=lambda conn: store, source=failing_source()))
    receiver.hold.set()
    assert warnings_of(caplog) == [
        "notification to NOTIFY_URLS URL 1 (json://) did not go out within the time left (0.5 s): left behind "
        "(the backups themselves are not affected)"]


def test_a_refusing_receiver_is_one_warning_and_the_result_is_unchanged() -> None:
    """What the console shows (pgbkp's log at DEBUG, and whatever reaches the root logger): one warning,
    naming neither the password nor the token; apprise's own lines (which name URLs) are not there."""
    closed = free_port()  # nothing listens there
    url = f"json://pgbkp:{HOOK_PASSWORD}@127.0.0.1:{closed}/hook/{HOOK_TOKEN}"
    console = io.StringIO()
    logs.setup("DEBUG", "text", console)
    root = logging.StreamHandler(console)
    logging.getLogger().addHandler(root)
    try:
        summary = run({**ENV, "NOTIFY_URLS": url}, failing_source())
    finally:
        logging.getLogger().removeHandler(root)
    assert [r["status"] for r in summary["results"]] == ["ok", "failed"]
    lines = console.getvalue().splitlines()
    assert [line.split(" ", 2)[2] for line in lines if "notif" in line] == [
        "WARNING notification to NOTIFY_URLS URL 1 (json://) failed: could not connect to the service (the "
        "backups themselves are not affected)"]
    assert HOOK_PASSWORD not in console.getvalue() and HOOK_TOKEN not in console.getvalue()
    assert "apprise" not in console.getvalue() and "127.0.0.1" not in console.getvalue()


def test_a_receiver_that_answers_500_is_named_by_status(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.status = 500
    with caplog.at_level(logging.WARNING, logger="pgbkp.notify"):
        run({**ENV, "NOTIFY_URLS": f"{receiver.url('one')} {receiver.url('two', secret=True)}"}, failing_source())
    assert len(receiver.posts) == 2
    assert warnings_of(caplog) == [
        f"notification to NOTIFY_URLS URL {n} (json://) failed: the service answered HTTP 500 (the backups "
        "themselves are not affected)" for n in (1, 2)]


def test_one_bad_target_does_not_stop_the_others(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    urls = f"json://127.0.0.1:{free_port()}/down, {receiver.url('up')}"
    with caplog.at_level(logging.WARNING, logger="pgbkp.notify"):
        run({**ENV, "NOTIFY_URLS": urls}, failing_source())
    assert [p["path"] for p in receiver.posts] == ["/up"]
    assert [w.split(":")[0] for w in warnings_of(caplog)] == ["notification to NOTIFY_URLS URL 1 (json"]


# --------------------------------------------------------------------------------------------------
# Checked at start-up, never shown


@pytest.mark.parametrize(("urls", "message"), [
    (f"json://127.0.0.1/ok, slak://{HOOK_TOKEN}/x",
     "NOTIFY_URLS: URL 2 of 2 (slak://) is a scheme apprise does not know (did you mean slack://?)"),
    (f"tgram://{HOOK_TOKEN}", "NOTIFY_URLS: URL 1 of 1 (tgram://) is not complete or not valid for that service"),
    (HOOK_TOKEN, "NOTIFY_URLS: URL 1 of 1 is not an apprise URL (scheme://...)"),
])
def test_a_bad_url_is_named_by_position_and_scheme_before_any_work(urls: str, message: str) -> None:
    source = failing_source()
    with pytest.raises(ConfigError) as exc:
        run({**ENV, "NOTIFY_URLS": urls}, source)
    assert str(exc.value) == (f"{message} (the URL is not shown: it holds tokens). Fix: write it as apprise's "
                              "documentation for that service says (https://github.com/caronc/apprise/wiki), "
                              "several separated by commas.")
    assert source.events == []  # nothing was listed, dumped or uploaded


def test_a_bad_notify_field_names_its_item() -> None:
    env = {**ENV, "PG_URLS": f"main|notify=discord://{HOOK_TOKEN}|postgres://u@db.invalid/postgres"}
    with pytest.raises(ConfigError) as exc:
        notify.plan(config.load(env))
    assert str(exc.value).startswith("PG_URLS item 1 (main): field 'notify': URL 1 of 1 (discord://) is not "
                                     "complete or not valid for that service")
    assert HOOK_TOKEN not in str(exc.value)
    with pytest.raises(ConfigError, match=r"^PG_URLS item 1 \(main\): field 'notify' is empty\. Fix: "):
        notify.plan(config.load({**ENV, "PG_URLS": "main|notify=|postgres://u@db.invalid/postgres"}))


@pytest.mark.parametrize("tail", [f"/postgres|notify=json://127.0.0.1/{HOOK_TOKEN}",
                                  f"/postgres?application_name=x| notify=json://127.0.0.1/{HOOK_TOKEN}"])
def test_a_notify_field_after_the_url_is_refused_not_read_as_the_database_name(tail: str) -> None:
    """Else the URL's token would be the database's name (or a libpq parameter): in pg_dump's arguments,
    PostgreSQL's log and our 'database ... does not exist' errors; and the connection would not notify."""
    with pytest.raises(ConfigError) as exc:
        config.load({**ENV, "PG_URLS": f"main|postgres://u@db.invalid{tail}"})
    assert str(exc.value) == (
        "PG_URLS item 1 (main): field 'notify' is written after the URL (host db.invalid), where it would be read "
        "as part of the database name. Fix: put fields before the URL (name|notify=...|postgres://...); a '|' in "
        "a database name is written %7C.")


def test_notify_on_and_the_timeout_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"^NOTIFY_ON: 'sometimes' is not valid\. Fix: use one of failure, "
                                          r"always, never\.$"):
        notify.plan(config.load({**ENV, "NOTIFY_ON": "sometimes"}))
    with pytest.raises(ConfigError, match=r"^NOTIFY_TIMEOUT_SECONDS: "):
        notify.plan(config.load({**ENV, "NOTIFY_TIMEOUT_SECONDS": "0"}))


def test_without_notify_urls_apprise_is_not_imported() -> None:
    """pgbkp --version and a Lambda cold start do not pay for apprise (docs/benchmarks.md, "Start-up")."""
    import subprocess
    import sys

    code = ("import sys; import pgbkp.lambda_function, pgbkp.cli; "
            "from pgbkp import config, notify; notify.plan(config.load({'PG_URLS': 'postgres://u@h/db', "
            "'S3_BUCKET': 'bkt'})); print(sorted(m for m in sys.modules if m.split('.')[0] == 'apprise'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "POWERTOOLS_TRACE_DISABLED": "true"})
    assert out.stdout.strip() == "[]"


def test_notify_urls_may_come_from_a_secret() -> None:
    url = f"json://127.0.0.1/hook/{HOOK_TOKEN}"
    out = settings_secrets.resolve({"NOTIFY_URLS_SECRET_ID": "/pgbkp/notify"},
                                   lambda store, sid, max_age: json.dumps({"NOTIFY_URLS": url}))
    assert out["NOTIFY_URLS"] == url
    with pytest.raises(ConfigError, match=r"^NOTIFY_URLS and NOTIFY_URLS_SECRET_ID are both set"):
        settings_secrets.resolve({"NOTIFY_URLS_SECRET_ID": "x", "NOTIFY_URLS": url}, lambda *a: url)


# --------------------------------------------------------------------------------------------------
# Every entry point: a failed backup is exactly one message naming the database and the error


@pytest.fixture
def real_env(monkeypatch: pytest.MonkeyPatch, pg: PgCluster, s3: S3Server, receiver: Receiver) -> dict[str, str]:
    """PostgreSQL and S3 for real; the bucket does not exist, so the backup of ``postgres`` fails."""
    values = {**s3.env(), "PG_URLS": f"main|bucket=nt-missing|{pg.url()}", "PG_BIN_DIR": str(pg.bindir),
              "TIMEZONE": "UTC", "LOG_FILE": "off", "NOTIFY_URLS": receiver.url(secret=True)}
    for name in ("AWS_LAMBDA_FUNCTION_NAME", "PGBKP_LOCAL_RUNNER", "AWS_SAM_LOCAL", "PG_URLS_SECRET_ID",
                 "ZIP_PASSWORD_SECRET_ID", "NOTIFY_URLS_SECRET_ID", "S3_BUCKET", "GLOBAL_PREFIX", "HEALTHCHECK_URL",
                 "NOTIFY_ON", "ZIP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


def the_one_failure(receiver: Receiver, summary: dict[str, Any]) -> None:
    [post] = receiver.posts
    assert post["body"]["title"] == "pg-bkp: 1 of 1 backups failed on main"
    [doc] = receiver.messages()
    [row] = doc["results"]
    assert (row["database"], row["status"]) == ("postgres", "failed")
    assert row["error"] == summary["results"][0]["error"] and "nt-missing" in row["error"]
    assert "main/postgres: FAILED after" in doc["text"] and f"  error: {row['error']}" in doc["text"]


def test_pgbkp_backup_sends_one_message(real_env: dict[str, str], receiver: Receiver,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["backup", "--database", "postgres", "--json"]) == 1
    out, err = capsys.readouterr()
    the_one_failure(receiver, json.loads(out))
    assert "notification sent to NOTIFY_URLS URL 1 (json://)" in err
    assert HOOK_PASSWORD not in out + err and HOOK_TOKEN not in out + err


def test_the_runner_sends_one_message(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    for name, value in {**ENV, "NOTIFY_URLS": receiver.url(secret=True)}.items():
        monkeypatch.setenv(name, value)
    source = FakeDumpSource({"main": [FakeDatabase("postgres", fail="could not connect")]})
    store = MemoryStorage([BUCKET])
    the_runner = runner.Runner(backup=functools.partial(runner.backup_with_handler, storage_for=lambda c: store,
                                                        source=source), schedule=None)
    outcome = the_runner.run_once()

    assert outcome.code == 1
    [post] = receiver.posts
    assert post["body"]["title"] == "pg-bkp: 1 of 1 backups failed on main"
    [row] = receiver.messages()[0]["results"]
    assert (row["database"], row["error"]) == ("postgres", "pg_dump 'postgres': could not connect; the dump is "
                                                           "incomplete")


def test_the_lambda_handler_sends_one_message_and_its_fan_out_none(
        real_env: dict[str, str], receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BackupFailedError) as exc:
        lambda_function.lambda_handler({"connection": "main", "databases": ["postgres"]}, FakeLambdaContext())
    the_one_failure(receiver, exc.value.summary)

    client = FakeLambdaClient()  # deployed: the schedule's event fans out, and that sends nothing
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", FakeLambdaContext.function_name)
    monkeypatch.setattr(lambda_function, "lambda_client", lambda: client)
    assert lambda_function.lambda_handler({}, FakeLambdaContext())["dispatched"] == ["main"]
    assert len(receiver.posts) == 1
    out, err = capsys.readouterr()
    assert HOOK_PASSWORD not in out + err and HOOK_TOKEN not in out + err


# --------------------------------------------------------------------------------------------------
# Adversarial: what the services and the libraries under apprise do


@pytest.fixture
def bad_headers_receiver() -> Iterator[int]:
    """A receiver whose answer has a malformed header block (a buggy proxy): urllib3 warns about it,
    naming the request's whole URL."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nNo colon here\r\n: x\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    done.set()
    server.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
    server.close()
    thread.join()


def test_the_http_library_under_apprise_logs_no_token_even_at_debug(bad_headers_receiver: int) -> None:
    """Lambda's runtime prints the root logger: urllib3's ``"POST /hook/<token>" 200`` (DEBUG) and its
    ``Failed to parse headers (url=...)`` warning name the path, where Slack and Telegram keep the token."""
    url = f"json://pgbkp:{HOOK_PASSWORD}@127.0.0.1:{bad_headers_receiver}/hook/{HOOK_TOKEN}"
    console = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(console)
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        run({**ENV, "NOTIFY_URLS": url}, failing_source())
        logging.getLogger("urllib3.connectionpool").debug("another thread's line passes")  # boto3's, say
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
    assert HOOK_TOKEN not in console.getvalue() and HOOK_PASSWORD not in console.getvalue()
    assert "another thread's line passes" in console.getvalue()


def test_a_long_report_is_cut_to_what_the_service_takes_and_a_webhook_gets_it_whole(receiver: Receiver) -> None:
    """200 failed databases with long errors: apprise's default would pass ~150 kB on, and Discord (2,000
    characters) or Telegram (4,096) would refuse the whole message. Mattermost (4,000 in apprise, title
    joined to the body) stands in for them on 127.0.0.1; the JSON webhook still gets every database."""
    names = [f"db{n:03}" for n in range(200)]
    source = FakeDumpSource({"main": [FakeDatabase(name, fail="x" * 700) for name in names]})
    run({**ENV, "NOTIFY_URLS": f"mmost://127.0.0.1:{receiver.port}/{HOOK_TOKEN} {receiver.url()}"}, source)

    by_path = {p["path"]: p["body"] for p in receiver.posts}
    text = by_path[f"/hooks/{HOOK_TOKEN}"]["text"]
    lines = text.split("\r\n", 1)[1].split("\n")
    assert text.startswith("pg-bkp: 200 of 200 backups failed on main\r\nmain/db000: FAILED after")
    assert len(text) <= 4000
    error = f"pg_dump 'db000': {'x' * 700}; the dump is incomplete"
    assert lines[2] == f"  error: {error[:600]}... ({len(error) - 600} more characters in the log)"
    assert lines[-1] == f"... {151 - len(lines) + 1} more lines cut to fit this service's limit (all in the log and " \
                        "the result)"
    doc = json.loads(by_path["/hook"]["message"])
    assert [r["database"] for r in doc["results"]] == names and doc["results"][0]["error"] == error


def test_tokens_and_urls_that_choose_their_own_overflow_are_respected() -> None:
    assert notify._sets_overflow(f"tgram://{HOOK_TOKEN}/123?overflow=split")
    assert not notify._sets_overflow(f"tgram://{HOOK_TOKEN}/123?format=text")


def test_a_name_or_error_with_newlines_stays_on_its_own_lines() -> None:
    """PostgreSQL allows a newline in a database name: it must not forge a line of its own."""
    row = {"connection": "main", "database": "evil\nmain/prod: ok", "status": "failed", "raw_bytes": 0,
           "object_bytes": 0, "seconds": 1.0, "error": "pg_dump: error: first\r\nDETAIL:  second 🙂 <b>x</b>"}
    msg = notify.message({"action": "backup", "connections": ["main"], "results": [row]})
    assert msg.body.split("\n") == [
        "main/evil\\nmain/prod: ok: FAILED after 1.0 s (0 B dumped, 0 B stored)",
        "  error: pg_dump: error: first",
        "    DETAIL:  second 🙂 <b>x</b>",
    ]


def test_a_stop_request_ends_the_wait_for_a_hung_receiver(receiver: Receiver,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM while a message is in flight: the run waits STOP_WAIT_SECONDS more at most, not the whole
    NOTIFY_TIMEOUT_SECONDS, so that the exit comes within a container's stop timeout."""
    receiver.hold = threading.Event()
    env = {**ENV, "NOTIFY_URLS": receiver.url(), "NOTIFY_TIMEOUT_SECONDS": "300"}
    store = MemoryStorage([BUCKET])
    edge = handler_core.Edge(storage_for=lambda conn: store, source=failing_source(), should_stop=receiver.got.is_set)
    with caplog.at_level(logging.WARNING, logger="pgbkp.notify"), pytest.raises(BackupFailedError) as exc:
        handler_core.handle({"connection": "main"}, config=config.load(env), edge=edge)
    receiver.hold.set()
    assert [r["status"] for r in exc.value.summary["results"]] == ["ok", "failed"]
    assert warnings_of(caplog) == [
        "notification to NOTIFY_URLS URL 1 (json://) did not go out within the wait a stop request allows (2 s): "
        "left behind (the backups themselves are not affected)"]


# --------------------------------------------------------------------------------------------------
# A setting that stops the run before it starts is a failed backup too


@pytest.fixture
def broken_env(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    """A PG_URLS that does not parse (a typo in a field's name), with NOTIFY_URLS that does."""
    for name in ("AWS_LAMBDA_FUNCTION_NAME", "PGBKP_LOCAL_RUNNER", "AWS_SAM_LOCAL", "PG_URLS_SECRET_ID",
                 "ZIP_PASSWORD_SECRET_ID", "NOTIFY_URLS_SECRET_ID", "S3_BUCKET", "NOTIFY_ON", "ZIP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"PG_URLS": "main|bukcet=b|postgres://u:pg-secret-9d1@db.invalid/postgres",
                        "LOG_FILE": "off", "TIMEZONE": "UTC", "NOTIFY_URLS": receiver.url(secret=True)}.items():
        monkeypatch.setenv(name, value)


def the_configuration_error(receiver: Receiver) -> str:
    [post] = receiver.posts
    assert post["body"]["title"] == "pg-bkp: configuration error, no backup ran"
    [doc] = receiver.messages()
    assert (doc["ok"], doc["action"], doc["results"]) == (False, "configuration", [])
    assert "bukcet" in doc["error"] and "Fix:" in doc["error"] and "pg-secret-9d1" not in json.dumps(post)
    return str(doc["error"])


def test_pgbkp_backup_with_a_broken_setting_sends_one_message(broken_env: None, receiver: Receiver,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["backup"]) == 2
    error = the_configuration_error(receiver)
    _out, err = capsys.readouterr()
    assert f"pgbkp: configuration error: {error}" in err
    assert HOOK_PASSWORD not in err and HOOK_TOKEN not in err


def test_the_lambda_handler_with_a_broken_setting_sends_one_message(broken_env: None, receiver: Receiver) -> None:
    with pytest.raises(ConfigError):
        lambda_function.lambda_handler({"connection": "main"}, FakeLambdaContext())
    the_configuration_error(receiver)


def test_a_broken_notify_setting_or_never_sends_nothing_and_changes_nothing(
        broken_env: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_ON", "never")
    assert cli.main(["backup"]) == 2
    monkeypatch.setenv("NOTIFY_ON", "sometimes")  # the error being reported may be this one
    assert cli.main(["backup"]) == 2
    monkeypatch.setenv("NOTIFY_ON", "failure")
    monkeypatch.setenv("NOTIFY_URLS", "slak://x/y/z")
    assert cli.main(["backup"]) == 2
    assert receiver.posts == []
