"""Real throwaway servers for the tests and the demo: a PostgreSQL cluster and an S3-compatible server.

Both listen on 127.0.0.1 only and are stopped by whoever started them. PostgreSQL refuses to run as
root, so when we are root the cluster runs as the `postgres` system user through `runuser`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: A password with every character that tends to break naive URL handling.
HOSTILE_PASSWORD = "p@ss:w/rd%,|é #?&="


def free_port() -> int:
    """Ask the kernel for a free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def postgres_bindir() -> Path:
    """The newest installed server binaries: /usr/lib/postgresql/*/bin, else `pg_config --bindir`."""
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        path = Path(out.stdout.strip())
        if (path / "initdb").exists():
            return path
    raise RuntimeError("no PostgreSQL server binaries found: apt-get install postgresql")


def _as_server_user() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class PgCluster:
    """A throwaway PostgreSQL cluster with password authentication over TCP."""

    root: Path
    port: int = 0
    password: str = HOSTILE_PASSWORD
    user: str = "postgres"
    ssl: bool = False
    bindir: Path = field(default_factory=postgres_bindir)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "sock"

    def url(self, database: str = "postgres", **query: str) -> str:
        """A postgres:// URL with the password percent-encoded."""
        user = urllib.parse.quote(self.user, safe="")
        pw = urllib.parse.quote(self.password, safe="")
        db = urllib.parse.quote(database, safe="")
        qs = ("?" + urllib.parse.urlencode(query)) if query else ""
        return f"postgresql://{user}:{pw}@127.0.0.1:{self.port}/{db}{qs}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGHOST="127.0.0.1", PGPORT=str(self.port), PGUSER=self.user, PGPASSWORD=self.password)
        return env

    def start(self) -> PgCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.sockdir.mkdir(exist_ok=True)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockdir, "postgres")
            shutil.chown(pwfile, "postgres")
        run = _as_server_user()
        subprocess.run(
            [*run, str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.user, "-E", "UTF8",
             "--locale=C.UTF-8", "--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={pwfile}"],
            check=True, capture_output=True,
        )
        pwfile.unlink()
        if self.ssl:
            self._make_certificate()
        chosen = self.port is None or self.port == 0
        self.port = self.port or free_port()
        for attempt in range(3):
            opts = [
                "-c listen_addresses=127.0.0.1", f"-p {self.port}", f"-k {self.sockdir}", "-c fsync=off",
                "-c full_page_writes=off", "-c synchronous_commit=off", "-c max_connections=50",
            ]
            if self.ssl:
                opts += ["-c ssl=on", "-c ssl_cert_file=server.crt", "-c ssl_key_file=server.key"]
            started = subprocess.run(
                [*run, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.root / "server.log"),
                 "-o", " ".join(opts), "-w", "-t", "60", "start"],
                capture_output=True, check=False,
            )
            if started.returncode == 0:
                return self
            # The port found free was taken before the server bound it (another suite, another worker).
            if not chosen or attempt == 2:
                started.check_returncode()
            self.port = free_port()
        return self

    def _make_certificate(self) -> None:
        crt, key = self.datadir / "server.crt", self.datadir / "server.key"
        subprocess.run(
            ["openssl", "req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(crt)],
            check=True, capture_output=True,
        )
        os.chmod(key, 0o600)
        if os.geteuid() == 0:
            shutil.chown(crt, "postgres")
            shutil.chown(key, "postgres")
        shutil.copy(crt, self.root / "ca.crt")

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.crt"

    def stop(self) -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        subprocess.run(
            [*_as_server_user(), str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate",
             "-w", "stop"],
            capture_output=True, check=False,
        )

    def psql(self, sql: str, database: str = "postgres", *, check: bool = True) -> str:
        """Run SQL with the cluster's own psql; returns unaligned tuples-only output."""
        out = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql],
            capture_output=True, text=True, env=self.env(), check=False,
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"psql failed on {database!r}: {out.stderr}")
        return out.stdout.strip()

    def create_database(self, name: str) -> None:
        quoted = '"' + name.replace('"', '""') + '"'
        self.psql(f"CREATE DATABASE {quoted}")

    @contextlib.contextmanager
    def temporary_database(self, name: str, sql: str | None = None) -> Iterator[str]:
        """A fresh database (dropped first if a failed run left it), seeded with ``sql``, dropped after."""
        self.drop_database(name)
        self.create_database(name)
        try:
            if sql:
                self.psql(sql, name)
            yield name
        finally:
            self.drop_database(name)

    def drop_database(self, name: str) -> None:
        quoted = '"' + name.replace('"', '""') + '"'
        self.psql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")

    def databases(self) -> list[str]:
        out = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-At", "-0", "-d", "postgres", "-c",
             "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1"],
            capture_output=True, text=True, env=self.env(), check=True,
        )
        return [d for d in out.stdout.split("\0") if d.strip("\n")]


@dataclass
class S3Server:
    """moto in server mode, as a separate process: a real HTTP S3 endpoint on 127.0.0.1."""

    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    access_key: str = "testing-access-key"
    secret_key: str = "testing-secret-key/with+chars"
    region: str = "us-east-1"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        chosen = not self.port
        env = dict(os.environ, MOTO_ALLOW_NONEXISTENT_REGION="true")
        for _attempt in range(3):
            self.port = self.port or free_port()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
            )
            wait_for_port(self.port)
            if self.proc.poll() is None or not chosen:
                return self
            self.port = 0  # it could not bind the port found free (taken meanwhile): another one
        raise RuntimeError("moto server: no free port could be bound")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def env(self) -> dict[str, str]:
        """The global S3 settings a user would put in .env for a MinIO-style server."""
        return {
            "S3_ENDPOINT": self.endpoint,
            "S3_ACCESS_KEY": self.access_key,
            "S3_SECRET_KEY": self.secret_key,
            "S3_REGION": self.region,
            "S3_FORCE_PATH_STYLE": "true",
        }


@contextlib.contextmanager
def running(servers: Sequence[PgCluster | S3Server]) -> Iterator[None]:
    started: list[PgCluster | S3Server] = []
    try:
        for s in servers:
            s.start()
            started.append(s)
        yield
    finally:
        for s in reversed(started):
            s.stop()


def temp_root(prefix: str = "pgbkp-") -> Path:
    """A temp directory the postgres system user can traverse."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


def ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False
