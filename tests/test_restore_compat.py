"""The image's pg_dump 18 against an older server, restored with pgbkp restore into that older server.

pg_dump 17+ writes ``SET transaction_timeout = 0;`` into every dump's header; servers before 17 reject
it, so an ON_ERROR_STOP restore would fail on its third line. Restore drops that one header line for
such targets.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pgbkp import restore
from tests.helpers import all_keys, dump_sql, make_bucket, run_cli, s3_client
from tests.servers import PgCluster, S3Server
from tests.test_layer_binaries import layer  # noqa: F401 - fixture: builds the layer once
from tests.test_restore import errors, planting_bindir, refused_at, refused_line

HEADER = (b"\\restrict abc\n\nSET statement_timeout = 0;\nSET lock_timeout = 0;\n"
          b"SET transaction_timeout = 0;\nSET client_encoding = 'UTF8';\n")


def test_adapt_header_only_for_servers_before_17() -> None:
    assert b"transaction_timeout" not in restore.adapt_header(HEADER, 150018)
    assert restore.adapt_header(HEADER, 170000) == HEADER
    late = b"x" * (restore.HEADER_BYTES + 10) + b"\nSET transaction_timeout = 0;\n"
    assert restore.adapt_header(late, 150018) == late  # table data is never rewritten


def test_pg_dump_18_backup_restores_into_a_15_server(pg: PgCluster, s3: S3Server, layer: Path) -> None:  # noqa: F811
    source, target = "compat_src", "compat_dst"
    for name in (source, target):
        pg.drop_database(name)
    pg.create_database(source)
    pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 1000) g", source)
    bucket = make_bucket(s3)
    env = {**s3.env(), "PG_URLS": f"compat|bucket={bucket}|{pg.url()}", "PG_BIN_DIR": str(layer / "bin"),
           "LD_LIBRARY_PATH": str(layer / "lib")}
    try:
        res = run_cli(["backup", "--database", source], env)
        assert res.returncode == 0, res.stderr
        [key] = all_keys(s3, bucket)
        assert s3_client(s3).head_object(Bucket=bucket, Key=key)["Metadata"]["pg-dump-version"].startswith("18.")
        env.pop("PG_BIN_DIR")  # restore with the machine's psql 15, into the 15 server
        res = run_cli(["restore", "-c", "compat", "-d", source, "--latest", "--target-url", pg.url(target),
                       "--create"], env)
        assert res.returncode == 0, res.stderr
        assert dump_sql(pg, target) == dump_sql(pg, source)
    finally:
        pg.drop_database(source)
        pg.drop_database(target)


def test_target_password_never_needs_to_be_in_argv(pg: PgCluster, monkeypatch) -> None:
    bare = f"postgresql://{pg.user}@127.0.0.1:{pg.port}/somewhere"
    conn_pg = restore.parse_url(pg.url(), "test")
    assert restore.parse_target(bare, env={}, fallback=conn_pg).password == conn_pg.password
    other = restore.parse_target(bare.replace("127.0.0.1", "localhost"), env={"PGPASSWORD": "from-env"},
                                 fallback=conn_pg)
    assert other.password is not None and other.password.reveal() == "from-env"
    assert restore.parse_target(bare.replace("127.0.0.1", "localhost"), env={}, fallback=conn_pg).password is None


def test_large_objects_do_not_break_the_single_transaction(pg: PgCluster, s3: S3Server) -> None:
    """pg_dump's BEGIN/COMMIT around large objects must not commit a half restore: here the GRANT at
    the end fails (its role is gone), and the target must stay exactly as empty as it was."""
    source, target, role = "lo_src", "lo_dst", "lo_reader"
    for name in (source, target):
        pg.drop_database(name)
    pg.create_database(source)
    pg.create_database(target)
    pg.psql(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role}")
    pg.psql(f"CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 1000) g; "
            f"CREATE INDEX t_v ON t (v); SELECT lo_from_bytea(0, 'large object'::bytea); "
            f"GRANT SELECT ON t TO {role}", source)
    bucket = make_bucket(s3)
    env = {**s3.env(), "PG_URLS": f"lo|bucket={bucket}|{pg.url()}"}
    try:
        assert run_cli(["backup", "--database", source], env).returncode == 0
        pg.psql(f"DROP OWNED BY {role}; DROP ROLE {role}", source)
        res = run_cli(["restore", "-c", "lo", "-d", source, "--latest", "--target-url", pg.url(target)], env)
        assert res.returncode == 1
        assert f'role "{role}" does not exist' in res.stderr
        assert pg.psql("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace", target) == "0"
        assert pg.psql("SELECT count(*) FROM pg_largeobject_metadata", target) == "0"
    finally:
        pg.drop_database(source)
        pg.drop_database(target)
        pg.psql(f"DROP ROLE IF EXISTS {role}")


@pytest.mark.parametrize("planted", ["\\! touch {m}", "SELECT 1; \\! touch {m}"], ids=["line", "mid-line"])
def test_the_layers_psql_18_refuses_a_hidden_command(pg: PgCluster, s3: S3Server, layer: Path,  # noqa: F811
                                                     tmp_path: Path, planted: str) -> None:
    """The Lambda image's psql 18 under pgbkp's \\restrict: the command never runs, the message names it."""
    source, target = "compat_planted_src", "compat_planted_dst"
    for name in (source, target):
        pg.drop_database(name)
    pg.create_database(source)
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 100) AS g", source)
    marker = tmp_path / "pwned"
    bindir, line_file = planting_bindir(tmp_path, planted.format(m=marker))
    bucket = make_bucket(s3)
    env = {**s3.env(), "PG_URLS": f"compat|bucket={bucket}|{pg.url()}", "PG_BIN_DIR": str(bindir)}
    try:
        assert run_cli(["backup", "--database", source], env).returncode == 0
        [key] = all_keys(s3, bucket)
        res = run_cli(["restore", "-c", "compat", "-d", source, "--target-url", pg.url(target), "--create"],
                      {**env, "PG_BIN_DIR": str(layer / "bin"), "LD_LIBRARY_PATH": str(layer / "lib")})
        assert not marker.exists()
        assert res.returncode == 1
        number, text = refused_at(line_file)
        assert errors(res) == [refused_line(f"s3://{bucket}/{key}", number, text, f"{pg.user}@127.0.0.1:{pg.port}/"
                                            f"{target}", bucket)]
        assert target not in pg.databases()
    finally:
        pg.drop_database(source)
        pg.drop_database(target)
