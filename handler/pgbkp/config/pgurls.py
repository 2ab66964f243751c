"""The PG_URLS grammar: the text of the variable cut into items, each item into metadata fields and a
postgres:// URL, and the URL into a :class:`PgTarget`.

Messages here are built from parsed parts, never from raw text: with an unencoded character anywhere, a
piece of the password can end up in any part, so whatever cannot be shown safely is named, not shown.
docs/configuration.md, "PG_URLS", is the reference.
"""

from __future__ import annotations

import difflib
import re
import urllib.parse
from dataclasses import dataclass, field

from pgbkp.config.model import PgTarget
from pgbkp.config.values import ConfigError, check_bucket, parse_int, plain, show
from pgbkp.redact import Secret

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
    "retention_keep_last": "retention_keep_last",
    "keep_last": "retention_keep_last",
    "storage_class": "storage_class",
    "sse": "sse",
    "sse_kms_key_id": "sse_kms_key_id",
    "object_lock_mode": "object_lock_mode",
    "globals": "globals",
    "databases": "databases",
    "exclude_schema": "exclude_schema",
    "exclude_table": "exclude_table",
    "exclude_table_data": "exclude_table_data",
    "db_exclude_schema": "db_exclude_schema",
    "db_exclude_table": "db_exclude_table",
    "db_exclude_table_data": "db_exclude_table_data",
    "pg_dump_args": "pg_dump_args",
    "age": "age",
    "notify": "notify",
}
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
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
_PARAM_KEY = re.compile(r"^[a-z_][a-z0-9_]*$")
#: ``|key=`` in a URL's path or query: a metadata field written after the URL instead of before it.
_LATE_FIELD = re.compile(r"\|\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")
_ENCODE_HINT = "percent-encode special characters in the user and password (/ %2F, ? %3F, # %23, @ %40, , %2C, % %25)"


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
    return f" ({plain(name)})" if name else ""


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
class Item:
    """One PG_URLS item, split into its metadata fields and its URL."""

    number: int
    fields: dict[str, str]
    url: str
    label: str = ""
    #: The fields given by position (name -> 1-based position): their values are never shown in messages.
    positional: dict[str, int] = field(default_factory=dict)


def split_item(text: str, number: int) -> Item:
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
    return Item(number, fields, url, label, positional)


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
    host = plain(u.host)  # for messages; u.host is the value
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
    late = _LATE_FIELD.search(f"{u.path}?{u.query or ''}")
    if late and late.group(1).lower() in KEY_ALIASES:
        # Taken as part of the database name or a libpq parameter, a notify= URL's token or a secret= key
        # would reach pg_dump's arguments, PostgreSQL's logs and our error messages.
        field_name = late.group(1).lower()
        raise ConfigError(f"{where}: field '{field_name}' is written after the URL (host {host}), where it would "
                          f"be read as part of the database name. Fix: put fields before the URL "
                          f"(name|{field_name}=...|postgres://...); a '|' in a database name is written %7C.")
    seen: dict[str, str] = {}
    for pair in filter(None, (u.query or "").split("&")):
        raw_key, _, raw_value = pair.partition("=")
        key, value = urllib.parse.unquote(raw_key).strip().lower(), urllib.parse.unquote(raw_value)
        if key in _QUERY_REFUSED:
            raise ConfigError(f"{bad}: query parameter {key!r} is not allowed here (host {host}). "
                              f"Fix: {_QUERY_REFUSED[key]}.")
        if not _PARAM_KEY.match(key):
            raise ConfigError(f"{bad}: query parameter {show(key, 30)} is not a libpq parameter name "
                              f"(host {host}). Fix: write ?name=value&name=value, e.g. ?sslmode=require.")
        if key == "ssl":  # libpq's own URI parser reads ssl=true as sslmode=require; conninfo has no ssl
            if value.lower() != "true":
                raise ConfigError(f"{bad}: ssl={show(value, 20)} (host {host}). Fix: use ssl=true or sslmode=....")
            key, value = "sslmode", "require"
        if key == "sslmode" and value not in SSL_MODES:
            raise ConfigError(f"{bad}: sslmode={show(value, 20)} is not valid (host {host}). "
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
                f"{where}: field 'db_buckets': {show(pair)} is not db=bucket. "
                "Fix: db_buckets=db1=bucket1,db2=bucket2."
            )
        if db in out:
            raise ConfigError(f"{where}: field 'db_buckets': database {db!r} is given twice. Fix: keep one.")
        out[db] = check_bucket(bucket, f"{where}: field 'db_buckets' (database {db!r})")
    if not out:
        raise ConfigError(f"{where}: field 'db_buckets' is empty. Fix: db_buckets=db1=bucket1,db2=bucket2, "
                          "or leave it out.")
    return out


