"""The real ``pgbkp backup`` command on bad input: one clear message, the right exit code, no traceback,
no password, and no password in any child's argv.

Exit codes: 2 for a configuration error found before any work, 1 for whatever fails once work has started
(an unreachable host, a wrong password, a missing bucket, an unreachable S3 endpoint): the other
connections and databases still run, and the run as a whole reports a failed backup.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from pgbkp import postgres
from pgbkp.config import load
from tests.helpers import all_keys, make_bucket
from tests.servers import PgCluster, S3Server, free_port

PGBKP = str(Path(sys.executable).with_name("pgbkp"))
#: Distinctive, with characters that need encoding; the servers never know it.
PASSWORD = "Hq4,Zu8@Tn%é/Mv#"
ENC = urllib.parse.quote(PASSWORD, safe="")


def environ(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "AWS_", "ZIP_", "RETENTION_"))}
    env.update({"LOG_FILE": "", "HEALTHCHECK_URL": "", "LOG_FORMAT": "json"})
    env.update(extra)
    return env


def run(extra: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PGBKP, "backup", *args], env=environ(extra), capture_output=True, text=True,
                          timeout=120, check=False)


def secret_forms(*secrets: str) -> list[str]:
    out: set[str] = set()
    for s in secrets:
        out |= {s, urllib.parse.quote(s, safe=""), urllib.parse.quote_plus(s)}
    return sorted(out)


def message_lines(stderr: str) -> list[str]:
    """The lines meant for a person: everything on stderr except JSON log records."""
    out = []
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            if isinstance(json.loads(line), dict):
                continue
        if line.strip():
            out.append(line)
    return out


def assert_clean(res: subprocess.CompletedProcess[str], *secrets: str) -> None:
    text = res.stdout + res.stderr
    assert "Traceback" not in text, res.stderr
    leaked = [s for s in secret_forms(PASSWORD, *secrets) if s in text]
    assert not leaked, f"{leaked} in output:\n{text}"


# --------------------------------------------------------------------------------------------------
# Configuration errors: exit 2 before anything runs


URL = f"postgres://app:{ENC}@db1.internal:5432/postgres"
CONFIG_CASES = {
    "empty PG_URLS": ({"PG_URLS": ""}, "PG_URLS: not set"),
    "empty item": ({"PG_URLS": f"{URL},,{URL}"}, "PG_URLS item 2 is empty"),
    "unknown key": ({"PG_URLS": f"pfx|colour=blue|{URL}"}, "PG_URLS item 1 (pfx): field 2 has an unknown key"),
    "raw comma in password": ({"PG_URLS": f"postgres://app:{PASSWORD.replace('/', '').replace('#', '')}@h/db"},
                              "field 'url'"),
    "bad port": ({"PG_URLS": f"postgres://app:{ENC}@db1.internal:99999/x"},
                 "PG_URLS item 1 (db1.internal): field 'url': the port"),
    "password in query": ({"PG_URLS": f"postgres://app@db1.internal/x?password={ENC}"},
                          "field 'url': query parameter 'password'"),
    "non-numeric retention": ({"PG_URLS": f"pfx|retention_days=seven|{URL}"},
                              "PG_URLS item 1 (pfx): field 'retention_days'"),
    "no bucket anywhere": ({"PG_URLS": URL, "S3_BUCKET": ""}, "PG_URLS item 1 (db1.internal): field 'bucket'"),
    "unknown timezone": ({"PG_URLS": URL, "TIMEZONE": "Mars/Olympus"}, "TIMEZONE: unknown time zone"),
    "access key alone": ({"PG_URLS": URL, "S3_ACCESS_KEY": "AKIAEXAMPLE"}, "S3_ACCESS_KEY: set without S3_SECRET_KEY"),
    "lock wait timeout": ({"PG_URLS": URL, "PG_LOCK_WAIT_TIMEOUT_SECONDS": "5m"},
                          "PG_LOCK_WAIT_TIMEOUT_SECONDS: '5m' is not a whole number"),
    "unknown connection": ({"PG_URLS": f"main|{URL}"}, "unknown connection 'nope'"),
    "log file": ({"PG_URLS": URL, "LOG_FILE": "/proc/pgbkp/pg-backup.log"}, "LOG_FILE: cannot write"),
    "ping url": ({"PG_URLS": URL, "HEALTHCHECK_URL": "ftp://hc.example/ping"}, "HEALTHCHECK_URL: "),
}
#: Command-line arguments for the cases that need some.
CASE_ARGS = {"unknown connection": ["-c", "nope"]}


@pytest.mark.parametrize("name", list(CONFIG_CASES))
def test_configuration_error_exits_2_with_one_message(name: str) -> None:
    extra, expected = CONFIG_CASES[name]
    res = run({"S3_BUCKET": "some-bucket", **extra}, *CASE_ARGS.get(name, []))
    assert res.returncode == 2, res.stderr
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("pgbkp: configuration error: ")
    assert expected in lines[0] and "Fix:" in lines[0]
    assert_clean(res)


# --------------------------------------------------------------------------------------------------
# Real servers


@pytest.fixture
def database(pg: PgCluster) -> Iterator[str]:
    with pg.temporary_database(f"cli_err_{uuid.uuid4().hex[:8]}") as name:
        yield name


def test_missing_bucket_fails_its_databases_and_exits_1_as_list_does(pg: PgCluster, s3: S3Server,
                                                                     database: str) -> None:
    """A bucket is checked at run time, so it is not a configuration error (exit 2): ``pgbkp list`` says 1 for
    it too. Only the databases that go to it fail; the one routed to an existing bucket is backed up."""
    good = make_bucket(s3)
    missing = f"not-created-{uuid.uuid4().hex[:8]}"
    res = run({**s3.env(), "PG_URLS": f"main|bucket={missing}|db_buckets=postgres={good}|{pg.url()}"},
              "--database", database, "--database", "postgres")
    assert res.returncode == 1, res.stderr
    lines = message_lines(res.stderr)
    assert lines == [f"error: main/{database}: PG_URLS item 1 (main): field 'bucket (or S3_BUCKET)': check bucket "
                     f"s3://{missing}: it does not exist. Fix: create it, or correct S3_BUCKET / bucket= / db_buckets="]
    assert [k.split("/")[1] for k in all_keys(s3, good)] == ["postgres"]
    assert_clean(res, pg.password, s3.secret_key)


def test_unreachable_endpoint_of_one_connection_fails_only_that_connection(pg: PgCluster, s3: S3Server,
                                                                          database: str) -> None:
    """An outage is not a configuration error: exit 1, and the other connection's backup exists."""
    bucket = make_bucket(s3)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connections are refused at once
    res = run({**s3.env(), "S3_BUCKET": bucket, "S3_MAX_ATTEMPTS": "1",
               "PG_URLS": f"down|endpoint={closed}|{pg.url()},up|{pg.url()}"},
              "-c", "down", "-c", "up", "-d", database, "--json")
    assert res.returncode == 1, res.stderr
    summary = json.loads(res.stdout)
    assert [(r["connection"], r["database"], r["status"]) for r in summary["results"]] == [
        ("down", database, "failed"), ("up", database, "ok")]
    down = summary["results"][0]["error"]
    assert down.startswith(f"PG_URLS item 1 (down): field 'bucket (or S3_BUCKET)': check bucket s3://{bucket}: "
                           f"cannot reach the S3 endpoint")
    assert "Fix:" in down
    assert [k.split("/")[0] for k in all_keys(s3, bucket)] == ["up"]
    assert_clean(res, pg.password, s3.secret_key)


def test_unreachable_host_fails_the_run(s3: S3Server) -> None:
    port = free_port()  # nothing listens there
    res = run({**s3.env(), "S3_BUCKET": "some-bucket", "PG_URLS": f"far|postgres://app:{ENC}@127.0.0.1:{port}/x"})
    assert res.returncode == 1, res.stderr
    lines = message_lines(res.stderr)
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: far/*: PG_URLS item 1 (far): field 'url': ")
    assert "cannot reach the server" in lines[0] and "Fix:" in lines[0]
    assert "failed" in res.stdout  # the summary row
    assert_clean(res, s3.secret_key)


def test_wrong_password_fails_the_run(pg: PgCluster, s3: S3Server) -> None:
    res = run({**s3.env(), "S3_BUCKET": "some-bucket",
               "PG_URLS": f"wrongpw|postgres://{pg.user}:{ENC}@127.0.0.1:{pg.port}/postgres"})
    assert res.returncode == 1, res.stderr
    lines = message_lines(res.stderr)
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: wrongpw/*: PG_URLS item 1 (wrongpw): field 'url': ")
    assert "password authentication failed" in lines[0] and "Fix:" in lines[0]
    assert_clean(res, pg.password, s3.secret_key)


def test_one_bad_connection_does_not_stop_the_others(pg: PgCluster, s3: S3Server, database: str) -> None:
    from tests.helpers import make_bucket

    bucket = make_bucket(s3)
    res = run({**s3.env(), "S3_BUCKET": bucket,
               "PG_URLS": f"bad|postgres://{pg.user}:{ENC}@127.0.0.1:{pg.port}/postgres,good|{pg.url()}"},
              "--connection", "bad", "--connection", "good", "--database", database)
    assert res.returncode == 1, res.stderr
    assert f"good/{database}" in res.stdout and " ok" in res.stdout
    assert_clean(res, pg.password, s3.secret_key)


# --------------------------------------------------------------------------------------------------
# argv never carries the password


def _cmdline(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def test_pg_dump_argv_has_no_password_but_its_environment_does(pg: PgCluster, database: str) -> None:
    """Unit level, deterministic: a real pg_dump blocked on its full pipe, inspected through /proc once its
    first bytes have arrived (so it has surely exec'd, and it cannot finish while we do not read)."""
    pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) || repeat('x', 200) AS v FROM generate_series(1, 20000) g",
            database)
    target = load({"PG_URLS": pg.url(), "S3_BUCKET": "unused"}).connections[0].pg
    with postgres.DumpStream(target, database) as dump:
        assert dump.read(1024)  # it is really dumping
        argv = _cmdline(dump.pid)
        environ = Path(f"/proc/{dump.pid}/environ").read_bytes().split(b"\0")
    assert any(a.endswith("pg_dump") for a in argv), argv
    assert f"dbname='{database}'" in " ".join(argv)
    for form in secret_forms(pg.password):
        assert form not in " ".join(argv)
    assert f"PGPASSWORD={pg.password}".encode() in environ


def test_no_password_in_any_child_argv_during_a_real_backup(pg: PgCluster, s3: S3Server, database: str,
                                                            tmp_path: Path) -> None:
    """Whole command: PG_BIN_DIR holds wrappers that record the argv of every psql and pg_dump the command
    starts, then exec the real tool. Every start is recorded, with no polling to miss one."""
    seen, bindir = tmp_path / "argv", tmp_path / "bin"
    seen.mkdir()
    bindir.mkdir()
    for name in ("pg_dump", "psql"):  # one file per process ($$), arguments NUL-separated as in /proc
        wrapper = bindir / name
        wrapper.write_text(f'#!/bin/sh\nprintf "%s\\0" "$0" "$@" > {seen}/$$\nexec {pg.bindir / name} "$@"\n')
        wrapper.chmod(stat.S_IRWXU)
    pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 1000) g", database)
    bucket = make_bucket(s3)
    res = run({**s3.env(), "PG_URLS": f"main|bucket={bucket}|{pg.url()}", "PG_BIN_DIR": str(bindir)},
              "--database", database)
    assert res.returncode == 0, res.stderr
    calls = [f.read_bytes().decode("utf-8").split("\0")[:-1] for f in seen.iterdir()]
    assert sorted({Path(argv[0]).name for argv in calls}) == ["pg_dump", "psql"], calls
    for argv in calls:
        for form in secret_forms(pg.password):
            assert form not in " ".join(argv), argv
    assert_clean(res, pg.password)
