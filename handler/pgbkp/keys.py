"""Object keys and file names, exactly as the original pg-bkp wrote them.

    {GLOBAL_PREFIX}/{base_dir}/{db}/{prefix-}{db}-{HH}h-{MM}m-{DD}d-{MM}mes-{YYYY}y.zip

A database name is free text in PostgreSQL, so two characters are percent-encoded wherever it appears
in a key: ``%`` as ``%25`` and ``/`` as ``%2F``. Nothing else changes, so every name the original
wrote is unchanged, and the encoding can always be decoded.
"""

from __future__ import annotations

import re
from datetime import datetime

_STAMP = r"(?P<H>\d{2})h-(?P<M>\d{2})m-(?P<d>\d{2})d-(?P<m>\d{2})mes-(?P<Y>\d{4})y\.zip"


def encode_name(name: str) -> str:
    """Make a database name safe as one key segment (reversible)."""
    return name.replace("%", "%25").replace("/", "%2F")


def decode_name(segment: str) -> str:
    return segment.replace("%2F", "/").replace("%2f", "/").replace("%25", "%")


def filename(database: str, when: datetime, prefix: str | None = None) -> str:
    """``(prefix-)?{db}-{HH}h-{MM}m-{DD}d-{MM}mes-{YYYY}y.zip`` with ``when`` in local time."""
    lead = f"{prefix}-" if prefix else ""
    return f"{lead}{encode_name(database)}-{when:%H}h-{when:%M}m-{when:%d}d-{when:%m}mes-{when:%Y}y.zip"


def folder(global_prefix: str, base_dir: str, database: str) -> str:
    """The key prefix (ending in ``/``) that holds one database's backups, and nothing else."""
    parts = [p for p in (global_prefix.strip("/"), encode_name(base_dir), encode_name(database)) if p]
    return "/".join(parts) + "/"


def object_key(global_prefix: str, base_dir: str, database: str, when: datetime, prefix: str | None) -> str:
    return folder(global_prefix, base_dir, database) + filename(database, when, prefix)


def member_name(key: str) -> str:
    """The SQL file inside the ZIP: the object's file name with ``.sql`` instead of ``.zip``."""
    return key.rsplit("/", 1)[-1].removesuffix(".zip") + ".sql"


def parse_filename(name: str, database: str, prefix: str | None) -> datetime | None:
    """The time in a file name written by us for exactly this database and prefix, else None.

    Anything else (another database whose name shares a start, a person's file, another prefix) gives
    None, and retention never touches what gives None.
    """
    lead = re.escape(f"{prefix}-" if prefix else "") + re.escape(encode_name(database)) + "-"
    m = re.fullmatch(lead + _STAMP, name)
    if not m:
        return None
    try:
        return datetime(int(m["Y"]), int(m["m"]), int(m["d"]), int(m["H"]), int(m["M"]))
    except ValueError:
        return None
