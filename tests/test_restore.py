"""pgbkp restore against real PostgreSQL and a real S3 server: round trips, selection, corruption, safety."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pgbkp import config as config_mod
from pgbkp import pipeline, postgres, restore
from tests.helpers import dump_sql, run_cli, s3_client
from tests.servers import PgCluster, S3Server, free_port

PASSWORD = "zíp pass/wörd %&|"
BUCKET = "restore-tests"
PREFIX = "p"

HOSTILE_SQL = r"""
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy ☺');
CREATE TABLE "täble ☃" (id serial PRIMARY KEY, txt text, m mood, data bytea, j jsonb);
INSERT INTO "täble ☃" (txt, m, data, j) VALUES
  (E'line1\nline2\ttab \\ backslash '' quote "dq" 🐘 日本語', 'happy ☺',
   (SELECT string_agg(set_byte('\x00'::bytea, 0, i), ''::bytea) FROM generate_series(0, 255) i),
   '{"k": "v\u00e9", "n": [1, 2.5, null]}'),
  (NULL, NULL, '\x'::bytea, 'null'),
  (E'\\.\n\\.', 'sad', '\x5c2e0a'::bytea, '"\\\\."');
CREATE TABLE big (id int PRIMARY KEY, payload text);
INSERT INTO big SELECT i, md5(i::text) || repeat('x', i % 50) FROM generate_series(1, 20000) i;
CREATE TABLE large_text (t text);
INSERT INTO large_text SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 40000);
SELECT lo_from_bytea(0, decode(repeat('00ff10', 50000), 'hex'));
CREATE TABLE measures (at date NOT NULL, v numeric) PARTITION BY RANGE (at);
CREATE TABLE measures_2024 PARTITION OF measures FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE measures_2025 PARTITION OF measures FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO measures SELECT d, extract(doy FROM d) FROM generate_series('2024-06-01'::date, '2025-06-01', '1 day') d;
CREATE FUNCTION shout(t text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN upper(t) || '!'; END $$;
CREATE VIEW loud AS SELECT shout(txt) FROM "täble ☃";
CREATE SCHEMA "odd schema";
CREATE TABLE "odd schema"."odd;name" (x int);
INSERT INTO "odd schema"."odd;name" VALUES (1), (2);
"""


# -------------------------------------------------------------------------------------------------
# Helpers shared by test_list.py and test_verify.py


def unique(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def make_env(pg: PgCluster, s3: S3Server, *, password: str | None = PASSWORD, bucket: str = BUCKET,
             extra: str = "") -> dict[str, str]:
    env = {**s3.env(), "PG_URLS": f"{PREFIX}|bucket={bucket}{extra}|" + pg.url(), "TIMEZONE": "UTC",
           "COMPRESSION_THREADS": "2"}
    if password:
        env["ZIP_PASSWORD"] = password
    return env


def run_backup(env: dict[str, str], database: str, now: datetime | None = None) -> pipeline.DatabaseResult:
    cfg = config_mod.load(env)
    result = pipeline.run(cfg, pipeline.plan(cfg, databases=[database], now=now))
    assert result.ok, [r.error for r in result.results]
    return result.results[0]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(list(args), env)


def user_objects(pg: PgCluster, database: str) -> str:
    """Everything user-made in a database, as text: proves a failed restore left it as it was."""
    return pg.psql("SELECT string_agg(n.nspname || '.' || c.relname, ',' ORDER BY 1) FROM pg_class c "
                   "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN "
                   "('pg_catalog', 'information_schema', 'pg_toast')", database)


@pytest.fixture
def databases(pg: PgCluster) -> Iterator[list[str]]:
    """Names to create in the test; every one is dropped afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        pg.drop_database(name)


@pytest.fixture
def bucket(s3: S3Server) -> str:
    s3_client(s3).create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture(scope="module")
def hostile(pg: PgCluster) -> Iterator[str]:
    """One source database with hard content, shared by the module's round trips."""
    with pg.temporary_database(unique("src_hostile"), HOSTILE_SQL) as name:
        yield name


def target_url(pg: PgCluster, database: str) -> str:
    return pg.url(database)


# -------------------------------------------------------------------------------------------------
# Round trips


def test_round_trip_encrypted_with_create(pg: PgCluster, s3: S3Server, bucket: str, hostile: str,
                                          databases: list[str]) -> None:
    env = make_env(pg, s3)
    written = run_backup(env, hostile)
    target = unique("dst_enc")
    databases.append(target)
    out = cli(env, "restore", "--connection", PREFIX, "--database", hostile, "--latest",
              "--target-url", target_url(pg, target), "--create")
    assert out.returncode == 0, out.stderr
    assert f"s3://{bucket}/{written.key}" in out.stdout
    assert "AES authentication code" in out.stdout and "object SHA-256" in out.stdout
    assert PASSWORD not in out.stdout + out.stderr and pg.password not in out.stdout + out.stderr
    assert dump_sql(pg, target) == dump_sql(pg, hostile)
    assert pg.psql("SELECT shout('a') || (SELECT count(*) FROM measures)", target) == "A!366"


def test_round_trip_plain_into_existing_empty_database(pg: PgCluster, s3: S3Server, bucket: str, hostile: str,
                                                       databases: list[str]) -> None:
    env = make_env(pg, s3, password=None)
    run_backup(env, hostile)
    target = unique("dst_plain")
    pg.create_database(target)
    databases.append(target)
    cfg = config_mod.load(env)
    ref = restore.select_backup(cfg, PREFIX, hostile)
    result = restore.restore(cfg, PREFIX, ref, target_url(pg, target))
    assert result.checks == ["ZIP CRC-32", "object SHA-256"]
    assert result.object_bytes == ref.size and result.sql_bytes > 2_000_000
    assert dump_sql(pg, target) == dump_sql(pg, hostile)


# -------------------------------------------------------------------------------------------------
# Selection


def test_at_picks_the_newest_backup_at_or_before(pg: PgCluster, s3: S3Server, bucket: str,
                                                 databases: list[str]) -> None:
    src, target = unique("src_at"), unique("dst_at")
    databases += [src, target]
    pg.create_database(src)
    env = make_env(pg, s3)
    pg.psql("CREATE TABLE t (v text); INSERT INTO t VALUES ('first')", src)
    first = run_backup(env, src, datetime(2025, 3, 1, 10, 0, tzinfo=UTC))
    pg.psql("UPDATE t SET v = 'second'", src)
    second = run_backup(env, src, datetime(2025, 3, 2, 10, 0, tzinfo=UTC))
    # Copies of a real object under other times: the list is chosen from file names, not upload order.
    client = s3_client(s3)
    folder = first.key.rsplit("/", 1)[0]
    for stamp in ("09h-00m-28d-02mes-2025y", "23h-59m-01d-03mes-2025y", "00h-00m-10d-03mes-2025y"):
        client.copy_object(Bucket=bucket, Key=f"{folder}/{PREFIX}-{src}-{stamp}.zip",
                           CopySource={"Bucket": bucket, "Key": first.key})
    cfg = config_mod.load(env)

    def pick(at: str) -> str:
        return restore.select_backup(cfg, PREFIX, src, at=restore.parse_at(at, cfg)).key.rsplit("/", 1)[-1]

    assert pick("2025-03-01 10:00") == first.key.rsplit("/", 1)[-1]
    assert pick("2025-03-01 23:58") == first.key.rsplit("/", 1)[-1]
    assert pick("2025-03-01 23:59") == f"{PREFIX}-{src}-23h-59m-01d-03mes-2025y.zip"
    assert pick("2025-03-02 10:00") == second.key.rsplit("/", 1)[-1]
    assert pick("2025-03-09 00:00") == second.key.rsplit("/", 1)[-1]
    assert pick("2030-01-01T00:00+00:00") == f"{PREFIX}-{src}-00h-00m-10d-03mes-2025y.zip"
    assert restore.select_backup(cfg, PREFIX, src).key.endswith("00h-00m-10d-03mes-2025y.zip")
    with pytest.raises(restore.NoBackupError, match="none at or before 2025-02-01 00:00"):
        restore.select_backup(cfg, PREFIX, src, at=datetime(2025, 2, 1))

    out = cli(env, "restore", "-c", PREFIX, "-d", src, "--at", "2025-03-01 12:00",
              "--target-url", target_url(pg, target), "--create")
    assert out.returncode == 0, out.stderr
    assert pg.psql("SELECT v FROM t", target) == "first"
    bad = cli(env, "restore", "-c", PREFIX, "-d", src, "--at", "yesterday", "--target-url", target_url(pg, target))
    assert bad.returncode == 2 and "YYYY-MM-DD HH:MM" in bad.stderr


def test_key_accepts_s3_url_and_plain_key(pg: PgCluster, s3: S3Server, bucket: str,
                                          databases: list[str]) -> None:
    src, t1, t2 = unique("src_key"), unique("dst_key1"), unique("dst_key2")
    databases += [src, t1, t2]
    pg.create_database(src)
    pg.psql("CREATE TABLE k (v int); INSERT INTO k VALUES (42)", src)
    env = make_env(pg, s3)
    written = run_backup(env, src)
    out = cli(env, "restore", "--key", f"s3://{bucket}/{written.key}", "--target-url", pg.url(t1), "--create")
    assert out.returncode == 0, out.stderr
    out = cli(env, "restore", "-d", src, "--key", written.key, "--target-url", pg.url(t2), "--create")
    assert out.returncode == 0, out.stderr
    assert pg.psql("SELECT v FROM k", t1) == pg.psql("SELECT v FROM k", t2) == "42"


# -------------------------------------------------------------------------------------------------
# Failures leave the target untouched


SMALL_SQL = "CREATE TABLE s (id int, t text); INSERT INTO s SELECT i, md5(i::text) FROM generate_series(1, 30000) i"


@pytest.fixture(scope="module")
def small_source(pg: PgCluster) -> Iterator[str]:
    """A small source database, big enough that its backup spans several reads (shared by the module)."""
    with pg.temporary_database(unique("src_small"), SMALL_SQL) as name:
        yield name


@pytest.fixture
def small_backup(pg: PgCluster, s3: S3Server, bucket: str, small_source: str) -> tuple[dict[str, str], str, str]:
    """A fresh encrypted backup of ``small_source``: (env, database, key)."""
    env = make_env(pg, s3)
    return env, small_source, run_backup(env, small_source).key


def _flip(s3: S3Server, key: str, offset: int, new_key: str | None = None) -> None:
    """Flip one bit of the stored object (written back under ``new_key`` if given), keeping its metadata."""
    client = s3_client(s3)
    obj = client.get_object(Bucket=BUCKET, Key=key)
    body = bytearray(obj["Body"].read())
    body[offset] ^= 0x01
    client.put_object(Bucket=BUCKET, Key=new_key or key, Body=bytes(body), Metadata=obj["Metadata"])


def _marked_target(pg: PgCluster, databases: list[str]) -> str:
    target = unique("dst_marked")
    databases.append(target)
    pg.create_database(target)
    pg.psql("CREATE TABLE marker (v int); INSERT INTO marker VALUES (7)", target)
    return target


@pytest.mark.parametrize("password", [PASSWORD, None], ids=["aes", "plain"])
def test_flipped_byte_fails_and_target_is_untouched(pg: PgCluster, s3: S3Server, bucket: str, small_source: str,
                                                     databases: list[str], password: str | None) -> None:
    env = make_env(pg, s3, password=password)
    key = run_backup(env, small_source).key
    size = s3_client(s3).head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    target = _marked_target(pg, databases)
    cfg = config_mod.load(env)
    for where, offset in {"header": 20, "data": size // 2, "end of data": size - 200, "directory": size - 40,
                          "last byte": size - 1}.items():
        bad = f"{key}.{offset}"
        _flip(s3, key, offset, bad)
        ref = restore.select_backup(cfg, PREFIX, key=f"s3://{BUCKET}/{bad}")
        with pytest.raises((restore.RestoreError, postgres.PostgresError), match="nothing was committed") as err:
            restore.restore(cfg, PREFIX, ref, pg.url(target), force=True)
        assert pg.password not in str(err.value), where
        assert user_objects(pg, target) == "public.marker", where
    # and through the command: one line on stderr, exit 1
    out = cli(env, "restore", "--key", f"s3://{BUCKET}/{key}.{size // 2}", "--target-url", pg.url(target), "--force")
    assert out.returncode == 1, out.stdout + out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("pgbkp: error:")]
    assert len(errors) == 1 and "nothing was committed" in errors[0] and "Traceback" not in out.stderr, out.stderr
    assert pg.psql("SELECT v FROM marker", target) == "7"


def test_changed_sha256_metadata_is_caught_at_the_end(pg: PgCluster, s3: S3Server, small_backup: tuple,
                                                       databases: list[str]) -> None:
    """All SQL has run and the ZIP checks pass: only the object hash is wrong, and nothing commits."""
    env, src, key = small_backup
    client = s3_client(s3)
    obj = client.get_object(Bucket=BUCKET, Key=key)
    client.put_object(Bucket=BUCKET, Key=key, Body=obj["Body"].read(), Metadata={**obj["Metadata"], "sha256": "0" * 64})
    target = _marked_target(pg, databases)
    cfg = config_mod.load(env)
    with pytest.raises(restore.IntegrityError, match=r"SHA-256 mismatch.*nothing was committed"):
        restore.restore(cfg, PREFIX, restore.select_backup(cfg, PREFIX, src), pg.url(target), force=True)
    assert user_objects(pg, target) == "public.marker"


def test_wrong_password_and_missing_password(pg: PgCluster, s3: S3Server, small_backup: tuple,
                                             databases: list[str]) -> None:
    env, src, _key = small_backup
    target = unique("dst_wrongpw")
    databases.append(target)
    wrong = cli({**env, "ZIP_PASSWORD": "not the password"}, "restore", "-d", src, "--target-url",
                pg.url(target), "--create")
    assert wrong.returncode == 1
    assert "wrong password" in wrong.stderr and "ZIP_PASSWORD" in wrong.stderr and "Traceback" not in wrong.stderr
    assert target not in pg.databases()  # --create made nothing, or dropped what it made
    cfg = config_mod.load({k: v for k, v in env.items() if k != "ZIP_PASSWORD"})
    with pytest.raises(restore.RestoreError, match="password needed"):
        restore.restore(cfg, PREFIX, restore.select_backup(cfg, PREFIX, src), pg.url(target), create=True)
    assert target not in pg.databases()


def test_missing_object_and_no_backups(pg: PgCluster, s3: S3Server, small_backup: tuple,
                                       databases: list[str]) -> None:
    env, _src, key = small_backup
    target = unique("dst_missing")
    databases.append(target)
    out = cli(env, "restore", "--key", key + ".gone", "--target-url", pg.url(target), "--create")
    assert out.returncode == 1 and "object does not exist" in out.stderr, out.stderr
    cfg = config_mod.load(env)
    with pytest.raises(restore.NoBackupError, match="none in s3://"):
        restore.select_backup(cfg, PREFIX, "no_such_db")
    assert target not in pg.databases()


def test_unreachable_target(s3: S3Server, pg: PgCluster, small_backup: tuple) -> None:
    env, src, _key = small_backup
    url = f"postgresql://postgres:x@127.0.0.1:{free_port()}/somewhere"
    out = cli(env, "restore", "-d", src, "--target-url", url)
    assert out.returncode == 1 and "cannot reach the server" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    cfg = config_mod.load(env)
    with pytest.raises(postgres.ConnectError, match="cannot reach the server"):
        restore.restore(cfg, PREFIX, restore.select_backup(cfg, PREFIX, src), url, create=True)


def test_target_url_must_name_a_database(s3: S3Server, pg: PgCluster, small_backup: tuple) -> None:
    env, src, _key = small_backup
    out = cli(env, "restore", "-d", src, "--target-url", pg.url("").rstrip("/"))
    assert out.returncode == 2 and "names no database" in out.stderr


# -------------------------------------------------------------------------------------------------
# Target safety


def test_create_force_and_non_empty_targets(pg: PgCluster, s3: S3Server, small_backup: tuple,
                                            databases: list[str]) -> None:
    env, src, _key = small_backup
    cfg = config_mod.load(env)
    ref = restore.select_backup(cfg, PREFIX, src)
    existing = _marked_target(pg, databases)
    with pytest.raises(restore.TargetError, match="already exists"):
        restore.restore(cfg, PREFIX, ref, pg.url(existing), create=True)
    out = cli(env, "restore", "-d", src, "--target-url", pg.url(existing))
    assert out.returncode == 1 and "is not empty (1 relations)" in out.stderr and "--force" in out.stderr
    assert user_objects(pg, existing) == "public.marker"
    restore.restore(cfg, PREFIX, ref, pg.url(existing), force=True)
    assert pg.psql("SELECT count(*) FROM s", existing) == "30000" and pg.psql("SELECT v FROM marker", existing) == "7"

    absent = unique("dst_absent")
    databases.append(absent)
    with pytest.raises(restore.TargetError, match=r"does not exist.*--create"):
        restore.restore(cfg, PREFIX, ref, pg.url(absent))
    assert absent not in pg.databases()


def test_a_failing_restore_drops_only_what_it_created(pg: PgCluster, s3: S3Server, small_backup: tuple,
                                                      databases: list[str]) -> None:
    env, src, key = small_backup
    _flip(s3, key, 300)
    target = unique("dst_dropped")
    databases.append(target)
    before = set(pg.databases())
    cfg = config_mod.load(env)
    with pytest.raises(restore.RestoreError):
        restore.restore(cfg, PREFIX, restore.select_backup(cfg, PREFIX, src), pg.url(target), create=True)
    assert set(pg.databases()) == before


def test_empty_check_sees_functions_types_and_large_objects(pg: PgCluster, databases: list[str]) -> None:
    name = unique("dst_kinds")
    databases.append(name)
    pg.create_database(name)
    cfg_target = config_mod.parse_url(pg.url(name), "test")
    assert postgres.database_is_empty(cfg_target, name)
    pg.psql("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'; CREATE TYPE e AS ENUM ('a');"
            "SELECT lo_create(0); CREATE SCHEMA s", name)
    assert postgres.database_contents(cfg_target, name) == {"functions": 1, "types": 1, "schemas": 1,
                                                             "large objects": 1}


# -------------------------------------------------------------------------------------------------
# psql that cannot read \restrict


@pytest.mark.parametrize(("version", "ok"), [
    ((12, 22), False), ((13, 21), False), ((13, 22), True), ((14, 18), False), ((14, 19), True),
    ((15, 13), False), ((15, 14), True), ((16, 9), False), ((16, 10), True), ((17, 5), False), ((17, 6), True),
    ((18, 0), True), ((19, 1), True),
])
def test_restrict_support_by_version(version: tuple[int, int], ok: bool) -> None:
    assert restore.restrict_supported(version) is ok


def test_old_psql_is_refused_before_anything_is_sent(pg: PgCluster, s3: S3Server, small_backup: tuple,
                                                     databases: list[str], tmp_path: Path) -> None:
    env, src, _key = small_backup
    real = postgres.tool("psql")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pg_dump").symlink_to(postgres.tool("pg_dump"))
    (fake / "psql").write_text(
        f'#!/bin/sh\nif [ "$1" = --version ]; then echo "psql (PostgreSQL) 15.13"; exit 0; fi\n'
        f'exec {real} "$@"\n')
    (fake / "psql").chmod(0o755)
    target = unique("dst_oldpsql")
    databases.append(target)
    out = cli({**env, "PG_BIN_DIR": str(fake)}, "restore", "-d", src, "--target-url", pg.url(target), "--create")
    assert out.returncode == 1
    assert "\\restrict" in out.stderr and "psql 15.13" in out.stderr and "PG_BIN_DIR" in out.stderr, out.stderr
    assert target not in pg.databases()


# -------------------------------------------------------------------------------------------------
# The manual recipes of docs/restore.md, on a real backup


def _download(s3: S3Server, key: str, path: Path) -> None:
    path.write_bytes(s3_client(s3).get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _psql_restore(pg: PgCluster, source_cmd: list[str], target: str) -> None:
    producer = subprocess.Popen(source_cmd, stdout=subprocess.PIPE)
    subprocess.run([str(pg.bindir / "psql"), "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1",
                    "-f", "-", "-d", target], stdin=producer.stdout, env=pg.env(), check=True,
                   capture_output=True)
    assert producer.wait() == 0


def test_manual_restore_recipes(pg: PgCluster, s3: S3Server, bucket: str, hostile: str, databases: list[str],
                                tmp_path: Path) -> None:
    enc_env = make_env(pg, s3)
    enc = tmp_path / "enc.zip"
    _download(s3, run_backup(enc_env, hostile, datetime(2025, 1, 1, tzinfo=UTC)).key, enc)
    plain = tmp_path / "plain.zip"
    _download(s3, run_backup(make_env(pg, s3, password=None), hostile, datetime(2025, 1, 2, tzinfo=UTC)).key, plain)
    expected = dump_sql(pg, hostile)
    recipes = {
        "7z": ["7z", "x", "-so", f"-p{PASSWORD}", str(enc)],
        "bsdtar": ["bsdtar", "-xOf", str(enc), "--passphrase", PASSWORD],
        "unzip": ["unzip", "-p", str(plain)],
        "bsdtar-plain": ["bsdtar", "-xOf", str(plain)],
    }
    for name, cmd in recipes.items():
        target = unique(f"dst_manual_{name.replace('-', '_')}")
        databases.append(target)
        pg.create_database(target)
        _psql_restore(pg, cmd, target)
        assert dump_sql(pg, target) == expected, name
