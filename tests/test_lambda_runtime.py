"""The Lambda image's runtime path without Docker: what ``pip install`` puts in the image, served by the real
runtime interface client.

v1 shipped an image whose every invocation failed with ``Runtime.ImportModuleError: No module named
'aws_xray_sdk'``: the tests installed ``.[dev]``, which happened to bring it, and the image's build step
never imported the handler. Here a fresh venv gets exactly what the Dockerfile copies and installs
(``pip install <src>``, no extras, not editable) plus ``awslambdaric`` from PyPI (the base image ships its own
copy). ``python -m awslambdaric pgbkp.lambda_function.lambda_handler`` then serves events from
:class:`RuntimeApi`, a stand-in for Lambda's Runtime API on 127.0.0.1, against the real PostgreSQL and S3
servers, with the layer's pg_dump first on PATH as in the image.

The environment is the one ``docker run`` gives the image under the base image's runtime interface
emulator: AWS_LAMBDA_FUNCTION_NAME set, no region, no AWS_SAM_LOCAL, no PGBKP_LOCAL_RUNNER.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
import pyzipper

from pgbkp import handler_core
from pgbkp.handler_core import EventError
from tests.servers import PgCluster, S3Server

REPO = Path(__file__).resolve().parent.parent
LAYER = REPO / "layers" / "postgresql"
API = "/2018-06-01/runtime"
FUNCTION = "pgbkp-runtime-test"
BUCKET = "rt-backups"
DATABASE = "rt_app"
ZIP_PASSWORD = "zip-secret-for-runtime-tests"
#: Not a time limit on the work: only how long to wait before declaring the runtime hung.
HANG_GUARD_SECONDS = 240


# --------------------------------------------------------------------------------------------------
# The install: what the Dockerfile copies, `pip install`ed into a fresh venv


def dockerfile_sources() -> list[tuple[Path, str]]:
    """The (repository path, place under the build's source directory) pairs the Dockerfile COPYs before
    ``pip install``, read from the Dockerfile itself so that the test installs what the image installs."""
    pairs = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        m = re.fullmatch(r"COPY ((?:\S+ )+)/tmp/pgbkp-src/(\S*)", line.strip())
        if m:
            for src in m[1].split():
                pairs.append((REPO / src, m[2].rstrip("/") or Path(src).name))
    assert pairs, "Dockerfile: no COPY ... /tmp/pgbkp-src/ lines (this test mirrors them)"
    return pairs


@pytest.fixture(scope="module")
def clean_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with ``pip install <what the Dockerfile copies>`` (no extras) and awslambdaric; its python."""
    root = tmp_path_factory.mktemp("clean-install")
    src = root / "src"
    src.mkdir()
    for path, dest in dockerfile_sources():
        if path.is_dir():
            shutil.copytree(path, src / dest, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(path, src / dest)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The test's own pip installs into the new venv (pip --python): no second copy of pip to set up.
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-compile",
                          str(src), "awslambdaric>=3,<5"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"pip install {src} awslambdaric failed:\n{out.stdout}\n{out.stderr}"
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert (site / "pgbkp" / "lambda_function.py").is_file(), "pgbkp was not installed into the venv's site-packages"
    return python


@pytest.fixture(scope="module")
def layer() -> Path:
    """The PostgreSQL client layer (built when missing; a failure fails, never skips)."""
    out = subprocess.run(["bash", str(REPO / "layers" / "build.sh")], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"bash layers/build.sh failed:\n{out.stdout}\n{out.stderr}"
    return LAYER


# --------------------------------------------------------------------------------------------------
# Lambda's Runtime API, the part awslambdaric uses


@dataclass
class Outcome:
    """What the runtime reported: ``response`` or ``error`` for an invocation, or ``init-error``, ``exited``,
    ``unexpected`` (a request the stand-in does not know)."""

    kind: str
    request_id: str | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class RuntimeApi:
    """Queues events for ``GET /invocation/next`` and puts every report the runtime POSTs on ``outcomes``."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self.outcomes: queue.Queue[Outcome] = queue.Queue()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, name="runtime-api", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> RuntimeApi:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.events.put(None)  # releases a /next still waiting
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the runtime was stopped while it waited

            def do_GET(self) -> None:
                if self.path != f"{API}/invocation/next":
                    api.outcomes.put(Outcome("unexpected", body=f"GET {self.path}"))
                    return self.reply(404)
                item = api.events.get()
                if item is None:
                    api.events.put(None)  # for any other waiter
                    return self.reply(503)
                request_id, body = item
                self.reply(200, body, {
                    "Content-Type": "application/json",
                    "Lambda-Runtime-Aws-Request-Id": request_id,
                    "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 900_000),  # Lambda's 15 minutes
                    "Lambda-Runtime-Invoked-Function-Arn": f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION}",
                    "Lambda-Runtime-Trace-Id": "Root=1-67000000-0123456789abcdef01234567;Parent=0123456789abcdef;"
                                               "Sampled=0",
                })

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(data) if data else None
                m = re.fullmatch(rf"{API}/invocation/([^/]+)/(response|error)", self.path)
                if m:
                    api.outcomes.put(Outcome(m[2], m[1], body, dict(self.headers)))
                elif self.path == f"{API}/init/error":
                    api.outcomes.put(Outcome("init-error", None, body, dict(self.headers)))
                else:
                    api.outcomes.put(Outcome("unexpected", body=f"POST {self.path}"))
                    return self.reply(404)
                return self.reply(202, b'{"status":"OK"}', {"Content-Type": "application/json"})

        return Handler


class Runtime:
    """``python -m awslambdaric pgbkp.lambda_function.lambda_handler`` in the clean venv, on a RuntimeApi."""

    def __init__(self, python: Path, env: dict[str, str], workdir: Path) -> None:
        self.api = RuntimeApi().start()
        self.log_path = workdir / "runtime.log"
        env = {**env, "AWS_LAMBDA_RUNTIME_API": self.api.address}
        try:
            with self.log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    [str(python), "-m", "awslambdaric", "pgbkp.lambda_function.lambda_handler"],
                    cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        except BaseException:
            self.api.stop()
            raise
        # Any exit, however early, becomes an outcome: a waiting test then fails at once instead of hanging.
        self.watcher = threading.Thread(target=self._watch, name="runtime-exit", daemon=True)
        self.watcher.start()

    def _watch(self) -> None:
        self.api.outcomes.put(Outcome("exited", body=self.proc.wait()))

    def invoke(self, event: Any) -> tuple[str, Outcome]:
        """Serve one event; its request id and what the runtime answered for it."""
        request_id = str(uuid.uuid4())
        self.api.events.put((request_id, json.dumps(event).encode()))
        try:
            outcome = self.api.outcomes.get(timeout=HANG_GUARD_SECONDS)
        except queue.Empty:
            raise AssertionError(f"no answer to {event!r}; the runtime's output:\n{self.output()}") from None
        if outcome.kind not in ("response", "error"):
            raise AssertionError(f"the runtime did not serve {event!r}: {outcome.kind} {outcome.body!r}; its "
                                 f"output:\n{self.output()}")
        assert outcome.request_id == request_id
        return request_id, outcome

    def output(self) -> str:
        """What the runtime printed so far (the handler logs before the runtime reports, so it is all there)."""
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON lines: Powertools' logs and EMF documents."""
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]

    def failed_lines(self, request_id: str) -> list[dict[str, Any]]:
        """The edge's one ERROR line for a failed invocation (a module may have logged the cause before it)."""
        return [x for x in self.log_lines()
                if x.get("function_request_id") == request_id and (x["level"], x["message"]) == ("ERROR", "failed")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # it waits for the next event forever
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.watcher.join()
        self.api.stop()


# --------------------------------------------------------------------------------------------------
# The function: a clean install under the runtime interface client, as `docker run` of the image


def s3_client(s3: S3Server) -> Any:
    return boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
                        aws_secret_access_key=s3.secret_key, region_name=s3.region,
                        config=botocore.config.Config(s3={"addressing_style": "path"}))


@pytest.fixture(scope="module")
def runtime(clean_install: Path, layer: Path, pg: PgCluster, s3_server: S3Server,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    work = tmp_path_factory.mktemp("runtime")
    (work / "task").mkdir()
    env = {
        # The image's PATH puts the layer's tools first; LD_LIBRARY_PATH stands in for their RUNPATH (/opt/lib).
        "PATH": os.pathsep.join([str(layer / "bin"), str(clean_install.parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "LD_LIBRARY_PATH": str(layer / "lib"),
        "HOME": str(work),
        "LANG": "C.UTF-8",
        # What Lambda (and the emulator) set for the function.
        "LAMBDA_TASK_ROOT": str(work / "task"),
        "AWS_LAMBDA_FUNCTION_NAME": FUNCTION,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{FUNCTION}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "$LATEST",
        # Credentials as `docker run -e` passes them, and no region: boto3 never asks the network for either.
        "AWS_ACCESS_KEY_ID": "emulator-key",
        "AWS_SECRET_ACCESS_KEY": "emulator-secret",
        "AWS_CONFIG_FILE": str(work / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        # What the Dockerfile sets, then the function's own configuration.
        "POWERTOOLS_SERVICE_NAME": "pgbkp",
        "POWERTOOLS_METRICS_NAMESPACE": "pgbkp",
        **s3_server.env(),
        "PG_URLS": f"main|bucket={BUCKET}|{pg.url()}",
        "ZIP_PASSWORD": ZIP_PASSWORD,
        "TIMEZONE": "UTC",
    }
    pg.drop_database(DATABASE)
    pg.create_database(DATABASE)
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, name text); INSERT INTO t VALUES (1, 'one'), (2, 'two')", DATABASE)
    # The X-Ray SDK, in Lambda mode, marks itself initialized in this fixed place (as it does in Lambda).
    xray_marker = Path("/tmp/.aws-xray")
    had_marker = xray_marker.exists()
    rt = Runtime(clean_install, env, work)
    try:
        yield rt
    finally:
        rt.stop()
        if not had_marker:
            shutil.rmtree(xray_marker, ignore_errors=True)
        pg.drop_database(DATABASE)


def layer_pg_dump_version(layer: Path) -> str:
    out = subprocess.run([str(layer / "bin" / "pg_dump"), "--version"], capture_output=True, text=True, check=True,
                         env={**os.environ, "LD_LIBRARY_PATH": str(layer / "lib")})
    return out.stdout.split()[-1]  # "pg_dump (PostgreSQL) 18.6"


# Whichever test runs first, its invocation is the import check: a handler that cannot be imported makes the
# runtime report an init error and exit, and Runtime.invoke fails with that error.


def test_a_clean_install_backs_up_one_connection_through_the_runtime(
        runtime: Runtime, s3: S3Server, layer: Path) -> None:
    s3_client(s3).create_bucket(Bucket=BUCKET)

    request_id, outcome = runtime.invoke({"connection": "main", "databases": [DATABASE]})

    assert outcome.kind == "response", outcome.body
    summary = outcome.body
    assert (summary["ok"], summary["action"], summary["connections"], summary["handed_off"]) == (
        True, "backup", ["main"], [])
    [result] = summary["results"]
    assert (result["connection"], result["database"], result["bucket"], result["status"], result["error"]) == (
        "main", DATABASE, BUCKET, "ok", None)
    assert result["key"].startswith(f"main/{DATABASE}/main-{DATABASE}-") and result["key"].endswith(".zip")
    stored = s3_client(s3).get_object(Bucket=BUCKET, Key=result["key"])
    body = stored["Body"].read()
    assert len(body) == result["bytes"]
    with pyzipper.AESZipFile(io.BytesIO(body)) as archive:
        archive.setpassword(ZIP_PASSWORD.encode())
        [member] = archive.namelist()
        dump = archive.read(member).decode()
    assert len(dump.encode()) == result["raw_bytes"]
    # The layer's pg_dump wrote it (the system's is older), from the database the event named.
    assert f"-- Dumped by pg_dump version {layer_pg_dump_version(layer)}\n" in dump
    assert "COPY public.t (id, name) FROM stdin;\n1\tone\n2\ttwo\n\\.\n" in dump

    done = [x for x in runtime.log_lines() if x.get("message") == "done"]
    assert [(x["level"], x["function_request_id"], x["function_name"], x["cold_start"]) for x in done] == [
        ("INFO", request_id, FUNCTION, True)]


def test_a_malformed_event_is_an_error_response_naming_the_field(runtime: Runtime, s3: S3Server) -> None:
    event = {"connection": "main", "databases": DATABASE}
    with pytest.raises(EventError) as expected:
        handler_core.parse_event(event)
    message = str(expected.value)
    assert "field 'databases'" in message and "\n" not in message

    request_id, outcome = runtime.invoke(event)

    assert outcome.kind == "error"
    assert (outcome.body["errorType"], outcome.body["errorMessage"]) == ("EventError", message)
    errors = runtime.failed_lines(request_id)
    assert [(x["message"], x["error_type"], x["error"]) for x in errors] == [("failed", "EventError", message)]


def test_fan_out_under_the_emulator_says_how_to_run_in_process(runtime: Runtime, s3: S3Server) -> None:
    request_id, outcome = runtime.invoke({})

    assert (outcome.kind, outcome.body["errorType"]) == ("error", "DispatchError")
    message = outcome.body["errorMessage"]
    # handler_core words the whole; the connection's part is the edge's.
    assert (f'main: invoke {FUNCTION} {{"connection": "main"}}: NoRegionError: You must specify a region. Fix: '
            "outside AWS Lambda (docker run of the image, under the runtime interface emulator) set "
            "PGBKP_LOCAL_RUNNER=1 to back up the connections in this process; in Lambda, check that the function's "
            f"role may lambda:InvokeFunction {FUNCTION}.") in message
    errors = runtime.failed_lines(request_id)
    assert [(x["message"], x["error_type"], x["error"]) for x in errors] == [("failed", "DispatchError", message)]
    assert runtime.proc.poll() is None  # three events served by one process, still waiting for the next
