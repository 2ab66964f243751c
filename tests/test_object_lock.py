"""Object Lock, storage class and server-side encryption (issue 11): the settings and their errors, what a
new object is created with, and retention meeting locked backups: the wiring on the in-memory store, the
edge on the real S3 server (moto), end to end through ``pgbkp backup`` where PostgreSQL is involved."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pgbkp import config, keys, pipeline, retention
from pgbkp.config import ConfigError, S3Settings
from pgbkp.storage.memory import MemoryStorage
from pgbkp.storage.s3 import S3Storage
from tests.helpers import PGBKP, all_keys, run_cli, s3_client
from tests.s3proxy import Request, S3Proxy
from tests.s3proxy import running as proxy_running
from tests.servers import PgCluster, S3Server

URL = "postgres://app@db1.internal:5432/postgres"
URL2 = "postgres://app@db2.internal:5432/postgres"
URL3 = "postgres://app@db3.internal:5432/postgres"
KMS_ARN = "arn:aws:kms:us-east-1:111122223333:key/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
FAR = datetime(2099, 1, 1, tzinfo=UTC)


# --- settings ----------------------------------------------------------------------------------------------


def test_settings_from_the_globals_and_per_item() -> None:
    cfg = config.load({
        "PG_URLS": (f"a|bucket=bkt-a|{URL},"
                    f"b|bucket=bkt-b|sse=AES256|storage_class=glacier_ir|object_lock_mode=compliance|"
                    f"retention_days=3|{URL2},"
                    f"c|bucket=bkt-c|object_lock_mode=off|sse_kms_key_id={KMS_ARN}|{URL3}"),
        "S3_SSE": "AWS:KMS", "S3_SSE_KMS_KEY_ID": "alias/backups", "S3_STORAGE_CLASS": "standard_ia",
        "S3_OBJECT_LOCK_MODE": "governance", "RETENTION_DAYS": "7", "RETENTION_WEEKS": "4",
        "TIMEZONE": "Europe/Lisbon",
    })
    got = [(c.s3.storage_class, c.s3.sse, c.s3.sse_kms_key_id, c.s3.object_lock_mode) for c in cfg.connections]
    assert got == [
        ("STANDARD_IA", "aws:kms", "alias/backups", "GOVERNANCE"),
        # sse=AES256 drops the global KMS key, which belongs to the global aws:kms
        ("GLACIER_IR", "AES256", None, "COMPLIANCE"),
        ("STANDARD_IA", "aws:kms", KMS_ARN, None),
    ]
    assert [pipeline.policy_for(c) for c in cfg.connections][:2] == [retention.Policy(7, 4, 0),
                                                                      retention.Policy(3, 4, 0)]


def test_unset_settings_change_nothing() -> None:
    [conn] = config.load({"PG_URLS": f"a|bucket=bkt-a|{URL}"}).connections
    assert (conn.s3.storage_class, conn.s3.sse, conn.s3.sse_kms_key_id, conn.s3.object_lock_mode) == (None,) * 4
    assert S3Storage(conn.s3).create_args({"created": "2026-11-20T03:00"}, None) == {
        "Metadata": {"created": "2026-11-20T03:00"}, "ContentType": "application/zip"}


def test_other_stores_may_name_their_own_storage_class() -> None:
    [conn] = config.load({"PG_URLS": f"a|bucket=bkt-a|endpoint=http://minio:9000|{URL}",
                          "S3_STORAGE_CLASS": "reduced_redundancy_2"}).connections
    assert conn.s3.storage_class == "REDUCED_REDUNDANCY_2"


LOCK_NEEDS_RETENTION = ("locks each backup for as long as retention keeps it, but retention is off (RETENTION_DAYS, "
                        "RETENTION_WEEKS and RETENTION_MONTHS are all 0), so there is no date to lock until. Fix: set "
                        "RETENTION_DAYS (or retention_days= in this item), or set object_lock_mode=off in this item, "
                        "or unset S3_OBJECT_LOCK_MODE.")
AWS_CLASSES = ("STANDARD, STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER_IR, GLACIER, DEEP_ARCHIVE, "
               "REDUCED_REDUNDANCY, EXPRESS_ONEZONE")

BAD = [
    pytest.param({"S3_OBJECT_LOCK_MODE": "legal"}, f"a|bucket=bkt-a|{URL}",
                 "S3_OBJECT_LOCK_MODE: 'legal' is not an Object Lock mode. Fix: use GOVERNANCE or COMPLIANCE, or off "
                 "(no lock).", id="lock mode"),
    pytest.param({"RETENTION_DAYS": "7"}, f"a|bucket=bkt-a|object_lock_mode=strict|{URL}",
                 "PG_URLS item 1 (a): field 'object_lock_mode': 'strict' is not an Object Lock mode. Fix: use "
                 "GOVERNANCE or COMPLIANCE, or off (no lock).", id="item lock mode"),
    pytest.param({"S3_OBJECT_LOCK_MODE": "GOVERNANCE"}, f"a|bucket=bkt-a|{URL}",
                 f"S3_OBJECT_LOCK_MODE: GOVERNANCE (for PG_URLS item 1 (a)) {LOCK_NEEDS_RETENTION}",
                 id="lock without retention"),
    pytest.param({"S3_OBJECT_LOCK_MODE": "GOVERNANCE", "RETENTION_DAYS": "7"},
                 f"a|bucket=bkt-a|{URL},b|bucket=bkt-b|retention_days=0|{URL2}",
                 f"S3_OBJECT_LOCK_MODE: GOVERNANCE (for PG_URLS item 2 (b)) {LOCK_NEEDS_RETENTION}",
                 id="lock with one item's retention off"),
    pytest.param({}, f"a|bucket=bkt-a|object_lock_mode=compliance|{URL}",
                 f"PG_URLS item 1 (a): field 'object_lock_mode': COMPLIANCE {LOCK_NEEDS_RETENTION}",
                 id="item lock without retention"),
    pytest.param({"S3_SSE": "kms"}, f"a|bucket=bkt-a|{URL}",
                 "S3_SSE: 'kms' is not a server-side encryption mode. Fix: use AES256 or aws:kms, or leave it unset "
                 "(the bucket's default encryption applies).", id="sse"),
    pytest.param({"S3_SSE_KMS_KEY_ID": "alias/backups"}, f"a|bucket=bkt-a|{URL}",
                 "S3_SSE_KMS_KEY_ID: 'alias/backups' is set, but S3_SSE is unset, and a KMS key applies only to "
                 "aws:kms. Fix: set S3_SSE=aws:kms, or unset S3_SSE_KMS_KEY_ID.", id="kms key without sse"),
    pytest.param({"S3_SSE": "aes256", "S3_SSE_KMS_KEY_ID": "alias/backups"}, f"a|bucket=bkt-a|{URL}",
                 "S3_SSE_KMS_KEY_ID: 'alias/backups' is set, but S3_SSE is 'AES256', and a KMS key applies only to "
                 "aws:kms. Fix: set S3_SSE=aws:kms, or unset S3_SSE_KMS_KEY_ID.", id="kms key with AES256"),
    pytest.param({"S3_SSE": "aws:kms"}, f"a|bucket=bkt-a|sse=AES256|sse_kms_key_id={KMS_ARN}|{URL}",
                 f"PG_URLS item 1 (a): field 'sse_kms_key_id': '{KMS_ARN}' is set, but this item's encryption is "
                 "'AES256', and a KMS key applies only to aws:kms. Fix: add sse=aws:kms to this item (or set "
                 "S3_SSE=aws:kms), or remove sse_kms_key_id.", id="item kms key with AES256"),
    pytest.param({"S3_SSE": "aws:kms", "S3_SSE_KMS_KEY_ID": "my key"}, f"a|bucket=bkt-a|{URL}",
                 "S3_SSE_KMS_KEY_ID: 'my key' is not a KMS key id. Fix: use a key ARN "
                 "(arn:aws:kms:REGION:ACCOUNT:key/ID), a key id, or alias/NAME.", id="kms key id"),
    pytest.param({"S3_STORAGE_CLASS": "standard-ia"}, f"a|bucket=bkt-a|{URL}",
                 "S3_STORAGE_CLASS: 'standard-ia' is not a storage class name. Fix: use the store's class name, such "
                 "as STANDARD_IA or GLACIER_IR (upper-case letters, digits and _).", id="storage class shape"),
    pytest.param({"S3_STORAGE_CLASS": "cold"}, f"a|bucket=bkt-a|{URL}",
                 f"S3_STORAGE_CLASS (for PG_URLS item 1 (a), which has no endpoint): 'COLD' is not an AWS S3 storage "
                 f"class. Fix: use one of {AWS_CLASSES}, or leave it unset for STANDARD.", id="storage class on AWS"),
    pytest.param({}, f"a|bucket=bkt-a|storage_class=cold|{URL}",
                 f"PG_URLS item 1 (a): field 'storage_class': 'COLD' is not an AWS S3 storage class. Fix: use one of "
                 f"{AWS_CLASSES}, or leave it unset for STANDARD.", id="item storage class on AWS"),
]


@pytest.mark.parametrize(("env", "pg_urls", "message"), BAD)
def test_bad_settings_are_one_clear_error(env: dict[str, str], pg_urls: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load({"PG_URLS": pg_urls, **env})
    assert str(info.value) == message


def test_bad_setting_on_the_command_line_exits_2_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "AWS_", "ZIP_", "RETENTION_"))}
    env.update({"LOG_FILE": "", "HEALTHCHECK_URL": "", "LOG_FORMAT": "json", "PG_URLS": f"a|bucket=bkt-a|{URL}",
                "S3_OBJECT_LOCK_MODE": "COMPLIANCE"})
    res = subprocess.run([PGBKP, "backup", "--dry-run"], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 2
    assert res.stderr == (f"pgbkp: configuration error: S3_OBJECT_LOCK_MODE: COMPLIANCE (for PG_URLS item 1 (a)) "
                          f"{LOCK_NEEDS_RETENTION}\n")


def test_archive_storage_class_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pgbkp.config"):
        config.load({"PG_URLS": f"a|bucket=bkt-a|{URL}", "S3_STORAGE_CLASS": "deep_archive"})
    assert [r.getMessage() for r in caplog.records] == [
        "S3_STORAGE_CLASS: DEEP_ARCHIVE backups must be restored from the archive tier (hours, and a request per "
        "object) before pgbkp restore or verify can read them. GLACIER_IR reads at once."]


# --- what a new object is created with ----------------------------------------------------------------------


def test_create_args_carry_class_encryption_and_lock() -> None:
    storage = S3Storage(S3Settings(storage_class="GLACIER_IR", sse="aws:kms", sse_kms_key_id=KMS_ARN,
                                   object_lock_mode="COMPLIANCE"))
    until = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    assert storage.create_args({"created": "2026-11-20T03:00", "database": "shop"}, until) == {
        "Metadata": {"created": "2026-11-20T03:00", "database": "shop"},
        "ContentType": "application/zip",
        "StorageClass": "GLACIER_IR",
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": KMS_ARN,
        "ObjectLockMode": "COMPLIANCE",
        "ObjectLockRetainUntilDate": until,
    }
    assert not storage.etags_are_md5  # SSE-KMS ETags are not MD5s
    assert S3Storage(S3Settings(sse="AES256")).etags_are_md5


@pytest.mark.parametrize(("tz", "policy", "created", "until"), [
    # the time of day does not matter: the window is calendar days
    ("America/Sao_Paulo", (7, 0, 0), "2026-11-20T23:59", datetime(2026, 11, 27, 3, 0, tzinfo=UTC)),
    # written in winter time (UTC+0), the lock ends in summer time (UTC+1): the lock day's offset counts
    ("Europe/Lisbon", (7, 0, 0), "2026-03-25T10:00", datetime(2026, 3, 31, 23, 0, tzinfo=UTC)),
    # Havana's clocks jump from 00:00 to 01:00 on 2026-03-08: the day starts at 05:00 UTC
    ("America/Havana", (1, 0, 0), "2026-03-07T10:00", datetime(2026, 3, 8, 5, 0, tzinfo=UTC)),
    # days is the finest rule that is on: weeks and months extend later, not at write time
    ("UTC", (3, 4, 6), "2026-11-20T03:00", datetime(2026, 11, 23, tzinfo=UTC)),
    # weeks only: a Thursday's backup, 2 weeks from its week's Monday (2026-11-16)
    ("UTC", (0, 2, 0), "2026-11-19T03:00", datetime(2026, 11, 30, tzinfo=UTC)),
    # months only: 3 months from the 1st of its month, across the year
    ("UTC", (0, 0, 3), "2026-11-30T03:00", datetime(2027, 2, 1, tzinfo=UTC)),
])
def test_retain_until_is_the_end_of_the_finest_window(tz: str, policy: tuple[int, int, int], created: str,
                                                      until: datetime) -> None:
    days, weeks, months = policy
    cfg = config.load({"PG_URLS": f"a|bucket=bkt|{URL}", "S3_OBJECT_LOCK_MODE": "GOVERNANCE", "TIMEZONE": tz,
                       "RETENTION_DAYS": str(days), "RETENTION_WEEKS": str(weeks), "RETENTION_MONTHS": str(months)})
    when = datetime.strptime(created, "%Y-%m-%dT%H:%M")
    job = pipeline.Job(cfg.connections[0], "shop", "bkt", keys.object_key("", "a", "shop", when, "a"), when)
    assert pipeline.retain_until(cfg, job) == until


# --- retention meeting locks: the wiring, on the in-memory store ------------------------------------------


def lock_config(bucket: str, **extra: str) -> config.Config:
    return config.load({"PG_URLS": f"main|bucket={bucket}|{URL}", "TIMEZONE": "UTC", **extra})


def backup_key(database: str, when: datetime) -> str:
    return keys.object_key("", "main", database, when, "main")


def job_for(cfg: config.Config, bucket: str, database: str, when: datetime) -> pipeline.Job:
    return pipeline.Job(cfg.connections[0], database, bucket, backup_key(database, when), when)


def today_at(hour: int, days_ago: int = 0) -> datetime:
    """A naive UTC time on a day relative to today (the tests run with TIMEZONE=UTC)."""
    today = datetime.now(UTC).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days_ago) + timedelta(hours=hour)


def summary(actions: list[pipeline.RetentionAction]) -> dict[str, tuple[str, list[str], bool]]:
    return {a.key: (a.action, a.reasons, a.done) for a in actions}


def test_locked_backups_are_kept_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    bucket = "bkt-lock"
    cfg = lock_config(bucket, RETENTION_DAYS="3")
    store = MemoryStorage([bucket])
    store.lock_config[bucket] = True
    job = job_for(cfg, bucket, "shop", today_at(3))
    k = {n: backup_key("shop", today_at(3, n)) for n in (0, 1, 5, 6, 7, 8)}
    for key in k.values():
        store.put(bucket, key, b"zip")
    store.retention[(bucket, k[5])] = ("GOVERNANCE", FAR)
    store.retention[(bucket, k[6])] = ("COMPLIANCE", datetime(2000, 1, 1, tzinfo=UTC))  # expired: no longer protects
    store.legal_holds.add((bucket, k[7]))
    with caplog.at_level(logging.INFO, logger="pgbkp.pipeline"):
        actions = pipeline.apply_retention(cfg, job, store, job.key)
    older = ["older than 3 calendar days"]
    assert summary(actions)[k[5]] == ("keep", ["locked until 2099-01-01T00:00:00Z"], False)
    assert summary(actions)[k[6]] == ("delete", older, True)
    assert summary(actions)[k[7]] == ("keep", ["under legal hold"], False)
    assert summary(actions)[k[8]] == ("delete", older, True)
    assert sorted(store.objects[bucket]) == sorted([k[0], k[1], k[5], k[7]])
    assert store.lock_config_asked == [bucket]
    assert (f"keep s3://{bucket}/{k[5]}: locked until 2099-01-01T00:00:00Z (retention would delete it: older than 3 "
            "calendar days)") in caplog.messages


def test_no_lock_questions_without_anything_to_delete() -> None:
    bucket = "bkt-lock"
    cfg = lock_config(bucket, RETENTION_DAYS="3")
    store = MemoryStorage([bucket])
    job = job_for(cfg, bucket, "shop", today_at(3))
    store.put(bucket, job.key, b"zip")
    assert pipeline.apply_retention(cfg, job, store, job.key) == [
        pipeline.RetentionAction(job.key, "keep", [f"newest of {today_at(3).date().isoformat()}",
                                                   "protected: written by this run"])]
    assert store.lock_config_asked == []


@pytest.mark.parametrize(("configured", "held", "expect_mode"), [
    ("GOVERNANCE", "GOVERNANCE", "GOVERNANCE"),
    ("GOVERNANCE", "COMPLIANCE", "COMPLIANCE"),  # S3 never lets COMPLIANCE become GOVERNANCE
    ("COMPLIANCE", "GOVERNANCE", "COMPLIANCE"),
])
def test_weekly_keeper_lock_is_extended_never_shortened(configured: str, held: str, expect_mode: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    bucket = "bkt-lock"
    cfg = lock_config(bucket, RETENTION_DAYS="3", RETENTION_WEEKS="3", S3_OBJECT_LOCK_MODE=configured)
    store = MemoryStorage([bucket])
    store.lock_config[bucket] = True
    monday = today_at(0, datetime.now(UTC).weekday())
    last_sunday, sunday_before = monday - timedelta(days=1, hours=-9), monday - timedelta(days=8, hours=-9)
    job = job_for(cfg, bucket, "shop", today_at(3))
    for when in (today_at(3), last_sunday, sunday_before):
        store.put(bucket, backup_key("shop", when), b"zip")
    written_lock = datetime.combine(last_sunday.date() + timedelta(days=3), datetime.min.time(), UTC)
    store.retention[(bucket, backup_key("shop", last_sunday))] = (held, written_lock)
    store.retention[(bucket, backup_key("shop", sunday_before))] = ("COMPLIANCE", FAR)
    with caplog.at_level(logging.INFO, logger="pgbkp.pipeline"):
        actions = summary(pipeline.apply_retention(cfg, job, store, job.key))
    # the newest of last week, kept until 3 weeks from that week's Monday; locked that long now
    until = (monday + timedelta(days=14)).replace(tzinfo=UTC)
    assert store.retention[(bucket, backup_key("shop", last_sunday))] == (expect_mode, until)
    assert actions[backup_key("shop", last_sunday)][1][-1] == f"lock extended to {until:%Y-%m-%dT%H:%M:%SZ}"
    # locked longer than retention keeps it: left alone
    assert store.retention[(bucket, backup_key("shop", sunday_before))] == ("COMPLIANCE", FAR)
    assert not any("lock" in r for r in actions[backup_key("shop", sunday_before)][1])
    # this run's backup is the newest of a week still open: its write-time lock stands
    assert not any("lock" in r for r in actions[job.key][1])
    assert [m for m in caplog.messages if "extended the lock" in m] == [
        f"extended the lock of s3://{bucket}/{backup_key('shop', last_sunday)}: {expect_mode} until "
        f"{until:%Y-%m-%dT%H:%M:%SZ} ({'; '.join(actions[backup_key('shop', last_sunday)][1][:-1])})"]


@pytest.mark.parametrize("mode", [None, "GOVERNANCE"])
def test_no_extension_when_dry_or_without_a_lock_mode(mode: str | None) -> None:
    bucket = "bkt-lock"
    extra = {"S3_OBJECT_LOCK_MODE": mode} if mode else {}
    cfg = lock_config(bucket, RETENTION_DAYS="3", RETENTION_WEEKS="3", **extra)
    store = MemoryStorage([bucket])
    store.lock_config[bucket] = True
    monday = today_at(0, datetime.now(UTC).weekday())
    last_sunday = monday - timedelta(days=1, hours=-9)
    job = job_for(cfg, bucket, "shop", today_at(3))
    for when in (today_at(3), last_sunday):
        store.put(bucket, backup_key("shop", when), b"zip")
    held = ("GOVERNANCE", datetime.combine(last_sunday.date() + timedelta(days=3), datetime.min.time(), UTC))
    store.retention[(bucket, backup_key("shop", last_sunday))] = held
    actions = summary(pipeline.apply_retention(cfg, job, store, job.key, dry_run=True))
    assert store.retention[(bucket, backup_key("shop", last_sunday))] == held
    until = (monday + timedelta(days=14)).replace(tzinfo=UTC)
    expected = [f"would extend its lock to {until:%Y-%m-%dT%H:%M:%SZ}"] if mode else []
    assert [r for r in actions[backup_key("shop", last_sunday)][1] if "lock" in r] == expected
    if mode is None:  # and a real run without a mode leaves it too
        pipeline.apply_retention(cfg, job, store, job.key)
        assert store.retention[(bucket, backup_key("shop", last_sunday))] == held


# --- on the real S3 server -----------------------------------------------------------------------------------


@pytest.fixture
def shop(pg: PgCluster) -> Iterator[str]:
    with pg.temporary_database(f"shop{uuid.uuid4().hex[:6]}") as name:
        yield name


def lock_bucket(s3: S3Server, default_days: int | None = None) -> str:
    name = f"lock-{uuid.uuid4().hex[:10]}"
    client = s3_client(s3)
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    if default_days is not None:
        client.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": default_days}}})
    return name


def cli_env(pg: PgCluster, s3: S3Server, bucket: str, **extra: str) -> dict[str, str]:
    return {**s3.env(), "PG_URLS": f"main|bucket={bucket}|{pg.url()}", "LOG_FORMAT": "json", **extra}


def log_messages(stderr: str) -> list[str]:
    return [json.loads(line)["message"] for line in stderr.splitlines() if line.startswith("{")]


def delete_markers(s3: S3Server, bucket: str) -> list[str]:
    return [m["Key"] for m in s3_client(s3).list_object_versions(Bucket=bucket).get("DeleteMarkers", [])]


def z(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_object_lock_bucket_with_default_retention(pg: PgCluster, s3: S3Server, shop: str) -> None:
    """The backup lands in a bucket whose default retention locks every new object, and retention reports
    the older backups it may not delete instead of hiding them behind delete markers or failing."""
    bucket = lock_bucket(s3, default_days=1)
    client = s3_client(s3)
    old = [backup_key(shop, today_at(17, n)) for n in (4, 5)]
    for key in old:
        client.put_object(Bucket=bucket, Key=key, Body=b"old")  # the bucket's default retention locks it
    res = run_cli(["backup", "--database", shop], cli_env(pg, s3, bucket, RETENTION_DAYS="2", TIMEZONE="UTC"))
    assert res.returncode == 0, res.stderr
    [written] = sorted(set(all_keys(s3, bucket)) - set(old))
    assert all_keys(s3, bucket) == sorted([*old, written])
    assert delete_markers(s3, bucket) == []
    assert client.head_object(Bucket=bucket, Key=written)["ObjectLockMode"] == "GOVERNANCE"
    messages = log_messages(res.stderr)
    for key in old:
        until = client.head_object(Bucket=bucket, Key=key)["ObjectLockRetainUntilDate"]
        assert (f"keep s3://{bucket}/{key}: locked until {z(until)} (retention would delete it: older than 2 calendar "
                "days)") in messages
    assert "retention: deleted" not in res.stdout


def test_lock_mode_encryption_and_class_on_a_real_backup(pg: PgCluster, s3: S3Server, shop: str) -> None:
    bucket = lock_bucket(s3)
    client = s3_client(s3)
    unlocked, locked, held = (backup_key(shop, today_at(17, n)) for n in (5, 6, 7))
    client.put_object(Bucket=bucket, Key=unlocked, Body=b"old")
    client.put_object(Bucket=bucket, Key=locked, Body=b"old", ObjectLockMode="GOVERNANCE",
                      ObjectLockRetainUntilDate=FAR)
    client.put_object(Bucket=bucket, Key=held, Body=b"old", ObjectLockLegalHoldStatus="ON")
    env = cli_env(pg, s3, bucket, RETENTION_DAYS="2", TIMEZONE="America/Sao_Paulo", S3_OBJECT_LOCK_MODE="COMPLIANCE",
                  S3_SSE="AES256", S3_STORAGE_CLASS="STANDARD_IA")
    res = run_cli(["backup", "--database", shop], env)
    assert res.returncode == 0, res.stderr
    [written] = sorted(set(all_keys(s3, bucket)) - {unlocked, locked, held})
    assert all_keys(s3, bucket) == sorted([written, locked, held])
    head = client.head_object(Bucket=bucket, Key=written)
    parsed = keys.parse_key(written, "", "main", "main")
    assert parsed is not None
    sao_paulo_day = parsed[1].date()  # the name's local day
    assert (head["ObjectLockMode"], head["ObjectLockRetainUntilDate"], head["ServerSideEncryption"],
            head["StorageClass"]) == (
        "COMPLIANCE", retention.local_midnight(sao_paulo_day + timedelta(days=2), ZoneInfo("America/Sao_Paulo")),
        "AES256", "STANDARD_IA")
    messages = log_messages(res.stderr)
    assert (f"keep s3://{bucket}/{locked}: locked until 2099-01-01T00:00:00Z (retention would delete it: older than 2 "
            "calendar days)") in messages
    assert (f"keep s3://{bucket}/{held}: under legal hold (retention would delete it: older than 2 calendar days)"
            in messages)
    assert f"retention: deleted s3://{bucket}/{unlocked} (older than 2 calendar days)" in res.stdout


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[S3Proxy]:
    with proxy_running(s3.endpoint) as p:
        yield p


def proxied(s3: S3Server, proxy: S3Proxy, bucket: str, **extra: str) -> tuple[config.Config, S3Storage]:
    cfg = config.load({**s3.env(), "S3_ENDPOINT": proxy.endpoint, "PG_URLS": f"main|bucket={bucket}|{URL}",
                       "TIMEZONE": "UTC", **extra})
    return cfg, S3Storage(cfg.connections[0].s3)


def is_lock_config(r: Request) -> bool:
    return r.method == "GET" and "object-lock" in r.query


def is_retention_put(r: Request) -> bool:
    return r.method == "PUT" and "retention" in r.query


def test_multipart_upload_is_created_locked_encrypted_and_classed(s3: S3Server, proxy: S3Proxy) -> None:
    """moto drops the lock of a multipart upload, so this one is checked on the wire."""
    bucket = lock_bucket(s3)
    _, storage = proxied(s3, proxy, bucket, S3_PART_SIZE_MB="5", S3_OBJECT_LOCK_MODE="GOVERNANCE",
                         RETENTION_DAYS="7", S3_SSE="aws:kms", S3_SSE_KMS_KEY_ID="alias/backups",
                         S3_STORAGE_CLASS="GLACIER_IR")
    up = storage.upload(bucket, "main/shop/big.zip", metadata={"created": "2026-11-20T03:00"},
                        retain_until=datetime(2026, 11, 27, tzinfo=UTC))
    up.write(os.urandom(6 * 1024 * 1024))
    up.commit()
    [create] = proxy.ops("CreateMultipartUpload")
    sent = {h: create.headers.get(h) for h in ("x-amz-object-lock-mode", "x-amz-object-lock-retain-until-date",
                                               "x-amz-server-side-encryption",
                                               "x-amz-server-side-encryption-aws-kms-key-id", "x-amz-storage-class")}
    assert sent == {"x-amz-object-lock-mode": "GOVERNANCE",
                    "x-amz-object-lock-retain-until-date": "2026-11-27T00:00:00Z",
                    "x-amz-server-side-encryption": "aws:kms",
                    "x-amz-server-side-encryption-aws-kms-key-id": "alias/backups",
                    "x-amz-storage-class": "GLACIER_IR"}


def seed_doomed(s3: S3Server, bucket: str, **lock: Any) -> tuple[str, list[str]]:
    """Today's backup and two of 5 and 6 days ago, which RETENTION_DAYS=2 dooms."""
    client = s3_client(s3)
    written = backup_key("shop", today_at(3))
    doomed = [backup_key("shop", today_at(17, n)) for n in (5, 6)]
    for key in (written, *doomed):
        client.put_object(Bucket=bucket, Key=key, Body=b"zip", **({} if key == written else lock))
    return written, doomed


def test_bucket_without_object_lock_is_asked_once_and_nothing_is_headed(s3: S3Server, proxy: S3Proxy) -> None:
    bucket = f"plain-{uuid.uuid4().hex[:10]}"
    s3_client(s3).create_bucket(Bucket=bucket)
    cfg, storage = proxied(s3, proxy, bucket, RETENTION_DAYS="2")
    written, doomed = seed_doomed(s3, bucket)
    actions = pipeline.apply_retention(cfg, job_for(cfg, bucket, "shop", today_at(3)), storage, written)
    assert sorted(a.key for a in actions if a.done) == sorted(doomed)
    assert storage.object_lock_enabled(bucket) is False  # asked again: answered from the run's cache
    assert (len([r for r in proxy.requests if is_lock_config(r)]), proxy.ops("HeadObject")) == (1, [])
    assert all_keys(s3, bucket) == [written]


def test_lock_configuration_denied_means_unknown_and_deletes_are_tried(s3: S3Server, proxy: S3Proxy,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    bucket = lock_bucket(s3)
    cfg, storage = proxied(s3, proxy, bucket, RETENTION_DAYS="2")
    written, doomed = seed_doomed(s3, bucket)
    proxy.fail(is_lock_config, 403, "AccessDenied")
    with caplog.at_level(logging.INFO):
        actions = pipeline.apply_retention(cfg, job_for(cfg, bucket, "shop", today_at(3)), storage, written)
    assert sorted(a.key for a in actions if a.done) == sorted(doomed)
    assert proxy.ops("HeadObject") == []
    assert (f"s3://{bucket}: cannot tell whether the bucket has Object Lock (AccessDenied: injected by s3proxy); "
            "retention deletes without checking for locks. Fix: allow s3:GetBucketObjectLockConfiguration on it"
            ) in caplog.messages


def test_a_head_that_fails_leaves_the_backup_to_its_delete(s3: S3Server, proxy: S3Proxy,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    bucket = lock_bucket(s3)
    cfg, storage = proxied(s3, proxy, bucket, RETENTION_DAYS="2")
    written, doomed = seed_doomed(s3, bucket)
    proxy.fail(lambda r: r.operation == "HeadObject" and r.path.endswith(doomed[0]), 403, "AccessDenied")
    with caplog.at_level(logging.INFO, logger="pgbkp.pipeline"):
        actions = pipeline.apply_retention(cfg, job_for(cfg, bucket, "shop", today_at(3)), storage, written)
    assert sorted(a.key for a in actions if a.done) == sorted(doomed)
    assert any(m.startswith(f"could not look at the Object Lock of s3://{bucket}/{doomed[0]} (head s3://{bucket}/"
                            f"{doomed[0]}: 403") for m in caplog.messages)


def test_weekly_keeper_lock_is_extended_on_s3(s3: S3Server, proxy: S3Proxy) -> None:
    bucket = lock_bucket(s3)
    cfg, storage = proxied(s3, proxy, bucket, RETENTION_DAYS="3", RETENTION_WEEKS="3",
                           S3_OBJECT_LOCK_MODE="GOVERNANCE")
    client = s3_client(s3)
    monday = today_at(0, datetime.now(UTC).weekday())
    written = backup_key("shop", today_at(3))
    last_sunday, sunday_before = (backup_key("shop", monday - timedelta(days=d, hours=-9)) for d in (1, 8))
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    client.put_object(Bucket=bucket, Key=written, Body=b"zip")
    client.put_object(Bucket=bucket, Key=last_sunday, Body=b"zip", ObjectLockMode="GOVERNANCE",
                      ObjectLockRetainUntilDate=soon)
    client.put_object(Bucket=bucket, Key=sunday_before, Body=b"zip", ObjectLockMode="COMPLIANCE",
                      ObjectLockRetainUntilDate=FAR)
    pipeline.apply_retention(cfg, job_for(cfg, bucket, "shop", today_at(3)), storage, written)
    lock = {k: (h["ObjectLockMode"], h["ObjectLockRetainUntilDate"])
            for k in (last_sunday, sunday_before) for h in [client.head_object(Bucket=bucket, Key=k)]}
    assert lock == {last_sunday: ("GOVERNANCE", (monday + timedelta(days=14)).replace(tzinfo=UTC)),
                    sunday_before: ("COMPLIANCE", FAR)}
    assert len([r for r in proxy.requests if is_retention_put(r)]) == 1



def test_lock_mode_on_a_bucket_without_object_lock_fails_its_databases_before_any_dump() -> None:
    store = MemoryStorage(["plain", "locked"], object_lock_mode="GOVERNANCE")
    store.lock_config["locked"] = True
    cfg = config.load({"PG_URLS": f"main|bucket=plain|db_buckets=b=locked|{URL}", "S3_OBJECT_LOCK_MODE": "GOVERNANCE",
                       "RETENTION_DAYS": "7", "TIMEZONE": "UTC"})
    conn = cfg.connections[0]
    when = datetime(2026, 11, 20, 3, 0)
    the_plan = pipeline.Plan(jobs=[pipeline.Job(conn, "a", "plain", backup_key("a", when), when),
                                   pipeline.Job(conn, "b", "locked", backup_key("b", when), when)])
    failed = pipeline.check_buckets(the_plan.jobs, lambda c: store)
    assert failed == {(0, "plain"): (
        "PG_URLS item 1 (main): field 'bucket (or S3_BUCKET)': check bucket s3://plain: S3_OBJECT_LOCK_MODE is "
        "GOVERNANCE, but the bucket has no Object Lock. Fix: use a bucket created with Object Lock, or unset "
        "S3_OBJECT_LOCK_MODE (object_lock_mode=off in this item)")}


def test_the_result_lists_the_backups_object_lock_kept() -> None:
    from pgbkp import handler_core

    result = pipeline.DatabaseResult("main", "shop", "bkt", "k", "ok", retention=[
        pipeline.RetentionAction("old", "keep", ["locked until 2099-01-01T00:00:00Z"]),
        pipeline.RetentionAction("k", "keep", ["newest"]),
        pipeline.RetentionAction("older", "delete", ["outside 7 days"], done=True)])
    assert handler_core.summarize(result)["retention"] == {
        "deleted": [{"key": "older", "reasons": ["outside 7 days"], "done": True}], "kept": 2,
        "locked": [{"key": "old", "reasons": ["locked until 2099-01-01T00:00:00Z"]}]}
