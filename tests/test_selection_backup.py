"""Issue 14, part A, against a real server: databases= and the exclude fields, judged by what a restored
backup holds, and PG_DUMP_ARGS refused by the real command (exit 2, one line)."""

from __future__ import annotations

import io
import subprocess
import uuid
import zipfile
from collections.abc import Iterator

import pytest

from pgbkp import keys
from tests.helpers import all_keys, make_bucket, run_cli, s3_client
from tests.servers import PgCluster, S3Server

APP_SQL = """
CREATE TABLE kept (id int); INSERT INTO kept SELECT generate_series(1, 3);
CREATE TABLE audit_log (id int); INSERT INTO audit_log VALUES (1), (2);
CREATE TABLE events (id int); INSERT INTO events SELECT generate_series(1, 5);
CREATE SCHEMA scratch; CREATE TABLE scratch.t (id int); INSERT INTO scratch.t VALUES (1);
"""
CRM_SQL = """
CREATE TABLE events (id int); INSERT INTO events SELECT generate_series(1, 4);
CREATE TABLE audit_trail (id int); INSERT INTO audit_trail VALUES (7);
"""


@pytest.fixture
def stem(pg: PgCluster) -> Iterator[str]:
    """Three databases, sel<hex>_app, sel<hex>_crm and sel<hex>_other, dropped after."""
    stem = f"sel{uuid.uuid4().hex[:8]}"
    with pg.temporary_database(f"{stem}_app", APP_SQL), pg.temporary_database(f"{stem}_crm", CRM_SQL), \
            pg.temporary_database(f"{stem}_other", "CREATE TABLE x (id int);"):
        yield stem


def restored(pg: PgCluster, s3: S3Server, bucket: str, key: str) -> str:
    """The backup restored (psql, one transaction) into a new database; its name."""
    body = s3_client(s3).get_object(Bucket=bucket, Key=key)["Body"].read()
    sql = zipfile.ZipFile(io.BytesIO(body)).read(keys.member_name(key))
    target = f"r{uuid.uuid4().hex[:10]}"
    pg.create_database(target)
    out = subprocess.run([str(pg.bindir / "psql"), "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1",
                          "-d", target], input=sql, capture_output=True, env=pg.env(), check=False)
    assert out.returncode == 0, out.stderr.decode()
    return target


def tables(pg: PgCluster, database: str) -> dict[str, int]:
    """schema.table -> its row count, for every user table."""
    names = pg.psql("SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname NOT IN "
                    "('pg_catalog', 'information_schema') ORDER BY 1", database).split()
    return {n: int(pg.psql(f"SELECT count(*) FROM {n}", database)) for n in names}


def test_include_list_and_excludes_shape_what_is_restored(pg: PgCluster, s3: S3Server, stem: str) -> None:
    bucket = make_bucket(s3)
    pg_urls = (f"main|bucket={bucket}|databases={stem}_a*,{stem}_crm|exclude_schema=scratch|exclude_table=audit_*|"
               f"db_exclude_table_data={stem}_app=events|pg_dump_args=--no-owner --no-privileges|{pg.url()}")
    res = run_cli(["backup"], {**s3.env(), "PG_URLS": pg_urls, "TIMEZONE": "UTC"})
    assert res.returncode == 0, res.stderr
    found = all_keys(s3, bucket)
    assert [k.split("/")[1] for k in found] == [f"{stem}_app", f"{stem}_crm"]  # not _other, not postgres
    app, crm = (restored(pg, s3, bucket, k) for k in found)
    try:
        # app: the schema and audit_* gone whole; events there, but empty (its data left out for app only)
        assert tables(pg, app) == {"public.events": 0, "public.kept": 3}
        assert tables(pg, crm) == {"public.events": 4}
    finally:
        pg.drop_database(app)
        pg.drop_database(crm)


def test_a_missing_name_fails_only_itself(pg: PgCluster, s3: S3Server, stem: str) -> None:
    bucket = make_bucket(s3)
    pg_urls = f"main|bucket={bucket}|databases={stem}_crm,{stem}_gone,{stem}_none_*|{pg.url()}"
    res = run_cli(["backup"], {**s3.env(), "PG_URLS": pg_urls, "TIMEZONE": "UTC"})
    assert res.returncode == 1, res.stderr
    assert [k.split("/")[1] for k in all_keys(s3, bucket)] == [f"{stem}_crm"]
    assert (f"error: main/{stem}_gone: PG_URLS item 1 (main): field 'databases': no database '{stem}_gone' on "
            f"{pg.user}@127.0.0.1:{pg.port}/postgres") in res.stderr
    assert f"skipped: main/{stem}_none_*: databases= pattern '{stem}_none_*' matched no database" in res.stdout
    assert "Traceback" not in res.stderr


def test_a_dry_run_shows_the_pg_dump_flags(pg: PgCluster, s3: S3Server, stem: str) -> None:
    bucket = make_bucket(s3)
    pg_urls = f"main|bucket={bucket}|databases={stem}_app|exclude_table=audit_*|{pg.url()}"
    res = run_cli(["backup", "--dry-run"], {**s3.env(), "PG_URLS": pg_urls, "TIMEZONE": "UTC", "LOG_FORMAT": "text",
                                            "PG_DUMP_ARGS": "--no-owner"})
    assert res.returncode == 0, res.stderr
    assert f"{stem}_app: pg_dump --no-owner '--exclude-table=audit_*'" in res.stderr
    assert all_keys(s3, bucket) == []


@pytest.mark.parametrize("args", ["-Fc", "--jobs=2", "-f /tmp/x", "--host=evil"])
def test_the_command_refuses_a_forbidden_flag(pg: PgCluster, args: str) -> None:
    res = run_cli(["backup", "--dry-run"], {"PG_URLS": f"main|bucket=b-1|{pg.url()}", "PG_DUMP_ARGS": args})
    assert res.returncode == 2
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("pgbkp: configuration error: PG_DUMP_ARGS: ") and "is not allowed:" in line
    assert "Fix: " in line
