"""The integrity record every backup carries in its own last bytes, the ZIP archive comment.

A backup is written in one request stream and committed in one write, so its SHA-256 cannot be added
afterwards as object metadata (that took a server-side self-copy: a second write, a second version on
versioned buckets, and a data-loss window; see docs/storage.md). Instead the ZIP writer hashes every
byte it emits and ends the end-of-central-directory record with a short ASCII comment::

    pgbkp-integrity/1 sha256=<64 hex> size=<n> raw-size=<n> check=<16 hex>

``sha256`` covers the ``size`` bytes before the comment (the whole archive, the comment's length
field included); ``check`` is the start of the SHA-256 of the record text before it, so a damaged
record is told apart from damaged data. Any flipped, missing or added byte anywhere in the object is
found, wherever the file was copied to, and ZIP tools show the comment and ignore it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

MAGIC = b"pgbkp-integrity/1"
#: The most a ZIP comment (hence the part of a stream held back from the hash) can be.
MAX_COMMENT = 0xFFFF
#: Object metadata set when the upload starts: says that the archive must carry a record, so one
#: stripped from the end cannot pass for a v1 backup (which kept its sha256 in metadata instead).
METADATA_KEY = "integrity"
METADATA_VALUE = "zip-comment/1"

_RECORD = re.compile(
    rb"^pgbkp-integrity/1 sha256=([0-9a-f]{64}) size=(0|[1-9][0-9]{0,19}) raw-size=(0|[1-9][0-9]{0,19}) "
    rb"check=([0-9a-f]{16})$"
)


class IntegrityRecordError(Exception):
    """The record is missing, damaged, or does not match the bytes before it."""


@dataclass(frozen=True)
class Record:
    sha256: str  # of the ``size`` bytes before the record
    size: int
    raw_size: int  # the dump's size, before compression

    def encode(self) -> bytes:
        body = f"{MAGIC.decode()} sha256={self.sha256} size={self.size} raw-size={self.raw_size}".encode()
        return body + b" check=" + _check(body)


def _check(body: bytes) -> bytes:
    return hashlib.sha256(body).hexdigest()[:16].encode()


def encoded_length(size: int, raw_size: int) -> int:
    """The record's length before its hash is known (every field but the numbers has a fixed width)."""
    return len(Record("0" * 64, size, raw_size).encode())


def parse(comment: bytes) -> Record:
    """The record in an archive comment; IntegrityRecordError if it is not one or is damaged."""
    m = _RECORD.match(comment)
    if m is None:
        raise IntegrityRecordError("the integrity record at the end of the archive is malformed")
    body = comment[: comment.rindex(b" check=")]
    if _check(body) != m.group(4):
        raise IntegrityRecordError("the integrity record at the end of the archive is damaged")
    return Record(m.group(1).decode(), int(m.group(2)), int(m.group(3)))


class TailHoldingHash:
    """SHA-256 of a stream whose last ``hold`` bytes may turn out to be the record (not hashed).

    Wraps a reader; the caller learns the comment's length only at the very end, so the newest bytes
    stay out of the hash until :meth:`digest_without` says how many of them to leave out. Also gives
    the whole object's SHA-256 (what v1 backups kept in their ``sha256`` metadata)."""

    def __init__(self, read: Callable[[int], bytes], hold: int = MAX_COMMENT) -> None:
        self._read = read
        self._hold = hold
        self._held = b""
        self._sha = hashlib.sha256()
        self.count = 0

    def read(self, size: int, /) -> bytes:
        data = self._read(size)
        if data:
            self.count += len(data)
            held = self._held + data
            cut = len(held) - self._hold
            if cut > 0:
                self._sha.update(held[:cut])
                held = held[cut:]
            self._held = held
        return data

    def digest_without(self, tail: int) -> str:
        """Hex SHA-256 of everything read so far except its last ``tail`` bytes (``tail <= hold``)."""
        if tail > len(self._held):
            raise ValueError(f"cannot leave out {tail} bytes, only {len(self._held)} are held back")
        sha = self._sha.copy()
        sha.update(self._held[: len(self._held) - tail])
        return sha.hexdigest()

    def digest(self) -> str:
        return self.digest_without(0)
