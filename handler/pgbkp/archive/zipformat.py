"""The on-disk ZIP records, fields and constants the writer emits and the reader checks.

Kept in one place so the two sides cannot drift apart; docs/archive.md ("ZIP layout") describes
the layout these make up.
"""

from __future__ import annotations

import struct
from datetime import datetime

SIG_LOCAL = b"PK\x03\x04"
SIG_DESCRIPTOR = b"PK\x07\x08"
SIG_CENTRAL = b"PK\x01\x02"
SIG_EOCD64 = b"PK\x06\x06"
SIG_LOCATOR = b"PK\x06\x07"
SIG_EOCD = b"PK\x05\x06"

LOCAL = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
DESCRIPTOR64 = struct.Struct("<4sIQQ")  # 24 bytes
CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes
EOCD64 = struct.Struct("<4sQHHIIQQQQ")  # 56 bytes
LOCATOR = struct.Struct("<4sIQI")  # 20 bytes
EOCD = struct.Struct("<4sHHHHIIH")  # 22 bytes
EXTRA_HEAD = struct.Struct("<HH")
ZIP64_SIZES = struct.Struct("<HHQQ")  # id, len, uncompressed, compressed
AES_EXTRA = struct.Struct("<HHH2sBH")  # id, len, vendor version, "AE", strength, real method

EXTRA_ZIP64 = 0x0001
EXTRA_AES = 0x9901
FLAG_ENCRYPTED = 0x0001
FLAG_DESCRIPTOR = 0x0008
FLAG_UTF8 = 0x0800
METHOD_DEFLATE = 8
METHOD_AES = 99
VERSION_ZIP64 = 45  # 4.5: ZIP64 extensions
VERSION_AES = 51  # 5.1: what WinZip AES entries declare
MADE_BY_UNIX = 3 << 8
UNIX_FILE_0644 = (0o100644 << 16) & 0xFFFFFFFF
U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF

# AE-1: the CRC of the plaintext is kept beside the HMAC of the ciphertext, so every reader also
# checks the decompressed bytes end to end (docs/archive.md explains why not AE-2).
AES_VENDOR_VERSION = 1
AES_STRENGTH_256 = 3


def parse_extras(extra: bytes) -> dict[int, bytes]:
    fields: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(extra):
        header_id, size = EXTRA_HEAD.unpack_from(extra, offset)
        fields[header_id] = extra[offset + 4 : offset + 4 + size]
        offset += 4 + size
    return fields


def dos_datetime(moment: datetime) -> tuple[int, int]:
    """(time, date) DOS fields for the wall-clock value of ``moment``, clamped to 1980..2107."""
    if moment.year < 1980:
        moment = datetime(1980, 1, 1)
    elif moment.year > 2107:
        moment = datetime(2107, 12, 31, 23, 59, 58)
    dos_time = (moment.hour << 11) | (moment.minute << 5) | (moment.second // 2)
    dos_date = ((moment.year - 1980) << 9) | (moment.month << 5) | moment.day
    return dos_time, dos_date


def from_dos(dos_time: int, dos_date: int) -> datetime | None:
    try:
        return datetime(
            1980 + (dos_date >> 9), (dos_date >> 5) & 0xF, dos_date & 0x1F,
            dos_time >> 11, (dos_time >> 5) & 0x3F, (dos_time & 0x1F) * 2,
        )  # fmt: skip
    except ValueError:
        return None
