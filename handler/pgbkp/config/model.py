"""What a loaded configuration is: frozen dataclasses the rest of pgbkp reads, and nothing that parses."""

from __future__ import annotations

import logging
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pgbkp.config.values import ConfigError
from pgbkp.redact import Secret

#: The package's name, not this module's: warnings keep the logger name they always had.
log = logging.getLogger("pgbkp.config")

DEFAULT_TIMEZONE = "America/Sao_Paulo"
#: Level 6 is zlib's own default and the knee of the level x ratio x speed curve measured in
#: docs/archive.md: higher levels cost far more CPU for under 2% smaller archives.
DEFAULT_COMPRESSION_LEVEL = 6
DEFAULT_PART_SIZE_MB = 8
DEFAULT_UPLOAD_CONCURRENCY = 4


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach an S3-compatible store, and how new objects are stored there. Equal
    settings share one client."""

    endpoint: str | None = None
    region: str | None = None
    access_key: Secret | None = None
    secret_key: Secret | None = None
    force_path_style: bool = False
    checksum: str = "auto"
    max_attempts: int = 5
    part_size: int = DEFAULT_PART_SIZE_MB * 1024 * 1024
    concurrency: int = DEFAULT_UPLOAD_CONCURRENCY
    #: S3_STORAGE_CLASS; None: the store's default (STANDARD).
    storage_class: str | None = None
    #: S3_SSE, ``AES256`` or ``aws:kms``; None: the bucket's default encryption.
    sse: str | None = None
    #: S3_SSE_KMS_KEY_ID, only with ``sse="aws:kms"``; None: the account's aws/s3 key.
    sse_kms_key_id: str | None = None
    #: S3_OBJECT_LOCK_MODE, GOVERNANCE or COMPLIANCE; None: no lock. Each backup's retain-until date
    #: comes from its connection's retention (pipeline.retain_until; docs/storage.md, "Object Lock").
    object_lock_mode: str | None = None


@dataclass(frozen=True)
class PgTarget:
    """A PostgreSQL server to connect to. The password travels in the environment, never in argv."""

    host: str
    port: int
    user: str
    password: Secret | None
    database: str
    params: tuple[tuple[str, str], ...] = ()

    @property
    def display(self) -> str:
        """``user@host:port/db``: safe for logs and messages."""
        return f"{self.user}@{self.host}:{self.port}/{self.database}"

    def conninfo(self, database: str | None = None) -> str:
        """A libpq keyword/value string without the password, quoted so any database name is safe."""
        pairs = [("host", self.host), ("port", str(self.port)), ("user", self.user),
                 ("dbname", self.database if database is None else database), *self.params]
        return " ".join(f"{k}={_conninfo_quote(v)}" for k, v in pairs)

    def env(self) -> dict[str, str]:
        """Environment for libpq tools: the password, and a connect timeout unless the URL sets one."""
        env = {"PGAPPNAME": "pgbkp"}
        if self.password:
            env["PGPASSWORD"] = self.password.reveal()
        if "connect_timeout" not in dict(self.params):
            env["PGCONNECT_TIMEOUT"] = "10"
        return env


def _conninfo_quote(value: str) -> str:
    """libpq's quoting: single quotes around the value, backslash before ``\\`` and ``'``."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class AgeRecipients:
    """The age public keys a connection's backups are encrypted to, as given: ``(source, text)`` pairs
    (``AGE_RECIPIENTS``, ``AGE_RECIPIENTS_FILE /path``, ``PG_URLS item 2 (x): field 'age'``). Public keys, no
    secret. They are parsed with pyrage (pgbkp.archive.agecrypt) at a backup's start, not here: the
    configuration does not import the archive (docs/age.md)."""

    sources: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Connection:
    """One PG_URLS item with every global default applied."""

    index: int
    name: str
    prefix: str | None
    pg: PgTarget
    s3: S3Settings
    bucket: str | None
    db_buckets: Mapping[str, str]
    ignore: frozenset[str]
    retention_days: int
    retention_weeks: int
    retention_months: int
    #: Also back up the roles and other globals (pg_dumpall --globals-only): ``globals=`` or BACKUP_GLOBALS.
    globals: bool = False
    #: RETENTION_KEEP_LAST or keep_last=: the newest backups retention always keeps (1: the newest).
    retention_keep_last: int = 1
    #: databases=: names and patterns (config.selection); empty: every database the server lists.
    databases: tuple[str, ...] = ()
    #: pg_dump flags for every database: PG_DUMP_ARGS (or pg_dump_args=), then the exclude fields'.
    dump_args: tuple[str, ...] = ()
    #: More pg_dump flags for some databases (the db_exclude_* fields), by database name.
    db_dump_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: AGE_RECIPIENTS (or the item's ``age=``); None: backups are a plain or AES ZIP (docs/age.md).
    age: AgeRecipients | None = None
    #: The item's ``notify=`` (apprise URLs, or ``off``), which replaces NOTIFY_URLS for this connection;
    #: None: NOTIFY_URLS. Checked by pgbkp.notify, which alone imports apprise.
    notify: Secret | None = None

    @property
    def base_dir(self) -> str:
        """The first path segment of every key: the prefix, else the PostgreSQL host (as the original).

        When two prefix-less connections share a host, their name (and so their folder) is host:port,
        so that their backups can never mix."""
        return self.name

    def dump_args_for(self, database: str) -> tuple[str, ...]:
        """pg_dump's extra argv items for ``database``: the connection's, then its own."""
        return (*self.dump_args, *self.db_dump_args.get(database, ()))

    def bucket_for(self, database: str) -> str | None:
        """db_buckets entry, else the connection's bucket, else the global S3_BUCKET (already folded in)."""
        return self.db_buckets.get(database) or self.bucket


@dataclass(frozen=True)
class Config:
    connections: tuple[Connection, ...]
    timezone: zoneinfo.ZoneInfo
    global_prefix: str = ""
    zip_password: Secret | None = None
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    compression_threads: int | None = None
    log_level: str = "INFO"
    pg_bindir: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: ``text``, ``json`` or None (text on a terminal, JSON elsewhere).
    log_format: str | None = None
    #: What load() found worth a word but not an error (a likely typo in a variable's name, a short
    #: ZIP_PASSWORD, an archive storage class), one line each, never a value. A caller that sets up
    #: logging after load() logs them then, with :meth:`log_warnings`.
    warnings: tuple[str, ...] = ()

    def log_warnings(self) -> None:
        """Log :attr:`warnings` on the ``pgbkp.config`` logger, once logging is set up."""
        for line in self.warnings:
            log.warning("%s", line)

    def connection(self, ref: str | int) -> Connection:
        """Find a connection by name or 0-based index (events and the CLI accept both)."""
        for c in self.connections:
            if c.name == ref or (isinstance(ref, int) and c.index == ref):
                return c
        if isinstance(ref, str) and ref.isdigit() and int(ref) < len(self.connections):
            return self.connections[int(ref)]
        names = ", ".join(repr(c.name) for c in self.connections)
        raise ConfigError(f"unknown connection {ref!r}: PG_URLS defines {names} (or use a 0-based index)")
