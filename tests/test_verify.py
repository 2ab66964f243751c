"""pgbkp verify on real PostgreSQL and S3: good and corrupt backups, scratch databases always dropped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgbkp import config as config_mod
from pgbkp import postgres, restore
from tests.helpers import s3_client
from tests.servers import PgCluster, S3Server, free_port
from tests.test_restore import (  # noqa: F401 - planted_source is a fixture
    BUCKET,
    PREFIX,
    _flip,
    cli,
    make_env,
    planted_source,
    planting_bindir,
    refused_at,
    refused_line,
    run_backup,
    s3_store,
    unique,
)


def _scratch_left(pg: PgCluster) -> list[str]:
    return [d for d in pg.databases() if d.startswith("pgbkp_verify_")]


@pytest.fixture(scope="module")
def sources(pg: PgCluster) -> Iterator[tuple[str, str]]:
    """Two source databases with known content, made once for the module."""
    good, other = unique("vsrc_good"), unique("vsrc_other")
    for name in (good, other):
        pg.create_database(name)
    pg.psql("CREATE TABLE a (i int); INSERT INTO a SELECT generate_series(1, 1234);"
            "CREATE TABLE b (t text); INSERT INTO b VALUES ('x'), ('y');"
            "CREATE TABLE p (d int) PARTITION BY RANGE (d);"
            "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);"
            "CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (10) TO (20);"
            "INSERT INTO p SELECT generate_series(0, 19)", good)
    pg.psql("CREATE TABLE c (i int); INSERT INTO c SELECT generate_series(1, 30000)", other)
    yield good, other
    for name in (good, other):
        pg.drop_database(name)


@pytest.fixture
def two_sources(pg: PgCluster, s3: S3Server, sources: tuple[str, str]) -> tuple[dict[str, str], str, str]:
    """Fresh backups of both sources: (env, good, other)."""
    s3_client(s3).create_bucket(Bucket=BUCKET)
    good, other = sources
    env = make_env(pg, s3)
    run_backup(env, good)
    run_backup(env, other)
    return env, good, other


def test_verify_good_backups(pg: PgCluster, two_sources: tuple[dict[str, str], str, str]) -> None:
    env, good, other = two_sources
    cfg = config_mod.load(env)
    results = restore.verify(cfg, PREFIX, [good, other], scratch_url=pg.url("ignored"), storage=s3_store(cfg))
    assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
    first = results[0]
    assert (first.database, first.tables, first.rows) == (good, 5, 1234 + 2 + 20)  # p, p1, p2 count once
    assert first.restored_size > 1_000_000 and first.object_bytes > 0 and first.sql_bytes > first.object_bytes
    assert first.scratch_database.startswith(f"pgbkp_verify_{good}_")
    assert results[1].rows == 30000
    json.dumps([r.as_dict() for r in results])  # what the Lambda handler returns
    assert _scratch_left(pg) == []


def test_verify_corrupt_backup_fails_and_drops_scratch(pg: PgCluster, s3: S3Server,
                                                        two_sources: tuple[dict[str, str], str, str]) -> None:
    env, good, other = two_sources
    cfg = config_mod.load(env)
    key = restore.find_backups(cfg, PREFIX, other, storage=s3_store(cfg))[0].key
    _flip(s3, key, 400)
    out = cli(env, "verify", "--json")  # every database that has backups
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is False
    status = {r["database"]: r for r in report["results"]}
    assert status[good]["status"] == "ok" and status[other]["status"] == "failed"
    assert "nothing was committed" in status[other]["error"]
    assert _scratch_left(pg) == []


def test_verify_database_without_backups(pg: PgCluster, two_sources: tuple[dict[str, str], str, str]) -> None:
    env, good, _other = two_sources
    cfg = config_mod.load(env)
    results = restore.verify(cfg, PREFIX, ["nothing_here", good], storage=s3_store(cfg))
    assert [r.status for r in results] == ["failed", "ok"]
    assert "no backup found in s3://" in (results[0].error or "")
    out = cli(env, "verify", "-c", PREFIX, "-d", good)
    assert out.returncode == 0, out.stderr
    header, _rule, row = out.stdout.splitlines()[:3]
    assert header.split()[:4] == ["database", "backup", "taken", "tables"]
    assert row.startswith(f"{PREFIX}/{good}") and row.split()[-1] == "ok" and " 1256 " in row


def test_verify_never_drops_a_database_it_did_not_create(pg: PgCluster, monkeypatch: pytest.MonkeyPatch,
                                                         two_sources: tuple[dict[str, str], str, str]) -> None:
    env, good, other = two_sources
    monkeypatch.setattr(restore, "scratch_name", lambda _db: other)  # as if the random name were taken
    cfg = config_mod.load(env)
    results = restore.verify(cfg, PREFIX, [good], storage=s3_store(cfg))
    assert results[0].status == "failed" and "already exists" in (results[0].error or "")
    assert other in pg.databases() and pg.psql("SELECT count(*) FROM c", other) == "30000"


@pytest.mark.parametrize("where", ["body", "end"])
def test_verify_refuses_a_backup_with_a_hidden_psql_command(pg: PgCluster, s3: S3Server,
                                                           planted_source: str,  # noqa: F811
                                                           tmp_path: Path, where: str) -> None:
    """The same guard as restore (and the Lambda verify action, which calls restore.verify)."""
    s3_client(s3).create_bucket(Bucket=BUCKET)
    marker = tmp_path / "pwned"
    bindir, line_file = planting_bindir(tmp_path, f"SELECT 1; \\! touch {marker}", where=where)
    env = {**make_env(pg, s3), "PG_BIN_DIR": str(bindir)}
    key = run_backup(env, planted_source).key
    out = cli(env, "verify", "-c", PREFIX, "-d", planted_source, "--json")
    assert not marker.exists()
    assert out.returncode == 1, out.stderr
    [result] = json.loads(out.stdout)["results"]
    assert result["status"] == "failed"
    scratch = f"{pg.user}@127.0.0.1:{pg.port}/{result['scratch_database']}"
    number, text = refused_at(line_file, -2 if where == "end" else 0)  # after the end: pg_dump's closing line
    assert result["error"] == refused_line(f"s3://{BUCKET}/{key}", number, text, scratch)
    assert _scratch_left(pg) == []


@pytest.mark.parametrize("scratch", ["wrong password", "unreachable"])
def test_verify_reports_only_its_own_failure_on_a_scratch_server_it_cannot_use(
        pg: PgCluster, monkeypatch: pytest.MonkeyPatch, two_sources: tuple[dict[str, str], str, str],
        scratch: str) -> None:
    """Nothing was created, so there is no drop to report; and the Fix names --scratch-url, not PG_URLS."""
    env, good, _other = two_sources
    monkeypatch.setattr(restore, "scratch_name", lambda _db: "pgbkp_verify_fixed")
    port = pg.port if scratch == "wrong password" else free_port()
    cfg = config_mod.load(env)
    [result] = restore.verify(cfg, PREFIX, [good], storage=s3_store(cfg),
                              scratch_url=f"postgresql://{pg.user}:wrong-pw-4711@127.0.0.1:{port}/ignored")
    where = f"look for the database on {pg.user}@127.0.0.1:{port}/pgbkp_verify_fixed"
    assert result.status == "failed"
    if scratch == "wrong password":
        assert result.error == (f"{where}: password authentication failed for user {pg.user!r}. "
                                "Fix: check the user and password in --scratch-url.")
    else:
        assert result.error is not None and result.error.startswith(f"{where}: cannot reach the server (")
        assert result.error.endswith("). Fix: check host, port and network access.")
        assert "drop" not in result.error


def test_verify_reports_a_scratch_database_left_behind_once(pg: PgCluster, monkeypatch: pytest.MonkeyPatch,
                                                            two_sources: tuple[dict[str, str], str, str]) -> None:
    """The failed restore made the scratch database and could not drop it: said once, by the restore."""
    env, good, _other = two_sources
    monkeypatch.setattr(restore, "scratch_name", lambda _db: "pgbkp_verify_left")

    def fail(_first: bytes, _version: int) -> bytes:
        raise restore.IntegrityError("injected failure")

    def cannot_drop(_target: object, database: str, **_kw: object) -> None:
        raise postgres.PostgresError(f"drop database {database!r}: the server went away")

    monkeypatch.setattr(restore, "adapt_header", fail)  # after the scratch database was made
    monkeypatch.setattr(postgres, "drop_database", cannot_drop)
    try:
        cfg = config_mod.load(env)
        [result] = restore.verify(cfg, PREFIX, [good], storage=s3_store(cfg))
        assert result.status == "failed"
        assert result.error == (f"injected failure; nothing was committed to {pg.user}@127.0.0.1:{pg.port}/"
                                "pgbkp_verify_left; the database 'pgbkp_verify_left' it created could not be "
                                "dropped (drop database 'pgbkp_verify_left': the server went away).")
    finally:
        monkeypatch.undo()
        pg.drop_database("pgbkp_verify_left")
