"""Roles and other globals on real servers: pg_dumpall --globals-only backed up to S3, restored into a
fresh cluster (second PgCluster) with the same roles after, the managed-server fallback, --skip-existing
and verify."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from pgbkp import config as config_mod
from pgbkp import handler_core, keys, pipeline, restore
from pgbkp.storage.memory import MemoryStorage
from pgbkp.storage.s3 import S3Storage
from tests.fakes import FakeDatabase, FakeDumpSource
from tests.helpers import make_bucket, run_cli
from tests.servers import PgCluster, S3Server, temp_root

BUCKET = "globals-tests"
ROLES_SQL = """
CREATE ROLE app LOGIN PASSWORD 'app-secret' CONNECTION LIMIT 7;
CREATE ROLE grp NOLOGIN;
CREATE ROLE "wéird ""role"" ✓" CREATEDB;
GRANT grp TO app;
GRANT grp TO "wéird ""role"" ✓" WITH ADMIN OPTION;
ALTER ROLE app SET work_mem = '8MB';
ALTER ROLE app SET search_path = 'a, "b c"';
COMMENT ON ROLE grp IS 'the group';
CREATE ROLE lowly LOGIN PASSWORD 'lowly-pw';
"""


def cluster(stem: str) -> Iterator[PgCluster]:
    root = temp_root(stem)
    pg = PgCluster(root).start()
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def source() -> Iterator[PgCluster]:
    for pg in cluster("pgbkp-globals-src-"):
        pg.psql(ROLES_SQL)
        yield pg


@pytest.fixture
def target() -> Iterator[PgCluster]:
    """A fresh cluster: only its bootstrap superuser."""
    yield from cluster("pgbkp-globals-dst-")


def globals_sql(pg: PgCluster) -> list[str]:
    """pg_dumpall --globals-only of a cluster, without what differs between any two clusters: the random
    \\restrict keys and the bootstrap superuser's line (its SCRAM salt)."""
    out = subprocess.run([str(pg.bindir / "pg_dumpall"), "--globals-only", "-h", "127.0.0.1", "-p", str(pg.port),
                          "-U", pg.user], capture_output=True, text=True, env=pg.env(), check=True).stdout
    return [ln for ln in out.splitlines()
            if not ln.startswith(("\\restrict ", "\\unrestrict ", "ALTER ROLE postgres WITH "))]


def env_for(pg: PgCluster, s3: S3Server, url: str | None = None) -> dict[str, str]:
    return {**s3.env(), "PG_URLS": f"src|bucket={BUCKET}|globals=true|{url or pg.url()}", "TIMEZONE": "UTC",
            "COMPRESSION_THREADS": "1", "ZIP_PASSWORD": "a long enough passphrase"}


def back_up_globals(env: dict[str, str]) -> pipeline.DatabaseResult:
    cfg = config_mod.load(env)
    run = pipeline.run(cfg, pipeline.plan(cfg, databases=[keys.GLOBALS]),
                       storage_for=pipeline.StorageCache(S3Storage))
    [result] = run.results
    assert (result.kind, result.status, result.error) == ("globals", "ok", None)
    return result


def roles(pg: PgCluster) -> str:
    return pg.psql("SELECT string_agg(rolname || ':' || rolcanlogin || ':' || rolconnlimit, ',' ORDER BY rolname) "
                   "FROM pg_roles WHERE rolname !~ '^pg_'")


def test_roles_memberships_and_settings_restore_into_a_fresh_cluster(source: PgCluster, target: PgCluster,
                                                                     s3: S3Server) -> None:
    make_bucket(s3, BUCKET)
    env = env_for(source, s3)
    result = back_up_globals(env)
    assert result.note is None
    assert result.key.startswith("src/%globals/src-globals-")

    listed = run_cli(["list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    assert '"database": "(globals)"' in listed.stdout and '"kind": "globals"' in listed.stdout

    out = run_cli(["restore", "--globals", "--target-url", f"postgresql://{target.user}@127.0.0.1:{target.port}/postgres"],
                  {**env, "PGPASSWORD": target.password})
    assert out.returncode == 0, out.stderr
    assert "4 role(s) created, 1 already there and left as they were (postgres)" in out.stdout
    assert globals_sql(target) == globals_sql(source)
    # The password came along: the restored role logs in with it.
    login = subprocess.run([str(target.bindir / "psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(target.port),
                            "-U", "app", "-d", "postgres", "-c", "SHOW work_mem"],
                           env={**target.env(), "PGUSER": "app", "PGPASSWORD": "app-secret"},
                           capture_output=True, text=True, check=False)
    assert (login.returncode, login.stdout.strip()) == (0, "8MB"), login.stderr


def test_a_user_who_may_not_read_pg_authid_gets_the_dump_without_passwords(source: PgCluster,
                                                                           s3: S3Server) -> None:
    make_bucket(s3, BUCKET)
    url = source.url().replace(f"{source.user}:", "lowly:", 1)
    url = url.split("@", 1)[0].rsplit(":", 1)[0] + ":lowly-pw@" + url.split("@", 1)[1]
    env = env_for(source, s3, url)
    result = back_up_globals(env)
    assert result.note is not None and "role passwords left out" in result.note
    assert "pg_authid" in result.note and "--no-role-passwords" in result.note
    cfg = config_mod.load(env)
    body = b"".join(_member(cfg, result.key)).decode()
    assert "CREATE ROLE app;" in body and "GRANT grp TO app" in body
    assert "PASSWORD" not in body and "SCRAM-SHA-256" not in body


def _member(cfg: config_mod.Config, key: str) -> Iterator[bytes]:
    from pgbkp.archive import MemberReader

    store = S3Storage(cfg.connections[0].s3)
    download = store.download(BUCKET, key)
    try:
        assert cfg.zip_password is not None
        yield from MemberReader(download, cfg.zip_password.reveal().encode())
    finally:
        download.close()


def test_skip_existing_creates_what_is_missing_and_leaves_the_rest(source: PgCluster, target: PgCluster,
                                                                   s3: S3Server) -> None:
    make_bucket(s3, BUCKET)
    env = env_for(source, s3)
    back_up_globals(env)
    target.psql("CREATE ROLE app NOLOGIN CONNECTION LIMIT 2")
    before = roles(target)
    restore_env = {**env, "PGPASSWORD": target.password}
    url = f"postgresql://{target.user}@127.0.0.1:{target.port}/postgres"

    refused = run_cli(["restore", "--globals", "--target-url", url], restore_env)
    assert refused.returncode == 1
    assert "1 role(s) of the backup already exist on postgres@127.0.0.1" in refused.stderr
    assert "'app'" in refused.stderr and "Fix: add --skip-existing" in refused.stderr
    assert "nothing was committed" in refused.stderr
    assert roles(target) == before  # nothing was created

    done = run_cli(["restore", "--globals", "--skip-existing", "--target-url", url], restore_env)
    assert done.returncode == 0, done.stderr
    assert "3 role(s) created, 2 already there and left as they were (app, postgres)" in done.stdout
    assert roles(target) == ("app:false:2,grp:false:-1,lowly:true:-1,postgres:true:-1,"
                             "wéird \"role\" ✓:false:-1")
    # app kept its own attributes and settings, and got the membership (memberships only add).
    assert target.psql("SELECT count(*) FROM pg_db_role_setting") == "0"
    assert target.psql("SELECT pg_has_role('app', 'grp', 'MEMBER')") == "t"


def test_verify_checks_the_globals_object_and_tries_it_on_a_scratch_cluster(source: PgCluster, target: PgCluster,
                                                                           s3: S3Server) -> None:
    make_bucket(s3, BUCKET)
    env = env_for(source, s3)
    back_up_globals(env)
    checked = run_cli(["verify", "--json"], env)
    assert '"database": "(globals)"' in checked.stdout
    assert '"roles": 5' in checked.stdout, checked.stdout + checked.stderr

    before = roles(target)
    tried = run_cli(["verify", "--json", "--database", keys.GLOBALS, "--scratch-url",
                     f"postgresql://{target.user}@127.0.0.1:{target.port}/postgres"],
                    {**env, "PGPASSWORD": target.password})
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert '"roles": 5' in tried.stdout and f'"scratch_server": "postgres@127.0.0.1:{target.port}"' in tried.stdout
    assert roles(target) == before  # run, then rolled back


def test_a_roles_own_setting_cannot_smuggle_sql_into_a_skip_existing_restore(source: PgCluster, target: PgCluster,
                                                                            s3: S3Server) -> None:
    """Any login role may set its own settings; pg_dumpall writes a value with a line break across lines.
    When that role exists on the target, its statements are left out WHOLE: leaving out only the first
    line ran the second (DROP ROLE victim) as the restoring superuser."""
    make_bucket(s3, BUCKET)
    source.psql("CREATE ROLE evil LOGIN PASSWORD 'evil-pw'")
    try:
        planted = subprocess.run(
            [str(source.bindir / "psql"), "-X", "-h", "127.0.0.1", "-p", str(source.port), "-U", "evil", "-d",
             "postgres", "-c", "ALTER ROLE evil SET application_name = E'x\\nDROP ROLE victim; --'"],
            env={**source.env(), "PGUSER": "evil", "PGPASSWORD": "evil-pw"}, capture_output=True, text=True,
            check=False)
        assert planted.returncode == 0, planted.stderr
        env = env_for(source, s3)
        back_up_globals(env)
    finally:
        source.psql("DROP ROLE evil")
    target.psql("CREATE ROLE evil NOLOGIN; CREATE ROLE victim NOLOGIN")
    done = run_cli(["restore", "--globals", "--skip-existing", "--target-url",
                    f"postgresql://{target.user}@127.0.0.1:{target.port}/postgres"],
                   {**env, "PGPASSWORD": target.password})
    assert done.returncode == 0, done.stderr
    assert "2 already there and left as they were (evil, postgres)" in done.stdout
    assert target.psql("SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles "
                       "WHERE rolname IN ('evil', 'victim')") == "evil,victim"
    assert target.psql("SELECT count(*) FROM pg_db_role_setting JOIN pg_roles ON pg_roles.oid = setrole "
                       "WHERE rolname = 'evil'") == "0"  # evil left exactly as it was


HOSTILE_GLOBALS = (b"--\n\\restrict K1\n\nCREATE ROLE planted SUPERUSER LOGIN PASSWORD 'p';\nCOMMIT;\n"
                   b"CREATE ROLE after;\n\\unrestrict K1\n\n--\n-- PostgreSQL database cluster dump complete\n--\n")


@pytest.mark.parametrize("how", ["restore", "verify"])
def test_a_globals_object_with_a_commit_leaves_nothing_behind(target: PgCluster, how: str) -> None:
    """COMMIT; would commit the roles before it (past verify's ROLLBACK, and before the object's checks)
    and run the rest outside the transaction: it is refused before psql sees it."""
    url = target.url()
    cfg = config_mod.load({"PG_URLS": f"src|bucket={BUCKET}|globals=true|{url}", "TIMEZONE": "UTC",
                           "COMPRESSION_THREADS": "1"})
    store = MemoryStorage([BUCKET])
    src = FakeDumpSource({"src": []}, globals={"src": FakeDatabase(keys.GLOBALS, HOSTILE_GLOBALS)})
    handler_core.handle({"connection": "src"}, config=cfg,
                        edge=handler_core.Edge(storage_for=lambda _c: store, source=src))
    ref = restore.select_backup(cfg, "src", globals_only=True, storage=store)
    before = roles(target)
    if how == "restore":
        with pytest.raises(restore.GlobalsStatementError, match=r"line 5: 'COMMIT;'.*nothing was committed"):
            restore.restore_globals(cfg, ref, restore.parse_target(url), storage=store)
    else:
        [result] = restore.verify(cfg, "src", [keys.GLOBALS], scratch_url=url, storage=store)
        assert result.status == "failed" and "line 5: 'COMMIT;'" in str(result.error)
    assert roles(target) == before
