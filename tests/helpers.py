"""Small shared test helpers: S3 clients for the test server, dumps to compare, running the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from tests.servers import PgCluster, S3Server

ROOT = Path(__file__).resolve().parent.parent
PGBKP = str(Path(sys.executable).with_name("pgbkp"))


def s3_client(s3: S3Server) -> Any:
    return boto3.client(
        "s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
        region_name=s3.region, config=botocore.config.Config(s3={"addressing_style": "path"}),
    )


def make_bucket(s3: S3Server, name: str | None = None) -> str:
    name = name or f"bkt-{uuid.uuid4().hex[:12]}"
    s3_client(s3).create_bucket(Bucket=name)
    return name


def all_keys(s3: S3Server, bucket: str) -> list[str]:
    client = s3_client(s3)
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return sorted(keys)


def pending_uploads(s3: S3Server, bucket: str) -> list[dict[str, Any]]:
    return list(s3_client(s3).list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def unique_db(pg: PgCluster, stem: str = "db") -> str:
    name = f"{stem}_{uuid.uuid4().hex[:8]}"
    pg.create_database(name)
    return name


def dump_sql(pg: PgCluster, database: str) -> str:
    """pg_dump of a database, without the random \\restrict / \\unrestrict key lines."""
    out = subprocess.run(
        [str(pg.bindir / "pg_dump"), "-F", "p", "-d", database], capture_output=True, env=pg.env(), check=True,
    )
    return strip_restrict(out.stdout.decode("utf-8"))


def strip_restrict(sql: str) -> str:
    return re.sub(r"^\\(un)?restrict .*$", "", sql, flags=re.MULTILINE)


def run_cli(args: list[str], env: Mapping[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "ZIP_", "RETENTION_"))}
    full.update({"LOG_FILE": "", "HEALTHCHECK_URL": ""})
    full.update(env)
    return subprocess.run([PGBKP, *args], env=full, capture_output=True, text=True, timeout=timeout, check=False)


HOSTILE_SQL = r"""
CREATE TABLE "wéird ""table"" ✓" (id serial PRIMARY KEY, t text, b bytea, j jsonb, n numeric);
INSERT INTO "wéird ""table"" ✓" (t, b, j, n)
SELECT 'línea ' || g || E' tab\t quote'' backslash\\ nul-free 🐘 \n newline',
       decode(md5(g::text) || '00ff7f80', 'hex'),
       jsonb_build_object('k', g, 'arr', jsonb_build_array(g, 'x', null)),
       g * 1.000001
FROM generate_series(1, 3000) g;
CREATE TABLE big_text (id int, body text);
INSERT INTO big_text SELECT 1, string_agg(md5(g::text), ' ') FROM generate_series(1, 40000) g;
CREATE TABLE measurements (logdate date NOT NULL, v int) PARTITION BY RANGE (logdate);
CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO measurements SELECT DATE '2025-06-01' + g, g FROM generate_series(0, 400) g;
CREATE FUNCTION "add ✓"(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT a + b $$;
SELECT lo_from_bytea(0, decode(repeat('deadbeef', 5000), 'hex'));
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema".t AS SELECT g AS id FROM generate_series(1, 10) g;
"""
