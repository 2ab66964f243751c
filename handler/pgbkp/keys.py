"""Object keys and file names, exactly as the original pg-bkp wrote them.

    {GLOBAL_PREFIX}/{base_dir}/{db}/{prefix-}{db}-{HH}h-{MM}m-{DD}d-{MM}mes-{YYYY}y.zip

and with age public-key encryption (issue 15, docs/age.md) the same name plus ``.age``: the ZIP encrypted as
one age file. Both are one series of backups for retention and listing.

A connection's roles and other globals (``pg_dumpall --globals-only``, BACKUP_GLOBALS) have their own
folder, ``{GLOBAL_PREFIX}/{base_dir}/%globals/``, and file name, ``{prefix-}globals-{HH}h-…y.zip``. No
database can have that folder: :func:`encode_name` writes every ``%`` of a name as ``%25``, so it never
writes a ``%`` followed by ``g``.

A database name is free text in PostgreSQL, so it is percent-encoded wherever it appears in a key, but
only as little as needed: ``%`` becomes ``%25`` and ``/`` becomes ``%2F`` (so a name never adds a path
segment), and a name that is exactly ``.`` or ``..`` becomes ``%2E`` / ``%2E%2E`` (path segments many
S3-compatible stores and tools refuse or collapse). Every other name is written as the original wrote it,
and :func:`decode_name` always gives the name back.
"""

from __future__ import annotations

import re
from datetime import datetime

#: ASCII digits only: ``\d`` would also accept other scripts' digits, which we never write.
_STAMP = r"(?P<H>[0-9]{2})h-(?P<M>[0-9]{2})m-(?P<d>[0-9]{2})d-(?P<m>[0-9]{2})mes-(?P<Y>[0-9]{4})y\.zip(?:\.age)?"
#: The suffix of an age-encrypted backup, after ``.zip`` (docs/age.md).
AGE_SUFFIX = ".age"
_ESCAPED = re.compile(r"%(25|2[Ff]|2[Ee])")
_UNESCAPE = {"25": "%", "2F": "/", "2f": "/", "2E": ".", "2e": "."}


def encode_name(name: str) -> str:
    """Make a database name (or base_dir) safe as one key segment, reversibly."""
    if name in (".", ".."):
        return "%2E" * len(name)
    return name.replace("%", "%25").replace("/", "%2F")


def decode_name(segment: str) -> str:
    """The inverse of :func:`encode_name`, in one pass (so ``%252F`` gives back ``%2F``, not ``/``)."""
    return _ESCAPED.sub(lambda m: _UNESCAPE[m.group(1)], segment)


#: How the globals object is named where a database name would be: results, ``pgbkp list``, hand-off events.
GLOBALS = "(globals)"
#: The globals folder's segment: a ``%`` that is no escape, which :func:`encode_name` never writes.
GLOBALS_SEGMENT = "%globals"
#: The name in the globals object's file name, where a database's name would be.
GLOBALS_FILE = "globals"


def filename(database: str, when: datetime, prefix: str | None = None, suffix: str = "") -> str:
    """``(prefix-)?{db}-{HH}h-{MM}m-{DD}d-{MM}mes-{YYYY}y.zip{suffix}`` with ``when`` in local time; ``suffix``
    is ``""`` or :data:`AGE_SUFFIX`."""
    if suffix not in ("", AGE_SUFFIX):
        raise ValueError(f"file name suffix {suffix!r}: only {AGE_SUFFIX!r} or none")
    lead = f"{prefix}-" if prefix else ""
    return f"{lead}{encode_name(database)}-{when:%H}h-{when:%M}m-{when:%d}d-{when:%m}mes-{when:%Y}y.zip{suffix}"


def folder(global_prefix: str, base_dir: str, database: str) -> str:
    """The key prefix (ending in ``/``) that holds one database's backups, and nothing else."""
    parts = [p for p in (global_prefix.strip("/"), encode_name(base_dir), encode_name(database)) if p]
    return "/".join(parts) + "/"


def globals_folder(global_prefix: str, base_dir: str) -> str:
    """The key prefix (ending in ``/``) that holds the connection's globals backups, and nothing else."""
    return folder(global_prefix, base_dir, "") + GLOBALS_SEGMENT + "/"


def globals_key(global_prefix: str, base_dir: str, when: datetime, prefix: str | None, suffix: str = "") -> str:
    return globals_folder(global_prefix, base_dir) + filename(GLOBALS_FILE, when, prefix, suffix)


def is_globals_key(key: str, global_prefix: str, base_dir: str) -> bool:
    """Whether ``key`` lies directly in the connection's globals folder."""
    root = globals_folder(global_prefix, base_dir)
    return key.startswith(root) and "/" not in key[len(root):]


def object_key(global_prefix: str, base_dir: str, database: str, when: datetime, prefix: str | None,
               suffix: str = "") -> str:
    return folder(global_prefix, base_dir, database) + filename(database, when, prefix, suffix)


def is_age(key: str) -> bool:
    """Whether the object is an age file (``….zip.age``) rather than a bare ZIP."""
    return key.endswith(".zip" + AGE_SUFFIX)


def member_name(key: str) -> str:
    """The SQL file inside the ZIP: the object's file name with ``.sql`` instead of ``.zip`` (or ``.zip.age``),
    so a ``.zip`` and a ``.zip.age`` backup hold the same member."""
    return key.rsplit("/", 1)[-1].removesuffix(AGE_SUFFIX).removesuffix(".zip") + ".sql"


def parse_filename(name: str, database: str, prefix: str | None) -> datetime | None:
    """The time in a file name written by us for exactly this database and prefix, else None.

    Anything else (another database whose name shares a start, a person's file, another prefix, an
    impossible date) gives None, and retention never touches what gives None.
    """
    lead = re.escape(f"{prefix}-" if prefix else "") + re.escape(encode_name(database)) + "-"
    m = re.fullmatch(lead + _STAMP, name)
    if not m:
        return None
    try:
        return datetime(int(m["Y"]), int(m["m"]), int(m["d"]), int(m["H"]), int(m["M"]))
    except ValueError:
        return None


def parse_key(key: str, global_prefix: str, base_dir: str, prefix: str | None) -> tuple[str, datetime] | None:
    """(database, time) of a key this tool wrote for this connection, else None.

    The one rule retention and listing share for "is this object one of our backups": directly in a
    database's own folder (canonically encoded), with a file name for exactly that database and prefix.
    A globals backup gives (:data:`GLOBALS`, time): tell it from a database of that name by its folder
    (:func:`is_globals_key`).
    """
    root = folder(global_prefix, base_dir, "")
    if not key.startswith(root):
        return None
    segment, sep, name = key[len(root):].partition("/")
    if not sep or "/" in name:
        return None
    if segment == GLOBALS_SEGMENT:
        when = parse_filename(name, GLOBALS_FILE, prefix)
        return None if when is None else (GLOBALS, when)
    database = decode_name(segment)
    if encode_name(database) != segment:
        return None
    taken = parse_filename(name, database, prefix)
    return None if taken is None else (database, taken)
