"""The PostgreSQL client layer (layers/postgresql), tested as shipped.

No Docker engine runs here, so instead of testing the image we run the exact files the Dockerfile
copies to /opt and a zip layer would carry: dump and restore the real test server with them, also
over TLS with certificate verification. The layer is built when missing; if that fails the tests
fail (never skip), so CI cannot go green without having exercised it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import PgCluster, temp_root

REPO = Path(__file__).resolve().parent.parent
LAYER = REPO / "layers" / "postgresql"
BUILD_SCRIPT = REPO / "layers" / "build.sh"
TOOLS = ("pg_dump", "pg_dumpall", "pg_restore", "psql")
#: The only libraries the layer may take from the system: glibc, as on Lambda's Amazon Linux 2023.
GLIBC_SONAMES = {
    "linux-vdso.so.1",
    "libc.so.6",
    "libm.so.6",
    "libresolv.so.2",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "ld-linux-x86-64.so.2",
}
#: Amazon Linux 2023's glibc, the base of the python3.12+ Lambda images and runtimes.
LAMBDA_GLIBC = (2, 34)

SOURCE_SQL = """
CREATE TABLE accounts (id bigserial PRIMARY KEY, name text NOT NULL UNIQUE, balance numeric(12, 2),
                       tags text[], meta jsonb, created timestamptz DEFAULT now());
CREATE INDEX accounts_meta ON accounts USING gin (meta);
INSERT INTO accounts (name, balance, tags, meta, created)
SELECT 'acct-' || g || ' é ☃ ''q'' \\ tab' || chr(9) || 'end', g * 1.5, ARRAY['a', 'b,c'],
       jsonb_build_object('n', g, 'nested', jsonb_build_object('ok', g % 2 = 0)),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour'
FROM generate_series(1, 500) AS g;
CREATE SCHEMA reports;
CREATE VIEW reports.rich AS SELECT name, balance FROM accounts WHERE balance > 300;
CREATE FUNCTION reports.total() RETURNS numeric LANGUAGE sql AS 'SELECT sum(balance) FROM accounts';
COMMENT ON TABLE accounts IS 'comment with ''quotes'' and ünïcode';
CREATE TABLE blobs (id int PRIMARY KEY, data bytea);
INSERT INTO blobs SELECT g, decode(md5(g::text), 'hex') FROM generate_series(1, 50) AS g;
"""


def _layer_env(cluster: PgCluster, **extra: str) -> dict[str, str]:
    """The cluster's PG* settings (password in PGPASSWORD, never argv); libraries from the layer only."""
    env = cluster.env()
    env["LD_LIBRARY_PATH"] = str(LAYER / "lib")
    env.update(extra)
    return env


def _run_any(tool: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one of the layer's tools, whatever its exit code."""
    return subprocess.run(
        [str(LAYER / "bin" / tool), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def _run(tool: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = _run_any(tool, args, env)
    if out.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(args)} exited {out.returncode}: {out.stderr}")
    return out


def _dump(env: dict[str, str], database: str) -> str:
    return _run("pg_dump", ["--no-password", "-d", database], env).stdout


def _comparable(dump: str) -> list[str]:
    """pg_dump 18 brackets its output in \\restrict KEY / \\unrestrict KEY with a random KEY."""
    return [line for line in dump.splitlines() if not re.match(r"\\(un)?restrict\b", line)]


#: pg_dump 17+ writes `SET transaction_timeout = 0;`, which servers before 17 reject with this one
#: harmless error (the test server is 15). Dumps are meant to be restored into the same or newer.
_OLD_SERVER_NOISE = 'unrecognized configuration parameter "transaction_timeout"'


def _restore_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ERROR" in line and _OLD_SERVER_NOISE not in line]


def _round_trip(cluster: PgCluster, env: dict[str, str]) -> None:
    """Dump a database with the layer's pg_dump, restore it with its psql, and compare the dumps."""
    suffix = uuid.uuid4().hex[:8]
    source, target = f"layer_src_{suffix}", f"layer_dst_{suffix}"
    cluster.create_database(source)
    cluster.create_database(target)
    try:
        cluster.psql(SOURCE_SQL, source)
        dump = _dump(env, source)
        assert "CREATE TABLE public.accounts" in dump
        assert "-- Dumped by pg_dump version 18." in dump
        restore = subprocess.run(
            [str(LAYER / "bin" / "psql"), "-X", "-q", "--no-password", "-d", target],
            input=dump,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert restore.returncode == 0, restore.stderr
        assert _restore_errors(restore.stderr) == [], restore.stderr
        assert _comparable(_dump(env, target)) == _comparable(dump)
        assert cluster.psql("SELECT count(*), sum(balance) FROM accounts", target) == "500|187875.00"
    finally:
        cluster.drop_database(source)
        cluster.drop_database(target)


@pytest.fixture(scope="module")
def layer() -> Path:
    """The built layer; builds it (idempotent) and fails loudly if that is impossible."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        pytest.fail(f"bash layers/build.sh failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    assert (LAYER / "bin" / "pg_dump").is_file()
    return LAYER


@pytest.fixture(scope="module")
def tls_pg() -> Iterator[PgCluster]:
    root = temp_root("pgbkp-pg-tls-")
    cluster = PgCluster(root, ssl=True).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("tool", TOOLS)
def test_tools_are_postgresql_18(layer: Path, tool: str) -> None:
    out = _run(tool, ["--version"], {"LD_LIBRARY_PATH": str(layer / "lib")})
    assert re.fullmatch(rf"{tool} \(PostgreSQL\) 18\.\d+\n", out.stdout), out.stdout


def test_layer_is_self_contained(layer: Path) -> None:
    """Every library but glibc resolves inside the layer; nothing is 'not found'."""
    elves = sorted((layer / "bin").iterdir()) + sorted((layer / "lib").iterdir())
    assert len(elves) > len(TOOLS)
    for elf in elves:
        out = subprocess.run(
            ["ldd", str(elf)], capture_output=True, text=True, env={"LD_LIBRARY_PATH": str(layer / "lib")}, check=True
        )
        assert "not found" not in out.stdout, f"{elf.name}: {out.stdout}"
        for line in out.stdout.splitlines():
            name, _, rest = line.strip().partition(" => ")
            if not rest or name in GLIBC_SONAMES:
                continue
            path = rest.split(" (")[0]
            assert path.startswith(str(layer / "lib") + "/"), f"{elf.name} takes {name} from {path}"


def test_layer_runs_on_lambda_glibc(layer: Path) -> None:
    """No file needs a glibc symbol newer than Amazon Linux 2023's 2.34 (what makes them run on Lambda)."""
    for elf in sorted((layer / "bin").iterdir()) + sorted((layer / "lib").iterdir()):
        data = elf.read_bytes()
        assert b"GLIBC_PRIVATE" not in data, elf.name
        versions = {tuple(int(p) for p in m.split(b".")[:2]) for m in re.findall(rb"GLIBC_(\d+\.\d+)", data)}
        assert versions, f"{elf.name} references no glibc version at all?"
        assert max(versions) <= LAMBDA_GLIBC, f"{elf.name} needs GLIBC_{'.'.join(map(str, max(versions)))}"


def test_libpq_has_tls(layer: Path, pg: PgCluster) -> None:
    """A client built without OpenSSL rejects sslmode=require outright; ours asks the server for TLS."""
    env = _layer_env(pg, PGSSLMODE="require", PGCONNECT_TIMEOUT="10")
    out = _run_any("psql", ["-X", "--no-password", "-c", "SELECT 1"], env)
    assert out.returncode != 0
    assert "server does not support SSL" in out.stderr, out.stderr


def test_dump_and_restore(layer: Path, pg: PgCluster) -> None:
    _round_trip(pg, _layer_env(pg))


def test_dumpall_globals(layer: Path, pg: PgCluster) -> None:
    out = _run("pg_dumpall", ["--globals-only", "--no-password"], _layer_env(pg))
    assert "-- PostgreSQL database cluster dump" in out.stdout


def test_dump_and_restore_tls_verify_full(layer: Path, tls_pg: PgCluster) -> None:
    env = _layer_env(tls_pg, PGSSLMODE="verify-full", PGSSLROOTCERT=str(tls_pg.ca_file))
    ssl = _run(
        "psql",
        ["-X", "-At", "--no-password", "-c", "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
        env,
    )
    assert ssl.stdout.strip().startswith("t|TLSv1."), ssl.stdout
    _round_trip(tls_pg, env)


def test_dump_tls_require(layer: Path, tls_pg: PgCluster) -> None:
    env = _layer_env(tls_pg, PGSSLMODE="require", PGSSLROOTCERT="/nonexistent/root.crt")
    _round_trip(tls_pg, env)


def test_verify_full_rejects_an_unknown_ca(layer: Path, tls_pg: PgCluster, tmp_path: Path) -> None:
    """verify-full really checks the chain: a different self-signed CA is refused."""
    other_ca = tmp_path / "other-ca.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-x509",
            "-days",
            "1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(tmp_path / "other.key"),
            "-out",
            str(other_ca),
        ],
        check=True,
        capture_output=True,
    )
    env = _layer_env(tls_pg, PGSSLMODE="verify-full", PGSSLROOTCERT=str(other_ca), PGCONNECT_TIMEOUT="10")
    out = _run_any("pg_dump", ["--no-password", "-d", "postgres", "--schema-only"], env)
    assert out.returncode != 0
    assert "certificate verify failed" in out.stderr, out.stderr
    assert tls_pg.password not in out.stderr


def test_password_only_travels_in_the_environment(layer: Path, pg: PgCluster) -> None:
    """Without PGPASSWORD the same invocation fails: the tests above really authenticated via env."""
    env = {k: v for k, v in _layer_env(pg).items() if k != "PGPASSWORD"}
    env["PGPASSFILE"] = os.devnull
    out = _run_any("pg_dump", ["--no-password", "-d", "postgres", "--schema-only"], env)
    assert out.returncode != 0
    assert "password" in out.stderr
