"""Find, restore and verify backups: object -> ZIP reader -> psql, committed only once proven intact.

The object is read front to back from ONE streaming GET. Every byte is hashed on its way to the ZIP
reader, which inflates (and decrypts) the single member and feeds it to a psql that runs the whole
dump inside one transaction. Nothing is committed until the end: the ZIP reader has checked the CRC
or the AES authentication code and the central directory, and the object's SHA-256 matches the
``sha256`` written at backup time. Any failure kills psql, and the server rolls the transaction
back. psql runs under its own ``\\restrict`` key, so no psql command hidden in a backup can run (see
DumpFilter). See docs/restore.md for why this design (one GET, bounded memory, no temporary file).

Every function takes the ``storage`` to read from: the caller (restore_cli, handler_core's edge) builds
it, so this module never knows which store it is.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pgbkp import integrity, keys, postgres, roles
from pgbkp.archive import ArchiveError, CorruptArchiveError, MemberReader, WrongPasswordError
from pgbkp.archive.agecrypt import (
    AgeKeyError,
    AgeNoIdentityError,
    AgeReader,
    Identity,
    parse_identities,
    read_identity_file,
)
from pgbkp.config import Config, ConfigError, Connection, PgTarget, parse_url, setting
from pgbkp.redact import Secret, redact
from pgbkp.storage import Download, Storage, StorageError

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
#: psql learnt ``\restrict`` in these minor releases (August 2025); every 18 has it.
RESTRICT_SINCE = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}
#: pg_dump 17+ writes this into the header of every dump, whatever the source server; servers before 17
#: reject the setting, which ON_ERROR_STOP turns into a failed restore.
_TRANSACTION_TIMEOUT = re.compile(rb"^SET transaction_timeout = 0;\n", re.MULTILINE)
HEADER_BYTES = 65536


def adapt_header(first: bytes, server_version_num: int) -> bytes:
    """Drop the header's ``SET transaction_timeout`` for a target older than 17, which has no such setting.

    Only the header (first 64 KiB of the dump) is looked at; table data is never rewritten."""
    if server_version_num >= 170000:
        return first
    head, rest = first[:HEADER_BYTES], first[HEADER_BYTES:]
    return _TRANSACTION_TIMEOUT.sub(b"\n", head, count=1) + rest  # a blank line keeps the line numbers


class RestoreError(Exception):
    """A restore or verify failed; the message names the object and the target, and what to fix."""


class NoBackupError(RestoreError):
    """No backup matches the selection."""


class TargetError(RestoreError):
    """The target database is not safe to restore into (exists with --create, missing, not empty)."""


class IntegrityError(RestoreError):
    """The object is not what was stored: SHA-256, size, CRC or authentication code mismatch."""


class RolesExistError(TargetError):
    """A globals restore met roles the target already has (and no --skip-existing)."""


class IdentityError(RestoreError):
    """A ``.zip.age`` backup, and no usable age identity (AGE_IDENTITY_FILE) to open it."""


class GlobalsStatementError(RestoreError):
    """A globals backup holds a statement pg_dumpall never writes (``COMMIT;``, ``DROP ROLE``...): refused
    before it was sent."""


class PsqlTooOldError(RestoreError):
    """The psql in use has no ``\\restrict``, so nothing could stop it running a command hidden in a backup."""


class MetaCommandError(RestoreError):
    """The backup holds a psql meta-command (``\\!`` runs a shell): psql refused it, and nothing ran or was
    committed. ``line`` is its line in the dump, ``text`` that line when it could be shown."""

    def __init__(self, message: str, line: int, text: bytes | None = None) -> None:
        super().__init__(message)
        self.line, self.text = line, text


def shown_line(line: bytes, limit: int = 60) -> str:
    """A line of the dump for a message: control and invisible characters escaped, long lines cut."""
    text = line.rstrip(b"\n").decode("utf-8", "replace")
    cut = text[:limit]
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cut)
    return shown + ("…" if len(text) > limit else "")


@dataclass(frozen=True)
class BackupRef:
    """One stored backup. ``taken`` is the local time (TIMEZONE) written in its file name."""

    connection: str
    database: str
    bucket: str
    key: str
    taken: datetime | None
    size: int = 0
    last_modified: datetime | None = None
    #: "database", or "globals" (the connection's roles and other globals; ``database`` is keys.GLOBALS).
    kind: str = "database"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def format(self) -> str:
        """``zip``, or ``zip.age`` for a ZIP encrypted with age (docs/age.md): what opens it."""
        return "zip.age" if keys.is_age(self.key) else "zip"

    def as_dict(self) -> dict[str, Any]:
        return {
            "connection": self.connection,
            "database": self.database,
            "kind": self.kind,
            "format": self.format,
            "taken": self.taken.isoformat(timespec="minutes") if self.taken else None,
            "size": self.size,
            "bucket": self.bucket,
            "key": self.key,
            "url": self.url,
            "last_modified": self.last_modified.isoformat() if self.last_modified else None,
        }


@dataclass
class RestoreResult:
    backup: BackupRef
    target: str  # user@host:port/db, no password
    object_bytes: int = 0
    sql_bytes: int = 0
    seconds: float = 0.0
    checks: list[str] = field(default_factory=list)
    #: A globals restore: the roles it created, and those it left as they were on the target.
    created_roles: list[str] = field(default_factory=list)
    skipped_roles: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Object bytes per second."""
        return self.object_bytes / self.seconds if self.seconds > 0 else 0.0


@dataclass
class VerifyResult:
    connection: str
    database: str
    status: str = "failed"  # ok | failed
    bucket: str = ""
    key: str = ""
    taken: str | None = None
    scratch_database: str = ""
    scratch_server: str = ""
    #: "database", or "globals" (the connection's roles: ``roles`` counts those in the dump).
    kind: str = "database"
    roles: int = 0
    tables: int = 0
    rows: int = 0
    restored_size: int = 0
    object_bytes: int = 0
    sql_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Finding backups


def _connection(config: Config, connection: Connection | str | int) -> Connection:
    return connection if isinstance(connection, Connection) else config.connection(connection)


def _buckets(conn: Connection) -> list[str]:
    """The connection's bucket and every db_buckets bucket, each once, in a stable order."""
    names = [conn.bucket, *conn.db_buckets.values()]
    return list(dict.fromkeys(b for b in names if b))


def _where(config: Config, conn: Connection, database: str) -> str:
    """Where a database's backups are looked for, for messages."""
    folder = keys.folder(config.global_prefix, conn.base_dir, database)
    return " or ".join(f"s3://{b}/{folder}" for b in _buckets(conn))


def _root(config: Config, conn: Connection) -> str:
    """``{GLOBAL_PREFIX}/{base_dir}/``: the folder holding one folder per database."""
    return keys.folder(config.global_prefix, conn.base_dir, "")


def find_backups(config: Config, connection: Connection | str | int, database: str | None = None, *,
                 storage: Storage, globals_only: bool = False) -> list[BackupRef]:
    """Every backup of the connection (or of one database, or with ``globals_only`` of its globals),
    newest first. The connection's globals backups are among "every backup", not among a database's.

    Only objects in a database's own folder whose file name parses for that database and the
    connection's prefix count: a person's files, other prefixes' files and sub-folders are ignored.
    """
    conn = _connection(config, connection)
    root = _root(config, conn)
    prefix = keys.folder(config.global_prefix, conn.base_dir, database) if database is not None else root
    if globals_only:
        prefix = keys.globals_folder(config.global_prefix, conn.base_dir)
    found: dict[tuple[str, str], BackupRef] = {}
    for bucket in _buckets(conn):
        for obj in storage.list(bucket, prefix):
            parsed = keys.parse_key(obj.key, config.global_prefix, conn.base_dir, conn.prefix)
            is_globals = keys.is_globals_key(obj.key, config.global_prefix, conn.base_dir)
            if parsed is None or (database is not None and (parsed[0] != database or is_globals)):
                continue
            db, taken = parsed
            found[(bucket, obj.key)] = BackupRef(conn.name, db, bucket, obj.key, taken, obj.size,
                                                 obj.last_modified, "globals" if is_globals else "database")
    return sorted(found.values(), key=lambda b: (b.taken or datetime.min, b.key), reverse=True)


def parse_at(text: str, config: Config) -> datetime:
    """``YYYY-MM-DD HH:MM`` (any ISO form) as a naive local time in TIMEZONE, like the file names."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--at {text!r}: not a date and time. Fix: use \"YYYY-MM-DD HH:MM\".") from None
    if when.tzinfo is not None:
        when = when.astimezone(config.timezone).replace(tzinfo=None)
    return when


def parse_key(text: str, conn: Connection, database: str | None) -> tuple[str, str]:
    """``--key``: ``s3://bucket/key``, or a key in the database's (else the connection's) bucket."""
    if text.startswith("s3://"):
        named, _, key = text[5:].partition("/")
        if not named or not key:
            raise ConfigError(f"--key {text!r}: not s3://bucket/key")
        return named, key
    bucket = conn.bucket_for(database) if database else conn.bucket
    if not bucket:
        raise ConfigError(f"--key {text!r}: no bucket known for it. Fix: give s3://bucket/key, or --database.")
    return bucket, text.lstrip("/")


def select_backup(config: Config, connection: Connection | str | int, database: str | None = None, *,
                  at: datetime | None = None, key: str | None = None, storage: Storage,
                  globals_only: bool = False) -> BackupRef:
    """The newest backup (at or before ``at`` if given), or exactly ``key``; with ``globals_only``, of the
    connection's globals (roles), and a ``key`` must then be a globals object."""
    conn = _connection(config, connection)
    if key is not None:
        bucket, object_key = parse_key(key, conn, None if globals_only else database)
        folder, _, name = object_key.rpartition("/")
        is_globals = folder.rsplit("/", 1)[-1] == keys.GLOBALS_SEGMENT
        if globals_only != is_globals:
            raise ConfigError(f"--key {key!r}: " + ("not a globals backup (those are in a folder named "
                              f"{keys.GLOBALS_SEGMENT}). Fix: pick one from pgbkp list, database (globals)."
                              if globals_only else "a globals backup (roles). Fix: add --globals."))
        info = storage.head(bucket, object_key)
        db = keys.GLOBALS if is_globals else database or keys.decode_name(folder.rsplit("/", 1)[-1])
        taken = keys.parse_filename(name, keys.GLOBALS_FILE if is_globals else db, conn.prefix)
        return BackupRef(conn.name, db, bucket, object_key, taken, info.size, info.last_modified,
                         "globals" if is_globals else "database")
    if globals_only:
        database = keys.GLOBALS
    if not database:
        raise ConfigError("restore: which database? Fix: add --database DB (or --key, or --globals).")
    backups = find_backups(config, conn, None if globals_only else database, storage=storage,
                           globals_only=globals_only)
    if not backups:
        where = (" or ".join(f"s3://{b}/{keys.globals_folder(config.global_prefix, conn.base_dir)}"
                             for b in _buckets(conn)) if globals_only else _where(config, conn, database))
        raise NoBackupError(f"find backups of {database!r} ({conn.name}): none in {where}")
    if at is None:
        return backups[0]
    for b in backups:
        if b.taken is not None and b.taken <= at:
            return b
    oldest = backups[-1].taken
    raise NoBackupError(f"find backups of {database!r} ({conn.name}): none at or before {at:%Y-%m-%d %H:%M} "
                        f"(the oldest is from {oldest:%Y-%m-%d %H:%M})")


# --------------------------------------------------------------------------------------------------
# Restoring


def restrict_supported(version: tuple[int, int]) -> bool:
    """Whether psql ``major.minor`` understands the ``\\restrict`` line of newer dumps."""
    major, minor = version
    return major >= 18 or (major in RESTRICT_SINCE and minor >= RESTRICT_SINCE[major])


class DumpFilter:
    r"""The dump on its way to psql: kept in ONE transaction, and fitted to the session's ``\restrict``.

    The session runs psql under its own ``\restrict <random key>`` (see postgres.RestoreSession): psql
    then refuses every backslash command, even one in the middle of a line, and it is the judge of what
    is one (a line may start with a backslash inside a string literal or a function body, in a genuine
    dump). This filter changes only what pg_dump itself writes around that:

    - pg_dump's own key lines, at their places: ``\restrict KEY`` in the header (only comments and
      blank lines before it), and the matching ``\unrestrict KEY``, pg_dump's last line: anything but
      blank lines after it raises MetaCommandError for it (as psql would have refused it). Any other
      key line passes, and psql refuses it;
    - pg_dump wraps each large-object data section in its own ``BEGIN;`` ... ``COMMIT;``. Under
      ``--single-transaction`` that COMMIT would commit everything before it, and run the rest (indexes,
      constraints, grants) in autocommit: a failure or a corrupt archive could then leave a half-restored
      target. It drops exactly that pair: the ``BEGIN;`` after a ``Type: BLOBS`` data header and the next
      ``COMMIT;`` line.

    Nothing inside COPY data is changed: there a row may read ``BEGIN;``, and ``\restrict x`` is a row
    whose text starts with a carriage return. COPY data starts after a line ending in `` FROM stdin;``
    (a table name holding a newline spreads the COPY over several lines after its ``TABLE DATA`` header)
    and ends at a line ``\.`` (or ``\.\r\n``), as psql ends it. Dropped lines become blank lines, so line
    N of the output is line N of the dump, and :meth:`line_text` can show the line psql refused. It works
    on a stream of chunks, holding back only the last incomplete line.
    """

    #: A line that matters: a data header, COPY, BEGIN/COMMIT, or pg_dump's key lines.
    _AT = re.compile(rb"COPY |BEGIN;\n|COMMIT;\n|-- Data for Name: |\\(?:un)?restrict ")
    #: The newline before such a line: a literal first byte, so the search skips along at memchr speed.
    _NEXT = re.compile(rb"\n(?=COPY |BEGIN;\n|COMMIT;\n|-- Data for Name: |\\(?:un)?restrict )")
    #: The first line that is neither blank nor a ``--`` comment: where the dump's header ends.
    _SQL = re.compile(rb"^(?![ \t\r\f\v]*(?:--|$))", re.MULTILINE)
    _KEY_LINE = re.compile(rb"\\(un)?restrict ([A-Za-z0-9]+)\n")
    _NON_BLANK = re.compile(rb"[^ \t\n\r\f\v]")
    _COPY_END = b" FROM stdin;\n"
    #: How much recent output to keep for :meth:`line_text`: psql refuses a line it has read, and what was
    #: sent after it is at most the 1 MiB pipe, psql's small read buffer and the block being written.
    KEEP = 4 << 20
    #: An incomplete line longer than this is passed on before its end when it cannot matter.
    HOLD = 64 << 10
    #: A line that may matter (a COPY or data header) is never this long in a genuine dump.
    LONGEST_LINE = 16 << 20
    _COMMENT = re.compile(rb"[ \t\r\f\v]*--")
    #: What may not follow pg_dump's closing ``\unrestrict``: anything but blank lines.
    _AFTER_END = _NON_BLANK

    def __init__(self) -> None:
        self._carry = b""
        self._passing = False  # inside a long line already judged not to matter, partly sent
        self._in_copy = False
        self._copy_statement = False  # inside a COPY statement that spans lines: data starts after it
        self._table_data = False  # the last data header was TABLE DATA: its COPY may span lines
        self._blobs = 0  # 1: a BLOBS header was seen, 2: inside its BEGIN
        self._header = True  # only comments and blank lines so far: pg_dump's \restrict may come
        self._key: bytes | None = None
        self._closed: tuple[int, bytes] | None = None  # pg_dump's closing \unrestrict: (line, text)
        self._sent = 0  # lines sent so far (as many as were fed: a dropped line is sent as a blank one)
        self._recent: collections.deque[tuple[int, bytes]] = collections.deque()
        self._kept = 0
        self.dropped = 0

    def feed(self, chunk: bytes) -> bytes:
        rest_of_line = b""
        if self._passing:  # the rest of a long line that does not matter: straight through
            end = chunk.find(b"\n")
            if end < 0:
                return self._send(chunk)
            rest_of_line = self._send(chunk[:end + 1])
            chunk, self._passing = chunk[end + 1:], False
        data = self._carry + chunk
        cut = data.rfind(b"\n") + 1
        data, carry = data[:cut], data[cut:]
        self._carry = b""
        out: list[bytes] = []
        self._process(data, out)
        self._hold(carry, out, self._sent + data.count(b"\n") + 1)
        return rest_of_line + self._send(b"".join(out))

    def _hold(self, carry: bytes, out: list[bytes], number: int) -> None:
        """Keep the last, incomplete line until its end, unless it is already known not to matter: then
        it goes on now, and so does the rest of it (a COPY row of a large bytea is one long line; holding
        it would cost memory, and searching it again at every chunk, time)."""
        if len(carry) < self.HOLD or self._closed is not None or self._copy_statement:
            self._carry = carry
        elif self._in_copy or not self._AT.match(carry):
            if not self._in_copy and self._header and not self._COMMENT.match(carry):
                self._header = False
            out.append(carry)
            self._passing = True
            return
        else:
            self._carry = carry
        if len(self._carry) > self.LONGEST_LINE:
            raise RestoreError(f"the dump has a line of over {self.LONGEST_LINE >> 20} MiB starting with "
                               f"{shown_line(self._carry[:20])} (line {number}), which pg_dump never "
                               "writes: refused")

    def _process(self, data: bytes, out: list[bytes]) -> None:
        """The complete lines of ``data`` (it ends with a newline), into ``out``."""
        pos = 0
        while pos < len(data):
            if self._closed is not None:  # after pg_dump's closing line, only blank lines
                if self._AFTER_END.search(data, pos):
                    number, line = self._closed
                    raise MetaCommandError(f"the backup contains a psql meta-command (line {number}: "
                                           f"{shown_line(line)}): it is not the dump's last line", number, line)
                out.append(data[pos:])
                break
            if self._in_copy:
                end = self._copy_end(data, pos)
                if end < 0:
                    out.append(data[pos:])
                    break
                out.append(data[pos:end])
                pos, self._in_copy = end, False
                continue
            if self._copy_statement:
                hit = data.find(self._COPY_END, pos)
                end = len(data) if hit < 0 else hit + len(self._COPY_END)
                out.append(data[pos:end])
                pos, self._in_copy, self._copy_statement = end, hit >= 0, hit < 0
                continue
            start = pos if self._AT.match(data, pos) else self._next_line(data, pos)
            if self._header and self._SQL.search(data, pos, len(data) if start < 0 else start):
                self._header = False
            if start < 0:
                out.append(data[pos:])
                break
            out.append(data[pos:start])
            pos = data.index(b"\n", start) + 1
            out.append(self._line(data, start, pos))

    def _send(self, sent: bytes) -> bytes:
        self._recent.append((self._sent + 1, sent))
        self._kept += len(sent)
        while len(self._recent) > 1 and self._kept - len(self._recent[0][1]) >= self.KEEP:
            self._kept -= len(self._recent.popleft()[1])
        self._sent += sent.count(b"\n")
        return sent

    def _next_line(self, data: bytes, pos: int) -> int:
        m = self._NEXT.search(data, pos)
        return -1 if m is None else m.end()

    @staticmethod
    def _copy_end(data: bytes, pos: int) -> int:
        r"""Just past the line ``\.`` (or ``\.\r\n``, which psql also takes) that ends COPY data, else -1."""
        at = pos
        while True:
            if data.startswith(b"\\.\n", at):
                return at + 3
            if data.startswith(b"\\.\r\n", at):
                return at + 4
            hit = data.find(b"\n\\.", at)
            if hit < 0:
                return -1
            at = hit + 1

    def _line(self, data: bytes, start: int, end: int) -> bytes:
        """What to send for one line that matters: ``data[start:end]``, newline included."""
        line = data[start:end]
        header, self._header = self._header, False
        table_data, self._table_data = self._table_data, False
        if line.startswith(b"-- Data for Name: "):
            if b"; Type: BLOBS;" in line:
                self._blobs = 1
            self._table_data = b"; Type: TABLE DATA;" in line
        elif line.startswith(b"COPY "):
            if line.endswith(self._COPY_END):
                self._in_copy = True
            elif table_data:
                self._copy_statement = True
        elif (line == b"BEGIN;\n" and self._blobs == 1) or (line == b"COMMIT;\n" and self._blobs == 2):
            self._blobs = (self._blobs + 1) % 3
            self.dropped += 1
            return b"\n"
        elif key := self._KEY_LINE.fullmatch(line):
            if not key[1] and header and self._key is None:
                self._key = key[2]
                self.dropped += 1
                return b"\n"
            if key[1] and key[2] == self._key and self._closed is None:
                self._closed = (self._sent + data.count(b"\n", 0, start) + 1, line)
                self.dropped += 1
                return b"\n"
        return line

    def flush(self) -> bytes:
        """The last line, even without a final newline (it goes through the same rules)."""
        return self.feed(b"\n") if self._carry or self._passing else b""

    def line_text(self, number: int) -> bytes | None:
        """Line ``number`` of the output, if it is in the last :attr:`KEEP` bytes or so (else None)."""
        for first, block in reversed(self._recent):
            if first <= number:
                pos = 0
                for _ in range(number - first):
                    pos = block.find(b"\n", pos) + 1
                    if pos == 0:
                        return None
                end = block.find(b"\n", pos)
                return block[pos:end] if end >= 0 else None
        return None


class _HashingReader:
    """Pass reads through, counting every byte of the object as it flows (the archive reader hashes)."""

    def __init__(self, source: Download, on_progress: Callable[[int], None] | None) -> None:
        self._source = source
        self._on_progress = on_progress
        self.bytes_read = 0
        self.encrypted = False  # bit 0 of the local header's flags (offset 6), seen on the first read

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        if data:
            if self.bytes_read == 0 and len(data) > 6:
                self.encrypted = bool(data[6] & 1)
            self.bytes_read += len(data)
            if self._on_progress is not None:
                self._on_progress(len(data))
        return data

    def drain(self) -> None:
        while self.read(READ_CHUNK):
            pass


def parse_target(url: str, *, env: Mapping[str, str] | None = None,
                 fallback: PgTarget | None = None) -> postgres.RestoreTarget:
    """The --target-url; it must name its database, so nobody restores into ``postgres`` by accident.

    The URL need not carry a password, which would show in ``ps``: without one, the password comes from
    PGPASSWORD, else from the connection when the target is the same server and user.
    """
    target = parse_url(url, "--target-url")
    try:
        path = urllib.parse.urlsplit(url).path.strip("/")
    except ValueError:
        path = ""
    if not path:
        raise ConfigError("--target-url: it names no database. Fix: postgres://user@host:5432/TARGET_DB")
    return with_password(target, env, fallback)


def with_password(target: PgTarget, env: Mapping[str, str] | None, fallback: PgTarget | None, *,
                  flag: str = "--target-url") -> postgres.RestoreTarget:
    """The target with its password: from its URL (``flag``), else PGPASSWORD, else the connection's when
    the server and user are the same. It remembers which, so that a failed login names the right place."""
    def login(password: Secret | None, fix: str) -> postgres.RestoreTarget:
        parts = {f.name: getattr(target, f.name) for f in fields(PgTarget)}
        return postgres.RestoreTarget(**{**parts, "password": password}, login_fix=fix)

    if target.password is not None:
        return login(target.password, f"Fix: check the user and password in {flag}.")
    password = (os.environ if env is None else env).get("PGPASSWORD", "")
    if password:
        return login(Secret(password), f"Fix: check the user in {flag} and the password in PGPASSWORD.")
    if fallback is not None and fallback.password is not None and (
            (fallback.host, fallback.port, fallback.user) == (target.host, target.port, target.user)):
        return login(fallback.password, f"Fix: check the user in {flag}; its password is the connection's in "
                     "PG_URLS (same server and user): set PGPASSWORD to use another.")
    return login(None, f"Fix: set PGPASSWORD to the password of user {target.user!r}, or check the user in "
                 f"{flag}.")


def check_target(target: PgTarget, *, create: bool, force: bool, bindir: Path | None = None) -> None:
    """Refuse unsafe targets before anything is read or written (see TargetError)."""
    db = target.database
    where = f"{target.user}@{target.host}:{target.port}"
    if create:
        if postgres.database_exists(target, db, bindir=bindir):
            raise TargetError(f"restore: database {db!r} already exists on {where}, and --create makes a new "
                              "one. Fix: drop --create to restore into it (it must be empty), or pick another name.")
        return
    try:
        contents = postgres.database_contents(target, db, bindir=bindir)
    except postgres.PostgresError as exc:
        if re.search(r'database ".*" does not exist', str(exc)):
            raise TargetError(f"restore: database {db!r} does not exist on {where}. Fix: add --create to "
                              "create it.") from None
        raise
    if contents and not force:
        found = ", ".join(f"{n} {kind}" for kind, n in contents.items())
        raise TargetError(f"restore: database {db!r} on {where} is not empty ({found}). Fix: restore into an "
                          "empty database, use --create with a new name, or add --force to restore anyway.")
    if contents:
        log.warning("restoring into non-empty database %r on %s (--force)", db, where)


def _check_psql(backup: BackupRef, bindir: Path | None) -> None:
    psql = postgres.psql_version(bindir)
    if not restrict_supported(psql):
        raise PsqlTooOldError(
            f"restore {backup.url}: psql {psql[0]}.{psql[1]} ({postgres.tool('psql', bindir)}) has no \\restrict, "
            "so nothing could stop it running a psql command hidden in the backup (\\! runs a shell). Nothing "
            "was sent. Fix: set PG_BIN_DIR to the bin folder of a newer PostgreSQL client (18, or 17.6+, 16.10+, "
            "15.14+, 14.19+, 13.22+).")


class AgeIdentities:
    """The age identity of ``restore``/``verify``, read once when a ``.zip.age`` backup first needs it.

    From AGE_IDENTITY_FILE (or AGE_IDENTITY, which AGE_IDENTITY_SECRET_ID fills in Lambda), opened with
    AGE_IDENTITY_PASSPHRASE when ``age -p`` protects it (an scrypt each time: so verify reads it once).
    Messages name the file and a line, never its content or the passphrase (pgbkp.archive.agecrypt)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self._loaded: list[Identity] | None = None
        self._failed: str | None = None  # why it cannot be read, kept: a wrong passphrase costs an scrypt each try

    def get(self, url: str) -> list[Identity]:
        if self._loaded is None and self._failed is None:
            try:
                self._loaded = self._load()
            except _IdentityUnusableError as exc:
                self._failed = str(exc)
        if self._loaded is None:
            raise IdentityError(f"restore {url}: the backup is encrypted with age (.zip.age){self._failed}")
        return self._loaded

    def _load(self) -> list[Identity]:
        env = self.env  # named env: tests/test_compose.py finds the variables read as setting(env, "X")
        path = setting(env, "AGE_IDENTITY_FILE")
        content = setting(env, "AGE_IDENTITY")
        passphrase = setting(env, "AGE_IDENTITY_PASSPHRASE")
        if passphrase:
            Secret(passphrase)  # registered, so that the scrubber catches it anywhere
        if content:  # each key line too: the scrubber matches whole values
            for line in (content, *content.splitlines()):
                if not line.lstrip().startswith("#"):
                    Secret(line.strip())
        if path and content:
            raise _IdentityUnusableError(", and both AGE_IDENTITY_FILE and AGE_IDENTITY are set. Fix: keep one.")
        if not path and not content:
            raise _IdentityUnusableError(
                ", and AGE_IDENTITY_FILE is not set; nothing was read or sent. Fix: set AGE_IDENTITY_FILE to the "
                "identity of one of its recipients (the age-keygen key file, or the SSH private key), kept where "
                "you restore, never where backups are made.")
        try:
            if content:
                return parse_identities(content.encode(), source="AGE_IDENTITY", passphrase=passphrase or None)
            return read_identity_file(path, passphrase=passphrase or None)
        except AgeKeyError as exc:
            raise _IdentityUnusableError(f": {exc}; nothing was read or sent.") from None


class _IdentityUnusableError(Exception):
    """Why the identity cannot be used: the end of an :class:`IdentityError` message, after its backup."""


def _identities_for(config: Config, backup: BackupRef, identities: AgeIdentities | None) -> list[Identity] | None:
    """The age identities a ``.zip.age`` backup needs (read before the target is touched), else None."""
    if not keys.is_age(backup.key):
        return None
    return (identities or AgeIdentities(config.env)).get(backup.url)


def _download(storage: Storage, backup: BackupRef, on_start: Callable[[int], None] | None) -> Download:
    """The object, opened; ``on_start`` hears its size (a progress bar's total)."""
    download = storage.download(backup.bucket, backup.key)
    if on_start is not None:
        on_start(download.info.size)
    return download


def _member(hashing: _HashingReader, age: list[Identity] | None, password: bytes | None, url: str) -> MemberReader:
    """The SQL member of the object being read. A ``.zip.age`` goes through age first: its header (the
    recipient, the MAC) is checked here, so a wrong identity fails before anything is sent, and the ZIP
    inside has no password (the suffix decides, docs/age.md). Otherwise the ZIP itself, with ZIP_PASSWORD."""
    if age is None:
        return MemberReader(hashing, password, chunk_size=READ_CHUNK)
    return MemberReader(AgeReader(hashing, age, name=url, read_size=READ_CHUNK), None, chunk_size=READ_CHUNK)


def _read_to_the_end(backup: BackupRef, download: Download, hashing: _HashingReader, reader: MemberReader,
                     age: list[Identity] | None, result: RestoreResult) -> None:
    """Once the SQL is all sent: read what follows it, then prove the object whole (its layers, its size,
    its integrity record) before anything is committed."""
    hashing.drain()
    if age is not None:  # age was asked for its end: every chunk and the final one are proven
        result.checks += ["age authentication (every 64 KiB chunk)", "ZIP CRC-32"]
    else:
        result.checks.append("AES authentication code" if hashing.encrypted else "ZIP CRC-32")
    _check_object(backup, download, hashing, reader, result)


def restore_backup(config: Config, backup: BackupRef, target: PgTarget, *, storage: Storage,
                   create: bool = False, force: bool = False,
                   on_progress: Callable[[int], None] | None = None,
                   on_start: Callable[[int], None] | None = None,
                   identities: AgeIdentities | None = None) -> RestoreResult:
    """Stream one backup into ``target.database`` in one transaction; commit only if it is intact.

    ``on_start(object_size)`` is called once the object is open; ``on_progress(n)`` for each read. A
    ``.zip.age`` backup is decrypted on the way with ``identities`` (default: read from the environment).
    """
    bindir = config.pg_bindir
    db = target.database
    shown = target.display
    result = RestoreResult(backup, shown)
    _check_psql(backup, bindir)
    age = _identities_for(config, backup, identities)
    check_target(target, create=create, force=force, bindir=bindir)
    password = config.zip_password.reveal().encode() if config.zip_password else None
    started = time.monotonic()
    download = _download(storage, backup, on_start)
    session: postgres.RestoreSession | None = None
    one = DumpFilter()
    created = False
    try:
        hashing = _HashingReader(download, on_progress)
        reader = _member(hashing, age, password, backup.url)
        chunks = iter(reader)
        first = next(chunks, b"")
        if create:
            postgres.create_database(target, db, bindir=bindir)
            created = True
        session = postgres.RestoreSession(target, db, bindir=bindir)
        try:
            session.write(one.feed(adapt_header(first, postgres.server_version_num(target, bindir=bindir))))
            for chunk in chunks:
                session.write(one.feed(chunk))
            session.write(one.flush())
        except postgres.PostgresError:
            # A damaged archive can still inflate, into SQL that psql rejects: read on, so that the
            # archive's own checks name the real cause (the psql error stands if the archive is sound).
            for _ in chunks:
                pass
            raise
        _read_to_the_end(backup, download, hashing, reader, age, result)
        session.commit()
        result.sql_bytes = session.bytes_written
    except BaseException as exc:
        if session is not None:
            session.abort()
        left = ""
        if created:
            try:
                postgres.drop_database(target, db, bindir=bindir)
            except postgres.PostgresError as drop_exc:
                log.error("could not drop database %r created for the failed restore: %s", db, drop_exc)
                left = f"; the database {db!r} it created could not be dropped ({drop_exc})"
        explained = _explain(exc, backup, shown, one) if isinstance(exc, Exception) else exc
        if left:
            raise RestoreError(f"{str(explained).rstrip('.')}{left}.") from exc
        if explained is exc:
            raise
        raise explained from exc
    finally:
        download.close()
        if session is not None:
            session.close()
    result.object_bytes = hashing.bytes_read
    result.seconds = round(time.monotonic() - started, 3)
    log.info("restored %s into %s: %d bytes read, %d bytes of SQL, %.1fs", backup.url, shown,
             result.object_bytes, result.sql_bytes, result.seconds)
    return result


def _check_object(backup: BackupRef, download: Download, hashing: _HashingReader, reader: MemberReader,
                  result: RestoreResult) -> None:
    """After the whole object was read: its size, and its SHA-256 against its integrity record (in the
    archive's comment, checked by the reader; v1 backups kept it in the ``sha256`` metadata)."""
    info = download.info
    if hashing.bytes_read != info.size:
        raise IntegrityError(f"restore {backup.url}: read {hashing.bytes_read} bytes, the object has {info.size}")
    if reader.record is not None:
        result.checks.append("object SHA-256 (integrity record)")
        return
    # Metadata is whatever the bucket's writers put there: shown escaped and cut, never raw.
    if info.metadata.get(integrity.METADATA_KEY):
        said = shown_line(info.metadata[integrity.METADATA_KEY].encode())
        raise IntegrityError(f"restore {backup.url}: the archive has lost its integrity record (its metadata says "
                             f"{integrity.METADATA_KEY}={said}): it was cut or rewritten after the backup")
    expected = info.metadata.get("sha256")
    if expected is None:
        log.warning("%s has no integrity record (not written by pgbkp?): relying on the ZIP checks", backup.url)
        return
    if reader.object_sha256 != expected.lower():
        raise IntegrityError(f"restore {backup.url}: SHA-256 mismatch: the object hashes to {reader.object_sha256}, "
                             f"its metadata says {shown_line(expected.encode(), 64)}: it changed after the backup")
    result.checks.append("object SHA-256 (metadata)")


def _explain(exc: Exception, backup: BackupRef, target: str, sent: DumpFilter) -> Exception:
    """One line per failure that says what happened, that the target is untouched, and the fix."""
    untouched = f"nothing was committed to {target}"
    if isinstance(exc, MetaCommandError | postgres.RestrictedCommandError):
        line = exc.text if isinstance(exc, MetaCommandError) else sent.line_text(exc.line)
        where = f"line {exc.line}: {shown_line(line)}" if line is not None else f"line {exc.line}"
        return MetaCommandError(
            f"restore {backup.url}: the backup contains a psql meta-command ({where}); refused, {untouched}. "
            f"Fix: do not restore this backup; find out who could write to s3://{backup.bucket}/, and restore an "
            "older one you trust (pgbkp list; --at or --key).", exc.line, line)
    if isinstance(exc, AgeNoIdentityError):
        return IdentityError(f"restore {backup.url}: {exc}; {untouched}. Fix: set AGE_IDENTITY_FILE to the identity "
                             "of one of the recipients the backup was made for.")
    if isinstance(exc, roles.UnexpectedStatementError):
        return GlobalsStatementError(
            f"restore {backup.url}: the globals backup holds something pg_dumpall never writes ({exc}); refused, "
            f"{untouched}. Fix: do not restore this backup; find out who could write to s3://{backup.bucket}/, and "
            "restore an older one you trust (pgbkp list; --at or --key).")
    if isinstance(exc, WrongPasswordError):
        return RestoreError(f"restore {backup.url}: {exc}; {untouched}. Fix: set ZIP_PASSWORD to the password "
                            "the backup was made with.")
    if isinstance(exc, CorruptArchiveError):
        return IntegrityError(f"restore {backup.url}: the archive is corrupt ({exc}); {untouched}.")
    if isinstance(exc, ArchiveError):
        return RestoreError(f"restore {backup.url}: {exc}; {untouched}.")
    if isinstance(exc, RestoreError | StorageError | postgres.PostgresError):
        text = str(exc)
        if "nothing was committed" in text or "Nothing was sent" in text:
            return exc
        return type(exc)(f"{text}; {untouched}.")
    return exc


def restore(config: Config, connection: Connection | str | int, backup: BackupRef, target_url: str, *,
            storage: Storage, create: bool = False, force: bool = False,
            on_progress: Callable[[int], None] | None = None,
            on_start: Callable[[int], None] | None = None) -> RestoreResult:
    """Restore ``backup`` into the database named by ``target_url`` (see :func:`restore_backup`)."""
    conn = _connection(config, connection)
    target = parse_target(target_url, env=config.env, fallback=conn.pg)
    return restore_backup(config, backup, target, create=create, force=force, storage=storage,
                          on_progress=on_progress, on_start=on_start)


# --------------------------------------------------------------------------------------------------
# Verifying


def scratch_name(database: str) -> str:
    """``pgbkp_verify_<db>_<random>``: unique, plain ASCII, well under PostgreSQL's 63-byte limit."""
    plain = re.sub(r"[^a-z0-9_]+", "_", database.lower()).strip("_")[:32] or "db"
    return f"pgbkp_verify_{plain}_{secrets.token_hex(4)}"


def verify(config: Config, connection: Connection | str | int, databases: Sequence[str] | None = None,
           scratch_url: str | None = None, *, storage: Storage,
           on_progress: Callable[[VerifyResult, int], None] | None = None,
           on_start: Callable[[VerifyResult, int], None] | None = None) -> list[VerifyResult]:
    """Restore the latest backup of each database into a fresh scratch database, count, and drop it.

    Scratch databases live on ``scratch_url``'s server (default: the connection's own server); only
    databases this call created are dropped. Results are JSON-serialisable through ``as_dict()``.
    """
    conn = _connection(config, connection)
    server = (with_password(parse_url(scratch_url, "--scratch-url"), config.env, conn.pg, flag="--scratch-url")
              if scratch_url else conn.pg)
    results: list[VerifyResult] = []
    # The globals backup is checked with the databases, or alone when (globals) is named.
    want_globals = not databases or keys.GLOBALS in databases
    named = [d for d in databases if d != keys.GLOBALS] if databases else []
    newest_globals: BackupRef | None = None
    try:
        latest: dict[str, BackupRef] = {}
        one = named[0] if len(named) == 1 and not want_globals else None
        for ref in find_backups(config, conn, one, storage=storage):
            if ref.kind == "globals":
                newest_globals = newest_globals or ref
            else:
                latest.setdefault(ref.database, ref)
    except StorageError as exc:
        msg = redact(str(exc))
        return [VerifyResult(conn.name, d, error=msg) for d in (databases or ["*"])]
    identities = AgeIdentities(config.env)
    for db in named if databases else sorted(latest):
        found = latest.get(db)
        result = VerifyResult(conn.name, db)
        results.append(result)
        if found is None:
            result.error = f"verify {db!r} ({conn.name}): no backup found in {_where(config, conn, db)}"
            log.error("%s", result.error)
            continue
        _verify_one(config, found, server, storage, result, on_progress, on_start, identities)
    if want_globals and newest_globals is not None:
        result = VerifyResult(conn.name, keys.GLOBALS, kind="globals")
        results.append(result)
        _verify_globals(config, newest_globals, server if scratch_url else None, storage, result, on_progress,
                        on_start, identities)
    return results


def _verify_globals(config: Config, ref: BackupRef, server: PgTarget | None, storage: Storage,
                    result: VerifyResult, on_progress: Callable[[VerifyResult, int], None] | None,
                    on_start: Callable[[VerifyResult, int], None] | None,
                    identities: AgeIdentities | None = None) -> None:
    """On a scratch server (--scratch-url): run the whole dump there in a transaction that is rolled back,
    leaving the roles it has alone (a scratch cluster has its own). Else read and check the object only:
    roles are server-wide, and the connection's own server is no scratch to try them on."""
    started = time.monotonic()
    result.bucket, result.key = ref.bucket, ref.key
    result.taken = ref.taken.isoformat(timespec="minutes") if ref.taken else None
    if server is not None:
        result.scratch_server = f"{server.user}@{server.host}:{server.port}"
    try:
        done = restore_globals(config, ref, server, storage=storage, skip_existing=True, rollback=True,
                               on_progress=(lambda n: on_progress(result, n)) if on_progress else None,
                               on_start=(lambda n: on_start(result, n)) if on_start else None,
                               identities=identities)
    except Exception as exc:
        result.error = _verify_error(exc, ref)
        log.error("verify failed: %s", result.error)
    else:
        result.object_bytes, result.sql_bytes = done.object_bytes, done.sql_bytes
        result.roles = len(done.created_roles) + len(done.skipped_roles)
        result.status = "ok"
        log.info("verified %s: %d role(s)%s", ref.url, result.roles,
                 f", run on {result.scratch_server} and rolled back" if server is not None else " (read and checked)")
    result.seconds = round(time.monotonic() - started, 3)


def _verify_error(exc: Exception, ref: BackupRef) -> str:
    known = isinstance(exc, RestoreError | StorageError | postgres.PostgresError)
    return redact(str(exc) if known else f"verify {ref.url}: {type(exc).__name__}: {exc}")


def _verify_one(config: Config, ref: BackupRef, server: PgTarget, storage: Storage,
                result: VerifyResult, on_progress: Callable[[VerifyResult, int], None] | None,
                on_start: Callable[[VerifyResult, int], None] | None, identities: AgeIdentities | None = None) -> None:
    started = time.monotonic()
    scratch = replace(server, database=scratch_name(ref.database))
    result.bucket, result.key = ref.bucket, ref.key
    result.taken = ref.taken.isoformat(timespec="minutes") if ref.taken else None
    result.scratch_database = scratch.database
    result.scratch_server = f"{scratch.user}@{scratch.host}:{scratch.port}"
    # A failed restore drops the scratch database itself, if it created it (and says so if it could not);
    # one that failed before creating it (unreachable server, name taken, psql too old) made nothing to drop.
    try:
        restored = restore_backup(
            config, ref, scratch, create=True, storage=storage,
            on_progress=(lambda n: on_progress(result, n)) if on_progress else None,
            on_start=(lambda n: on_start(result, n)) if on_start else None, identities=identities)
    except Exception as exc:
        result.error = _verify_error(exc, ref)
    else:
        result.object_bytes, result.sql_bytes = restored.object_bytes, restored.sql_bytes
        try:
            stats = postgres.database_stats(scratch, scratch.database, bindir=config.pg_bindir)
            result.tables, result.rows, result.restored_size = stats.tables, stats.rows, stats.size
            result.status = "ok"
        except Exception as exc:
            result.error = _verify_error(exc, ref)
        finally:
            try:
                postgres.drop_database(scratch, scratch.database, bindir=config.pg_bindir)
            except postgres.PostgresError as exc:
                result.status = "failed"
                note = f"could not drop scratch database {scratch.database!r}: {redact(str(exc))}"
                result.error = f"{result.error}; {note}" if result.error else note
    result.seconds = round(time.monotonic() - started, 3)
    if result.ok:
        log.info("verified %s: %d tables, %d rows, %d bytes restored, %.1fs", ref.url, result.tables,
                 result.rows, result.restored_size, result.seconds)
    else:
        log.error("verify failed: %s", result.error)


# --------------------------------------------------------------------------------------------------
# Roles and other globals


class GlobalsFilter(DumpFilter):
    """DumpFilter for pg_dumpall's output, which ends with comments after its ``\\unrestrict`` line."""

    _AFTER_END = re.compile(rb"^(?![ \t\r\f\v]*(?:--[^\n]*)?(?:\n|\Z))", re.MULTILINE)


#: pg_dumpall's last line: a globals dump without it was cut short before it was stored.
_GLOBALS_END = b"-- PostgreSQL database cluster dump complete"


def restore_globals(config: Config, backup: BackupRef, target: PgTarget | None, *, storage: Storage,
                    skip_existing: bool = False, rollback: bool = False,
                    on_progress: Callable[[int], None] | None = None,
                    on_start: Callable[[int], None] | None = None,
                    identities: AgeIdentities | None = None) -> RestoreResult:
    """Run a globals backup (roles, memberships, role settings, tablespaces) on ``target``'s server, in
    one transaction committed only once the object proved intact, as :func:`restore_backup` does.

    psql connects to ``target.database``; roles are server-wide. The roles the target already has are
    left as they are (roles.RoleFilter): the one psql logs in as always, the others only with
    ``skip_existing``, else the restore fails naming them and commits nothing. ``rollback`` runs it all and
    then rolls back: verify's proof that the target accepts every statement, leaving nothing behind.
    Without a ``target`` the object is only read and checked (verify without --scratch-url).
    """
    if backup.kind != "globals":
        raise ConfigError(f"restore --globals {backup.url}: not a globals backup. Fix: restore it without --globals.")
    bindir = config.pg_bindir
    shown = f"{target.user}@{target.host}:{target.port}" if target else "(checked only)"
    result = RestoreResult(backup, shown)
    existing: set[str] = set()
    if target is not None:
        _check_psql(backup, bindir)
        existing = postgres.role_names(target, bindir=bindir)
    age = _identities_for(config, backup, identities)
    password = config.zip_password.reveal().encode() if config.zip_password else None
    started = time.monotonic()
    download = _download(storage, backup, on_start)
    session: postgres.RestoreSession | None = None
    one = GlobalsFilter()
    kept = roles.RoleFilter(existing, target.user if target else "", skip_existing=skip_existing)
    try:
        hashing = _HashingReader(download, on_progress)
        reader = _member(hashing, age, password, backup.url)
        chunks = iter(reader)
        first = next(chunks, b"")
        version = 180000
        if target is not None:
            session = postgres.RestoreSession(target, target.database, bindir=bindir)
            version = postgres.server_version_num(target, bindir=bindir)
        write = session.write if session is not None else lambda data: None
        try:
            tail = first[-256:]
            write(kept.feed(one.feed(adapt_header(first, version))))
            for chunk in chunks:
                tail = (tail + chunk)[-256:]
                write(kept.feed(one.feed(chunk)))
            write(kept.feed(one.flush()) + kept.flush())
        except postgres.PostgresError:
            for _ in chunks:
                pass
            raise
        _read_to_the_end(backup, download, hashing, reader, age, result)
        if _GLOBALS_END not in tail:
            raise IntegrityError(f"restore {backup.url}: the dump does not end as pg_dumpall ends one: it was cut "
                                 "short before it was stored")
        result.checks.append("pg_dumpall's closing line")
        if kept.conflicts:
            raise RolesExistError(
                f"restore {backup.url}: {len(kept.conflicts)} role(s) of the backup already exist on {shown}: "
                f"{_names(kept.conflicts)}. Fix: add --skip-existing to create only the missing roles and leave "
                "these as they are, or restore into a server without them.")
        if session is not None:
            if rollback:
                session.write(b"ROLLBACK;\n")
            session.commit()
            result.sql_bytes = session.bytes_written
    except BaseException as exc:
        if session is not None:
            session.abort()
        explained = _explain(exc, backup, shown, one) if isinstance(exc, Exception) else exc
        if explained is exc:
            raise
        raise explained from exc
    finally:
        download.close()
        if session is not None:
            session.close()
    result.created_roles, result.skipped_roles = kept.created, kept.skipped
    result.object_bytes = hashing.bytes_read
    result.seconds = round(time.monotonic() - started, 3)
    log.info("%s %s on %s: %d role(s) created, %d left as they were (%s), %.1fs",
             "tried (rolled back)" if rollback else "restored", backup.url, shown, len(kept.created),
             len(kept.skipped), _names(kept.skipped) or "none", result.seconds)
    return result


def _names(names: Sequence[str], shown: int = 10) -> str:
    """Role names for a message: quoted, escaped, the first ``shown`` and a count of the rest."""
    listed = ", ".join(shown_line(repr(n).encode(), 70) for n in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")
