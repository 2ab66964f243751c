"""pgbkp list and find_backups on a real S3 server: pagination past 1000 objects, filtering, JSON."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest

from pgbkp import config as config_mod
from pgbkp import keys, restore
from tests.helpers import s3_client
from tests.servers import S3Server
from tests.test_restore import cli, s3_store

PREFIX = "lp"
MAIN, OTHER = "list-main", "list-other"
#: list never connects to PostgreSQL: a URL nothing listens on proves it.
PG_URL = "postgresql://nobody@127.0.0.1:1/postgres"


def _env(s3: S3Server) -> dict[str, str]:
    return {**s3.env(), "PG_URLS": f"{PREFIX}|bucket={MAIN}|db_buckets=elsewhere={OTHER}|{PG_URL}",
            "TIMEZONE": "America/Sao_Paulo", "GLOBAL_PREFIX": "root/dir"}


@pytest.fixture(scope="module")
def seeded(s3_server: S3Server) -> dict[str, list[str]]:
    """1,050 backups of one database, a few of others, and files that are not ours to list.

    Seeded once for the module (a few seconds); no test here writes to the buckets."""
    s3_server.reset()
    client = s3_client(s3_server)
    for bucket in (MAIN, OTHER):
        client.create_bucket(Bucket=bucket)
    start = datetime(2024, 1, 1, 0, 0)
    many = [keys.object_key("root/dir", PREFIX, "app", start + timedelta(hours=7 * i), PREFIX) for i in range(1050)]
    odd = [keys.object_key("root/dir", PREFIX, "we/ird%db", datetime(2025, 5, d, 3, 0), PREFIX) for d in (1, 2)]
    other = [keys.object_key("root/dir", PREFIX, "elsewhere", datetime(2025, 6, 1, 3, 0), PREFIX)]
    noise = [
        "root/dir/lp/app/README.txt",  # a person's file
        "root/dir/lp/app/other-app-01h-00m-01d-01mes-2025y.zip",  # another prefix
        "root/dir/lp/app/old/lp-app-01h-00m-01d-01mes-2025y.zip",  # a sub-folder
        "root/dir/lp/app/lp-app-25h-00m-01d-01mes-2025y.zip",  # not a real time
        "root/dir/lp/apple/lp-app-01h-00m-01d-01mes-2025y.zip",  # the name belongs to another folder
        "root/dir/lp-app-01h-00m-01d-01mes-2025y.zip",  # outside any database folder
        "elsewhere/lp/app/lp-app-01h-00m-01d-01mes-2025y.zip",  # another GLOBAL_PREFIX
    ]
    jobs = [(MAIN, k) for k in [*many, *odd, *noise]] + [(OTHER, k) for k in other]
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda job: client.put_object(Bucket=job[0], Key=job[1], Body=b"zip"), jobs))
    return {"app": many, "we/ird%db": odd, "elsewhere": other}


def test_list_paginates_filters_and_sorts(s3_server: S3Server, seeded: dict[str, list[str]]) -> None:
    env = _env(s3_server)
    out = cli(env, "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    by_db: dict[str, list[dict]] = {}
    for row in rows:
        by_db.setdefault(row["database"], []).append(row)
    assert sorted(by_db) == ["app", "elsewhere", "we/ird%db"]
    assert [r["key"] for r in by_db["app"]] == list(reversed(seeded["app"]))  # all 1,050, newest first
    assert [r["taken"] for r in rows] == sorted((r["taken"] for r in rows), reverse=True)
    newest = by_db["app"][0]
    assert newest == {
        "connection": PREFIX, "database": "app", "kind": "database", "format": "zip", "taken": "2024-11-01T23:00",
        "size": 3,
        "bucket": MAIN,
        "key": "root/dir/lp/app/lp-app-23h-00m-01d-11mes-2024y.zip",
        "url": f"s3://{MAIN}/root/dir/lp/app/lp-app-23h-00m-01d-11mes-2024y.zip",
        "last_modified": newest["last_modified"],
    }
    assert by_db["we/ird%db"][0]["key"] == "root/dir/lp/we%2Fird%25db/lp-we%2Fird%25db-03h-00m-02d-05mes-2025y.zip"
    assert by_db["elsewhere"][0]["bucket"] == OTHER

    one = cli(env, "list", "--database", "we/ird%db", "--json")
    assert [r["key"] for r in json.loads(one.stdout)] == list(reversed(seeded["we/ird%db"]))
    text = cli(env, "list", "-c", PREFIX, "-d", "elsewhere")
    assert text.returncode == 0
    assert text.stdout.splitlines()[0].split() == ["connection", "database", "taken", "(America/Sao_Paulo)",
                                                   "size", "format", "object"]
    assert "2025-06-01 03:00" in text.stdout and "1 backup(s), 3 B" in text.stdout


def test_find_backups_for_one_database(s3_server: S3Server, seeded: dict[str, list[str]]) -> None:
    cfg = config_mod.load(_env(s3_server))
    found = restore.find_backups(cfg, PREFIX, "app", storage=s3_store(cfg))
    assert len(found) == 1050 and found[0].taken == datetime(2024, 11, 1, 23, 0)
    assert found[-1].taken == datetime(2024, 1, 1, 0, 0)
    assert restore.find_backups(cfg, 0, "nothing-here", storage=s3_store(cfg)) == []


def test_list_missing_bucket_is_one_clear_error(s3_server: S3Server, seeded: dict[str, list[str]]) -> None:
    env = _env(s3_server)
    env["PG_URLS"] = env["PG_URLS"].replace(f"bucket={MAIN}", "bucket=list-absent")
    out = cli(env, "list")
    assert out.returncode == 1
    assert out.stderr.startswith("pgbkp: error: list s3://list-absent/") and "bucket does not exist" in out.stderr
    assert "Traceback" not in out.stderr
