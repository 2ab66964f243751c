"""Configuration: the original pg-bkp's environment variables, parsed and checked before any work starts.

Everything a run needs is read here, once, into frozen dataclasses. A bad value raises
:class:`ConfigError` with one message that names the PG_URLS item (position and name), the field and
the fix, and never the password: messages are built from parsed parts, never from raw URL text, since
an unencoded character can move a piece of the password anywhere. docs/configuration.md is the reference.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import urllib.parse
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pgbkp.redact import Secret

log = logging.getLogger(__name__)

DEFAULT_TIMEZONE = "America/Sao_Paulo"
#: Level 6 is zlib's own default and the knee of the level x ratio x speed curve measured in
#: docs/archive.md: higher levels cost far more CPU for under 2% smaller archives.
DEFAULT_COMPRESSION_LEVEL = 6
DEFAULT_PART_SIZE_MB = 8
DEFAULT_UPLOAD_CONCURRENCY = 4
#: Retention beyond a century is a typo, and would overflow date arithmetic in the planner.
MAX_RETENTION = {"days": 36500, "weeks": 5200, "months": 1200}

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
    "storage_class": "storage_class",
    "sse": "sse",
    "sse_kms_key_id": "sse_kms_key_id",
    "object_lock_mode": "object_lock_mode",
}
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
CHECKSUM_MODES = ("auto", "when_required", "off")
SSE_MODES = ("AES256", "aws:kms")
OBJECT_LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
#: The storage classes AWS S3 takes for a new object. A store with S3_ENDPOINT may name its own, so
#: there only the shape (upper-case letters, digits and _) is checked.
AWS_STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER",
                       "DEEP_ARCHIVE", "REDUCED_REDUNDANCY", "EXPRESS_ONEZONE")
#: Classes whose objects must be restored from the archive tier (hours) before anything can read them.
ARCHIVE_STORAGE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
#: Query parameters that would contradict the URL itself, or put a secret into argv.
_QUERY_REFUSED = {
    "password": "put the password in the URL before the host (postgres://user:PASSWORD@host/db), "
    "percent-encoded",
    "sslpassword": "it would appear in the process list; use a key file without a passphrase",
    "host": "write the host in the URL itself (postgres://user:pass@HOST:port/db)",
    "hostaddr": "write the host in the URL itself (postgres://user:pass@HOST:port/db)",
    "port": "write the port in the URL itself (postgres://user:pass@host:PORT/db)",
    "user": "write the user in the URL itself (postgres://USER:pass@host:port/db)",
    "dbname": "write the database in the URL itself (postgres://user:pass@host:port/DB)",
}

#: A URL starts with postgres:// or postgresql://, not inside a longer scheme (``mypostgres://``).
_URL_START = re.compile(r"(?<![A-Za-z0-9+.\-])postgres(?:ql)?://", re.IGNORECASE)
_KEYED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PARAM_KEY = re.compile(r"^[a-z_][a-z0-9_]*$")
_STORAGE_CLASS = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
#: A KMS key id, key ARN, alias name (alias/x) or alias ARN.
_KMS_KEY = re.compile(r"^[A-Za-z0-9:/_-]{1,2048}$")
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}
_ENCODE_HINT = "percent-encode special characters in the user and password (/ %2F, ? %3F, # %23, @ %40, , %2C, % %25)"
#: A ZIP password shorter than this draws a warning: anyone holding the archive can guess offline.
MIN_ZIP_PASSWORD = 12
#: Why a positional value that fails its check is not shown, and what to do about it.
_POSITIONAL_NOTE = "value not shown: it may be a key moved up by a left-out field"
_POSITIONAL_FIX = ("positional fields are prefix|bucket|endpoint|forcepath|access|secret, so keep a left-out one's "
                   "place empty (a||c) or write key=value")


class ConfigError(Exception):
    """A configuration mistake, reported before any dump starts; the CLI exits 2 on it."""


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
    #: ``text``, ``json`` or None (text on a terminal, JSON elsewhere).
    log_format: str | None = None

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
# Small value parsers, shared by the globals and the per-connection fields.


def parse_bool(value: str, what: str, *, positional: bool = False) -> bool:
    """``positional``: the value sits in a positional PG_URLS field, so it may be a key; never show it."""
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    if positional:
        raise ConfigError(f"{what}: not true or false ({_POSITIONAL_NOTE}). Fix: use true or false; {_POSITIONAL_FIX}.")
    raise ConfigError(f"{what}: {_show(value)} is not true or false. Fix: use true or false.")


def parse_int(value: str, what: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    text = value.strip()
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ConfigError(f"{what}: {_show(value)} is not a whole number. Fix: use a number such as 7.")
    # Python refuses to convert over 4300 digits (ValueError); no setting here needs over 18.
    n = int(text) if len(text.lstrip("+-").lstrip("0")) <= 18 else None
    if n is None or n < minimum or (maximum is not None and n > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
        shown = _show(text, 20) if n is None else str(n)
        raise ConfigError(f"{what}: {shown} is out of range. Fix: use a number {bound}.")
    return n


def check_bucket(name: str, what: str, *, positional: bool = False) -> str:
    if not _BUCKET.match(name) or ".." in name:
        rule = "use 3-63 lowercase letters, digits, dots or hyphens, starting and ending with a letter or digit"
        if positional:
            raise ConfigError(f"{what}: not a valid bucket name ({_POSITIONAL_NOTE}). Fix: {rule}; {_POSITIONAL_FIX}.")
        raise ConfigError(f"{what}: {_show(name)} is not a valid bucket name. Fix: {rule}.")
    return name


def check_endpoint(url: str, what: str, *, positional: bool = False) -> str:
    url = url.strip()
    if not url.isprintable():  # urlsplit silently drops tabs and newlines; boto3 would not
        raise ConfigError(f"{what}: the URL contains control characters. Fix: write it as http://host:port.")
    try:
        parts = urllib.parse.urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port is None or parts.port > 0)
        has_user = "@" in parts.netloc
    except ValueError:
        ok, has_user = False, False
    if has_user:
        raise ConfigError(f"{what}: the URL contains a user or password. Fix: write http://host:port and "
                          "give the keys as access=/secret= (or S3_ACCESS_KEY/S3_SECRET_KEY).")
    if not ok and positional:
        raise ConfigError(f"{what}: not an http(s) URL with a host and a valid port ({_POSITIONAL_NOTE}). "
                          f"Fix: write it as http://host:port or https://host; {_POSITIONAL_FIX}.")
    if not ok:
        raise ConfigError(f"{what}: {_show(url)} is not an http(s) URL with a host and a valid port. "
                          "Fix: write it as http://host:port or https://host.")
    return url.rstrip("/")


def check_region(region: str, what: str) -> str:
    if not _REGION.match(region):
        raise ConfigError(f"{what}: {_show(region)} is not a region name. Fix: use a name such as us-east-1.")
    return region


def check_storage_class(value: str, what: str) -> str:
    """A storage class name, upper-cased. Whether AWS knows it is checked per connection, where the
    endpoint is known (:func:`_check_aws_storage_class`)."""
    name = value.strip().upper()
    if not _STORAGE_CLASS.match(name):
        raise ConfigError(f"{what}: {_show(value)} is not a storage class name. Fix: use the store's class "
                          "name, such as STANDARD_IA or GLACIER_IR (upper-case letters, digits and _).")
    if name in ARCHIVE_STORAGE_CLASSES:
        log.warning("%s: %s backups must be restored from the archive tier (hours, and a request per object) "
                    "before pgbkp restore or verify can read them. GLACIER_IR reads at once.", what, name)
    return name


def _check_aws_storage_class(s3: S3Settings, what: str) -> None:
    """On AWS (no endpoint) only AWS's own classes; another store may name its own."""
    if s3.endpoint is None and s3.storage_class is not None and s3.storage_class not in AWS_STORAGE_CLASSES:
        raise ConfigError(f"{what}: {_show(s3.storage_class)} is not an AWS S3 storage class. Fix: use one of "
                          f"{', '.join(AWS_STORAGE_CLASSES)}, or leave it unset for STANDARD.")


def check_sse(value: str, what: str) -> str:
    """``AES256`` or ``aws:kms``, whatever the case."""
    folded = {m.lower(): m for m in SSE_MODES}.get(value.strip().lower())
    if folded is None:
        raise ConfigError(f"{what}: {_show(value)} is not a server-side encryption mode. Fix: use AES256 or "
                          "aws:kms, or leave it unset (the bucket's default encryption applies).")
    return folded


def check_kms_key_id(value: str, what: str) -> str:
    key = value.strip()
    if not _KMS_KEY.match(key):
        raise ConfigError(f"{what}: {_show(key, 200)} is not a KMS key id. Fix: use a key ARN "
                          "(arn:aws:kms:REGION:ACCOUNT:key/ID), a key id, or alias/NAME.")
    return key


def check_lock_mode(value: str, what: str) -> str | None:
    """``GOVERNANCE`` or ``COMPLIANCE``, whatever the case; ``off`` or ``none``: no lock (None)."""
    mode = value.strip().upper()
    if mode in ("OFF", "NONE"):
        return None
    if mode not in OBJECT_LOCK_MODES:
        raise ConfigError(f"{what}: {_show(value)} is not an Object Lock mode. Fix: use GOVERNANCE or "
                          "COMPLIANCE, or off (no lock).")
    return mode


def split_list(value: str) -> frozenset[str]:
    return frozenset(x.strip() for x in value.split(",") if x.strip())


def _show(value: str, limit: int = 60) -> str:
    """A user's value, quoted and cut short, for messages (repr escapes control characters)."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _plain(text: str, limit: int = 60) -> str:
    """A user's name (a prefix, a host) for a message, unquoted and cut short, with every invisible
    character escaped (``\\n``, ``\\x1b``, ``\\u202e``): a message stays one line that shows what is there."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return "".join(ch if ch.isprintable() and ch != "\\" else repr(ch)[1:-1] for ch in cut)


# --------------------------------------------------------------------------------------------------
# PG_URLS


def split_items(raw: str) -> list[str]:
    """Split PG_URLS at the commas that separate items.

    A comma ends an item only when the text before it holds that item's postgres:// URL; before the URL,
    commas belong to the metadata (``db_buckets=a=x,b=y``, ``ignore=a,b``). So a raw comma *inside* a
    URL (a password, a database name) must be written %2C. One trailing comma is tolerated.
    """
    items: list[str] = []
    pending: list[str] = []
    pieces = raw.split(",")
    for i, piece in enumerate(pieces):
        if not pending and not piece.strip():
            if i == len(pieces) - 1 and items:
                break  # "...,": a trailing comma
            raise ConfigError(
                f"PG_URLS item {len(items) + 1} is empty. Fix: remove the extra comma "
                "(items are separated by exactly one comma)."
            )
        pending.append(piece)
        if _URL_START.search(piece):
            items.append(",".join(pending))
            pending = []
    if pending:
        if items:
            # Never echo this text: with a raw comma in a password it is the password's second half.
            n = len(items)
            raise ConfigError(
                f"PG_URLS item {n + 1}: field 'url': no postgres:// URL after item {n}'s. Either this item "
                f"lacks its URL, or item {n}'s password or database name contains a raw comma. Fix: end every "
                "item with its postgres:// URL, and percent-encode commas inside URLs as %2C."
            )
        items.append(",".join(pending))
    return items


def _name_hint(text: str) -> str:
    """`` (name)`` for an item whose name can be found safely (its prefix, else its host), else ``""``."""
    name = _item_name(text)
    return f" ({_plain(name)})" if name else ""


def _item_name(text: str) -> str | None:
    m = _URL_START.search(text)
    if not m:
        return None
    parts = _meta_parts(text[: m.start()])
    for pos, part in enumerate(parts):
        km = _KEYED.match(part)
        if km and km.group(1).lower() == "prefix" and km.group(2).strip():
            return km.group(2).strip()
        if pos == 0 and not km and part:
            return part
    return _host_of(text[m.start():])


def _meta_parts(meta: str) -> list[str]:
    """The metadata fields before a URL: the last character (| or @) ends them; an item that uses | at
    all is split on | only, so that @ may appear inside values (a secret key, say)."""
    meta = meta.strip()
    if not meta:
        return []
    body = meta[:-1] if meta[-1] in "|@" else meta
    sep = "|" if "|" in body else "@"
    return [p.strip() for p in body.split(sep)]


@dataclass
class _Item:
    """One PG_URLS item, split into its metadata fields and its URL."""

    number: int
    fields: dict[str, str]
    url: str
    label: str = ""
    #: The fields given by position (name -> 1-based position): their values are never shown in messages.
    positional: dict[str, int] = field(default_factory=dict)


def split_item(text: str, number: int) -> _Item:
    where = f"PG_URLS item {number}"
    text = text.strip()
    if not text:
        raise ConfigError(f"{where} is empty. Fix: remove the extra comma.")
    if "\x00" in text:
        raise ConfigError(f"{where}: contains a NUL character (\\x00), which no PostgreSQL or S3 value can hold. "
                          "Fix: remove it.")
    m = _URL_START.search(text)
    if not m:
        head = text.split("://", 1)[0] if "://" in text else ""
        # Only what looks like a scheme (mysql, postgresql+psycopg2): text before :// may be a password's half.
        hint = f" (found scheme {head!r})" if re.fullmatch(r"[a-z]{2,20}(?:\+[a-z0-9]{1,20})?", head) else ""
        raise ConfigError(
            f"{where}: field 'url': no postgres:// or postgresql:// URL{hint}. "
            "Fix: end each item with postgres://user:pass@host:port/db."
        )
    meta, url = text[: m.start()], text[m.start():]
    if meta.strip() and meta.rstrip()[-1] not in "|@":
        # No name here: the text before the URL may be the second half of the previous item's password.
        label = where
        raise ConfigError(
            f"{label}: the text before its postgres:// URL does not end with | or @. This is usually a raw "
            f"comma inside item {number - 1}'s password or database name, or an item without a URL. "
            "Fix: percent-encode commas inside URLs as %2C, and separate metadata from the URL with |."
            if number > 1 else
            f"{label}: the text before its postgres:// URL does not end with | or @. "
            "Fix: separate metadata from the URL with |, as in prefix|bucket=name|postgres://..."
        )
    label = where + _name_hint(text)
    fields: dict[str, str] = {}
    positional: dict[str, int] = {}
    parts = _meta_parts(meta)
    for pos, part in enumerate(parts):
        km = _KEYED.match(part)
        if km:
            key = km.group(1).lower()
            if key not in KEY_ALIASES:
                known = ", ".join(sorted(KEY_ALIASES))
                # A bare secret that contains '=' (base64 padding: 'Zm9vYmFy=') looks like key=value, and
                # may sit in any position when fields are left out. Show the key only when it is a typo
                # of a known key, which a secret is not.
                close = difflib.get_close_matches(key, KEY_ALIASES, n=1, cutoff=0.75) if len(key) <= 30 else []
                shown = (f"unknown key {km.group(1)!r} (did you mean {close[0]!r}?)" if close
                         else "an unknown key (not shown, as it may be part of a secret)")
                raise ConfigError(
                    f"{label}: field {pos + 1} has {shown}. Fix: use one of {known} "
                    "(a value that contains '=' must be written key=value, e.g. secret=abc=)."
                )
            name, value = KEY_ALIASES[key], km.group(2).strip()
        elif part.startswith("="):
            raise ConfigError(f"{label}: field {pos + 1} has an empty key. Fix: write key=value, e.g. bucket=name.")
        else:
            if pos >= len(POSITIONAL_FIELDS):
                raise ConfigError(
                    f"{label}: field {pos + 1}: too many positional fields ({len(parts)}). Fix: positional "
                    f"fields are {'|'.join(POSITIONAL_FIELDS)}|URL; write the others as key=value."
                )
            name, value = POSITIONAL_FIELDS[pos], part
            if not value:
                continue
            positional[name] = pos + 1
        if name in fields:
            raise ConfigError(f"{label}: field {name!r} is given twice. Fix: keep only one.")
        fields[name] = value
    return _Item(number, fields, url, label, positional)


@dataclass(frozen=True)
class _UrlParts:
    """A postgres:// URL cut into its raw (still percent-encoded) parts."""

    user: str | None
    password: str | None
    host: str
    port: str
    path: str
    query: str | None
    fragment: str | None


def _split_url(url: str) -> _UrlParts:
    """Cut ``scheme://[user[:password]@]host[:port][/db][?query][#fragment]`` by hand.

    By hand rather than with urllib, because libpq reads ``+`` in a query literally and because the
    errors here must not depend on what a broken URL happens to contain. Raises ConfigError, naming no
    part of the URL, when the user or password holds an unencoded ``/``, ``?`` or ``#``: the structure
    is then ambiguous and any piece of the URL may be part of the password; the same for more than one
    ``@``: libpq ends the password at the first ``@``, so a raw one in a password is never understood alike.
    """
    rest = url.split("://", 1)[1] if "://" in url else url
    if rest.count("@") > 1:
        raise ConfigError(
            "field 'url': more than one '@', so one is inside the user, password or database name (URL not "
            "shown: any part of it may be the password). Fix: encode @ as %40 there, keeping only the @ before "
            "the host; likewise / %2F, ? %3F, # %23, , %2C, % %25."
        )
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, after = rest[:end], rest[end:]
    if "@" not in authority and "@" in after:
        raise ConfigError(
            "field 'url': the user or password contains an unencoded '/', '?' or '#'. "
            f"Fix: {_ENCODE_HINT}."
        )
    userinfo, at, hostport = authority.rpartition("@")
    user = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        password = pw if colon else None
    if hostport.startswith("["):
        host, bracket, port = hostport[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ConfigError("field 'url': an IPv6 host must be written [address]:port. Fix: e.g. [::1]:5432.")
        port = port[1:]
    else:
        host, _, port = hostport.partition(":")
        host = urllib.parse.unquote(host)
        if not host.startswith("/"):
            host = host.lower()  # DNS names are case-blind; the original's folder used the lowercased host
    after, hash_, fragment = after.partition("#")
    path, qmark, query = after.partition("?")
    return _UrlParts(user, password, host, port, path, query if qmark else None, fragment if hash_ else None)


def _host_of(url: str) -> str | None:
    """The host, for naming an item in messages; None unless the URL is well formed up to its host
    (without ``user@``, what looks like ``host:port`` may really be ``user:password``)."""
    try:
        u = _split_url(url)
    except ConfigError:
        return None
    return u.host if u.host and u.user else None


def parse_url(url: str, where: str) -> PgTarget:
    """A postgres:// URL as a PgTarget. Messages show only parsed parts, never the raw URL."""
    url = url.strip()
    if not re.match(r"postgres(?:ql)?://", url, re.IGNORECASE):
        raise ConfigError(f"{where}: field 'url': not a postgres:// or postgresql:// URL. "
                          "Fix: write postgres://user:pass@host:port/db.")
    try:
        u = _split_url(url)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    bad = f"{where}: field 'url'"
    if not u.host:
        raise ConfigError(f"{bad}: no host. Fix: postgres://user:pass@HOST:5432/db.")
    if not u.host.isprintable() or " " in u.host:
        raise ConfigError(f"{bad}: the host contains spaces or control characters. Fix: write a host name or "
                          "address.")
    host = _plain(u.host)  # for messages; u.host is the value
    if u.port == "":
        port = 5432
    elif u.port.isascii() and u.port.isdigit() and len(u.port) <= 5 and 1 <= int(u.port) <= 65535:
        port = int(u.port)
    else:
        # Never echo the port text: in postgres://user:secret/db (no @host) it is the password.
        raise ConfigError(f"{bad}: the port (host {host}) is not a number from 1 to 65535. "
                          f"Fix: write postgres://user:pass@{host}:5432/db (is the @host part missing?).")
    if not u.user:
        raise ConfigError(f"{bad}: no user (host {host}). Fix: postgres://USER:pass@{host}:5432/db.")
    if u.fragment is not None:
        raise ConfigError(f"{bad}: a '#' after the host (host {host}). Fix: percent-encode '#' as %23.")
    seen: dict[str, str] = {}
    for pair in filter(None, (u.query or "").split("&")):
        raw_key, _, raw_value = pair.partition("=")
        key, value = urllib.parse.unquote(raw_key).strip().lower(), urllib.parse.unquote(raw_value)
        if key in _QUERY_REFUSED:
            raise ConfigError(f"{bad}: query parameter {key!r} is not allowed here (host {host}). "
                              f"Fix: {_QUERY_REFUSED[key]}.")
        if not _PARAM_KEY.match(key):
            raise ConfigError(f"{bad}: query parameter {_show(key, 30)} is not a libpq parameter name "
                              f"(host {host}). Fix: write ?name=value&name=value, e.g. ?sslmode=require.")
        if key == "ssl":  # libpq's own URI parser reads ssl=true as sslmode=require; conninfo has no ssl
            if value.lower() != "true":
                raise ConfigError(f"{bad}: ssl={_show(value, 20)} (host {host}). Fix: use ssl=true or sslmode=....")
            key, value = "sslmode", "require"
        if key == "sslmode" and value not in SSL_MODES:
            raise ConfigError(f"{bad}: sslmode={_show(value, 20)} is not valid (host {host}). "
                              f"Fix: use one of {', '.join(SSL_MODES)}.")
        if key == "connect_timeout":
            parse_int(value, f"{bad}: connect_timeout (host {host})", minimum=0, maximum=3600)
        if "\x00" in value:
            raise ConfigError(f"{bad}: query parameter {key!r} contains %00, a NUL character, which libpq cannot "
                              f"take (host {host}). Fix: remove the %00.")
        if key in seen:
            raise ConfigError(f"{bad}: query parameter {key!r} is given twice (host {host}). Fix: keep one.")
        seen[key] = value
    database = urllib.parse.unquote(u.path[1:]) or "postgres"
    password = urllib.parse.unquote(u.password) if u.password is not None else None
    user = urllib.parse.unquote(u.user)
    for part, text in (("user", user), ("password", password), ("database name", database)):
        if text is not None and "\x00" in text:
            raise ConfigError(f"{bad}: the {part} contains %00, a NUL character, which PostgreSQL cannot take "
                              f"(host {host}). Fix: remove the %00.")
    return PgTarget(
        host=u.host,
        port=port,
        user=user,
        password=Secret(password) if password else None,
        database=database,
        params=tuple(seen.items()),
    )


def parse_db_buckets(value: str, where: str) -> dict[str, str]:
    """``db1=bucket1,db2=bucket2``. A bucket name cannot hold ``=``, so a database name may."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        db, sep, bucket = pair.rpartition("=")
        db, bucket = db.strip(), bucket.strip()
        if not sep or not db or not bucket:
            raise ConfigError(
                f"{where}: field 'db_buckets': {_show(pair)} is not db=bucket. "
                "Fix: db_buckets=db1=bucket1,db2=bucket2."
            )
        if db in out:
            raise ConfigError(f"{where}: field 'db_buckets': database {db!r} is given twice. Fix: keep one.")
        out[db] = check_bucket(bucket, f"{where}: field 'db_buckets' (database {db!r})")
    if not out:
        raise ConfigError(f"{where}: field 'db_buckets' is empty. Fix: db_buckets=db1=bucket1,db2=bucket2, "
                          "or leave it out.")
    return out


# --------------------------------------------------------------------------------------------------
# The whole configuration


def _get(env: Mapping[str, str], name: str, default: str = "") -> str:
    """A variable, stripped; empty counts as unset (``FOO=`` in a .env file)."""
    return env.get(name, "").strip() or default


def load(env: Mapping[str, str] | None = None) -> Config:
    """Read and check the whole configuration. Raises ConfigError on the first mistake."""
    env = dict(os.environ if env is None else env)
    tz_name = _get(env, "TIMEZONE", DEFAULT_TIMEZONE)
    try:
        tz = zoneinfo.ZoneInfo(tz_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(
            f"TIMEZONE: unknown time zone {_show(tz_name)}. Fix: use an IANA name such as America/Sao_Paulo or UTC."
        ) from None

    checksum = _get(env, "S3_CHECKSUM", "auto").lower()
    if checksum not in CHECKSUM_MODES:
        raise ConfigError(
            f"S3_CHECKSUM: {_show(checksum)} is not valid. Fix: use one of {', '.join(CHECKSUM_MODES)}."
        )
    access, secret = env.get("S3_ACCESS_KEY", "").strip(), env.get("S3_SECRET_KEY", "").strip()
    if bool(access) != bool(secret):
        given, missing = ("S3_ACCESS_KEY", "S3_SECRET_KEY") if access else ("S3_SECRET_KEY", "S3_ACCESS_KEY")
        raise ConfigError(f"{given}: set without {missing}. Fix: set both, or neither (then the AWS role "
                          "or default credentials are used).")
    region = _get(env, "S3_REGION")
    sse_raw, kms_raw = _get(env, "S3_SSE"), _get(env, "S3_SSE_KMS_KEY_ID")
    storage_class, lock_mode = _get(env, "S3_STORAGE_CLASS"), _get(env, "S3_OBJECT_LOCK_MODE")
    sse = check_sse(sse_raw, "S3_SSE") if sse_raw else None
    kms_key = check_kms_key_id(kms_raw, "S3_SSE_KMS_KEY_ID") if kms_raw else None
    if kms_key is not None and sse != "aws:kms":
        raise ConfigError(f"S3_SSE_KMS_KEY_ID: {_show(kms_key, 200)} is set, but S3_SSE is "
                          f"{_show(sse) if sse else 'unset'}, and a KMS key applies only to aws:kms. "
                          "Fix: set S3_SSE=aws:kms, or unset S3_SSE_KMS_KEY_ID.")
    lock = check_lock_mode(lock_mode, "S3_OBJECT_LOCK_MODE") if lock_mode else None
    glob_s3 = S3Settings(
        endpoint=check_endpoint(env["S3_ENDPOINT"], "S3_ENDPOINT") if _get(env, "S3_ENDPOINT") else None,
        region=check_region(region, "S3_REGION") if region else None,
        access_key=Secret(access, scrub=False) if access else None,  # an identifier, not a secret
        secret_key=Secret(secret) if secret else None,
        force_path_style=parse_bool(_get(env, "S3_FORCE_PATH_STYLE", "false"), "S3_FORCE_PATH_STYLE"),
        checksum=checksum,
        max_attempts=parse_int(_get(env, "S3_MAX_ATTEMPTS", "5"), "S3_MAX_ATTEMPTS", minimum=1, maximum=20),
        part_size=parse_int(_get(env, "S3_PART_SIZE_MB", str(DEFAULT_PART_SIZE_MB)), "S3_PART_SIZE_MB",
                            minimum=5, maximum=512) * 1024 * 1024,
        concurrency=parse_int(_get(env, "S3_UPLOAD_CONCURRENCY", str(DEFAULT_UPLOAD_CONCURRENCY)),
                              "S3_UPLOAD_CONCURRENCY", minimum=1, maximum=32),
        storage_class=check_storage_class(storage_class, "S3_STORAGE_CLASS") if storage_class else None,
        sse=sse,
        sse_kms_key_id=kms_key,
    )
    global_bucket = _get(env, "S3_BUCKET") or None
    if global_bucket:
        check_bucket(global_bucket, "S3_BUCKET")
    global_ignore = split_list(env.get("IGNORE_DATABASES", ""))
    retention = {
        unit: parse_int(_get(env, f"RETENTION_{unit.upper()}", "0"), f"RETENTION_{unit.upper()}",
                        maximum=MAX_RETENTION[unit])
        for unit in ("days", "weeks", "months")
    }

    level = parse_int(_get(env, "ZIP_COMPRESSION_LEVEL", str(DEFAULT_COMPRESSION_LEVEL)),
                      "ZIP_COMPRESSION_LEVEL", minimum=0, maximum=9)
    threads_raw = _get(env, "COMPRESSION_THREADS")
    threads = parse_int(threads_raw, "COMPRESSION_THREADS", minimum=1, maximum=64) if threads_raw else None
    log_level = _get(env, "LOG_LEVEL", "INFO").upper()
    log_level = "WARNING" if log_level == "WARN" else log_level
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL: {_show(log_level)} is not a level. Fix: use {', '.join(LOG_LEVELS)}.")
    log_format = _get(env, "LOG_FORMAT").lower() or None
    if log_format is not None and log_format not in LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT: {_show(log_format)} is not a format. Fix: use text or json "
                          "(or leave it unset: text on a terminal, JSON elsewhere).")
    bindir = _get(env, "PG_BIN_DIR")
    if bindir:
        for tool in ("pg_dump", "psql"):
            if not Path(bindir, tool).exists():
                raise ConfigError(f"PG_BIN_DIR: no {tool} in {_show(bindir)}. "
                                  "Fix: point it at the PostgreSQL client's bin folder, or unset it.")
    segments = [p for p in _get(env, "GLOBAL_PREFIX").split("/") if p.strip()]
    global_prefix = "/".join(segments)
    if not global_prefix.isprintable():
        raise ConfigError(f"GLOBAL_PREFIX: {_show(global_prefix)} contains control characters. "
                          "Fix: use letters, digits, - _ . and /.")
    if any(p in (".", "..") for p in segments):
        raise ConfigError(f"GLOBAL_PREFIX: {_show(global_prefix)} has a '.' or '..' folder, which would put keys "
                          "outside the prefix or make two names for one folder. Fix: use plain folder names, "
                          "such as backups/prod.")

    raw = env.get("PG_URLS", "")
    if not raw.strip():
        raise ConfigError("PG_URLS: not set. Fix: PG_URLS=postgres://user:pass@host:5432/postgres "
                          "(several connections separated by commas).")
    items = [split_item(text, n) for n, text in enumerate(split_items(raw), start=1)]
    connections = [_connection(item, glob_s3, global_bucket, global_ignore, retention, lock, tz_name)
                   for item in items]
    connections = _name_connections(connections)

    password = env.get("ZIP_PASSWORD", "")
    if password and len(password) < MIN_ZIP_PASSWORD:
        # Neither the password nor its length: both would help a guesser.
        log.warning("ZIP_PASSWORD: shorter than %d characters, so anyone holding an archive can guess it "
                    "offline. Fix: use a passphrase of %d characters or more.", MIN_ZIP_PASSWORD, MIN_ZIP_PASSWORD)
    return Config(
        connections=tuple(connections),
        timezone=tz,
        global_prefix=global_prefix,
        zip_password=Secret(password) if password else None,
        compression_level=level,
        compression_threads=threads,
        log_level=log_level,
        pg_bindir=Path(bindir) if bindir else None,
        env=env,
        log_format=log_format,
    )


def _connection(
    item: _Item,
    glob_s3: S3Settings,
    global_bucket: str | None,
    global_ignore: frozenset[str],
    retention: Mapping[str, int],
    lock_mode: str | None = None,
    timezone: str = DEFAULT_TIMEZONE,
) -> Connection:
    f = item.fields
    where = item.label or f"PG_URLS item {item.number}"
    pg = parse_url(item.url, where)

    def field_name(name: str) -> str:
        pos = item.positional.get(name)
        return f"{where}: field {name!r}" + (f" (positional field {pos})" if pos else "")

    prefix = f.get("prefix") or None
    if prefix is not None and ("/" in prefix or prefix in (".", "..") or not prefix.isprintable()):
        raise ConfigError(
            f"{where}: field 'prefix': {_show(prefix)} may not contain '/' or control characters, nor be . or "
            "'..'. Fix: use a plain name; put folders in GLOBAL_PREFIX."
        )
    # A value given by position is never shown: a left-out field moves a key into its place.
    bucket = (check_bucket(f["bucket"], field_name("bucket"), positional="bucket" in item.positional)
              if "bucket" in f else global_bucket)
    s3 = glob_s3
    if "endpoint" in f:
        s3 = replace(s3, endpoint=check_endpoint(f["endpoint"], field_name("endpoint"),
                                                 positional="endpoint" in item.positional))
    if "region" in f:
        s3 = replace(s3, region=check_region(f["region"], f"{where}: field 'region'"))
    if "forcepath" in f:
        s3 = replace(s3, force_path_style=parse_bool(f["forcepath"], field_name("forcepath"),
                                                     positional="forcepath" in item.positional))
    if "access" in f or "secret" in f:
        access = Secret(f["access"], scrub=False) if f.get("access") else s3.access_key
        secret = Secret(f["secret"]) if f.get("secret") else s3.secret_key
        if not access or not secret:
            given, missing = ("access", "secret") if f.get("access") else ("secret", "access")
            raise ConfigError(
                f"{where}: field {given!r}: given without {missing!r}, and S3_{missing.upper()}_KEY is not set. "
                f"Fix: add {missing}=... to this item, or set both S3_ACCESS_KEY and S3_SECRET_KEY."
            )
        s3 = replace(s3, access_key=access, secret_key=secret)
    days, weeks, months = (
        parse_int(f[k], f"{where}: field {k!r}", maximum=MAX_RETENTION[k.split("_")[1]])
        if k in f else retention[k.split("_")[1]]
        for k in ("retention_days", "retention_weeks", "retention_months")
    )
    s3 = _storage_settings(s3, f, where, lock_mode, (days, weeks, months))
    db_buckets = parse_db_buckets(f["db_buckets"], where) if "db_buckets" in f else {}
    if bucket is None and not db_buckets:
        raise ConfigError(
            f"{where}: field 'bucket': no bucket for this connection. Fix: set S3_BUCKET, or add "
            "bucket=NAME (or db_buckets=db=NAME,...) to this PG_URLS item."
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


def _storage_settings(s3: S3Settings, f: Mapping[str, str], where: str, lock_mode: str | None,
                      policy: tuple[int, int, int]) -> S3Settings:
    """The item's storage class, encryption and Object Lock over the global ones, checked together:
    a KMS key only with aws:kms, a lock only with a retention policy to compute its date from."""
    if "storage_class" in f:
        s3 = replace(s3, storage_class=check_storage_class(f["storage_class"], f"{where}: field 'storage_class'"))
    _check_aws_storage_class(s3, f"{where}: field 'storage_class'" if "storage_class" in f else
                             f"S3_STORAGE_CLASS (for {where}, which has no endpoint)")
    if "sse" in f:
        sse = check_sse(f["sse"], f"{where}: field 'sse'")
        # The global key belongs to the global aws:kms; another mode here drops it.
        s3 = replace(s3, sse=sse, sse_kms_key_id=s3.sse_kms_key_id if sse == "aws:kms" else None)
    if "sse_kms_key_id" in f:
        key = check_kms_key_id(f["sse_kms_key_id"], f"{where}: field 'sse_kms_key_id'")
        if s3.sse != "aws:kms":
            raise ConfigError(f"{where}: field 'sse_kms_key_id': {_show(key, 200)} is set, but this item's "
                              f"encryption is {_show(s3.sse) if s3.sse else 'unset'}, and a KMS key applies only to "
                              "aws:kms. Fix: add sse=aws:kms to this item (or set S3_SSE=aws:kms), or remove "
                              "sse_kms_key_id.")
        s3 = replace(s3, sse_kms_key_id=key)
    if "object_lock_mode" in f:
        lock_mode = check_lock_mode(f["object_lock_mode"], f"{where}: field 'object_lock_mode'")
    if lock_mode is None:
        return replace(s3, object_lock_mode=None)
    if not any(policy):
        what = (f"{where}: field 'object_lock_mode': {lock_mode}" if "object_lock_mode" in f
                else f"S3_OBJECT_LOCK_MODE: {lock_mode} (for {where})")
        raise ConfigError(f"{what} locks each backup for as long as retention keeps it, but retention is off "
                          "(RETENTION_DAYS, RETENTION_WEEKS and RETENTION_MONTHS are all 0), so there is no date to "
                          "lock until. Fix: set RETENTION_DAYS (or retention_days= in this item), or set "
                          "object_lock_mode=off in this item, or unset S3_OBJECT_LOCK_MODE.")
    return replace(s3, object_lock_mode=lock_mode)


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
                f"PG_URLS item {c.index + 1} ({_plain(c.name)}): field 'prefix': the name {_show(c.name)} is already "
                f"used by item {seen[c.name] + 1}, and both would write to the same folder. "
                "Fix: give one of them a distinct prefix (prefix|...|postgres://...)."
            )
        seen[c.name] = c.index
    return named
