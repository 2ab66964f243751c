"""The front-to-back reader: the single member of a ZIP read from a forward-only stream in one pass.

A restore reads the S3 GET body once, with no range reads and no local copy, so the member's end is
found where its deflate stream ends, and the descriptor, the central directory, the end records and
the integrity record (pgbkp.integrity) are checked after the data. docs/archive.md, "The reader".
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Protocol

from pgbkp import integrity
from pgbkp.archive import aes
from pgbkp.archive import zipformat as zf
from pgbkp.archive.aes import AesDecrypter
from pgbkp.archive.errors import ArchiveError, CorruptArchiveError, WrongPasswordError

__all__ = ["MemberReader", "SupportsRead", "iter_member"]

_DRAIN_LIMIT = 1 << 20  # the central directory of one member is a few hundred bytes


class SupportsRead(Protocol):
    def read(self, size: int, /) -> bytes: ...


class MemberReader:
    """Read the single member of a ZIP from a forward-only stream, front to back, in one pass.

    The local header is parsed on construction (so ``name`` is known and a wrong password fails
    before any data); iterating yields decompressed chunks of at most ``chunk_size`` bytes and ends
    only after the descriptor, HMAC/CRC, sizes and the central directory have been checked.
    """

    def __init__(self, source: SupportsRead, password: bytes | None = None, *, chunk_size: int = 1 << 20) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self._hash = integrity.TailHoldingHash(source.read)
        self._source: SupportsRead = self._hash
        self._chunk_size = chunk_size
        self._ahead = b""
        #: The archive's verified integrity record, or None for an archive without one (v1 backups,
        #: other tools); set when iteration ends. Whether one is required is the caller's decision.
        self.record: integrity.Record | None = None
        #: SHA-256 of the whole object as read, for records kept outside it (v1's ``sha256`` metadata).
        self.object_sha256 = ""
        self._offset = 0  # bytes of the object consumed so far
        self._started = False
        self.raw_bytes = 0
        self.crc32 = 0

        (sig, _version, flags, method, dos_time, dos_date, crc, csize, usize, name_len, extra_len) = zf.LOCAL.unpack(
            self._read_exact(zf.LOCAL.size, "local header")
        )
        if sig != zf.SIG_LOCAL:
            raise CorruptArchiveError(f"read zip: bad local header signature {sig!r}")
        raw_name = self._read_exact(name_len, "member name")
        self.name = raw_name.decode("utf-8" if flags & zf.FLAG_UTF8 else "cp437", errors="replace")
        #: The name as messages show it: a hostile archive may carry 64 KiB of name.
        self._shown = self.name if len(self.name) <= 80 else self.name[:80] + "…"
        self.mtime = zf.from_dos(dos_time, dos_date)
        extras = zf.parse_extras(self._read_exact(extra_len, "local extra field"))
        self._flags = flags
        self._zip64 = zf.EXTRA_ZIP64 in extras
        self._header_crc, self._header_csize, self._header_usize = crc, csize, usize
        if self._zip64 and len(extras[zf.EXTRA_ZIP64]) >= 16:
            zip64_usize, zip64_csize = struct.unpack_from("<QQ", extras[zf.EXTRA_ZIP64])
            if usize == zf.U32_MAX:
                self._header_usize = zip64_usize
            if csize == zf.U32_MAX:
                self._header_csize = zip64_csize

        self._aes_version = 0
        self._decrypter: AesDecrypter | None = None
        self._overhead = 0
        if method == zf.METHOD_AES:
            aes_field = extras.get(zf.EXTRA_AES)
            if aes_field is None or len(aes_field) != 7:
                raise CorruptArchiveError(f"read zip {self._shown!r}: AES method without a valid 0x9901 field")
            self._aes_version, _vendor, strength, method = struct.unpack("<H2sBH", aes_field)
            if not password:
                raise WrongPasswordError(f"read zip {self._shown!r}: the member is encrypted; password needed")
            header = self._read_exact(aes.header_length(self._shown, strength), "AES header")
            self._decrypter = AesDecrypter(self._shown, password, strength, header)
            self._overhead = len(header) + aes.MAC_LENGTH
        elif flags & zf.FLAG_ENCRYPTED:
            raise ArchiveError(f"read zip {self._shown!r}: unsupported encryption (only WinZip AES)")
        if method != zf.METHOD_DEFLATE:
            raise ArchiveError(f"read zip {self._shown!r}: unsupported compression method {method}")

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise ArchiveError(f"read zip {self._shown!r}: a member can be iterated only once")
        self._started = True
        return self._iterate()

    # internals

    def _read_exact(self, size: int, what: str) -> bytes:
        self._offset += size
        parts = [self._ahead[:size]]
        self._ahead = self._ahead[size:]
        missing = size - len(parts[0])
        while missing > 0:
            chunk = self._source.read(max(missing, self._chunk_size))
            if not chunk:
                raise CorruptArchiveError(f"read zip: truncated archive in {what}")
            parts.append(chunk[:missing])
            self._ahead = chunk[missing:]
            missing -= len(chunk)
        return b"".join(parts)

    def _next_chunk(self) -> bytes:
        if self._ahead:
            chunk, self._ahead = self._ahead, b""
            return chunk
        return self._source.read(self._chunk_size)

    def _iterate(self) -> Iterator[bytes]:
        inflater = zlib.decompressobj(-15)
        decrypter = self._decrypter
        limit = self._chunk_size
        consumed = 0
        crc = 0
        raw = 0
        while not inflater.eof:
            chunk = self._next_chunk()
            if not chunk:
                raise CorruptArchiveError(f"read zip {self._shown!r}: truncated archive in member data")
            # The stream's end is only found after decrypting, so the cipher and MAC are driven
            # separately: the MAC must cover exactly the ciphertext up to the end of the deflate data.
            data = decrypter.decrypt(chunk) if decrypter else chunk
            try:
                while data:
                    out = inflater.decompress(data, limit)
                    if out:
                        crc = zlib.crc32(out, crc)
                        raw += len(out)
                        yield out
                    if inflater.eof:
                        break
                    data = inflater.unconsumed_tail
            except zlib.error as exc:
                raise CorruptArchiveError(f"read zip {self._shown!r}: bad deflate data: {exc}") from exc
            used = len(chunk) - len(inflater.unused_data)
            if decrypter:
                decrypter.authenticate(chunk[:used])
            self._ahead = chunk[used:]
            consumed += used
            self._offset += used
        self.raw_bytes, self.crc32 = raw, crc
        self._check_end(consumed + self._overhead)

    def _check_end(self, stored_size: int) -> None:
        if self._decrypter:
            self._decrypter.verify(self._read_exact(aes.MAC_LENGTH, "AES auth code"))
        if self._flags & zf.FLAG_DESCRIPTOR:
            first = self._read_exact(4, "data descriptor")
            crc_bytes = self._read_exact(4, "data descriptor") if first == zf.SIG_DESCRIPTOR else first
            size_format = "<QQ" if self._zip64 else "<II"
            sizes = self._read_exact(struct.calcsize(size_format), "data descriptor")
            (crc,) = struct.unpack("<I", crc_bytes)
            csize, usize = struct.unpack(size_format, sizes)
        else:
            crc, csize, usize = self._header_crc, self._header_csize, self._header_usize
        self._check_values("data descriptor", crc, csize, usize, stored_size)
        self._check_central_directory(stored_size)

    def _check_values(self, where: str, crc: int, csize: int, usize: int, stored_size: int) -> None:
        name = self._shown
        if usize != self.raw_bytes:
            raise CorruptArchiveError(f"read zip {name!r}: {where} says {usize} bytes, inflated {self.raw_bytes}")
        if csize != stored_size:
            raise CorruptArchiveError(f"read zip {name!r}: {where} says {csize} stored bytes, read {stored_size}")
        crc_expected = not self._decrypter or self._aes_version != 2 or crc != 0
        if crc_expected and crc != self.crc32:
            raise CorruptArchiveError(f"read zip {name!r}: CRC mismatch in {where} ({crc:08x} != {self.crc32:08x})")

    def _check_central_directory(self, stored_size: int) -> None:
        """Drain the rest of the object; check the directory and end records agree with what was read."""
        cd_offset = self._offset
        rest = self._ahead
        self._ahead = b""
        while len(rest) <= _DRAIN_LIMIT:
            chunk = self._source.read(self._chunk_size)
            if not chunk:
                break
            rest += chunk
        name = self._shown

        def fail(problem: str) -> CorruptArchiveError:
            return CorruptArchiveError(f"read zip {name!r}: {problem}")

        if len(rest) > _DRAIN_LIMIT:
            raise fail("unexpected data after the member")
        if len(rest) < zf.CENTRAL.size or not rest.startswith(zf.SIG_CENTRAL):
            raise fail("missing or truncated central directory")
        fields = zf.CENTRAL.unpack_from(rest, 0)
        flags, crc, csize, usize, name_len, extra_len, comment_len = fields[3], *fields[7:13]
        cd_size = zf.CENTRAL.size + name_len + extra_len + comment_len
        if len(rest) < cd_size:
            raise fail("truncated central directory")
        stored_name = rest[zf.CENTRAL.size : zf.CENTRAL.size + name_len]
        if stored_name.decode("utf-8" if flags & zf.FLAG_UTF8 else "cp437", errors="replace") != name:
            raise fail("central directory names another member")
        zip64 = zf.parse_extras(rest[zf.CENTRAL.size + name_len : zf.CENTRAL.size + name_len + extra_len]).get(
            zf.EXTRA_ZIP64, b""
        )
        values = {"usize": usize, "csize": csize}
        position = 0
        for key in ("usize", "csize"):  # ZIP64 extra holds only the fields set to 0xFFFFFFFF, in order
            if values[key] == zf.U32_MAX:
                if len(zip64) < position + 8:
                    raise fail("central directory ZIP64 field too short")
                (values[key],) = struct.unpack_from("<Q", zip64, position)
                position += 8
        self._check_values("central directory", crc, values["csize"], values["usize"], stored_size)

        end = rest[cd_size:]
        if end.startswith(zf.SIG_EOCD64):
            if len(end) < zf.EOCD64.size + zf.LOCATOR.size:
                raise fail("truncated ZIP64 end records")
            _sig, record_size, _made, _need, disk, cd_disk, here, total, size64, offset64 = zf.EOCD64.unpack_from(end)
            locator_at = 12 + record_size
            if record_size < zf.EOCD64.size - 12 or len(end) < locator_at + zf.LOCATOR.size:
                raise fail("bad ZIP64 end record size")
            if (disk, cd_disk, here, total, size64, offset64) != (0, 0, 1, 1, cd_size, cd_offset):
                raise fail("ZIP64 end record does not match the central directory")
            sig, locator_disk, eocd64_offset, disks = zf.LOCATOR.unpack_from(end, locator_at)
            if (sig, locator_disk, eocd64_offset, disks) != (zf.SIG_LOCATOR, 0, cd_offset + cd_size, 1):
                raise fail("bad ZIP64 end record locator")
            end = end[locator_at + zf.LOCATOR.size :]
        if len(end) < zf.EOCD.size or not end.startswith(zf.SIG_EOCD):
            raise fail("missing end of central directory record")
        _sig, disk, cd_disk, here, total, size32, offset32, comment = zf.EOCD.unpack_from(end)
        if len(end) < zf.EOCD.size + comment:
            raise fail("truncated archive comment (the integrity record)")
        if len(end) > zf.EOCD.size + comment:
            raise fail("unexpected data after the end record")
        self._check_record(end[zf.EOCD.size :], fail)
        if (
            disk not in (0, zf.U16_MAX)
            or cd_disk not in (0, zf.U16_MAX)
            or here not in (1, zf.U16_MAX)
            or total not in (1, zf.U16_MAX)
            or size32 not in (cd_size, zf.U32_MAX)
            or offset32 not in (cd_offset, zf.U32_MAX)
        ):
            raise fail("end record does not match the central directory")

    def _check_record(self, comment: bytes, fail: Callable[[str], CorruptArchiveError]) -> None:
        """A comment must be our integrity record and match every byte before it. Only an archive
        without a comment (v1 backups) has no record: a damaged one never passes for that."""
        self.object_sha256 = self._hash.digest()
        if not comment:
            return
        try:
            record = integrity.parse(comment)
        except integrity.IntegrityRecordError as exc:
            raise fail(str(exc)) from None
        hashed = self._hash.count - len(comment)
        if record.size != hashed:
            raise fail(f"the integrity record covers {record.size} bytes, the archive has {hashed} before it")
        if record.raw_size != self.raw_bytes:
            raise fail(f"the integrity record says {record.raw_size} bytes of dump, inflated {self.raw_bytes}")
        actual = self._hash.digest_without(len(comment))
        if actual != record.sha256:
            raise fail(f"SHA-256 mismatch: the archive hashes to {actual}, its integrity record says "
                       f"{record.sha256}: it changed after the backup")
        self.record = record


def iter_member(source: SupportsRead, password: bytes | None = None, *, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Yield the decompressed bytes of the single member of a ZIP read front to back.

    Raises WrongPasswordError before yielding anything, CorruptArchiveError (possibly after
    yielding: integrity is known only at the end, so consumers must not commit before exhaustion).
    """
    yield from MemberReader(source, password, chunk_size=chunk_size)
