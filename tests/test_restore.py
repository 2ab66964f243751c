"""pgbkp restore against real PostgreSQL and a real S3 server: round trips, selection, corruption, safety."""

from __future__ import annotations

import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pgbkp import config as config_mod
from pgbkp import integrity, pipeline, postgres, restore
from pgbkp.storage.memory import MemoryStorage
from pgbkp.storage.s3 import S3Storage
from tests.helpers import ROOT, dump_sql, run_cli, s3_client
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
CREATE TABLE "new
line" ("first
column" text, n int);
INSERT INTO "new
line" VALUES (NULL, 1), (E'\restrict abc', 2), (E'\\unrestrict x', 3);
CREATE TABLE one_column (v text);
INSERT INTO one_column VALUES ('BEGIN;'), ('COMMIT;'), (E'\restrict k'), (NULL);
COMMENT ON TABLE one_column IS E'its dump has a line that starts with a backslash:\n\\! in a string';
CREATE FUNCTION digits(t text) RETURNS boolean LANGUAGE sql AS $$ SELECT t ~ '
\d+' $$;
"""


# -------------------------------------------------------------------------------------------------
# Helpers shared by test_list.py and test_verify.py


def s3_store(cfg: config_mod.Config, connection: str | int = 0) -> S3Storage:
    """The store the CLI would build for the connection: restore.* take their storage from the caller."""
    return S3Storage(cfg.connection(connection).s3)


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
    result = pipeline.run(cfg, pipeline.plan(cfg, databases=[database], now=now),
                          storage_for=pipeline.StorageCache(S3Storage))
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
    # COPY data that looks like psql commands or pg_dump's key lines is data: restored as it was (<CR>: \r)
    assert pg.psql("SELECT string_agg(n || ':' || coalesce(replace(\"first\ncolumn\", chr(13), '<CR>'), 'NULL'), "
                   "',' ORDER BY n) FROM \"new\nline\"", target) == "1:NULL,2:<CR>estrict abc,3:\\unrestrict x"
    assert pg.psql("SELECT string_agg(coalesce(replace(v, chr(13), '<CR>'), 'NULL'), ',' ORDER BY v) FROM one_column",
                   target) == "<CR>estrict k,BEGIN;,COMMIT;,NULL"
    # lines that start with a backslash inside a string or a function body are not commands: psql judges
    assert pg.psql("SELECT obj_description('one_column'::regclass) || digits(E'\\n42')::text", target) == (
        "its dump has a line that starts with a backslash:\n\\! in a stringtrue")


def test_round_trip_plain_into_existing_empty_database(pg: PgCluster, s3: S3Server, bucket: str, hostile: str,
                                                       databases: list[str]) -> None:
    env = make_env(pg, s3, password=None)
    run_backup(env, hostile)
    target = unique("dst_plain")
    pg.create_database(target)
    databases.append(target)
    cfg = config_mod.load(env)
    ref = restore.select_backup(cfg, PREFIX, hostile, storage=s3_store(cfg))
    result = restore.restore(cfg, PREFIX, ref, target_url(pg, target), storage=s3_store(cfg))
    assert result.checks == ["ZIP CRC-32", "object SHA-256 (integrity record)"]
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
        return restore.select_backup(cfg, PREFIX, src, at=restore.parse_at(at, cfg),
                                     storage=s3_store(cfg)).key.rsplit("/", 1)[-1]

    assert pick("2025-03-01 10:00") == first.key.rsplit("/", 1)[-1]
    assert pick("2025-03-01 23:58") == first.key.rsplit("/", 1)[-1]
    assert pick("2025-03-01 23:59") == f"{PREFIX}-{src}-23h-59m-01d-03mes-2025y.zip"
    assert pick("2025-03-02 10:00") == second.key.rsplit("/", 1)[-1]
    assert pick("2025-03-09 00:00") == second.key.rsplit("/", 1)[-1]
    assert pick("2030-01-01T00:00+00:00") == f"{PREFIX}-{src}-00h-00m-10d-03mes-2025y.zip"
    store = s3_store(cfg)
    assert restore.select_backup(cfg, PREFIX, src, storage=store).key.endswith("00h-00m-10d-03mes-2025y.zip")
    with pytest.raises(restore.NoBackupError, match="none at or before 2025-02-01 00:00"):
        restore.select_backup(cfg, PREFIX, src, at=datetime(2025, 2, 1), storage=store)

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
        ref = restore.select_backup(cfg, PREFIX, key=f"s3://{BUCKET}/{bad}", storage=s3_store(cfg))
        with pytest.raises((restore.RestoreError, postgres.PostgresError), match="nothing was committed") as err:
            restore.restore(cfg, PREFIX, ref, pg.url(target), force=True, storage=s3_store(cfg))
        assert pg.password not in str(err.value), where
        assert user_objects(pg, target) == "public.marker", where
    # and through the command: one line on stderr, exit 1
    out = cli(env, "restore", "--key", f"s3://{BUCKET}/{key}.{size // 2}", "--target-url", pg.url(target), "--force")
    assert out.returncode == 1, out.stdout + out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("pgbkp: error:")]
    assert len(errors) == 1 and "nothing was committed" in errors[0] and "Traceback" not in out.stderr, out.stderr
    assert pg.psql("SELECT v FROM marker", target) == "7"


def test_a_record_that_lies_is_caught_at_the_end(pg: PgCluster, s3: S3Server, small_backup: tuple,
                                                 databases: list[str]) -> None:
    """All SQL has run and the ZIP checks pass: only the integrity record's hash is wrong (a well-formed
    record, its own check recomputed), and nothing commits."""
    env, src, key = small_backup
    client = s3_client(s3)
    obj = client.get_object(Bucket=BUCKET, Key=key)
    body = obj["Body"].read()
    at = body.rindex(integrity.MAGIC)
    record = integrity.parse(body[at:])
    lie = replace(record, sha256="0" * 64).encode()
    assert len(lie) == len(body) - at
    client.put_object(Bucket=BUCKET, Key=key, Body=body[:at] + lie, Metadata=obj["Metadata"])
    target = _marked_target(pg, databases)
    cfg = config_mod.load(env)
    store = s3_store(cfg)
    with pytest.raises(restore.IntegrityError, match=r"SHA-256 mismatch.*integrity record says 0{64}.*nothing was "
                       "committed"):
        restore.restore(cfg, PREFIX, restore.select_backup(cfg, PREFIX, src, storage=store), pg.url(target),
                        force=True, storage=store)
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
    store = s3_store(cfg)
    with pytest.raises(restore.RestoreError, match="password needed"):
        restore.restore(cfg, PREFIX, restore.select_backup(cfg, PREFIX, src, storage=store), pg.url(target),
                        create=True, storage=store)
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
        restore.select_backup(cfg, PREFIX, "no_such_db", storage=s3_store(cfg))
    assert target not in pg.databases()


def test_unreachable_target(s3: S3Server, pg: PgCluster, small_backup: tuple) -> None:
    env, src, _key = small_backup
    url = f"postgresql://postgres:x@127.0.0.1:{free_port()}/somewhere"
    out = cli(env, "restore", "-d", src, "--target-url", url)
    assert out.returncode == 1 and "cannot reach the server" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    cfg = config_mod.load(env)
    store = s3_store(cfg)
    with pytest.raises(postgres.ConnectError, match="cannot reach the server"):
        restore.restore(cfg, PREFIX, restore.select_backup(cfg, PREFIX, src, storage=store), url, create=True,
                        storage=store)


@pytest.mark.parametrize(("user", "password", "pgpassword", "failure", "fix"), [
    ("postgres", "wrong-pw-4711", None, "password authentication failed",
     "Fix: check the user and password in --target-url."),
    ("postgres", None, "wrong-pw-4711", "password authentication failed",
     "Fix: check the user in --target-url and the password in PGPASSWORD."),
    ("nobody_4711", None, None, "no password was given",
     "Fix: set PGPASSWORD to the password of user 'nobody_4711', or check the user in --target-url."),
], ids=["url", "pgpassword", "none"])
def test_target_login_failure_names_where_its_password_comes_from(
        pg: PgCluster, s3: S3Server, small_backup: tuple, user: str, password: str | None, pgpassword: str | None,
        failure: str, fix: str) -> None:
    """The target's password is not in PG_URLS (unless it is the connection's own server and user)."""
    env, src, _key = small_backup
    login = f"{user}:{password}" if password else user
    out = cli({**env, **({"PGPASSWORD": pgpassword} if pgpassword else {})}, "restore", "-d", src,
              "--target-url", f"postgresql://{login}@127.0.0.1:{pg.port}/somewhere")
    assert out.returncode == 1
    assert errors(out) == [f"inspect database 'somewhere' on {user}@127.0.0.1:{pg.port}/somewhere: {failure} for "
                           f"user {user!r}. {fix}"]


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
    store = s3_store(cfg)
    ref = restore.select_backup(cfg, PREFIX, src, storage=store)
    existing = _marked_target(pg, databases)
    with pytest.raises(restore.TargetError, match="already exists"):
        restore.restore(cfg, PREFIX, ref, pg.url(existing), create=True, storage=store)
    out = cli(env, "restore", "-d", src, "--target-url", pg.url(existing))
    assert out.returncode == 1 and "is not empty (1 relations)" in out.stderr and "--force" in out.stderr
    assert user_objects(pg, existing) == "public.marker"
    restore.restore(cfg, PREFIX, ref, pg.url(existing), force=True, storage=store)
    assert pg.psql("SELECT count(*) FROM s", existing) == "30000" and pg.psql("SELECT v FROM marker", existing) == "7"

    absent = unique("dst_absent")
    databases.append(absent)
    with pytest.raises(restore.TargetError, match=r"does not exist.*--create"):
        restore.restore(cfg, PREFIX, ref, pg.url(absent), storage=store)
    assert absent not in pg.databases()


def test_a_failing_restore_drops_only_what_it_created(pg: PgCluster, s3: S3Server, small_backup: tuple,
                                                      databases: list[str]) -> None:
    env, src, key = small_backup
    _flip(s3, key, 300)
    target = unique("dst_dropped")
    databases.append(target)
    before = set(pg.databases())
    cfg = config_mod.load(env)
    store = s3_store(cfg)
    with pytest.raises(restore.RestoreError):
        restore.restore(cfg, PREFIX, restore.select_backup(cfg, PREFIX, src, storage=store), pg.url(target),
                        create=True, storage=store)
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


def test_old_psql_is_refused_before_anything_is_sent(pg: PgCluster, s3: S3Server, bucket: str,
                                                     planted_source: str, databases: list[str],
                                                     tmp_path: Path) -> None:
    """A psql without \\restrict cannot be kept from running a command hidden in a backup, so it is refused
    even for a dump from a pg_dump older than August 2025, which has no \\restrict line of its own."""
    fake, _ = planting_bindir(tmp_path, "", keys=False)
    (fake / "psql").unlink()
    (fake / "psql").write_text(
        f'#!/bin/sh\nif [ "$1" = --version ]; then echo "psql (PostgreSQL) 15.13"; exit 0; fi\n'
        f'exec {postgres.tool("psql")} "$@"\n')
    (fake / "psql").chmod(0o755)
    env = {**make_env(pg, s3), "PG_BIN_DIR": str(fake)}
    key = run_backup(env, planted_source).key
    target = unique("dst_oldpsql")
    databases.append(target)
    out = cli(env, "restore", "-d", planted_source, "--target-url", pg.url(target), "--create")
    assert out.returncode == 1
    assert errors(out) == [
        f"restore s3://{BUCKET}/{key}: psql 15.13 ({fake}/psql) has no \\restrict, so nothing could stop it running "
        "a psql command hidden in the backup (\\! runs a shell). Nothing was sent. Fix: set PG_BIN_DIR to the bin "
        "folder of a newer PostgreSQL client (18, or 17.6+, 16.10+, 15.14+, 14.19+, 13.22+)."]
    assert target not in pg.databases()


# -------------------------------------------------------------------------------------------------
# The manual recipes of docs/restore.md, on a real backup


def _download(s3: S3Server, key: str, path: Path) -> None:
    path.write_bytes(s3_client(s3).get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _guard() -> str:
    """The ``guard`` shell function of docs/restore.md, exactly as written there."""
    text = (ROOT / "docs" / "restore.md").read_text(encoding="utf-8")
    return text[text.index("guard() {\n"):text.index("\n}\n", text.index("guard() {\n")) + 3]


def _psql_restore(pg: PgCluster, source_cmd: list[str], target: str) -> subprocess.CompletedProcess[str]:
    """``SOURCE | guard | psql ...`` as docs/restore.md writes it, in bash with pipefail."""
    psql = [str(pg.bindir / "psql"), "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1", "-f", "-", "-d",
            target]
    script = f"{_guard()}{shlex.join(source_cmd)} | guard | {shlex.join(psql)}"
    return subprocess.run(["bash", "-o", "pipefail", "-c", script], env=pg.env(), capture_output=True, text=True,
                          check=False)


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
        done = _psql_restore(pg, cmd, target)
        assert done.returncode == 0, (name, done.stderr)
        assert dump_sql(pg, target) == expected, name


def test_manual_recipe_runs_no_hidden_command(pg: PgCluster, s3: S3Server, bucket: str, planted_source: str,
                                              databases: list[str], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bindir, _ = planting_bindir(tmp_path, f"\\! touch {marker}", where="head")
    env = {**make_env(pg, s3, password=None), "PG_BIN_DIR": str(bindir)}
    plain = tmp_path / "plain.zip"
    _download(s3, run_backup(env, planted_source).key, plain)
    target = unique("dst_manual_planted")
    databases.append(target)
    pg.create_database(target)
    done = _psql_restore(pg, ["unzip", "-p", str(plain)], target)
    assert not marker.exists()
    assert done.returncode == 3
    assert done.stderr == "psql:<stdin>:2: error: backslash commands are restricted; only \\unrestrict is allowed\n"
    assert user_objects(pg, target) == ""


# -------------------------------------------------------------------------------------------------
# Commands hidden in a backup (issue 10): psql runs none of them, the backup is refused, nothing commits

PLANTED_SQL = "CREATE TABLE victim (id int); INSERT INTO victim SELECT generate_series(1, 1000)"
_WRAPPER = """#!{python}
import os, re, subprocess, sys
real = {real!r}
if sys.argv[1:] == ["--version"]:
    os.execv(real, [real, "--version"])
done = subprocess.run([real, *sys.argv[1:]], stdout=subprocess.PIPE, check=False)
if done.returncode:
    sys.exit(done.returncode)
dump = done.stdout
if not {keys!r}:  # as pg_dump wrote before August 2025
    dump = re.sub(rb"^\\\\(un)?restrict \\w+\\n", b"", dump, flags=re.MULTILINE)
where = {where!r}
body = dump.rindex(b"\\n--\\n-- PostgreSQL database dump complete") + 1
cut = 0 if where == "head" else len(dump) if where == "end" else body
with open({line_file!r}, "w") as f:
    f.write(str(dump[:cut].count(b"\\n") + 1))
dump = dump[:cut] + {planted!r} + b"\\n" + dump[cut:]
with open({line_file!r} + ".sql", "wb") as f:
    f.write(dump)
sys.stdout.buffer.write(dump)
"""


@pytest.fixture(scope="module")
def planted_source(pg: PgCluster) -> Iterator[str]:
    with pg.temporary_database(unique("src_planted"), PLANTED_SQL) as name:
        yield name


def planting_bindir(tmp_path: Path, planted: str, *, where: str = "body", keys: bool = True) -> tuple[Path, Path]:
    """A PG_BIN_DIR whose pg_dump runs the real one and adds ``planted`` lines to its output: before
    pg_dump's closing comment (``body``), before its first line (``head``, so before pg_dump's own
    ``\\restrict``) or after its last (``end``, after its ``\\unrestrict``). The backup made from it by
    the normal pipeline is genuine. Without ``keys``, it drops pg_dump's ``\\restrict`` / ``\\unrestrict`` lines.
    Returns (bindir, file holding the number of the planted line; that file + ".sql" holds the dump)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "psql").symlink_to(postgres.tool("psql"))
    line_file = tmp_path / "planted_line"
    wrapper = bindir / "pg_dump"
    wrapper.write_text(_WRAPPER.format(python=sys.executable, real=postgres.tool("pg_dump"), where=where, keys=keys,
                                       line_file=str(line_file), planted=planted.encode()))
    wrapper.chmod(0o755)
    return bindir, line_file


def errors(out: subprocess.CompletedProcess[str]) -> list[str]:
    """The command's error lines (without the prefix); there is no traceback."""
    assert "Traceback" not in out.stderr, out.stderr
    return [ln.removeprefix("pgbkp: error: ") for ln in out.stderr.splitlines() if ln.startswith("pgbkp: error:")]


def refused_line(backup_url: str, line: int, text: str, target: str, bucket: str = BUCKET) -> str:
    return (f"restore {backup_url}: the backup contains a psql meta-command (line {line}: "
            f"{restore.shown_line(text.encode())}); refused, nothing was committed to {target}. Fix: do not restore "
            f"this backup; find out who could write to s3://{bucket}/, and restore an older one you trust "
            "(pgbkp list; --at or --key).")


#: id -> lines planted in the dump ({m}: a file that must never appear, {script}: a file \i could read).
HIDDEN = {
    "shell": r"\! touch {m}",
    "shell-mid-line": r"SELECT 1; \! touch {m}",
    "unrestrict-guessed": "\\unrestrict guessed\n\\! touch {m}",
    "output-to-file": "\\o {m}\nSELECT 1;",
    "client-copy": r"\copy (SELECT 1) TO '{m}'",
    "set": "\\set ON_ERROR_STOP off\n\\! touch {m}",
    "include": r"\i {script}",
    "indented": "  \t\\! touch {m}",
}


@pytest.mark.parametrize("hidden", HIDDEN.values(), ids=HIDDEN.keys())
def test_hidden_psql_command_is_refused_and_never_runs(pg: PgCluster, s3: S3Server, bucket: str,
                                                       planted_source: str, databases: list[str],
                                                       tmp_path: Path, hidden: str) -> None:
    marker, script = tmp_path / "pwned", tmp_path / "evil.sql"
    script.write_text(f"\\! touch {marker}\n")
    planted = hidden.format(m=marker, script=script)
    bindir, line_file = planting_bindir(tmp_path, planted)
    env = {**make_env(pg, s3), "PG_BIN_DIR": str(bindir)}
    key = run_backup(env, planted_source).key
    target = _marked_target(pg, databases)
    out = cli(env, "restore", "-d", planted_source, "--target-url", pg.url(target), "--force")
    assert not marker.exists()
    assert out.returncode == 1, out.stdout + out.stderr
    expected = refused_line(f"s3://{BUCKET}/{key}", int(line_file.read_text()), planted.split("\n")[0],
                            f"{pg.user}@127.0.0.1:{pg.port}/{target}")
    assert errors(out) == [expected], out.stderr
    assert user_objects(pg, target) == "public.marker"  # victim was created, then rolled back


def refused_at(line_file: Path, shift: int = 0) -> tuple[int, str]:
    """(number, text) of the line psql refuses: the planted one, or ``shift`` lines from it."""
    number = int(line_file.read_text()) + shift
    return number, Path(f"{line_file}.sql").read_bytes().split(b"\n")[number - 1].decode()


@pytest.mark.parametrize("where", ["head", "end"])
def test_command_outside_the_dumps_own_restrict(pg: PgCluster, s3: S3Server, bucket: str, planted_source: str,
                                                databases: list[str], tmp_path: Path, where: str) -> None:
    """Before pg_dump's ``\\restrict KEY`` or after its ``\\unrestrict KEY``, the dump's own key guards nothing.
    After the end, pg_dump's closing line is no longer at its place: it goes to psql, which refuses it first."""
    marker = tmp_path / "pwned"
    bindir, line_file = planting_bindir(tmp_path, f"\\! touch {marker}", where=where)
    env = {**make_env(pg, s3), "PG_BIN_DIR": str(bindir)}
    key = run_backup(env, planted_source).key
    target = unique("dst_appended")
    databases.append(target)
    out = cli(env, "restore", "-d", planted_source, "--target-url", pg.url(target), "--create")
    assert not marker.exists()
    assert out.returncode == 1
    number, text = refused_at(line_file, -2 if where == "end" else 0)
    assert text.startswith("\\unrestrict " if where == "end" else "\\! touch ")
    target_shown = f"{pg.user}@127.0.0.1:{pg.port}/{target}"
    assert errors(out) == [refused_line(f"s3://{BUCKET}/{key}", number, text, target_shown)]
    assert target not in pg.databases()


def test_psql_alone_refuses_a_backslash_command(pg: PgCluster, databases: list[str], tmp_path: Path) -> None:
    """The session's own \\restrict is the guard, without the filter's scan: psql stops on the command."""
    marker = tmp_path / "pwned"
    target = unique("dst_session")
    databases.append(target)
    pg.create_database(target)
    dest = config_mod.parse_url(pg.url(target), "test")
    with postgres.RestoreSession(dest, target) as session:
        session.write(f"CREATE TABLE t (i int);\n\\! touch {marker}\nSELECT 1;\n".encode())
        with pytest.raises(postgres.RestrictedCommandError, match="refused the backslash command on line 2") as err:
            session.commit()
    assert err.value.line == 2
    assert not marker.exists()
    assert user_objects(pg, target) == ""


def test_the_refused_line_is_found_deep_in_a_stream_of_small_chunks(pg: PgCluster, databases: list[str],
                                                                     tmp_path: Path) -> None:
    """psql refuses a line it read up to a pipe (1 MiB) earlier: the filter keeps enough to show it."""
    marker = tmp_path / "pwned"
    filler = b"-- " + b"x" * 97 + b"\n"
    sql = b"CREATE TABLE t (i int);\n" + filler * 40_000 + f"SELECT 1; \\! touch {marker}\n".encode() + filler * 40_000
    target = unique("dst_deep")
    databases.append(target)
    pg.create_database(target)
    one = restore.DumpFilter()
    with postgres.RestoreSession(config_mod.parse_url(pg.url(target), "test"), target) as session, \
            pytest.raises(postgres.RestrictedCommandError) as err:
        for i in range(0, len(sql), 4096):
            session.write(one.feed(sql[i:i + 4096]))
        session.write(one.flush())
        session.commit()
    assert err.value.line == 40_002
    assert one.line_text(40_002) == f"SELECT 1; \\! touch {marker}".encode()
    assert not marker.exists()


# The filter on its own: what pg_dump writes passes (its key lines and the large-object BEGIN/COMMIT become
# blank lines), COPY data is never touched, and anything else goes to psql, which judges it.

GENUINE = (b"--\n-- PostgreSQL database dump\n--\n\n\\restrict AbC123\n\n"
           b"SET statement_timeout = 0;\n"
           b"--\n-- Data for Name: a b; Type: TABLE DATA; Schema: public; Owner: o\n--\n\n"
           b'COPY public."a\nb" ("c\nd", e) FROM stdin;\n'
           b"\\N\t1\n\\restrict x\t2\n\\\\! data\t3\n\\.\n\n"
           b"--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: o\n--\n\n"
           b"COPY public.t (v) FROM stdin;\nBEGIN;\nCOMMIT;\n\\restrict AbC123\n\\.\n\n"
           b"--\n-- Data for Name: 16390; Type: BLOBS; Schema: -; Owner: o\n--\n\n"
           b"BEGIN;\n\nSELECT pg_catalog.lo_open('16390', 131072);\nCOMMIT;\n\n"
           b"--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict AbC123\n\n")


def _filtered(data: bytes, size: int) -> bytes:
    one = restore.DumpFilter()
    return b"".join([one.feed(data[i:i + size]) for i in range(0, len(data), size)] + [one.flush()])


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(GENUINE)])
def test_filter_passes_pg_dump_output(size: int) -> None:
    expected = (GENUINE.replace(b"\\restrict AbC123\n\nSET", b"\n\nSET")
                .replace(b"BLOBS; Schema: -; Owner: o\n--\n\nBEGIN;\n", b"BLOBS; Schema: -; Owner: o\n--\n\n\n")
                .replace(b"131072);\nCOMMIT;\n", b"131072);\n\n").replace(b"\\unrestrict AbC123\n", b"\n"))
    assert expected.count(b"\n") == GENUINE.count(b"\n")
    assert _filtered(GENUINE, size) == expected


KEY_LINES = {  # id -> (dump, what psql gets): pg_dump's key lines go only at their places, all else passes
    "only-at-their-places": (b"--\n\\restrict K1\nSELECT 1;\n\\unrestrict K1\n\n\n",
                             b"--\n\nSELECT 1;\n\n\n\n"),
    "command-before-the-key": (b"--\n\\! id\n\\restrict K1\nSELECT 1;\n", None),
    "key-after-sql": (b"SELECT 1;\n\\restrict K1\n", None),
    "second-restrict": (b"\\restrict K1\nSELECT 1;\n\\restrict K1\n", b"\nSELECT 1;\n\\restrict K1\n"),
    "guessed-unrestrict": (b"\\restrict K1\n\\unrestrict K2\n", b"\n\\unrestrict K2\n"),
    "restrict-with-crlf": (b"\\restrict K1\r\n", None),
    "copy-ends-at-crlf": (b"\\restrict K1\nCOPY t FROM stdin;\n1\n\\.\r\n\\unrestrict K1\n",
                          b"\nCOPY t FROM stdin;\n1\n\\.\r\n\n"),
    "dot-x-is-data": (b"\\restrict K1\nCOPY t FROM stdin;\n\\.x\n\\unrestrict K1\n",
                      b"\nCOPY t FROM stdin;\n\\.x\n\\unrestrict K1\n"),
    "unterminated-copy": (b"\\restrict K1\nCOPY t (v) FROM stdin;\n\\! data\n\\unrestrict K1",
                          b"\nCOPY t (v) FROM stdin;\n\\! data\n\\unrestrict K1\n"),
}


@pytest.mark.parametrize(("dump", "sent"), KEY_LINES.values(), ids=KEY_LINES.keys())
@pytest.mark.parametrize("size", [1, 5, 1 << 20])
def test_filter_drops_key_lines_only_at_their_places(dump: bytes, sent: bytes | None, size: int) -> None:
    assert _filtered(dump, size) == (dump if sent is None else sent)


@pytest.mark.parametrize("after", [b"SELECT 1;\n", b"  \\! id\n", b"x"], ids=["sql", "command", "no-newline"])
@pytest.mark.parametrize("size", [1, 5, 1 << 20])
def test_filter_refuses_anything_after_the_closing_line(after: bytes, size: int) -> None:
    """pg_dump's ``\\unrestrict KEY`` is its last line: after it, the dump's own key would guard nothing."""
    with pytest.raises(restore.MetaCommandError) as err:
        _filtered(b"\\restrict K1\nSELECT 1;\n\\unrestrict K1\n\n \t\n" + after, size)
    assert (err.value.line, err.value.text) == (3, b"\\unrestrict K1\n")


def test_filter_shows_the_line_psql_names() -> None:
    one = restore.DumpFilter()
    one.feed(b"\\restrict K1\nSELECT 1;\n")
    one.feed(b"COPY t FROM stdin;\n1\n\\.\nSELECT 2; \\! id\n")
    assert [one.line_text(n) for n in (1, 2, 6, 7)] == [b"", b"SELECT 1;", b"SELECT 2; \\! id", None]


def test_shown_line_escapes_and_cuts() -> None:
    assert restore.shown_line(b"\\! id\r\x1b[2J\xe2\x80\xae\n") == "\\! id\\r\\x1b[2J\\u202e"
    assert restore.shown_line(b"SELECT 1; \\! " + b"x" * 100) == "SELECT 1; \\! " + "x" * 47 + "…"
    assert restore.shown_line(b"bad \xff utf-8") == "bad \ufffd utf-8"


# Hostile dumps of our own, through the normal pipeline into the in-memory store, restored by real psql:
# psql judges every one; a comment or a string that merely holds a backslash line is not a command.

_SERVE = """#!{python}
import os, sys
if sys.argv[1:] == ["--version"]:
    os.execv({real!r}, [{real!r}, "--version"])
with open({dump!r}, "rb") as f:
    sys.stdout.buffer.write(f.read())
"""
HOSTILE_HEAD = "--\n\\restrict K1\n\nCREATE TABLE victim (id int);\n"  # lines 1-4 of each dump below
HOSTILE = {  # id -> (the rest of the dump, {m}: a file that must never appear; the outcome)
    "mid-line": ("SELECT 1; \\! touch {m}\n", 5),
    "cr-line-endings": ("SELECT 1;\r\\! touch {m}\r\n", 5),
    "copy-inside-a-string": ("SELECT '\nCOPY victim FROM stdin;\n';\n\\! touch {m}\n", 8),
    "after-copy-ended-by-crlf": ("COPY victim FROM stdin;\n1\r\n\\.\r\n\\! touch {m}\n", 8),
    "the-dumps-own-unrestrict": ("\\unrestrict K1\n\\! touch {m}\n", 5),
    "after-the-closing-line": ("\\unrestrict K1\n\n\\! touch {m}\n", 5),
    "another-restrict": ("\\restrict K2\n\\! touch {m}\n", 5),
    "strings-made-non-standard": ("SELECT set_config('standard_conforming_strings', 'off', false);\n"
                                  "SELECT 'a\\' ' \\! touch {m}\n", 6),
    "gexec": ("SELECT 'SELECT 1' \\gexec\n", 5),
    "long-line-escapes": ("SELECT '\x1b[2J\u202e" + "x" * 100_000 + "'; \\! touch {m}\n", 5),
    "never-terminated-copy": ("COPY victim FROM stdin;\n1\n\\! touch {m}\n", "invalid input syntax for type integer"),
    "command-in-a-comment": ("-- \\! touch {m}\nSELECT 1;\n", "restored"),
    "line-in-dollar-quotes": ("SELECT $$\n\\! touch {m}\n$$;\n", "restored"),
}


@pytest.mark.parametrize(("rest", "outcome"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_dump(pg: PgCluster, planted_source: str, databases: list[str], tmp_path: Path, rest: str,
                      outcome: int | str) -> None:
    marker = tmp_path / "pwned"
    sql = (HOSTILE_HEAD + rest.format(m=marker)).encode()
    (tmp_path / "dump.sql").write_bytes(sql)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "psql").symlink_to(postgres.tool("psql"))
    (bindir / "pg_dump").write_text(_SERVE.format(python=sys.executable, real=postgres.tool("pg_dump"),
                                                  dump=str(tmp_path / "dump.sql")))
    (bindir / "pg_dump").chmod(0o755)
    cfg = config_mod.load({"PG_URLS": f"{PREFIX}|bucket={BUCKET}|{pg.url()}", "TIMEZONE": "UTC",
                           "PG_BIN_DIR": str(bindir)})
    store = MemoryStorage([BUCKET])
    assert pipeline.run(cfg, pipeline.plan(cfg, databases=[planted_source]), storage_for=lambda _c: store).ok
    ref = restore.select_backup(cfg, PREFIX, planted_source, storage=store)
    target = unique("dst_hostile")
    databases.append(target)
    dest = restore.parse_target(pg.url(target))
    if outcome == "restored":
        restore.restore_backup(cfg, ref, dest, create=True, storage=store)
        assert user_objects(pg, target) == "public.victim"
    elif isinstance(outcome, int):
        with pytest.raises(restore.MetaCommandError) as err:
            restore.restore_backup(cfg, ref, dest, create=True, storage=store)
        assert str(err.value) == refused_line(ref.url, outcome, sql.split(b"\n")[outcome - 1].decode(), dest.display)
        assert target not in pg.databases()
    else:
        with pytest.raises(postgres.PostgresError, match=f"{outcome}.*nothing was committed"):
            restore.restore_backup(cfg, ref, dest, create=True, storage=store)
        assert target not in pg.databases()
    assert not marker.exists()


def test_filter_passes_a_long_line_on_without_holding_it() -> None:
    """A COPY row of a large bytea is one long line: it goes on as it comes, never held whole (memory)
    nor searched again at every chunk (time); the lines after it are still judged."""
    f = restore.DumpFilter()
    head = b"-- dump\nSET x = 1;\nCOPY public.t (b) FROM stdin;\n"
    out = [f.feed(head)]
    piece = b"\\\\x" + b"ab" * (1 << 19)
    for _ in range(40):
        out.append(f.feed(piece))
        assert len(f._carry) < restore.DumpFilter.HOLD
    out += [f.feed(b"\n\\.\nBEGIN;\nCOMMIT;\n" + b"-- a long comment " * 10_000), f.flush()]
    assert b"".join(out) == head + piece * 40 + b"\n\\.\nBEGIN;\nCOMMIT;\n" + b"-- a long comment " * 10_000 + b"\n"


def test_filter_refuses_a_header_line_no_dump_has() -> None:
    f = restore.DumpFilter()
    f.feed(b"-- dump\n")
    with pytest.raises(restore.RestoreError, match=r"^the dump has a line of over 16 MiB starting with COPY public"
                       r"\.AAAAAAAA \(line 2\), which pg_dump never writes: refused$"):
        for _ in range(20):
            f.feed(b"COPY public." + b"A" * (1 << 20) if not f._carry else b"A" * (1 << 20))


def test_damage_that_still_inflates_is_named_as_damage_not_as_a_psql_error(
        pg: PgCluster, s3: S3Server, bucket: str, databases: list[str]) -> None:
    """Stored deflate blocks (level 0, no AES) carry the SQL as it is: a flipped byte in a keyword still
    inflates, and psql stops at that statement, so writing the rest (more than its 1 MiB pipe) fails
    first. The restore reads on and names the real cause: the archive's CRC."""
    sql = "CREATE TABLE t (x text); INSERT INTO t SELECT repeat(md5(g::text), 8) FROM generate_series(1, 30000) g"
    with pg.temporary_database(unique("src_inflates"), sql) as source:
        env = {**make_env(pg, s3, password=None), "ZIP_COMPRESSION_LEVEL": "0"}
        key = run_backup(env, source).key
    body = s3_client(s3).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert len(body) > 7 << 20  # the dump outgrows psql's 1 MiB pipe many times over
    _flip(s3, key, body.index(b"CREATE TABLE") + 2)  # CREATE -> CRDATE
    target = unique("dst_inflates")
    databases.append(target)
    cfg = config_mod.load(env)
    with pytest.raises(restore.IntegrityError, match=r"the archive is corrupt \(read zip .*: CRC mismatch in data "
                       r"descriptor .*nothing was committed"):
        restore.restore(cfg, PREFIX, restore.select_backup(cfg, PREFIX, source, storage=s3_store(cfg)),
                        pg.url(target), create=True, storage=s3_store(cfg))
    assert target not in pg.databases()
