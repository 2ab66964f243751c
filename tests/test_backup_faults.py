"""Faults for real: pg_dump killed, the server backend terminated, the S3 server gone mid-upload.

Each must leave no object, no pending multipart upload, a non-zero exit and no secret in the output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import PGBKP, all_keys, make_bucket, pending_uploads, s3_client
from tests.servers import PgCluster, S3Server

ZIP_PASSWORD = "fault-zip-secret-9d1"


@pytest.fixture(scope="module")
def slow_db(pg: PgCluster) -> Iterator[str]:
    """A database whose dump takes seconds at level 9 on one thread: room to strike mid-stream."""
    sql = ("CREATE TABLE t AS SELECT g, md5(g::text) || md5((g*7)::text) AS a, random()::text AS b "
           "FROM generate_series(1, 900000) g")
    with pg.temporary_database("fault_big", sql) as name:
        yield name


def start_backup(pg: PgCluster, s3: S3Server, bucket: str, database: str, endpoint: str | None = None,
                 **extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_"))}
    env.update(s3.env())
    env.update(PG_URLS=f"faults|bucket={bucket}|{pg.url()}", ZIP_PASSWORD=ZIP_PASSWORD, S3_PART_SIZE_MB="5",
               ZIP_COMPRESSION_LEVEL="9", COMPRESSION_THREADS="1", LOG_FORMAT="json", **extra)
    if endpoint:
        env["S3_ENDPOINT"] = endpoint
    return subprocess.Popen([PGBKP, "backup", "--database", database], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until(cond: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def pg_dump_pid(parent: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"pg_dump" in cmd:
            return int(entry.name)
    return None


def assert_clean_failure(proc: subprocess.Popen[str], s3: S3Server, bucket: str, pg: PgCluster,
                         expect: str) -> str:
    out, err = proc.communicate(timeout=120)
    both = out + err
    assert proc.returncode == 1, both
    assert expect in both, both
    assert "Traceback" not in both
    for secret in (pg.password, ZIP_PASSWORD, s3.secret_key):
        assert secret not in both
    assert all_keys(s3, bucket) == []
    assert pending_uploads(s3, bucket) == []
    return both


def test_pg_dump_killed_mid_stream(pg: PgCluster, s3: S3Server, slow_db: str) -> None:
    bucket = make_bucket(s3)
    proc = start_backup(pg, s3, bucket, slow_db)
    wait_until(lambda: bool(pending_uploads(s3, bucket)))  # parts are already in S3
    pid = pg_dump_pid(proc.pid)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert_clean_failure(proc, s3, bucket, pg, "killed by signal 9")


def test_server_backend_terminated_mid_dump(pg: PgCluster, s3: S3Server, slow_db: str) -> None:
    bucket = make_bucket(s3)
    proc = start_backup(pg, s3, bucket, slow_db)
    wait_until(lambda: bool(pending_uploads(s3, bucket)))
    killed = pg.psql(f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                     f"WHERE datname = '{slow_db}' AND application_name = 'pgbkp'")
    assert killed == "1"
    assert_clean_failure(proc, s3, bucket, pg, "the dump is incomplete")


def test_s3_server_stopped_mid_upload(pg: PgCluster, s3: S3Server, slow_db: str) -> None:
    """The store goes away mid-upload and comes back: the upload fails, and its abort, retried until the
    store answers again, leaves nothing behind."""
    from tests.s3proxy import S3Proxy

    bucket = make_bucket(s3)
    with S3Proxy(s3.endpoint) as proxy:
        proc = start_backup(pg, s3, bucket, slow_db, endpoint=proxy.endpoint, S3_MAX_ATTEMPTS="2")
        wait_until(lambda: bool(pending_uploads(s3, bucket)))
        proxy.stop()
        time.sleep(4)
        proxy.start()
        both = assert_clean_failure(proc, s3, bucket, pg, "upload s3://")
    assert pg_dump_pid(proc.pid) is None
    assert "dump" not in both.split("upload s3://", 1)[0][-20:]  # the upload, not the dump, is blamed
    assert s3_client(s3).list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 1), (signal.SIGINT, 130)], ids=["sigterm", "sigint"])
def test_backup_command_stopped_mid_upload_leaves_nothing(pg: PgCluster, s3: S3Server, slow_db: str,
                                                          sig: signal.Signals, code: int) -> None:
    bucket = make_bucket(s3)
    proc = start_backup(pg, s3, bucket, slow_db)
    wait_until(lambda: bool(pending_uploads(s3, bucket)))
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, out + err
    assert "Traceback" not in out + err
    assert all_keys(s3, bucket) == []
    assert pending_uploads(s3, bucket) == []
    assert pg_dump_pid(proc.pid) is None


def test_a_dump_stalled_on_a_lock_still_honours_a_stop(pg: PgCluster, s3: S3Server) -> None:
    """pg_dump waiting for a lock writes nothing; the time limit or a shutdown must still end it."""
    from pgbkp import config, pipeline

    name = "fault_locked"
    pg.drop_database(name)
    pg.create_database(name)
    pg.psql("CREATE TABLE t AS SELECT 1 AS x", name)
    locker = subprocess.Popen(
        [str(pg.bindir / "psql"), "-X", "-q", "-d", name, "-c",
         "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);"],
        env=pg.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: pg.psql(f"SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                                   f"WHERE d.datname = '{name}' AND l.mode = 'AccessExclusiveLock'") != "0")
        bucket = make_bucket(s3)
        cfg = config.load({**s3.env(), "PG_URLS": f"locked|bucket={bucket}|{pg.url()}"})
        started = time.monotonic()
        result = pipeline.run(cfg, pipeline.plan(cfg, databases=[name]),
                              should_stop=lambda: time.monotonic() - started > 2)
        took = time.monotonic() - started
        [r] = result.results
        assert r.status == "failed" and "stopped while waiting" in (r.error or "")
        assert took < 10
        assert all_keys(s3, bucket) == [] and pending_uploads(s3, bucket) == []
    finally:
        locker.kill()
        locker.wait()
        pg.drop_database(name)
