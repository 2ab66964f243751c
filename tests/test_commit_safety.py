"""One write per backup, end to end on real PostgreSQL and S3 (issue: "never overwrite a good backup").

Each backup lands in one request and carries its own integrity record; a second run of the same minute
never touches the first's backup; a flipped byte anywhere, the record included, is refused before the
target sees anything; Ctrl-C while the landing's answer is held back leaves a whole, restorable backup;
v1 objects (SHA-256 in metadata, no record) still restore. Faults are driven by proxy gates.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from pgbkp import config as config_mod
from pgbkp import integrity, pipeline
from pgbkp.storage.s3 import S3Storage
from tests.helpers import PGBKP, dump_sql, make_bucket, pending_uploads, s3_client
from tests.s3proxy import running as proxy_running
from tests.servers import PgCluster, S3Server

PASSWORD = "a long enough zip password"
WHEN = datetime(2026, 3, 1, 4, 5)
#: Random bytea does not compress: about 13 MB of archive, three 5 MiB parts.
INCOMPRESSIBLE_SQL = """
CREATE TABLE blob (id int PRIMARY KEY, b bytea);
INSERT INTO blob SELECT g, decode(string_agg(md5(random()::text || g || h), ''), 'hex')
FROM generate_series(1, 100) g, generate_series(1, 8200) h GROUP BY g;
"""


@pytest.fixture(scope="module")
def big_db(pg: PgCluster) -> Iterator[str]:
    with pg.temporary_database("commit_big", INCOMPRESSIBLE_SQL) as name:
        yield name


def env_for(pg: PgCluster, s3: S3Server, bucket: str, endpoint: str | None = None) -> dict[str, str]:
    env = {**s3.env(), "PG_URLS": f"p|bucket={bucket}|" + pg.url(), "TIMEZONE": "UTC", "COMPRESSION_THREADS": "2",
           "ZIP_PASSWORD": PASSWORD, "S3_PART_SIZE_MB": "5", "RETENTION_DAYS": "0"}
    if endpoint:
        env["S3_ENDPOINT"] = endpoint
    return env


def backup(env: dict[str, str], database: str, when: datetime = WHEN) -> pipeline.DatabaseResult:
    cfg = config_mod.load(env)
    (result,) = pipeline.run(cfg, pipeline.plan(cfg, databases=[database], now=when),
                             storage_for=pipeline.StorageCache(S3Storage)).results
    return result


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "ZIP_", "RETENTION_"))}
    full.update({"LOG_FILE": "", "HEALTHCHECK_URL": "", **env})
    return subprocess.run([PGBKP, *args], env=full, capture_output=True, text=True, timeout=300, check=False)


def restore_into(env: dict[str, str], pg: PgCluster, key: str, target: str) -> subprocess.CompletedProcess[str]:
    return cli(env, "restore", "--key", key, "--target-url", pg.url(target), "--create")


def test_a_backup_is_one_object_one_version_with_its_record(pg: PgCluster, s3: S3Server, big_db: str) -> None:
    bucket = make_bucket(s3)
    raw = s3_client(s3)
    raw.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    result = backup(env_for(pg, s3, bucket), big_db)
    assert result.status == "ok", result.error
    versions = raw.list_object_versions(Bucket=bucket)["Versions"]
    assert [v["Key"] for v in versions] == [result.key]
    head = raw.head_object(Bucket=bucket, Key=result.key)
    assert head["ContentLength"] > 10 * 1024 * 1024 and head["ETag"].endswith('-3"')  # three parts
    assert head["Metadata"][integrity.METADATA_KEY] == integrity.METADATA_VALUE
    assert "sha256" not in head["Metadata"]  # the hash lives in the archive now, not in a second write
    body = raw.get_object(Bucket=bucket, Key=result.key)["Body"].read()
    comment_at = len(body) - len(body.rsplit(b"pgbkp-integrity/1 ", 1)[1]) - len(b"pgbkp-integrity/1 ")
    record = integrity.parse(body[comment_at:])
    assert (record.size, record.raw_size) == (comment_at, result.raw_bytes)
    assert record.sha256 == hashlib.sha256(body[:comment_at]).hexdigest()


def test_a_second_run_in_the_same_minute_keeps_the_first_backup(pg: PgCluster, s3: S3Server) -> None:
    bucket = make_bucket(s3)
    raw = s3_client(s3)
    with pg.temporary_database("same_minute", "CREATE TABLE t AS SELECT 1 AS x") as db:
        env = env_for(pg, s3, bucket)
        first = backup(env, db)
        before = raw.head_object(Bucket=bucket, Key=first.key)
        cfg = config_mod.load(env)
        second = pipeline.run(cfg, pipeline.plan(cfg, databases=[db], now=WHEN),
                              storage_for=pipeline.StorageCache(S3Storage))
    assert (first.status, second.results, second.ok) == ("ok", [], True)
    assert second.skipped == [pipeline.Skipped("p", db, (
        f"upload s3://{bucket}/{first.key}: a backup already exists under this key (made in the same minute by "
        "another run?); it was kept and nothing was written"))]
    after = raw.head_object(Bucket=bucket, Key=first.key)
    assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])
    assert pending_uploads(s3, bucket) == []


def test_every_request_failing_after_landing_keeps_the_earlier_backup(pg: PgCluster, s3: S3Server, big_db: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose check said the key was free (a race) lands on another run's backup, and then the
    store fails every request: the earlier whole backup survives, nothing is deleted, no retention."""
    monkeypatch.setattr("pgbkp.storage.s3.CLEANUP_SECONDS", 0.5)  # the store never answers again: give up soon
    bucket = make_bucket(s3)
    first = backup(env_for(pg, s3, bucket), big_db)
    assert first.status == "ok"
    earlier = s3_client(s3).get_object(Bucket=bucket, Key=first.key)["Body"].read()
    with proxy_running(s3.endpoint) as proxy:
        proxy.fail(lambda r: r.operation == "HeadObject", 404, "NotFound", times=1)  # the race: "nothing there"
        landed: list[bool] = []

        def from_landing_on(r: Any) -> bool:
            if r.operation == "CompleteMultipartUpload":
                landed.append(True)
            return bool(landed)

        proxy.fail(from_landing_on, 500, "InternalError", after=True)
        env = {**env_for(pg, s3, bucket, proxy.endpoint), "S3_MAX_ATTEMPTS": "1", "RETENTION_DAYS": "1"}
        second = backup(env, big_db)
    assert second.status == "failed"
    assert "Nothing was deleted" in (second.error or "")
    assert second.retention == []
    assert proxy.ops("DeleteObject") == [] and proxy.ops("DeleteObjects") == []
    assert s3_client(s3).get_object(Bucket=bucket, Key=first.key)["Body"].read() == earlier


def flipped(body: bytes, at: int) -> bytes:
    out = bytearray(body)
    out[at] ^= 0x20
    return bytes(out)


def test_a_flipped_byte_anywhere_is_refused_before_the_target_sees_it(pg: PgCluster, s3: S3Server,
                                                                       big_db: str) -> None:
    bucket = make_bucket(s3)
    env = env_for(pg, s3, bucket)
    result = backup(env, big_db)
    raw = s3_client(s3)
    obj = raw.get_object(Bucket=bucket, Key=result.key)
    body, meta = obj["Body"].read(), obj["Metadata"]
    part = 5 * 1024 * 1024
    record_at = body.rindex(b"pgbkp-integrity/1 ")
    places = {"part 1": part // 2, "part 2": part + part // 2, "part 3": 2 * part + 1000,
              "record": record_at + 40, "record check": len(body) - 3}
    for n, (what, at) in enumerate(places.items()):
        raw.put_object(Bucket=bucket, Key=result.key, Body=flipped(body, at), Metadata=meta)
        target = f"flip_{n}"
        run = restore_into(env, pg, result.key, target)
        assert run.returncode == 1, (what, run.stderr)
        assert "nothing was committed" in run.stderr, (what, run.stderr)
        assert "Traceback" not in run.stderr
        assert target not in pg.databases(), what
    raw.put_object(Bucket=bucket, Key=result.key, Body=body, Metadata=meta)
    ok = restore_into(env, pg, result.key, "flip_none")
    assert ok.returncode == 0, ok.stderr
    assert dump_sql(pg, "flip_none") == dump_sql(pg, big_db)
    pg.drop_database("flip_none")


def test_a_stripped_record_is_refused(pg: PgCluster, s3: S3Server) -> None:
    """Cut off the record and mend the end record: a valid ZIP, but the metadata says a record was written."""
    bucket = make_bucket(s3)
    with pg.temporary_database("stripped", "CREATE TABLE t AS SELECT 1 AS x") as db:
        env = env_for(pg, s3, bucket)
        result = backup(env, db)
        raw = s3_client(s3)
        obj = raw.get_object(Bucket=bucket, Key=result.key)
        body, meta = obj["Body"].read(), obj["Metadata"]
        raw.put_object(Bucket=bucket, Key=result.key, Body=as_v1(body), Metadata=meta)
        run = restore_into(env, pg, result.key, "stripped_target")
    assert run.returncode == 1, run.stderr
    assert "has lost its integrity record" in run.stderr
    assert "stripped_target" not in pg.databases()


def as_v1(body: bytes) -> bytes:
    """The same archive as v1 wrote it: no comment, the end record's comment length 0."""
    cut = body.rindex(b"pgbkp-integrity/1 ")
    return body[:cut - 2] + b"\x00\x00"


def test_v1_objects_still_list_restore_and_are_checked(pg: PgCluster, s3: S3Server) -> None:
    bucket = make_bucket(s3)
    sql = "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 500) g"
    with pg.temporary_database("v1_db", sql) as db:
        env = env_for(pg, s3, bucket)
        result = backup(env, db)
        raw = s3_client(s3)
        obj = raw.get_object(Bucket=bucket, Key=result.key)
        v1 = as_v1(obj["Body"].read())
        meta = {k: v for k, v in obj["Metadata"].items() if k != integrity.METADATA_KEY}
        meta.update({"sha256": hashlib.sha256(v1).hexdigest(), "raw-size": str(result.raw_bytes)})
        raw.put_object(Bucket=bucket, Key=result.key, Body=v1, Metadata=meta)
        listed = cli(env, "list", "--json")
        assert listed.returncode == 0 and result.key in listed.stdout, listed.stderr
        ok = restore_into(env, pg, result.key, "v1_target")
        assert ok.returncode == 0, ok.stderr
        assert dump_sql(pg, "v1_target") == dump_sql(pg, db)
        pg.drop_database("v1_target")
        raw.put_object(Bucket=bucket, Key=result.key, Body=flipped(v1, len(v1) // 2), Metadata=meta)
        bad = restore_into(env, pg, result.key, "v1_bad")
    assert bad.returncode == 1 and "nothing was committed" in bad.stderr, bad.stderr
    assert "v1_bad" not in pg.databases()


def test_ctrl_c_while_the_landing_answer_is_held_leaves_a_whole_backup(pg: PgCluster, s3: S3Server,
                                                                       big_db: str) -> None:
    """The landing request is on its way when Ctrl-C comes: there is nothing left to undo, so the run
    reports the backup it made, which is whole, restorable, with no upload pending."""
    bucket = make_bucket(s3)
    with proxy_running(s3.endpoint) as proxy:
        gate = proxy.hold(lambda r: r.operation == "CompleteMultipartUpload", after=True)
        env = env_for(pg, s3, bucket, proxy.endpoint)
        full = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "ZIP_", "RETENTION_"))}
        full.update({"LOG_FILE": "", "HEALTHCHECK_URL": "", **env})
        proc = subprocess.Popen([PGBKP, "backup", "-d", big_db], env=full, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            gate.wait_arrived(120)  # the object has landed on the server; the answer is held back
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=120)  # returns with the answer still held: it looked instead
            assert not gate._open.is_set()
        finally:
            gate.release()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert pending_uploads(s3, bucket) == []
    keys = [o["Key"] for o in s3_client(s3).list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert len(keys) == 1
    env = env_for(pg, s3, bucket)
    run = restore_into(env, pg, keys[0], "after_ctrl_c")
    assert run.returncode == 0, run.stderr
    assert dump_sql(pg, "after_ctrl_c") == dump_sql(pg, big_db)
    pg.drop_database("after_ctrl_c")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.parametrize("held", ["HeadBucket", "ListMultipartUploads", "CompleteMultipartUpload"])
def test_sigterm_while_the_store_stalls_a_request_stops_at_once(pg: PgCluster, s3: S3Server, big_db: str,
                                                                 held: str) -> None:
    """A stalled answer (botocore would wait 120 s a try) no longer outlasts SIGTERM: the run stops,
    aborts its upload, and leaves nothing."""
    bucket = make_bucket(s3)
    with proxy_running(s3.endpoint) as proxy:
        gate = proxy.hold(lambda r: r.operation == held)
        full = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "ZIP_", "RETENTION_"))}
        full.update({"LOG_FILE": "", "HEALTHCHECK_URL": "", **env_for(pg, s3, bucket, proxy.endpoint)})
        proc = subprocess.Popen([PGBKP, "backup", "-d", big_db], env=full, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            gate.wait_arrived(120)
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=120)  # returns while the request is still held
            assert not gate._open.is_set()
            state = (sorted(o["Key"] for o in s3_client(s3).list_objects_v2(Bucket=bucket).get("Contents", [])),
                     pending_uploads(s3, bucket))
        finally:
            gate.release()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert "stopped" in err
    assert state == ([], [])
