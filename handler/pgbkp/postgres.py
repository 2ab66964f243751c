"""PostgreSQL client tools as subprocesses: list databases, stream pg_dump, feed psql.

This is the only module that starts processes. The password reaches libpq through PGPASSWORD in the
child's environment; argv carries only a conninfo string without it, so `ps` never shows a secret.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pgbkp.config import PgTarget
from pgbkp.redact import redact

PIPE_SIZE = 1 << 20
#: Seconds pg_dump may wait for its table locks before it gives up (PG_LOCK_WAIT_TIMEOUT_SECONDS).
DEFAULT_LOCK_WAIT_TIMEOUT = 300
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class PostgresError(Exception):
    """A PostgreSQL tool failed; the message names the operation and the server (never the password)."""


class ConnectError(PostgresError):
    """The server could not be reached or refused the login."""


class DumpError(PostgresError):
    """pg_dump failed, was killed or lost its server: the dump is incomplete and must not be kept."""


class RestrictedCommandError(PostgresError):
    """psql refused a backslash command in a restore's input (it runs under ``\\restrict``); nothing ran.

    ``line`` is the line of the caller's SQL (1-based), for a message that can show it."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class DatabaseInfo:
    """One database as listed. ``size`` is 0 and ``can_connect`` False when the user lacks CONNECT on it
    (its size cannot be read, and pg_dump could not connect either)."""

    name: str
    size: int
    can_connect: bool = True


@dataclass(frozen=True)
class ServerInfo:
    version: str
    version_num: int


def tool(name: str, bindir: Path | None = None) -> str:
    """Path of a client tool: PG_BIN_DIR first, then PATH, then the newest /usr/lib/postgresql."""
    if bindir is not None:
        return str(bindir / name)
    found = shutil.which(name)
    if found:
        return found
    for cand in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(cand)
    raise PostgresError(f"{name} not found. Fix: install the PostgreSQL client, or set PG_BIN_DIR.")


def _env(target: PgTarget) -> dict[str, str]:
    """The child's environment: ours without any PG* variable that could redirect it, plus the target's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(target.env())
    return env


@dataclass(frozen=True)
class RestoreTarget(PgTarget):
    """A server that restore or verify writes to, with where its login comes from: a failed login's Fix
    must name --target-url or PGPASSWORD there, not PG_URLS as for the servers that are backed up."""

    login_fix: str = "Fix: check the user and password in PG_URLS."


def explain(stderr: str, target: PgTarget, operation: str) -> str:
    """Turn libpq's error text into one line that says what to fix."""
    text = redact(stderr.strip())
    where = f"{operation} {target.display}"
    if "password authentication failed" in text or "no password supplied" in text:
        fix = target.login_fix if isinstance(target, RestoreTarget) else RestoreTarget.login_fix
        failed = "no password was given" if "no password supplied" in text else "password authentication failed"
        return f"{where}: {failed} for user {target.user!r}. {fix}"
    if "server version mismatch" in text:
        return f"{where}: {_last_line(text)}. Fix: use a pg_dump at least as new as the server (PG_BIN_DIR)."
    if re.search(r"could not translate host name|Connection refused|timeout expired|No route to host|"
                 r"Network is unreachable|could not connect", text):
        return f"{where}: cannot reach the server ({_last_line(text)}). Fix: check host, port and network access."
    if re.search(r'database ".*" does not exist', text):
        return f"{where}: {_last_line(text)}. Fix: check the database name in the URL."
    return f"{where}: {_last_line(text) or 'failed with no message'}"


def _last_line(text: str) -> str:
    """The first line that states the error (psql prefixes them: ``psql:<stdin>:12: ERROR: ...``),
    else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if re.search(r"(^|: )(pg_dump: error:|psql: error:|FATAL:|ERROR:)", ln):
            return ln
    return lines[-1] if lines else ""


def run_sql(target: PgTarget, sql: str, *, database: str | None = None, bindir: Path | None = None,
            operation: str = "query") -> list[list[str]]:
    """Run one statement with psql and return its rows (fields split on the unit separator)."""
    cmd = [tool("psql", bindir), "-X", "-q", "-At", "-F", "\x1f", "-R", "\x1e", "-v", "ON_ERROR_STOP=1",
           "-d", target.conninfo(database), "-c", sql]
    out = subprocess.run(cmd, capture_output=True, env=_env(target), check=False)
    if out.returncode != 0:
        err = out.stderr.decode("utf-8", "replace")
        connect = re.search(r"connection to server|password authentication failed|no password supplied", err)
        kind = ConnectError if connect else PostgresError
        raise kind(explain(err, target, operation))
    rows = out.stdout.decode("utf-8").removesuffix("\n").split("\x1e")
    return [r.split("\x1f") for r in rows if r != ""]


def list_databases(target: PgTarget, *, bindir: Path | None = None,
                   sizes: bool = False) -> tuple[ServerInfo, list[DatabaseInfo]]:
    """Databases that are not templates and allow connections, plus the server version; with ``sizes``,
    each one's size on disk (else 0).

    Sizes only when asked: pg_database_size() walks every file of the database, 0.2 s for 200 databases,
    and only a Lambda time budget, a dry run and a progress bar use the estimate (issue 17). Names travel
    hex-encoded, so any character (newlines included) survives the trip through psql. The size is read
    only where the user has CONNECT: pg_database_size() raises on the others, and one such database must
    not make the whole connection unlistable.
    """
    size = "CASE WHEN has_database_privilege(oid, 'CONNECT') THEN pg_database_size(oid) END" if sizes else "NULL"
    rows = run_sql(
        target,
        "SELECT encode(convert_to(datname, 'UTF8'), 'hex'), has_database_privilege(oid, 'CONNECT'), "  # noqa: S608
        f"{size}, current_setting('server_version'), current_setting('server_version_num') "  # (one of 2 constants)
        "FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY datname",
        bindir=bindir,
        operation="list databases on",
    )
    if not rows:
        return ServerInfo("", 0), []
    server = ServerInfo(rows[0][3], int(rows[0][4]))
    return server, [DatabaseInfo(bytes.fromhex(r[0]).decode("utf-8"), int(r[2] or 0), r[1] == "t") for r in rows]


def client_version(name: str = "pg_dump", bindir: Path | None = None) -> str:
    """``pg_dump --version`` without the program name, e.g. ``15.18 (Debian 15.18-0+deb12u1)``."""
    out = subprocess.run([tool(name, bindir), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip().split(") ", 1)[-1] if ") " in out.stdout else out.stdout.strip()


def _spawn(cmd: list[str], target: PgTarget, *, feed: bool,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a client tool in its own process group, streaming through a 1 MiB pipe: we write its stdin
    (``feed``) or read its stdout. Big pipes mean few wake-ups for the Python side."""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if feed else subprocess.PIPE, stderr=subprocess.PIPE,
        env=_env(target) if env is None else env, bufsize=0, start_new_session=True,
    )
    stream = proc.stdin if feed else proc.stdout
    if stream is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(stream.fileno(), _F_SETPIPE_SZ, PIPE_SIZE)
    return proc


def exit_status(code: int) -> str:
    """How a child ended, naming a signal once: ``killed by signal 9 (SIGKILL)``, or ``exit code 137
    (killed by signal 9, SIGKILL)`` when a wrapper or shell between us and the tool reports the signal
    as 128 + its number."""
    def name(number: int) -> str:
        try:
            return signal.Signals(number).name
        except ValueError:
            return "unknown signal"

    if code < 0:
        return f"killed by signal {-code} ({name(-code)})"
    if 128 < code <= 128 + 64:
        return f"exit code {code} (killed by signal {code - 128}, {name(code - 128)})"
    return f"exit code {code}"


class _StderrTail:
    """Drain a child's stderr on a thread (so it can never block on a full pipe), keeping the tail."""

    #: A line kept is cut here: psql echoes hostile SQL (``syntax error at or near "AAAA…"``), and one
    #: error must stay one readable line, not megabytes.
    LONGEST = 1000

    def __init__(self, stream: IO[bytes]) -> None:
        self._lines: collections.deque[bytes] = collections.deque(maxlen=50)
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        cutting = False  # inside a line already cut: drop the rest of it
        while piece := stream.readline(self.LONGEST):
            whole = piece.endswith(b"\n")
            if not cutting:
                self._lines.append(piece if whole else piece + " …(cut)\n".encode())
            cutting = not whole

    def join(self) -> None:
        self._thread.join(5)

    def text(self) -> str:
        self.join()
        return b"".join(self._lines).decode("utf-8", "replace")


class DumpStream:
    """pg_dump's stdout as a readable stream that *raises* instead of ending when the dump fails.

    A reader that simply saw EOF would upload a truncated dump as if it were whole: read() only
    returns b"" once pg_dump has exited 0.
    """

    def __init__(self, target: PgTarget, database: str, *, bindir: Path | None = None,
                 extra_args: Sequence[str] = (), stop: Callable[[], bool] | None = None,
                 lock_wait_timeout: int | None = DEFAULT_LOCK_WAIT_TIMEOUT) -> None:
        self.database = database
        self._target = target
        self._stop = stop
        self._lock_wait_timeout = lock_wait_timeout
        # Milliseconds: the one form of the value every server version accepts.
        lock = [f"--lock-wait-timeout={lock_wait_timeout * 1000}"] if lock_wait_timeout else []
        cmd = self._command(target, database, bindir, [*lock, *extra_args])
        self._what = self._label(database)
        self._proc = _spawn(cmd, target, feed=False)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._fd = self._proc.stdout.fileno()
        self._stderr = _StderrTail(self._proc.stderr)
        self._done = False
        self.bytes_read = 0

    def _command(self, target: PgTarget, database: str, bindir: Path | None, extra: list[str]) -> list[str]:
        return [tool("pg_dump", bindir), "-F", "p", "--no-password", *extra, "-d", target.conninfo(database)]

    def _label(self, database: str) -> str:
        """What the messages call this dump."""
        return f"pg_dump {database!r}"

    @property
    def pid(self) -> int:
        return self._proc.pid

    def read(self, size: int = 1 << 20) -> bytes:
        """Up to ``size`` bytes, gathering several pipe reads so callers wake up rarely."""
        if self._done:
            return b""
        chunks: list[bytes] = []
        got = 0
        while got < size:
            if self._stop is not None:
                self._wait_readable()
            chunk = os.read(self._fd, min(size - got, PIPE_SIZE))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got == 0:
            self._finish()
            return b""
        self.bytes_read += got
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _wait_readable(self) -> None:
        """Block until pg_dump writes (or exits), checking ``stop`` every second: a dump stalled on a
        lock must still honour a shutdown or a time limit."""
        while not select.select([self._fd], [], [], 1.0)[0]:
            if self._stop is not None and self._stop():
                self.kill()
                self._done = True
                raise DumpError(f"{self._what} from {self._target.display}: stopped while "
                                "waiting for its output (shutdown or time limit); the dump is incomplete")

    def _finish(self) -> None:
        code = self._proc.wait()
        self._done = True
        if code != 0:
            err = self._stderr.text()
            operation = f"{self._what} from"
            how = exit_status(code)
            if not err.strip():
                raise DumpError(f"{operation} {self._target.display}: {how}; the dump is incomplete")
            detail = self._lock_wait_failure(err, operation) or explain(err, self._target, operation)
            raise DumpError(f"{detail} ({how}); the dump is incomplete")

    def _lock_wait_failure(self, stderr: str, operation: str) -> str | None:
        """pg_dump gave up waiting for its table locks (--lock-wait-timeout): name the tables and the fix."""
        if "canceling statement due to statement timeout" not in stderr:
            return None
        m = re.search(r"Query was: LOCK TABLE (.+?) IN ACCESS SHARE MODE", stderr)
        if m is None:
            return None
        tables = m[1].split(", ")
        shown = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")
        return (f"{operation} {self._target.display}: waited {self._lock_wait_timeout} s for a lock on "
                f"{'table' if len(tables) == 1 else 'one of the tables'} {redact(shown)}: another session "
                "holds a conflicting lock (ALTER TABLE, TRUNCATE, VACUUM FULL, LOCK TABLE...). Fix: find it in "
                "pg_locks / pg_stat_activity and let it finish, or raise PG_LOCK_WAIT_TIMEOUT_SECONDS")

    def kill(self) -> None:
        """Stop pg_dump now (used when the upload side fails or time runs out)."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()

    def close(self) -> None:
        if not self._done:
            self.kill()
        self._stderr.join()
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> DumpStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: What a server says when the backup user may not read role passwords (managed servers: RDS, Cloud SQL,
#: Azure); PostgreSQL 10 and older say "relation" where newer ones say "table".
_AUTHID_DENIED = re.compile(r"permission denied for (?:table|relation) pg_authid")
#: pg_dumpall reads pg_authid before it writes any role: a failure for that shows within its header.
GLOBALS_HOLD = 64 << 10


class GlobalsDumpStream(DumpStream):
    """``pg_dumpall --globals-only``: roles, memberships, role settings and tablespaces of the server.

    It connects to the URL's own database (``-l``), the one the user said pg-bkp may connect to."""

    def __init__(self, target: PgTarget, *, bindir: Path | None = None, stop: Callable[[], bool] | None = None,
                 no_role_passwords: bool = False) -> None:
        self.no_role_passwords = no_role_passwords
        super().__init__(target, target.database, bindir=bindir, stop=stop, lock_wait_timeout=None)

    def _command(self, target: PgTarget, database: str, bindir: Path | None, extra: list[str]) -> list[str]:
        flags = ["--no-role-passwords"] if self.no_role_passwords else []
        return [tool("pg_dumpall", bindir), "--globals-only", "--no-password", *flags, "-l", database,
                "-d", target.conninfo(database)]

    def _label(self, database: str) -> str:
        return "pg_dumpall --globals-only" + (" --no-role-passwords" if self.no_role_passwords else "")


class GlobalsDump:
    """The globals dump, with the managed-server fallback: when the user may not read ``pg_authid``,
    pg_dumpall runs again with ``--no-role-passwords``, and :attr:`note` says the passwords were left out.

    The first attempt's output is held back (up to GLOBALS_HOLD bytes) until it is known to have got past
    pg_authid, so a reader never sees the start of one attempt and the rest of another. ``read`` raises
    DumpError as DumpStream's does."""

    NO_PASSWORDS = ("role passwords left out: the backup user may not read pg_authid (a managed server?), so "
                    "pg_dumpall ran with --no-role-passwords; set the passwords again after a restore")

    def __init__(self, target: PgTarget, *, bindir: Path | None = None,
                 stop: Callable[[], bool] | None = None) -> None:
        self._target, self._bindir, self._stop = target, bindir, stop
        self._stream: GlobalsDumpStream = GlobalsDumpStream(target, bindir=bindir, stop=stop)
        self._held: bytes | None = None
        self.note: str | None = None

    def _hold(self) -> bytes:
        """The first attempt's start, or the whole of it; starts the fallback on pg_authid's refusal."""
        parts: list[bytes] = []
        got = 0
        try:
            while got < GLOBALS_HOLD and (chunk := self._stream.read(GLOBALS_HOLD - got)):
                parts.append(chunk)
                got += len(chunk)
        except DumpError as exc:
            if not _AUTHID_DENIED.search(str(exc)):
                raise
            self._stream.close()
            self._stream = GlobalsDumpStream(self._target, bindir=self._bindir, stop=self._stop,
                                             no_role_passwords=True)
            self.note = self.NO_PASSWORDS
            return b""
        return b"".join(parts)

    def read(self, size: int = 1 << 20) -> bytes:
        if self._held is None:
            self._held = self._hold()
        if self._held:
            piece, self._held = self._held[:size], self._held[size:]
            return piece
        return self._stream.read(size)

    def kill(self) -> None:
        self._stream.kill()

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> GlobalsDump:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def dump(target: PgTarget, database: str, *, bindir: Path | None = None) -> Iterator[DumpStream]:
    stream = DumpStream(target, database, bindir=bindir)
    try:
        yield stream
    finally:
        stream.close()


# --------------------------------------------------------------------------------------------------
# Restore side: feed psql, make and check target databases.


def quote_ident(name: str) -> str:
    """A SQL identifier for any database name (quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings, on since 9.1)."""
    return "'" + value.replace("'", "''") + "'"


def psql_version(bindir: Path | None = None) -> tuple[int, int]:
    """(major, minor) of the psql in use; a development build such as ``18beta1`` gives (18, 0)."""
    try:
        text = client_version("psql", bindir)
    except (OSError, subprocess.CalledProcessError) as exc:
        where = f"in PG_BIN_DIR ({bindir})" if bindir else "on PATH"
        raise PostgresError(f"psql --version: no working psql {where} ({exc}). Fix: install the PostgreSQL "
                            "client, or point PG_BIN_DIR at a bin folder that has psql.") from None
    m = re.match(r"(\d+)(?:\.(\d+))?", text)
    if not m:
        raise PostgresError(f"psql --version: cannot read the version from {text!r}")
    return int(m[1]), int(m[2] or 0)


def database_exists(target: PgTarget, database: str, *, bindir: Path | None = None) -> bool:
    """Ask the maintenance database ``postgres`` on the target's server (the target itself may not exist)."""
    sql = f"SELECT 1 FROM pg_database WHERE datname = {quote_literal(database)}"  # noqa: S608 - quoted
    rows = run_sql(target, sql,
                   database="postgres", bindir=bindir, operation="look for the database on")
    return bool(rows)


def role_names(target: PgTarget, *, bindir: Path | None = None) -> set[str]:
    """Every role on the target's server (hex-encoded on the way, so any name survives psql)."""
    rows = run_sql(target, "SELECT encode(convert_to(rolname, 'UTF8'), 'hex') FROM pg_roles", bindir=bindir,
                   operation="list the roles on")
    return {bytes.fromhex(r[0]).decode("utf-8") for r in rows}


def create_database(target: PgTarget, database: str, *, bindir: Path | None = None) -> None:
    """CREATE DATABASE from template0, as pg_dump's output expects: template1 may hold local additions."""
    run_sql(target, f"CREATE DATABASE {quote_ident(database)} TEMPLATE template0", database="postgres",
            bindir=bindir, operation=f"create database {database!r} on")


def server_version_num(target: PgTarget, *, bindir: Path | None = None) -> int:
    """The server's version as a number, e.g. 150018 for 15.18."""
    rows = run_sql(target, "SHOW server_version_num", database="postgres", bindir=bindir,
                   operation="read the version of")
    return int(rows[0][0])


def drop_database(target: PgTarget, database: str, *, bindir: Path | None = None) -> None:
    """DROP DATABASE IF EXISTS; WITH (FORCE) on 13+ so a session killed a moment ago cannot block it."""
    force = " WITH (FORCE)" if server_version_num(target, bindir=bindir) >= 130000 else ""
    run_sql(target, f"DROP DATABASE IF EXISTS {quote_ident(database)}{force}", database="postgres",
            bindir=bindir, operation=f"drop database {database!r} on")


_USER_SCHEMAS = ("n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' "
                 "AND n.nspname NOT LIKE 'pg\\_temp\\_%'")
_CONTENTS_SQL = f"""SELECT
 (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_SCHEMAS}),
 (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_USER_SCHEMAS}),
 (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
   WHERE {_USER_SCHEMAS} AND t.typrelid = 0 AND t.typelem = 0 AND t.typtype <> 'm'),
 (SELECT count(*) FROM pg_namespace n WHERE {_USER_SCHEMAS} AND n.nspname <> 'public'),
 (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql'),
 (SELECT count(*) FROM pg_largeobject_metadata)"""  # noqa: S608 - built from constants only
_CONTENT_KINDS = ("relations", "functions", "types", "schemas", "extensions", "large objects")


def database_contents(target: PgTarget, database: str, *, bindir: Path | None = None) -> dict[str, int]:
    """What a restore could collide with: user objects outside the system schemas (non-zero counts only)."""
    rows = run_sql(target, _CONTENTS_SQL, database=database, bindir=bindir,
                   operation=f"inspect database {database!r} on")
    return {kind: int(n) for kind, n in zip(_CONTENT_KINDS, rows[0], strict=True) if int(n)}


def database_is_empty(target: PgTarget, database: str, *, bindir: Path | None = None) -> bool:
    return not database_contents(target, database, bindir=bindir)


#: psql's own words when ``\restrict`` stops a backslash command (messages forced to English, see below).
_RESTRICTED = re.compile(r"^psql:<stdin>:(\d+): error: (?:backslash commands are restricted|\\unrestrict: wrong key)",
                         re.MULTILINE)


class RestoreSession:
    """psql reading a dump from its stdin inside ONE transaction that commits only on :meth:`commit`.

    ``-1 -f -`` makes psql send BEGIN first and COMMIT only after stdin ends, with ON_ERROR_STOP so the
    first error stops it. Killing psql before stdin ends drops the connection, and the server rolls the
    whole transaction back: the target is left exactly as it was.

    The first line psql reads is ``\\restrict <random key>``, so psql runs NO backslash command from what
    follows (``\\!`` would run a shell, ``\\o |cmd`` a pipe, ``\\copy`` write files): it stops on the first
    one, with ON_ERROR_STOP, and the key is never written anywhere a dump could learn it. psql learnt
    ``\\restrict`` in 18, 17.6, 16.10, 15.14, 14.19 and 13.22: callers must refuse older ones.
    """

    def __init__(self, target: PgTarget, database: str, *, bindir: Path | None = None) -> None:
        self.database = database
        self._target = target
        cmd = [tool("psql", bindir), "-X", "-q", "--no-password", "--single-transaction", "-v", "ON_ERROR_STOP=1",
               "-f", "-", "-d", target.conninfo(database)]
        env = _env(target)
        if "LC_ALL" in env:  # keep its character set, but let LC_MESSAGES below decide the language
            env.setdefault("LC_CTYPE", env.pop("LC_ALL"))
        env.pop("LANGUAGE", None)
        env["LC_MESSAGES"] = "C"  # psql's own messages in English, which _failure() recognises
        self._proc = _spawn(cmd, target, feed=True, env=env)
        assert self._proc.stdin is not None and self._proc.stderr is not None
        self._stdin = self._proc.stdin
        self._stderr = _StderrTail(self._proc.stderr)
        self._done = False
        self.bytes_written = 0
        with contextlib.suppress(BrokenPipeError):  # psql already gone: the first write or commit says why
            self._stdin.write(f"\\restrict {secrets.token_hex(32)}\n".encode())

    def _failure(self, code: int) -> PostgresError:
        err = self._stderr.text()
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        operation = f"restore into database {self.database!r} on"
        if not err.strip():
            return PostgresError(f"{operation} {self._target.display}: psql stopped ({how})")
        refused = _RESTRICTED.search(err)
        if refused:  # psql counts our \restrict line as its line 1
            line = int(refused[1]) - 1
            return RestrictedCommandError(f"{operation} {self._target.display}: psql refused the backslash "
                                          f"command on line {line} ({how}); nothing was committed", line)
        kind = ConnectError if "connection to server" in err and self.bytes_written == 0 else PostgresError
        return kind(f"{explain(err, self._target, operation)} ({how}); nothing was committed")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send SQL; raises PostgresError with psql's message as soon as psql has stopped on an error."""
        try:
            self._stdin.write(data)
        except (BrokenPipeError, ValueError):
            self._done = True
            raise self._failure(self._proc.wait()) from None
        self.bytes_written += len(data)

    def commit(self) -> None:
        """End stdin (psql sends COMMIT) and wait; raises PostgresError unless psql exits 0."""
        if self._done:
            raise PostgresError(f"restore into database {self.database!r}: commit after the session ended")
        self._done = True
        with contextlib.suppress(BrokenPipeError):
            self._stdin.close()
        code = self._proc.wait()
        if code != 0:
            raise self._failure(code)

    def abort(self) -> None:
        """Kill psql without ending stdin: the server sees the connection drop and rolls back."""
        self._done = True
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        with contextlib.suppress(OSError):
            self._stdin.close()

    def close(self) -> None:
        """Abort unless committed, and release the pipes."""
        if not self._done:
            self.abort()
        self._stderr.text()  # psql has exited: let the drain thread reach EOF before its pipe closes
        if self._proc.stderr is not None:
            self._proc.stderr.close()

    def __enter__(self) -> RestoreSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_STATS_SQL = f"""SELECT
 (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p') AND {_USER_SCHEMAS}),
 (SELECT coalesce(sum((xpath('/row/n/text()', query_to_xml(
     format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint), 0)
   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND {_USER_SCHEMAS}),
 pg_database_size(current_database())"""  # noqa: S608 - built from constants only


@dataclass(frozen=True)
class DatabaseStats:
    tables: int
    rows: int
    size: int


def database_stats(target: PgTarget, database: str, *, bindir: Path | None = None) -> DatabaseStats:
    """Tables (partitioned parents included), exact row count (partitions counted once) and size on disk.

    Rows are counted with count(*) rather than read from statistics, which lag or are estimates."""
    rows = run_sql(target, _STATS_SQL, database=database, bindir=bindir,
                   operation=f"count the rows of database {database!r} on")
    tables, total, size = (int(x) for x in rows[0])
    return DatabaseStats(tables, total, size)
