"""Configuration: the original pg-bkp's environment variables, parsed and checked before any work starts.

Everything a run needs is read here, once, into frozen dataclasses. A bad value raises
:class:`ConfigError` with one message that names the PG_URLS item, the field and the fix, and never
the password. See README.md, "Configuration", for the reference.
"""

from __future__ import annotations

import os
import re
import urllib.parse
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pgbkp.redact import Secret, url_without_password

DEFAULT_TIMEZONE = "America/Sao_Paulo"
#: Level 6 is zlib's own default and the knee of the level x ratio x speed curve measured in
#: docs/archive.md: higher levels cost far more CPU for under 2% smaller archives.
DEFAULT_COMPRESSION_LEVEL = 6
DEFAULT_PART_SIZE_MB = 8
DEFAULT_UPLOAD_CONCURRENCY = 4

#: The order of positional metadata fields in a PG_URLS item, as in the original pg-bkp.
POSITIONAL_FIELDS = ("prefix", "bucket", "endpoint", "forcepath", "access", "secret")
#: Accepted keys, with their aliases folded to one canonical name.
KEY_ALIASES = {
    "prefix": "prefix",
    "bucket": "bucket",
    "endpoint": "endpoint",
    "region": "region",
    "forcepath": "forcepath",
    "force_path_style": "forcepath",
    "access": "access",
    "access_key": "access",
    "secret": "secret",
    "secret_key": "secret",
    "db_buckets": "db_buckets",
    "ignore": "ignore",
    "retention_days": "retention_days",
    "retention_weeks": "retention_weeks",
    "retention_months": "retention_months",
}
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
CHECKSUM_MODES = ("auto", "when_required", "off")

_URL_START = re.compile(r"postgres(?:ql)?://", re.IGNORECASE)
_KEYED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z0-9-]{1,40}$")
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


class ConfigError(Exception):
    """A configuration mistake, reported before any dump starts; the CLI exits 2 on it."""


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach an S3-compatible store. Equal settings share one client."""

    endpoint: str | None = None
    region: str | None = None
    access_key: Secret | None = None
    secret_key: Secret | None = None
    force_path_style: bool = False
    checksum: str = "auto"
    max_attempts: int = 5
    part_size: int = DEFAULT_PART_SIZE_MB * 1024 * 1024
    concurrency: int = DEFAULT_UPLOAD_CONCURRENCY


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
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


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

    @property
    def base_dir(self) -> str:
        """The first path segment of every key: the prefix, else the PostgreSQL host (as the original).

        When two prefix-less connections share a host, their name (and so their folder) is host:port,
        so that their backups can never mix."""
        return self.name

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

    def connection(self, ref: str | int) -> Connection:
        """Find a connection by name or 0-based index (events and the CLI accept both)."""
        for c in self.connections:
            if c.name == ref or (isinstance(ref, int) and c.index == ref):
                return c
        if isinstance(ref, str) and ref.isdigit() and int(ref) < len(self.connections):
            return self.connections[int(ref)]
        names = ", ".join(repr(c.name) for c in self.connections)
        raise ConfigError(f"unknown connection {ref!r}: PG_URLS defines {names} (or use a 0-based index)")


# --------------------------------------------------------------------------------------------------
# Parsing


def parse_bool(value: str, what: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{what}: {value!r} is not true or false. Fix: use true or false.")


def parse_int(value: str, what: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise ConfigError(f"{what}: {value!r} is not a whole number. Fix: use a number such as 7.") from None
    if n < minimum or (maximum is not None and n > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
        raise ConfigError(f"{what}: {n} is out of range. Fix: use a number {bound}.")
    return n


def check_bucket(name: str, what: str) -> str:
    if not _BUCKET.match(name) or ".." in name:
        raise ConfigError(
            f"{what}: {name!r} is not a valid bucket name. Fix: use 3-63 lowercase letters, digits, "
            "dots or hyphens, starting and ending with a letter or digit."
        )
    return name


def check_endpoint(url: str, what: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what}: {url!r} is not an http(s) URL. Fix: write it as http://host:port.")
    return url.rstrip("/")


def split_items(raw: str) -> list[str]:
    """Split PG_URLS at the commas that separate items.

    A comma belongs to the list only when the text before it ends an item, that is, contains a
    postgres:// URL. Commas inside metadata (``db_buckets=a=x,b=y``, ``ignore=a,b``) therefore stay in
    their field, because a field always comes before its item's URL.
    """
    items: list[str] = []
    pending: list[str] = []
    for piece in raw.split(","):
        pending.append(piece)
        if _URL_START.search(piece):
            items.append(",".join(pending))
            pending = []
    if pending:
        rest = ",".join(pending)
        if items and rest.strip():
            raise ConfigError(
                f"PG_URLS item {len(items)}: text after its URL ({rest.strip()[:40]!r}...) is not a "
                "connection. Fix: percent-encode commas inside passwords as %2C, or remove the trailing text."
            )
        if rest.strip() or not items:
            items.append(rest)
    return items


@dataclass
class _Item:
    """One PG_URLS item, split into its metadata fields and its URL."""

    number: int
    fields: dict[str, str]
    url: str


def split_item(text: str, number: int) -> _Item:
    where = f"PG_URLS item {number}"
    text = text.strip()
    if not text:
        raise ConfigError(f"{where} is empty. Fix: remove the extra comma.")
    m = _URL_START.search(text)
    if not m:
        scheme = text.split("://", 1)[0] if "://" in text else ""
        hint = f" (found scheme {scheme!r})" if scheme and "|" not in scheme and "@" not in scheme else ""
        raise ConfigError(
            f"{where}: no postgres:// URL{hint}. Fix: end each item with postgres://user:pass@host:port/db."
        )
    meta, url = text[: m.start()], text[m.start():]
    fields: dict[str, str] = {}
    if meta:
        if meta[-1] not in "|@":
            raise ConfigError(f"{where}: metadata must be separated from the URL by | or @.")
        parts = re.split(r"[|@]", meta[:-1])
        for pos, part in enumerate(parts):
            km = _KEYED.match(part.strip())
            if km:
                key = km.group(1).lower()
                if key not in KEY_ALIASES:
                    known = ", ".join(sorted(KEY_ALIASES))
                    raise ConfigError(f"{where}: unknown key {km.group(1)!r}. Fix: use one of {known}.")
                name, value = KEY_ALIASES[key], km.group(2).strip()
            elif part.strip().startswith("="):
                raise ConfigError(f"{where}: field {pos + 1} has an empty key. Fix: write key=value.")
            else:
                if pos >= len(POSITIONAL_FIELDS):
                    raise ConfigError(
                        f"{where}: too many positional fields ({len(parts)}). Fix: positional fields are "
                        f"{'|'.join(POSITIONAL_FIELDS)}; use key=value for others."
                    )
                name, value = POSITIONAL_FIELDS[pos], part.strip()
                if not value:
                    continue
            if name in fields:
                raise ConfigError(f"{where}: field {name!r} is given twice. Fix: keep one.")
            fields[name] = value
    return _Item(number, fields, url)


def parse_url(url: str, where: str) -> PgTarget:
    shown = url_without_password(url)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 5432
    except ValueError:
        raise ConfigError(f"{where}: field 'url': bad port in {shown}. Fix: use a port from 1 to 65535.") from None
    if not parts.hostname:
        raise ConfigError(f"{where}: field 'url': {shown} has no host. Fix: postgres://user:pass@HOST:5432/db.")
    if parts.username is None or parts.username == "":
        raise ConfigError(f"{where}: field 'url': {shown} has no user. Fix: postgres://USER:pass@host:5432/db.")
    params: list[tuple[str, str]] = []
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key == "password":
            raise ConfigError(f"{where}: field 'url': put the password before the host, not in ?password=.")
        if key == "sslmode" and value not in SSL_MODES:
            raise ConfigError(
                f"{where}: field 'url': sslmode={value!r} is not valid. Fix: use one of {', '.join(SSL_MODES)}."
            )
        params.append((key, value))
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    database = urllib.parse.unquote(parts.path.lstrip("/")) or "postgres"
    return PgTarget(
        host=parts.hostname,
        port=port,
        user=urllib.parse.unquote(parts.username),
        password=Secret(password) if password else None,
        database=database,
        params=tuple(params),
    )


def parse_db_buckets(value: str, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        db, sep, bucket = pair.partition("=")
        if not sep or not db.strip() or not bucket.strip():
            raise ConfigError(
                f"{where}: field 'db_buckets': {pair!r} is not db=bucket. Fix: db_buckets=db1=bucket1,db2=bucket2."
            )
        out[db.strip()] = check_bucket(bucket.strip(), f"{where}: field 'db_buckets' ({db.strip()})")
    return out


def split_list(value: str) -> frozenset[str]:
    return frozenset(x.strip() for x in value.split(",") if x.strip())


def load(env: Mapping[str, str] | None = None) -> Config:
    """Read and check the whole configuration. Raises ConfigError on the first mistake."""
    env = dict(os.environ if env is None else env)
    tz_name = env.get("TIMEZONE", "").strip() or DEFAULT_TIMEZONE
    try:
        tz = zoneinfo.ZoneInfo(tz_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"TIMEZONE: unknown time zone {tz_name!r}. Fix: use an IANA name such as America/Sao_Paulo or UTC."
        ) from None

    checksum = env.get("S3_CHECKSUM", "auto").strip().lower() or "auto"
    if checksum not in CHECKSUM_MODES:
        raise ConfigError(f"S3_CHECKSUM: {checksum!r} is not valid. Fix: use one of {', '.join(CHECKSUM_MODES)}.")
    glob_s3 = S3Settings(
        endpoint=check_endpoint(env["S3_ENDPOINT"], "S3_ENDPOINT") if env.get("S3_ENDPOINT", "").strip() else None,
        region=env.get("S3_REGION", "").strip() or None,
        access_key=Secret(env["S3_ACCESS_KEY"]) if env.get("S3_ACCESS_KEY") else None,
        secret_key=Secret(env["S3_SECRET_KEY"]) if env.get("S3_SECRET_KEY") else None,
        force_path_style=parse_bool(env.get("S3_FORCE_PATH_STYLE", "false"), "S3_FORCE_PATH_STYLE"),
        checksum=checksum,
        max_attempts=parse_int(env.get("S3_MAX_ATTEMPTS", "5"), "S3_MAX_ATTEMPTS", minimum=1, maximum=20),
        part_size=parse_int(env.get("S3_PART_SIZE_MB", str(DEFAULT_PART_SIZE_MB)), "S3_PART_SIZE_MB",
                            minimum=5, maximum=512) * 1024 * 1024,
        concurrency=parse_int(env.get("S3_UPLOAD_CONCURRENCY", str(DEFAULT_UPLOAD_CONCURRENCY)),
                              "S3_UPLOAD_CONCURRENCY", minimum=1, maximum=32),
    )
    if glob_s3.region and not _REGION.match(glob_s3.region):
        raise ConfigError(f"S3_REGION: {glob_s3.region!r} is not a region name. Fix: e.g. us-east-1.")
    if bool(glob_s3.access_key) != bool(glob_s3.secret_key):
        raise ConfigError("S3_ACCESS_KEY and S3_SECRET_KEY: set both or neither (neither uses the AWS role).")
    global_bucket = env.get("S3_BUCKET", "").strip() or None
    if global_bucket:
        check_bucket(global_bucket, "S3_BUCKET")
    global_ignore = split_list(env.get("IGNORE_DATABASES", ""))
    retention = {
        unit: parse_int(env.get(f"RETENTION_{unit.upper()}", "0") or "0", f"RETENTION_{unit.upper()}")
        for unit in ("days", "weeks", "months")
    }

    raw = env.get("PG_URLS", "")
    if not raw.strip():
        raise ConfigError("PG_URLS is not set. Fix: PG_URLS=postgres://user:pass@host:5432/postgres")
    items = [split_item(text, n) for n, text in enumerate(split_items(raw), start=1)]
    connections = [_connection(item, glob_s3, global_bucket, global_ignore, retention) for item in items]
    connections = _name_connections(connections)

    level = parse_int(env.get("ZIP_COMPRESSION_LEVEL", str(DEFAULT_COMPRESSION_LEVEL)) or "6",
                      "ZIP_COMPRESSION_LEVEL", minimum=0, maximum=9)
    threads_raw = env.get("COMPRESSION_THREADS", "").strip()
    threads = parse_int(threads_raw, "COMPRESSION_THREADS", minimum=1, maximum=64) if threads_raw else None
    log_level = (env.get("LOG_LEVEL", "INFO").strip() or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"LOG_LEVEL: {log_level!r} is not a level. Fix: DEBUG, INFO, WARNING or ERROR.")
    bindir = env.get("PG_BIN_DIR", "").strip()
    if bindir and not Path(bindir, "pg_dump").exists():
        raise ConfigError(f"PG_BIN_DIR: no pg_dump in {bindir!r}. Fix: point it at the client's bin folder.")
    password = env.get("ZIP_PASSWORD", "")
    return Config(
        connections=tuple(connections),
        timezone=tz,
        global_prefix=env.get("GLOBAL_PREFIX", "").strip().strip("/"),
        zip_password=Secret(password) if password else None,
        compression_level=level,
        compression_threads=threads,
        log_level=log_level,
        pg_bindir=Path(bindir) if bindir else None,
        env=env,
    )


def _connection(
    item: _Item,
    glob_s3: S3Settings,
    global_bucket: str | None,
    global_ignore: frozenset[str],
    retention: Mapping[str, int],
) -> Connection:
    where = f"PG_URLS item {item.number}"
    f = item.fields
    prefix = f.get("prefix") or None
    if prefix is not None and ("/" in prefix or prefix in (".", "..")):
        raise ConfigError(
            f"{where}: field 'prefix': {prefix!r} may not contain '/'. Fix: use GLOBAL_PREFIX for folders.")
    label = f"{where} ({prefix})" if prefix else where
    pg = parse_url(item.url, label)
    where = f"{where} ({prefix or pg.host})"
    bucket = check_bucket(f["bucket"], f"{where}: field 'bucket'") if "bucket" in f else global_bucket
    s3 = glob_s3
    if "endpoint" in f:
        s3 = replace(s3, endpoint=check_endpoint(f["endpoint"], f"{where}: field 'endpoint'"))
    if "region" in f:
        if not _REGION.match(f["region"]):
            raise ConfigError(f"{where}: field 'region': {f['region']!r} is not a region name. Fix: e.g. us-east-1.")
        s3 = replace(s3, region=f["region"])
    if "forcepath" in f:
        s3 = replace(s3, force_path_style=parse_bool(f["forcepath"], f"{where}: field 'forcepath'"))
    if ("access" in f) != ("secret" in f):
        raise ConfigError(f"{where}: fields 'access' and 'secret' go together. Fix: give both, or neither.")
    if "access" in f:
        s3 = replace(s3, access_key=Secret(f["access"]), secret_key=Secret(f["secret"]))
    days, weeks, months = (
        parse_int(f[k], f"{where}: field {k!r}") if k in f else retention[k.split("_")[1]]
        for k in ("retention_days", "retention_weeks", "retention_months")
    )
    db_buckets = parse_db_buckets(f["db_buckets"], where) if "db_buckets" in f else {}
    if bucket is None and not db_buckets:
        raise ConfigError(
            f"{where}: no bucket. Fix: set S3_BUCKET, or bucket=... (or db_buckets=...) in this PG_URLS item."
        )
    return Connection(
        index=item.number - 1,
        name=prefix or pg.host,
        prefix=prefix,
        pg=pg,
        s3=s3,
        bucket=bucket,
        db_buckets=db_buckets,
        ignore=global_ignore | split_list(f.get("ignore", "")),
        retention_days=days,
        retention_weeks=weeks,
        retention_months=months,
    )


def _name_connections(connections: list[Connection]) -> list[Connection]:
    """Name each connection by prefix, else host; use host:port when two hosts would clash."""
    hosts = [c.pg.host for c in connections if c.prefix is None]
    named = [
        replace(c, name=f"{c.pg.host}:{c.pg.port}") if c.prefix is None and hosts.count(c.pg.host) > 1 else c
        for c in connections
    ]
    seen: dict[str, int] = {}
    for c in named:
        if c.name in seen:
            raise ConfigError(
                f"PG_URLS item {c.index + 1}: its name {c.name!r} is already used by item {seen[c.name] + 1}, "
                "and both would write to the same folder. Fix: give one of them a prefix (prefix|...|postgres://...)."
            )
        seen[c.name] = c.index
    return named
