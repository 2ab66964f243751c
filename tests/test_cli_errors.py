"""The real ``pgbkp backup`` command on bad input: one clear message, the right exit code, no traceback,
no password, and no password in any child's argv.

Exit codes: 2 for a configuration error found before any dump (including a bucket that does not exist),
1 for a connection that fails at run time (unreachable host, wrong password): the other connections
still run, and the run as a whole reports a failed backup.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from pgbkp import postgres
from pgbkp.config import load
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
    "unknown key": ({"PG_URLS": f"pfx|colour=blue|{URL}"}, "PG_URLS item 1 (pfx): field 2 has unknown key 'colour'"),
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
}


@pytest.mark.parametrize("name", list(CONFIG_CASES))
def test_configuration_error_exits_2_with_one_message(name: str) -> None:
    extra, expected = CONFIG_CASES[name]
    res = run({"S3_BUCKET": "some-bucket", **extra})
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


def test_missing_bucket_is_a_configuration_error(pg: PgCluster, s3: S3Server, database: str) -> None:
    res = run({**s3.env(), "PG_URLS": f"main|bucket=not-created-{uuid.uuid4().hex[:8]}|{pg.url()}"},
              "--database", database)
    assert res.returncode == 2, res.stderr
    lines = message_lines(res.stderr)
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("pgbkp: configuration error: PG_URLS item 1 (main): field 'bucket")
    assert "does not exist" in lines[0] and "Fix:" in lines[0]
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
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
    return []


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_pg_dump_argv_has_no_password_but_its_environment_does(pg: PgCluster, database: str) -> None:
    """Unit level, deterministic: a real pg_dump blocked on its full pipe, inspected through /proc."""
    pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) || repeat('x', 200) AS v FROM generate_series(1, 20000) g",
            database)
    target = load({"PG_URLS": pg.url(), "S3_BUCKET": "unused"}).connections[0].pg
    with postgres.DumpStream(target, database) as dump:
        deadline = time.monotonic() + 10
        argv = _cmdline(dump.pid)
        while "pg_dump" not in " ".join(argv) and time.monotonic() < deadline:
            time.sleep(0.01)
            argv = _cmdline(dump.pid)
        environ = Path(f"/proc/{dump.pid}/environ").read_bytes().split(b"\0")
        assert dump.read(1024)  # it is really dumping
    assert any(a.endswith("pg_dump") for a in argv), argv
    assert f"dbname='{database}'" in " ".join(argv)
    for form in secret_forms(pg.password):
        assert form not in " ".join(argv)
    assert f"PGPASSWORD={pg.password}".encode() in environ


def test_no_password_in_any_child_argv_during_a_real_backup(pg: PgCluster, s3: S3Server, database: str) -> None:
    """Whole command: poll /proc for pgbkp's children (psql listing, pg_dump) while it runs."""
    from tests.helpers import make_bucket

    pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) || md5((g * 7)::text) AS v "
            "FROM generate_series(1, 100000) g", database)
    bucket = make_bucket(s3)
    env = environ({**s3.env(), "PG_URLS": f"main|bucket={bucket}|{pg.url()}", "ZIP_COMPRESSION_LEVEL": "1"})
    proc = subprocess.Popen([PGBKP, "backup", "--database", database], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: set[tuple[str, ...]] = set()  # every argv seen: forked-not-yet-exec'd, Debian's perl wrapper, the tool
    try:
        while proc.poll() is None:
            for child in _children(proc.pid):
                if argv := _cmdline(child):
                    seen.add(tuple(argv))
            time.sleep(0.002)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    tools = {os.path.basename(a) for argv in seen for a in argv[:2]}
    assert {"pg_dump", "psql"} <= tools, seen
    for argv in seen:
        joined = " ".join(argv)
        for form in secret_forms(pg.password):
            assert form not in joined, argv
    assert_clean(subprocess.CompletedProcess([], 0, out, err), pg.password)
