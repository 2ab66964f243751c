"""Faults for real: pg_dump killed, the server backend terminated, the S3 server gone mid-upload, a signal,
a lock that never comes.

Each must leave no object, no pending multipart upload, a non-zero exit and no secret in the output. Every
fault is struck on an event (a part held at the S3 proxy, a log line, a lock seen waiting), never after a
sleep.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import PGBKP, all_keys, make_bucket, pending_uploads, s3_client
from tests.s3proxy import Gate, Request, S3Proxy
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
    # One part in flight and 5 MiB parts: with the first part held at the proxy, at most ~10 MiB of archive
    # is buffered, so pg_dump (about 40 MB of archive here) is blocked on its pipe, still running.
    env.update(PG_URLS=f"faults|bucket={bucket}|{pg.url()}", ZIP_PASSWORD=ZIP_PASSWORD, S3_PART_SIZE_MB="5",
               S3_UPLOAD_CONCURRENCY="1", ZIP_COMPRESSION_LEVEL="9", COMPRESSION_THREADS="1", LOG_FORMAT="json",
               LOG_FILE="off", HEALTHCHECK_URL="", **extra)
    if endpoint:
        env["S3_ENDPOINT"] = endpoint
    return subprocess.Popen([PGBKP, "backup", "--database", database], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@contextmanager
def first_part_held(s3: S3Server) -> Iterator[tuple[S3Proxy, Gate]]:
    """A proxy in front of S3 that holds every UploadPart once it has been stored, until released: "the
    upload is under way, a part is in S3, and the dump cannot finish" is then an event, not a guess."""
    with S3Proxy(s3.endpoint) as proxy:
        gate = proxy.hold(lambda r: r.operation == "UploadPart", after=True)
        try:
            yield proxy, gate
        finally:
            gate.release()


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


def wait_for_log(proc: subprocess.Popen[str], text: str) -> list[str]:
    """Read the command's stderr line by line until a line holds ``text``; returns the lines read."""
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"the command ended without logging {text!r}:\n{''.join(lines)}")


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
    with first_part_held(s3) as (proxy, gate):
        proc = start_backup(pg, s3, bucket, slow_db, endpoint=proxy.endpoint)
        gate.wait_arrived(120)  # a part is in S3; pg_dump is blocked on its full pipe
        pid = pg_dump_pid(proc.pid)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        gate.release()
        both = assert_clean_failure(proc, s3, bucket, pg, "killed by signal 9 (SIGKILL); the dump is incomplete")
    assert both.count("SIGKILL") == both.count("killed by signal 9")  # the signal is named once per message


def test_server_backend_terminated_mid_dump(pg: PgCluster, s3: S3Server, slow_db: str) -> None:
    bucket = make_bucket(s3)
    with first_part_held(s3) as (proxy, gate):
        proc = start_backup(pg, s3, bucket, slow_db, endpoint=proxy.endpoint)
        gate.wait_arrived(120)
        killed = pg.psql(f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         f"WHERE datname = '{slow_db}' AND application_name = 'pgbkp'")
        assert killed == "1"
        gate.release()
        assert_clean_failure(proc, s3, bucket, pg, "the dump is incomplete")


def test_s3_store_away_mid_upload_then_back(pg: PgCluster, s3: S3Server, slow_db: str) -> None:
    """The store stops answering mid-upload and comes back: the upload fails, and its abort, refused at
    first and retried until the store answers again, leaves nothing behind."""
    bucket = make_bucket(s3)
    away, abort_refused = threading.Event(), threading.Event()

    def refused(req: Request) -> bool:
        if not away.is_set():
            return False
        if req.operation == "AbortMultipartUpload":
            abort_refused.set()
        return True

    with first_part_held(s3) as (proxy, gate):
        proxy.fail(refused, 503, "ServiceUnavailable")
        proc = start_backup(pg, s3, bucket, slow_db, endpoint=proxy.endpoint, S3_MAX_ATTEMPTS="2")
        gate.wait_arrived(120)
        away.set()  # from now on every request is refused...
        gate.release()
        assert abort_refused.wait(120)  # ...until the upload has failed and its abort was refused once
        away.clear()
        both = assert_clean_failure(proc, s3, bucket, pg, "upload s3://")
    assert pg_dump_pid(proc.pid) is None
    assert "dump" not in both.split("upload s3://", 1)[0][-20:]  # the upload, not the dump, is blamed
    assert s3_client(s3).list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)],
                         ids=["sigterm", "sigint", "sighup"])
def test_backup_command_stopped_mid_upload_leaves_nothing(pg: PgCluster, s3: S3Server, slow_db: str,
                                                          sig: signal.Signals, code: int) -> None:
    bucket = make_bucket(s3)
    with first_part_held(s3) as (proxy, gate):
        proc = start_backup(pg, s3, bucket, slow_db, endpoint=proxy.endpoint)
        gate.wait_arrived(120)
        proc.send_signal(sig)
        early = wait_for_log(proc, f"received {sig.name}")  # the stop is noted before the dump may go on
        gate.release()
        assert proc.stderr is not None and proc.stdout is not None
        err = "".join(early) + proc.stderr.read()
        out = proc.stdout.read()
        proc.wait(120)
    assert proc.returncode == code, out + err
    assert f"pgbkp: stopped by {sig.name}: the backup in flight was aborted" in err
    assert "Traceback" not in out + err
    assert all_keys(s3, bucket) == []
    assert pending_uploads(s3, bucket) == []
    assert pg_dump_pid(proc.pid) is None


@contextmanager
def table_locked(pg: PgCluster, database: str, table: str) -> Iterator[None]:
    """Another session holds ACCESS EXCLUSIVE on ``table`` until the block ends; entered once it does."""
    locker = subprocess.Popen([str(pg.bindir / "psql"), "-X", "-q", "-At", "-d", database], env=pg.env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert locker.stdin is not None and locker.stdout is not None
    try:
        locker.stdin.write(f"BEGIN;\nLOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;\nSELECT 'locked';\n")
        locker.stdin.flush()
        assert locker.stdout.readline().strip() == "locked"
        yield
    finally:
        locker.kill()
        locker.wait()


@pytest.fixture
def locked_db(pg: PgCluster) -> Iterator[str]:
    with pg.temporary_database("fault_locked", "CREATE TABLE t AS SELECT 1 AS x") as name, \
            table_locked(pg, name, "t"):
        yield name


def test_a_dump_stalled_on_a_lock_still_honours_a_stop(pg: PgCluster, s3: S3Server, locked_db: str) -> None:
    """pg_dump waiting for a lock writes nothing; the time limit or a shutdown must still end it. The stop
    comes once pg_dump is seen waiting for the lock."""
    from pgbkp import config, pipeline
    from pgbkp.storage.s3 import S3Storage

    bucket = make_bucket(s3)
    cfg = config.load({**s3.env(), "PG_URLS": f"locked|bucket={bucket}|{pg.url()}"})
    waiting = threading.Event()

    def stop_once_waiting() -> bool:
        if not waiting.is_set() and pg.psql(
                f"SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted "
                f"AND a.application_name = 'pgbkp' AND a.datname = '{locked_db}'") == "1":
            waiting.set()
        return waiting.is_set()

    result = pipeline.run(cfg, pipeline.plan(cfg, databases=[locked_db]), should_stop=stop_once_waiting,
                          storage_for=pipeline.StorageCache(S3Storage))
    [r] = result.results
    assert waiting.is_set()
    assert r.status == "failed" and "stopped while waiting" in (r.error or "")
    assert all_keys(s3, bucket) == [] and pending_uploads(s3, bucket) == []


def test_lock_wait_timeout_names_the_locked_table(pg: PgCluster, locked_db: str) -> None:
    """--lock-wait-timeout: a dump that cannot get its table locks fails and names them, rather than
    stalling until a time limit whose message would point at the wrong fix."""
    from pgbkp import config, postgres

    target = config.load({"PG_URLS": pg.url(), "S3_BUCKET": "unused"}).connections[0].pg
    with postgres.DumpStream(target, locked_db, bindir=pg.bindir, lock_wait_timeout=1) as dump, \
            pytest.raises(postgres.DumpError) as err:
        while dump.read(1 << 20):
            pass
    assert str(err.value) == (
        f"pg_dump {locked_db!r} from {target.display}: waited 1 s for a lock on table public.t: another session "
        "holds a conflicting lock (ALTER TABLE, TRUNCATE, VACUUM FULL, LOCK TABLE...). Fix: find it in pg_locks / "
        "pg_stat_activity and let it finish, or raise PG_LOCK_WAIT_TIMEOUT_SECONDS (exit code 1); the dump is "
        "incomplete")


def test_lock_wait_timeout_setting() -> None:
    from pgbkp import config, pipeline

    base = {"PG_URLS": "postgres://u@h/db", "S3_BUCKET": "bkt"}
    assert pipeline.lock_wait_timeout(config.load(base)) == 300
    assert pipeline.lock_wait_timeout(config.load({**base, "PG_LOCK_WAIT_TIMEOUT_SECONDS": "45"})) == 45
    with pytest.raises(config.ConfigError, match=re.escape("PG_LOCK_WAIT_TIMEOUT_SECONDS: -1 is out of range. Fix:")):
        pipeline.lock_wait_timeout(config.load({**base, "PG_LOCK_WAIT_TIMEOUT_SECONDS": "-1"}))


@pytest.mark.parametrize(("script", "status"), [
    ("exit 137", "exit code 137 (killed by signal 9, SIGKILL)"),
    ("kill -TERM $$", "killed by signal 15 (SIGTERM)"),
])
def test_a_killed_dump_names_its_signal_once(tmp_path: Path, script: str, status: str) -> None:
    """A pg_dump that dies without a word: the message says how, once (not "exit code 137 (exit code 137)").
    ``exit 137`` is what a wrapper or shell reports when the tool under it was killed."""
    from pgbkp import config, postgres

    (tmp_path / "pg_dump").write_text(f"#!/bin/sh\n{script}\n")
    (tmp_path / "pg_dump").chmod(0o700)
    target = config.load({"PG_URLS": "postgres://u@db.example:5432/postgres", "S3_BUCKET": "unused"}).connections[0].pg
    with postgres.DumpStream(target, "shop", bindir=tmp_path) as dump, pytest.raises(postgres.DumpError) as err:
        dump.read()
    assert str(err.value) == f"pg_dump 'shop' from u@db.example:5432/postgres: {status}; the dump is incomplete"
