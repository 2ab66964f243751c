"""Back up hostile databases for real, open the ZIP with tools we did not write, restore, compare dumps."""

from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile
from pathlib import Path

import pytest

from pgbkp import integrity, keys
from tests.helpers import HOSTILE_SQL, all_keys, dump_sql, make_bucket, pending_uploads, run_cli, s3_client
from tests.servers import PgCluster, S3Server

ZIP_PASSWORD = "zip-pässword with spaces & symbols!"


def restore_sql(pg: PgCluster, database: str, sql: bytes) -> None:
    out = subprocess.run(
        [str(pg.bindir / "psql"), "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1", "-d", database],
        input=sql, capture_output=True, env=pg.env(), check=False,
    )
    assert out.returncode == 0, out.stderr.decode()


@pytest.fixture
def hostile_db(pg: PgCluster):
    with pg.temporary_database("we'ird \"db\" é/x ✓ -shop", HOSTILE_SQL) as name:
        yield name


@pytest.mark.parametrize("password", [None, ZIP_PASSWORD], ids=["plain", "aes"])
def test_hostile_database_round_trip(pg: PgCluster, s3: S3Server, hostile_db: str, password: str | None,
                                     tmp_path: Path) -> None:
    bucket = make_bucket(s3)
    env = {**s3.env(), "PG_URLS": f"main|bucket={bucket}|{pg.url()}", "TIMEZONE": "UTC"}
    if password:
        env["ZIP_PASSWORD"] = password
    res = run_cli(["backup", "--database", hostile_db], env)
    assert res.returncode == 0, res.stderr
    assert pg.password not in res.stdout + res.stderr
    if password:
        assert password not in res.stdout + res.stderr

    [key] = all_keys(s3, bucket)
    enc = keys.encode_name(hostile_db)
    assert key.startswith(f"main/{enc}/main-{enc}-") and key.count("/") == 2
    assert keys.parse_filename(key.rsplit("/", 1)[1], hostile_db, "main") is not None
    obj = s3_client(s3).get_object(Bucket=bucket, Key=key)
    body = obj["Body"].read()
    meta = obj["Metadata"]
    record = integrity.parse(zipfile.ZipFile(io.BytesIO(body)).comment)  # the archive's own sha256 and sizes
    assert meta[integrity.METADATA_KEY] == integrity.METADATA_VALUE
    assert record.sha256 == hashlib.sha256(body[:record.size]).hexdigest()
    assert pending_uploads(s3, bucket) == []

    archive = tmp_path / "backup.zip"
    archive.write_bytes(body)
    member = keys.member_name(key)
    if password:
        seven = subprocess.run(["7z", "x", "-so", f"-p{password}", str(archive)], capture_output=True, check=False)
        assert seven.returncode == 0, seven.stderr.decode()
        sql = seven.stdout
        bsd = subprocess.run(["bsdtar", "-xOf", str(archive), "--passphrase", password], capture_output=True,
                             check=False)
        assert bsd.returncode == 0, bsd.stderr.decode()
        assert bsd.stdout == sql
    else:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            assert zf.namelist() == [member]
            sql = zf.read(member)
        unz = subprocess.run(["unzip", "-p", str(archive)], capture_output=True, check=False)
        assert unz.returncode == 0 and unz.stdout == sql
    assert record.raw_size == len(sql)

    target = f"restored_{hashlib.md5(key.encode()).hexdigest()[:8]}"
    pg.drop_database(target)
    pg.create_database(target)
    try:
        restore_sql(pg, target, sql)
        assert dump_sql(pg, target) == dump_sql(pg, hostile_db)
    finally:
        pg.drop_database(target)


def test_every_database_of_every_connection(pg: PgCluster, s3: S3Server) -> None:
    """Two connections to one server, routed to different buckets, with ignore lists and db_buckets."""
    pg.create_database("rt_alpha")
    pg.create_database("rt_beta")
    try:
        b1, b2, b3 = make_bucket(s3), make_bucket(s3), make_bucket(s3)
        others = ",".join(d for d in pg.databases() if d not in ("rt_alpha", "rt_beta"))
        urls = (f"one|bucket={b1}|ignore={others}|{pg.url()},"
                f"two|db_buckets=rt_beta={b3}|{pg.url()}")
        env = {**s3.env(), "PG_URLS": urls, "S3_BUCKET": b2, "GLOBAL_PREFIX": "nightly/", "TIMEZONE": "UTC",
               "IGNORE_DATABASES": others}
        res = run_cli(["backup"], env)
        assert res.returncode == 0, res.stderr
        k1, k2, k3 = all_keys(s3, b1), all_keys(s3, b2), all_keys(s3, b3)
        assert [k.rsplit("/", 1)[0] for k in k1] == ["nightly/one/rt_alpha", "nightly/one/rt_beta"]
        assert [k.rsplit("/", 1)[0] for k in k2] == ["nightly/two/rt_alpha"]
        assert [k.rsplit("/", 1)[0] for k in k3] == ["nightly/two/rt_beta"]
        assert "rt_alpha" in res.stdout and "ok" in res.stdout
    finally:
        pg.drop_database("rt_alpha")
        pg.drop_database("rt_beta")


def test_dry_run_dumps_nothing(pg: PgCluster, s3: S3Server) -> None:
    bucket = make_bucket(s3)
    env = {**s3.env(), "PG_URLS": f"{pg.url()}", "S3_BUCKET": bucket}
    res = run_cli(["backup", "--dry-run", "--database", "postgres"], env)
    assert res.returncode == 0, res.stderr
    [row] = [line for line in res.stdout.splitlines() if line.startswith("127.0.0.1/postgres ")]
    assert row.rstrip().endswith("dry-run") and "s3://" in row
    assert "on disk (estimate)" in row  # nothing was dumped: the size shown is the database's, on disk
    assert all_keys(s3, bucket) == []
