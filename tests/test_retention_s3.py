"""Retention against the real S3 server: exactly which keys remain after a real backup run."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pgbkp import config, keys, pipeline, retention
from pgbkp.storage import PendingUpload
from pgbkp.storage.memory import MemoryStorage
from pgbkp.storage.s3 import S3Storage
from tests.helpers import all_keys, make_bucket, pending_uploads, run_cli, s3_client
from tests.servers import PgCluster, S3Server


@pytest.fixture
def shop(pg: PgCluster) -> Iterator[str]:
    with pg.temporary_database(f"shop{uuid.uuid4().hex[:6]}") as name:
        yield name


def seed(s3: S3Server, bucket: str, names: list[str]) -> None:
    client = s3_client(s3)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b"x"), names))


def seeded_backups(db: str, days: range, hours: tuple[int, ...] = (1, 9, 17), prefix: str = "main") -> list[str]:
    today = datetime.now(UTC).replace(tzinfo=None)
    return [keys.object_key("", prefix, db, (today - timedelta(days=d)).replace(hour=h, minute=5), prefix)
            for d in days for h in hours]


def env_for(pg: PgCluster, s3: S3Server, bucket: str, **extra: str) -> dict[str, str]:
    return {**s3.env(), "PG_URLS": f"main|bucket={bucket}|{pg.url()}", "TIMEZONE": "UTC", **extra}


def new_keys(before: list[str], after: list[str]) -> list[str]:
    return sorted(set(after) - set(before))


def test_forty_days_seven_kept_plus_foreign_objects(pg: PgCluster, s3: S3Server, shop: str) -> None:
    bucket, other_bucket = make_bucket(s3), make_bucket(s3)
    old = seeded_backups(shop, range(1, 41))
    foreign = [
        *seeded_backups(f"{shop}ping", range(1, 41, 7)),  # a database whose name starts the same
        *seeded_backups(f"{shop}-eu", range(1, 41, 7)),
        f"main/{shop}/notes.txt",  # a person's file
        f"main/{shop}/{keys.filename(shop, datetime(2020, 1, 1, 3, 0), 'other')}",  # another prefix
        f"main/{shop}/{keys.filename(shop, datetime(2020, 1, 1, 3, 0), 'main')}.bak",
        f"main/{shop}/sub/{keys.filename(shop, datetime(2020, 1, 1, 3, 0), 'main')}",  # a sub-folder
        f"main/{shop}/main-{shop}-99h-00m-01d-01mes-2020y.zip",  # not a real time
    ]
    seed(s3, bucket, old + foreign)
    seed(s3, other_bucket, old)
    res = run_cli(["backup", "--database", shop], env_for(pg, s3, bucket, RETENTION_DAYS="7"))
    assert res.returncode == 0, res.stderr
    after = all_keys(s3, bucket)
    [written] = new_keys(old + foreign, after)
    newest_of_each_day = seeded_backups(shop, range(1, 7), hours=(17,))
    assert sorted(after) == sorted([written, *newest_of_each_day, *foreign])
    assert all_keys(s3, other_bucket) == sorted(old)  # other buckets are never touched
    assert "older than 7 calendar days" in res.stdout
    assert "not the newest of" in res.stdout


def test_retention_days_1_keeps_only_today(pg: PgCluster, s3: S3Server, shop: str) -> None:
    bucket = make_bucket(s3)
    old = seeded_backups(shop, range(1, 4), hours=(0, 23))
    seed(s3, bucket, old)
    res = run_cli(["backup", "--database", shop], env_for(pg, s3, bucket, RETENTION_DAYS="1"))
    assert res.returncode == 0, res.stderr
    after = all_keys(s3, bucket)
    assert len(after) == 1 and after[0] not in old


def test_failed_backup_never_triggers_retention(pg: PgCluster, s3: S3Server, shop: str, tmp_path: Path) -> None:
    bucket = make_bucket(s3)
    old = seeded_backups(shop, range(1, 10))
    seed(s3, bucket, old)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pg_dump").write_text(
        "#!/bin/sh\necho 'SET x = 1;'\necho 'pg_dump: error: simulated failure' >&2\nexit 1\n")
    (fake / "pg_dump").chmod(stat.S_IRWXU)
    os.symlink(pg.bindir / "psql", fake / "psql")
    res = run_cli(["backup", "--database", shop], env_for(pg, s3, bucket, RETENTION_DAYS="1", PG_BIN_DIR=str(fake)))
    assert res.returncode == 1
    assert "simulated failure" in res.stderr
    assert all_keys(s3, bucket) == sorted(old)
    assert pending_uploads(s3, bucket) == []


def test_pagination_and_batch_delete_beyond_1000_keys(pg: PgCluster, s3: S3Server, shop: str) -> None:
    bucket = make_bucket(s3)
    today = datetime.now(UTC).replace(tzinfo=None)
    # 1,100 old backups: one every ten minutes or so, spread over the last ~8 days before today.
    start = (today - timedelta(days=9)).replace(hour=0, minute=0)
    old = sorted({keys.object_key("", "main", shop, start + timedelta(minutes=10 * i), "main") for i in range(1100)})
    old = [k for k in old if keys.parse_filename(k.rsplit("/", 1)[1], shop, "main").date() < today.date()]
    assert len(old) > 1000
    seed(s3, bucket, old)
    res = run_cli(["backup", "--database", shop], env_for(pg, s3, bucket, RETENTION_DAYS="1"))
    assert res.returncode == 0, res.stderr
    assert len(all_keys(s3, bucket)) == 1


def test_dry_run_prints_the_plan_and_deletes_nothing(pg: PgCluster, s3: S3Server, shop: str) -> None:
    bucket = make_bucket(s3)
    old = seeded_backups(shop, range(1, 5))
    seed(s3, bucket, old)
    res = run_cli(["backup", "--dry-run", "--database", shop], env_for(pg, s3, bucket, RETENTION_DAYS="2"))
    assert res.returncode == 0, res.stderr
    assert "would delete" in res.stdout
    assert all_keys(s3, bucket) == sorted(old)


def test_weeks_and_months_per_connection_override(pg: PgCluster, s3: S3Server, shop: str) -> None:
    bucket = make_bucket(s3)
    old = seeded_backups(shop, range(1, 120, 3), hours=(2,))
    seed(s3, bucket, old)
    env = {**s3.env(), "TIMEZONE": "UTC", "RETENTION_DAYS": "1",
           "PG_URLS": f"main|bucket={bucket}|retention_weeks=3|retention_months=3|{pg.url()}"}
    res = run_cli(["backup", "--database", shop], env)
    assert res.returncode == 0, res.stderr
    after = set(all_keys(s3, bucket))
    (written,) = after - set(old)
    # Exactly what the pure planner keeps for the same backups on the run's own day.
    backups = [retention.Backup(k, keys.parse_filename(k.rsplit("/", 1)[1], shop, "main")) for k in [*old, written]]
    expected = retention.plan(backups, backups[-1].taken.date(), retention.Policy(1, 3, 3), protect=[written])
    assert after == {d.backup.key for d in expected.keep}
    assert sorted(after & set(old)) == sorted(d.backup.key for d in expected.keep if d.backup.key != written)
    assert "ISO week" in res.stdout or "month" in res.stdout


def test_stale_multipart_uploads_are_aborted_only_in_own_folder(s3: S3Server) -> None:
    bucket = make_bucket(s3)
    client = s3_client(s3)
    mine = client.create_multipart_upload(Bucket=bucket, Key="main/shop/main-shop-01h-00m-01d-01mes-2020y.zip")
    theirs = client.create_multipart_upload(Bucket=bucket, Key="main/shopping/x.zip")
    cfg = config.load({**s3.env(), "PG_URLS": "main|bucket=" + bucket + "|postgres://u@h/db"})
    conn = cfg.connections[0]
    job = pipeline.Job(conn, "shop", bucket, keys.object_key("", "main", "shop", datetime(2026, 1, 1), "main"),
                       datetime(2026, 1, 1))
    storage = S3Storage(conn.s3)
    # moto reports every upload as initiated in 2010, so the idle rule is checked in memory below.
    assert pipeline.clean_stale_uploads(cfg, storage, job) == 1
    left = {u["UploadId"] for u in pending_uploads(s3, bucket)}
    assert left == {theirs["UploadId"]}
    assert mine["UploadId"] not in left


def test_only_our_uploads_idle_for_an_hour_are_stale() -> None:
    """A killed run's upload is cleaned at the next backup without a day's wait, but never one that a
    live run may own: this run's own key (a run of the same minute), one with a part in the last hour,
    or a name that is not this database's backup (somebody else's upload in the folder)."""
    store = MemoryStorage(["bkt"])
    cfg = config.load({"PG_URLS": "main|bucket=bkt|postgres://u@h/db"})
    now = datetime.now(UTC)
    job = pipeline.Job(cfg.connections[0], "shop", "bkt",
                       keys.object_key("", "main", "shop", datetime(2026, 1, 1, 3, 0), "main"), datetime(2026, 1, 1))
    earlier = keys.object_key("", "main", "shop", datetime(2025, 12, 31, 3, 0), "main")
    for key in (earlier, job.key, job.folder + "someone-elses.zip"):
        store.upload("bkt", key)
    assert pipeline.clean_stale_uploads(cfg, store, job, now=now + timedelta(minutes=59)) == 0  # maybe still live
    assert pipeline.clean_stale_uploads(cfg, store, job, now=now + timedelta(minutes=61)) == 1
    left = sorted(u.key for u in store.pending_uploads("bkt", ""))
    assert left == sorted([job.key, job.folder + "someone-elses.zip"])
    recent = PendingUpload("bkt", earlier, "u1", now - timedelta(days=3), last_part=now - timedelta(minutes=5))
    assert recent.last_activity == now - timedelta(minutes=5)


def test_retention_never_deletes_the_object_just_written() -> None:
    """Even with every other backup dated later (clock skew), this run's object survives."""
    store = MemoryStorage(["bkt"])
    cfg = config.load({"PG_URLS": "main|bucket=bkt|postgres://u@h/db", "RETENTION_DAYS": "1", "TIMEZONE": "UTC"})
    conn = cfg.connections[0]
    written = keys.object_key("", "main", "shop", datetime(2020, 1, 1, 3, 0), "main")
    store.put("bkt", written, b"zip")
    job = pipeline.Job(conn, "shop", "bkt", written, datetime(2020, 1, 1, 3, 0))
    actions = pipeline.apply_retention(cfg, job, store, written)
    assert [a.key for a in actions if a.action == "keep"] == [written]
    assert [k.key for k in store.list("bkt", "")] == [written]
