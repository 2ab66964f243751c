"""Streaming single-member ZIP: a parallel-deflate writer and a front-to-back reader.

The backup is one ZIP member streamed from ``pg_dump`` straight into a multipart upload, and a
restore reads it back from one GET, so nothing here seeks or spills to disk and memory stays bounded.
Callers import from here; the modules are:

- ``writer``: ``ZipStreamWriter``, deflate on worker threads (the bottleneck), one ZIP64 member;
- ``reader``: ``MemberReader`` / ``iter_member``, one pass, every record and the integrity record checked;
- ``zipformat``: the records and constants both sides share; ``crc``: CRC-32 of joined blocks;
- ``aes``: WinZip AES-256, the only module that imports pyzipper (and the one use of its private API);
- ``errors``: ``ArchiveError`` and its two kinds.

See docs/archive.md for the layout and the measurements behind the choices.
"""

from __future__ import annotations

from pgbkp.archive.crc import crc32_combine
from pgbkp.archive.errors import ArchiveError, CorruptArchiveError, WrongPasswordError
from pgbkp.archive.reader import MemberReader, SupportsRead, iter_member
from pgbkp.archive.writer import ArchiveStats, SupportsWrite, ZipStreamWriter

__all__ = [
    "ArchiveError",
    "ArchiveStats",
    "CorruptArchiveError",
    "MemberReader",
    "SupportsRead",
    "SupportsWrite",
    "WrongPasswordError",
    "ZipStreamWriter",
    "crc32_combine",
    "iter_member",
]
