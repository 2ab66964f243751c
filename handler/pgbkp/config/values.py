"""Single values: the parsers and checks that the global variables and the PG_URLS fields share.

Each takes the text and ``what`` (the variable, or the item and field) and raises :class:`ConfigError`
naming ``what`` and the fix. A value given by position in a PG_URLS item (``positional=True``) is never
shown: a left-out field moves a key into its place.
"""

from __future__ import annotations

import json
import re
import urllib.parse

#: Retention beyond a century is a typo, and would overflow date arithmetic in the planner.
MAX_RETENTION = {"days": 36500, "weeks": 5200, "months": 1200}
#: RETENTION_KEEP_LAST: a backup every minute for two months; more is a typo.
MAX_KEEP_LAST = 100_000
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

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_STORAGE_CLASS = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
#: A KMS key id, key ARN, alias name (alias/x) or alias ARN.
_KMS_KEY = re.compile(r"^[A-Za-z0-9:/_-]{1,2048}$")
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}
#: Why a positional value that fails its check is not shown, and what to do about it.
POSITIONAL_NOTE = "value not shown: it may be a key moved up by a left-out field"
POSITIONAL_FIX = ("positional fields are prefix|bucket|endpoint|forcepath|access|secret, so keep a left-out one's "
                  "place empty (a||c) or write key=value")


class ConfigError(Exception):
    """A configuration mistake, reported before any dump starts; the CLI exits 2 on it."""


def show(value: str, limit: int = 60) -> str:
    """A user's value, quoted and cut short, for messages (repr escapes control characters)."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def plain(text: str, limit: int = 60) -> str:
    """A user's name (a prefix, a host) for a message, unquoted and cut short, with every invisible
    character escaped (``\\n``, ``\\x1b``, ``\\u202e``): a message stays one line that shows what is there."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return "".join(ch if ch.isprintable() and ch != "\\" else repr(ch)[1:-1] for ch in cut)


def parse_bool(value: str, what: str, *, positional: bool = False) -> bool:
    """``positional``: the value sits in a positional PG_URLS field, so it may be a key; never show it."""
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    if positional:
        raise ConfigError(f"{what}: not true or false ({POSITIONAL_NOTE}). Fix: use true or false; {POSITIONAL_FIX}.")
    raise ConfigError(f"{what}: {show(value)} is not true or false. Fix: use true or false.")


def parse_int(value: str, what: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    text = value.strip()
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ConfigError(f"{what}: {show(value)} is not a whole number. Fix: use a number such as 7.")
    # Python refuses to convert over 4300 digits (ValueError); no setting here needs over 18.
    n = int(text) if len(text.lstrip("+-").lstrip("0")) <= 18 else None
    if n is None or n < minimum or (maximum is not None and n > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
        shown = show(text, 20) if n is None else str(n)
        raise ConfigError(f"{what}: {shown} is out of range. Fix: use a number {bound}.")
    return n


def check_bucket(name: str, what: str, *, positional: bool = False) -> str:
    if not _BUCKET.match(name) or ".." in name:
        rule = "use 3-63 lowercase letters, digits, dots or hyphens, starting and ending with a letter or digit"
        if positional:
            raise ConfigError(f"{what}: not a valid bucket name ({POSITIONAL_NOTE}). Fix: {rule}; {POSITIONAL_FIX}.")
        raise ConfigError(f"{what}: {show(name)} is not a valid bucket name. Fix: {rule}.")
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
        raise ConfigError(f"{what}: not an http(s) URL with a host and a valid port ({POSITIONAL_NOTE}). "
                          f"Fix: write it as http://host:port or https://host; {POSITIONAL_FIX}.")
    if not ok:
        raise ConfigError(f"{what}: {show(url)} is not an http(s) URL with a host and a valid port. "
                          "Fix: write it as http://host:port or https://host.")
    return url.rstrip("/")


def check_region(region: str, what: str) -> str:
    if not _REGION.match(region):
        raise ConfigError(f"{what}: {show(region)} is not a region name. Fix: use a name such as us-east-1.")
    return region


def check_storage_class(value: str, what: str) -> str:
    """A storage class name, upper-cased. Whether AWS knows it is checked per connection, where the
    endpoint is known; :func:`archive_tier_warning` says what an archive class costs."""
    name = value.strip().upper()
    if not _STORAGE_CLASS.match(name):
        raise ConfigError(f"{what}: {show(value)} is not a storage class name. Fix: use the store's class "
                          "name, such as STANDARD_IA or GLACIER_IR (upper-case letters, digits and _).")
    return name


def archive_tier_warning(name: str | None, what: str) -> str | None:
    """The warning for a storage class whose backups cannot be read at once, else None."""
    if name not in ARCHIVE_STORAGE_CLASSES:
        return None
    return (f"{what}: {name} backups must be restored from the archive tier (hours, and a request per object) "
            "before pgbkp restore or verify can read them. GLACIER_IR reads at once.")


def check_sse(value: str, what: str) -> str:
    """``AES256`` or ``aws:kms``, whatever the case."""
    folded = {m.lower(): m for m in SSE_MODES}.get(value.strip().lower())
    if folded is None:
        raise ConfigError(f"{what}: {show(value)} is not a server-side encryption mode. Fix: use AES256 or "
                          "aws:kms, or leave it unset (the bucket's default encryption applies).")
    return folded


def check_kms_key_id(value: str, what: str) -> str:
    key = value.strip()
    if not _KMS_KEY.match(key):
        raise ConfigError(f"{what}: {show(key, 200)} is not a KMS key id. Fix: use a key ARN "
                          "(arn:aws:kms:REGION:ACCOUNT:key/ID), a key id, or alias/NAME.")
    return key


def check_lock_mode(value: str, what: str) -> str | None:
    """``GOVERNANCE`` or ``COMPLIANCE``, whatever the case; ``off`` or ``none``: no lock (None)."""
    mode = value.strip().upper()
    if mode in ("OFF", "NONE"):
        return None
    if mode not in OBJECT_LOCK_MODES:
        raise ConfigError(f"{what}: {show(value)} is not an Object Lock mode. Fix: use GOVERNANCE or "
                          "COMPLIANCE, or off (no lock).")
    return mode


def split_list(value: str) -> frozenset[str]:
    return frozenset(x.strip() for x in value.split(",") if x.strip())


def unwrap_secret(name: str, value: str, *, what: str | None = None, strict: bool = True) -> str:
    """A secret stored as a JSON object (the Secrets Manager console's key/value form) holds the value under
    the variable's own name: ``{"PG_URLS": "..."}``. The Lambda function fetches the secret itself, but ECS
    (the Fargate task's ``Secrets``) and Kubernetes put the whole secret string into the variable, so every
    edge unwraps the same way. Anything but a JSON object is the value itself. ``strict``: a JSON object
    without that key is a mistake, named as ``what`` (default: ``name``)."""
    if not value.lstrip().startswith("{"):
        return value
    try:
        doc = json.loads(value)
    except ValueError:
        return value
    if not isinstance(doc, dict):
        return value
    if isinstance(doc.get(name), str):
        return str(doc[name])
    if strict:
        raise ConfigError(f"{what or name}: the secret is a JSON object without a string {name!r} key. "
                          f"Fix: store the plain value, or {{\"{name}\": \"...\"}}.")
    return value
