"""Streaming single-member ZIP: a parallel-deflate writer and a front-to-back reader.

The backup is one ZIP member streamed from ``pg_dump`` straight into a multipart upload, so nothing
here seeks or spills to disk and memory stays bounded. Deflate is the bottleneck, so the writer cuts
the input into blocks and deflates them on worker threads (zlib releases the GIL), priming each block
with the previous 32 KiB so the joined output is one ordinary raw-deflate stream of nearly the same
size as a single-threaded one. Encryption is WinZip AES-256 with the crypto taken from pyzipper.
See docs/archive.md for the layout and the measurements behind the choices.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib
import math
import os
import struct
import types
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pyzipper.zipfile import BadZipFile
from pyzipper.zipfile_aes import AESZipDecrypter, AESZipEncrypter

from pgbkp import integrity


def _deflate_module() -> types.ModuleType:
    """zlib-ng deflates the same standard stream about 1.9x faster than zlib, at a slightly better ratio;
    a platform without its wheel still gets correct archives from the standard library."""
    try:
        return importlib.import_module("zlib_ng.zlib_ng")
    except ImportError:  # pragma: no cover
        return zlib


deflate_lib = _deflate_module()

__all__ = [
    "ArchiveError",
    "ArchiveStats",
    "CorruptArchiveError",
    "MemberReader",
    "SupportsRead",
    "SupportsWrite",
    "WrongPasswordError",
    "ZipStreamWriter",
    "available_cpus",
    "crc32_combine",
    "iter_member",
]


class ArchiveError(Exception):
    """Base for every archive failure."""


class WrongPasswordError(ArchiveError):
    """The AES password verifier does not match (or a password is missing)."""


class CorruptArchiveError(ArchiveError):
    """CRC, HMAC, size or structure mismatch, or a truncated stream."""


class SupportsWrite(Protocol):
    def write(self, data: bytes, /) -> Any: ...


class SupportsRead(Protocol):
    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class ArchiveStats:
    raw_bytes: int  # bytes fed in (the dump size)
    compressed_bytes: int  # deflate payload bytes (before encryption overhead)
    archive_bytes: int  # total bytes written to the sink
    crc32: int
    sha256: str  # of the archive up to its integrity record (pgbkp.integrity)


# --- ZIP constants ------------------------------------------------------------------------------

_SIG_LOCAL = b"PK\x03\x04"
_SIG_DESCRIPTOR = b"PK\x07\x08"
_SIG_CENTRAL = b"PK\x01\x02"
_SIG_EOCD64 = b"PK\x06\x06"
_SIG_LOCATOR = b"PK\x06\x07"
_SIG_EOCD = b"PK\x05\x06"

_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
_DESCRIPTOR64 = struct.Struct("<4sIQQ")  # 24 bytes
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")  # 56 bytes
_LOCATOR = struct.Struct("<4sIQI")  # 20 bytes
_EOCD = struct.Struct("<4sHHHHIIH")  # 22 bytes
_EXTRA_HEAD = struct.Struct("<HH")
_ZIP64_SIZES = struct.Struct("<HHQQ")  # id, len, uncompressed, compressed
_AES_EXTRA = struct.Struct("<HHH2sBH")  # id, len, vendor version, "AE", strength, real method

_EXTRA_ZIP64 = 0x0001
_EXTRA_AES = 0x9901
_FLAG_ENCRYPTED = 0x0001
_FLAG_DESCRIPTOR = 0x0008
_FLAG_UTF8 = 0x0800
_METHOD_DEFLATE = 8
_METHOD_AES = 99
_VERSION_ZIP64 = 45  # 4.5: ZIP64 extensions
_VERSION_AES = 51  # 5.1: what WinZip AES entries declare
_MADE_BY_UNIX = 3 << 8
_UNIX_FILE_0644 = (0o100644 << 16) & 0xFFFFFFFF
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF

# AE-1: the CRC of the plaintext is kept beside the HMAC of the ciphertext, so every reader also
# checks the decompressed bytes end to end (docs/archive.md explains why not AE-2).
_AES_VENDOR_VERSION = 1
_AES_STRENGTH_256 = 3
_AES_SALT_LEN = 16
_AES_VERIFIER_LEN = 2
_AES_MAC_LEN = 10

_WINDOW = 32 * 1024  # deflate history: the most a block can refer back
_DRAIN_LIMIT = 1 << 20  # the central directory of one member is a few hundred bytes


# --- CRC-32 combine -------------------------------------------------------------------------------
# CRC-32 is a remainder modulo a degree-32 polynomial P over GF(2), so crc(A || B) is crc(A) shifted
# by 8*len(B) zero bits (multiplied by x^(8*len(B)) mod P) xor crc(B). Polynomials are held
# bit-reflected, like the CRC itself: bit 31 is the x^0 coefficient.

_CRC_POLY_REFLECTED = 0xEDB88320


def _gf2_mulmod(a: int, b: int) -> int:
    """a * b mod P, both reflected; at most 32 rounds."""
    product = 0
    bit = 1 << 31
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _CRC_POLY_REFLECTED if b & 1 else b >> 1
    return product


def _powers_of_x() -> tuple[int, ...]:
    """x^(2^k) mod P for k = 0..63 (enough for any length below 2^61 bytes)."""
    table = [1 << 30]  # x^1
    for _ in range(63):
        table.append(_gf2_mulmod(table[-1], table[-1]))
    return tuple(table)


_X_POW_2K = _powers_of_x()


@functools.lru_cache(maxsize=64)
def _shift_operator(length: int) -> int:
    """x^(8*length) mod P; cached because almost every block has the same length."""
    result = 1 << 31  # x^0
    k = 3  # 8 == 2^3
    while length:
        if length & 1:
            result = _gf2_mulmod(_X_POW_2K[k], result)
        length >>= 1
        k += 1
    return result


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A || B from crc32(A), crc32(B) and len(B), as zlib's crc32_combine."""
    return _gf2_mulmod(_shift_operator(len2), crc1) ^ crc2


# --- CPU budget -----------------------------------------------------------------------------------


def _quota_cpus(quota: float, period: float) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_v2_limit(cgroup_root: Path, proc_cgroup: Path) -> int | None:
    """Smallest cpu.max quota from our cgroup up to the root (a parent's limit binds us too)."""
    relative = ""
    for line in (_read_text(proc_cgroup) or "").splitlines():
        if line.startswith("0::"):
            relative = line[3:].strip("/")
    directory = cgroup_root / relative if relative else cgroup_root
    limits: list[int] = []
    while True:
        text = _read_text(directory / "cpu.max")
        if text:
            fields = text.split()
            if len(fields) == 2 and fields[0] != "max":
                limit = _quota_cpus(float(fields[0]), float(fields[1]))
                if limit is not None:
                    limits.append(limit)
        if directory == cgroup_root or cgroup_root not in directory.parents:
            break
        directory = directory.parent
    return min(limits) if limits else None


def _cgroup_v1_limit(cgroup_root: Path) -> int | None:
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota = _read_text(cgroup_root / name / "cpu.cfs_quota_us")
        period = _read_text(cgroup_root / name / "cpu.cfs_period_us")
        if quota and period:
            try:
                return _quota_cpus(float(quota), float(period))
            except ValueError:
                return None
    return None


def available_cpus(*, cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """CPUs this process may really use: affinity mask, then cgroup v2/v1 CPU quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        limit = _cgroup_v2_limit(cgroup_root, proc_cgroup) or _cgroup_v1_limit(cgroup_root)
    except ValueError:
        limit = None
    if limit is not None:
        cpus = min(cpus, limit)
    return max(1, cpus)


# --- writer ---------------------------------------------------------------------------------------


def _dos_datetime(moment: datetime) -> tuple[int, int]:
    """(time, date) DOS fields for the wall-clock value of ``moment``, clamped to 1980..2107."""
    if moment.year < 1980:
        moment = datetime(1980, 1, 1)
    elif moment.year > 2107:
        moment = datetime(2107, 12, 31, 23, 59, 58)
    dos_time = (moment.hour << 11) | (moment.minute << 5) | (moment.second // 2)
    dos_date = ((moment.year - 1980) << 9) | (moment.month << 5) | moment.day
    return dos_time, dos_date


def _deflate_block(block: bytes, history: bytes, level: int, final: bool) -> tuple[bytes, int, int]:
    """Worker: deflate one block primed with the preceding history; byte-aligned unless final.

    Runs on a pool thread; every call below releases the GIL for large buffers.
    """
    if history:
        compressor = deflate_lib.compressobj(level, zlib.DEFLATED, -15, zdict=history)
    else:
        compressor = deflate_lib.compressobj(level, zlib.DEFLATED, -15)
    out = compressor.compress(block) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)
    return out, zlib.crc32(block), len(block)


class ZipStreamWriter:
    """Write one ZIP member to a forward-only sink, deflating blocks on ``threads`` worker threads.

    The sink is only ever called from the thread calling write()/close(). At most ``2 * threads``
    blocks are in flight; write() blocks when that many are queued.
    """

    def __init__(
        self,
        sink: SupportsWrite,
        member_name: str,
        *,
        password: bytes | None = None,
        level: int = 6,
        threads: int | None = None,
        block_size: int = 1 << 20,
        mtime: datetime | None = None,
    ) -> None:
        if not 0 <= level <= 9:
            raise ValueError(f"zip {member_name!r}: compression level must be 0..9, got {level}")
        if block_size < 1:
            raise ValueError(f"zip {member_name!r}: block_size must be positive, got {block_size}")
        threads = available_cpus() if threads is None else threads
        if threads < 1:
            raise ValueError(f"zip {member_name!r}: threads must be >= 1, got {threads}")
        if password is not None and not password:
            raise ValueError(f"zip {member_name!r}: empty password")
        self._name = member_name.encode("utf-8")
        if len(self._name) > _U16_MAX:
            raise ValueError(f"zip {member_name[:40]!r}...: member name longer than 65535 bytes")

        self._sink = sink
        self._member = member_name
        self._level = level
        self._block_size = block_size
        self._dos_time, self._dos_date = _dos_datetime(mtime or datetime.now())
        self._encrypter = AESZipEncrypter(password, nbits=256) if password else None
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="zip-deflate") if threads > 1 else None
        self._serial = None if self._pool else deflate_lib.compressobj(level, zlib.DEFLATED, -15)
        self._max_in_flight = 2 * threads
        self._pending: collections.deque[Future[tuple[bytes, int, int]]] = collections.deque()
        self._buffer = bytearray()
        self._history = b""
        self._raw = 0
        self._compressed = 0
        self._crc = 0
        self._written = 0
        self._sha = hashlib.sha256()
        self._stats: ArchiveStats | None = None
        self._aborted = False
        try:
            self._emit(self._local_header())
            self._data_start = self._written
            if self._encrypter:
                self._emit(self._encrypter.encryption_header())
        except BaseException:
            self.abort()
            raise

    # public API

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._check_open("write")
        if not data:
            return
        try:
            self._raw += memoryview(data).nbytes
            if self._serial is not None:
                self._crc = zlib.crc32(data, self._crc)
                self._emit_payload(self._serial.compress(data))
                return
            self._buffer += data
            size = self._block_size
            while len(self._buffer) >= size:
                block = bytes(self._buffer[:size])
                del self._buffer[:size]
                self._submit(block, final=False)
        except BaseException:
            self.abort()
            raise

    def close(self) -> ArchiveStats:
        if self._stats is not None:
            return self._stats
        self._check_open("close")
        try:
            if self._serial is not None:
                self._emit_payload(self._serial.flush(zlib.Z_FINISH))
            else:
                self._submit(bytes(self._buffer), final=True)
                self._buffer = bytearray()
                while self._pending:
                    self._emit_block(self._pending.popleft().result())
            if self._encrypter:
                self._emit(self._encrypter.flush())  # the 10-byte HMAC-SHA1 authentication code
            record = self._emit_trailer()
        except BaseException:
            self.abort()
            raise
        self._shutdown_pool(cancel=False)
        self._stats = ArchiveStats(self._raw, self._compressed, self._written, self._crc, record.sha256)
        return self._stats

    def abort(self) -> None:
        """Stop the workers and drop buffers; the sink is left as it is (the caller discards it)."""
        if self._stats is not None:
            return
        self._aborted = True
        self._shutdown_pool(cancel=True)
        self._pending.clear()
        self._buffer = bytearray()
        self._history = b""

    def __enter__(self) -> ZipStreamWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # On an exception, or when close() was never reached, nothing valid was written: stop workers.
        self.abort()

    # internals

    def _check_open(self, operation: str) -> None:
        if self._aborted:
            raise ArchiveError(f"zip {self._member!r}: {operation} after abort")
        if self._stats is not None:
            raise ArchiveError(f"zip {self._member!r}: {operation} after close")

    def _shutdown_pool(self, *, cancel: bool) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)

    def _submit(self, block: bytes, *, final: bool) -> None:
        assert self._pool is not None
        history = self._history
        if len(block) >= _WINDOW:
            self._history = block[-_WINDOW:]
        else:
            self._history = (history + block)[-_WINDOW:]
        self._pending.append(self._pool.submit(_deflate_block, block, history, self._level, final))
        # Emit finished blocks in order; wait for the oldest only when too many are in flight.
        pending = self._pending
        while pending and (len(pending) >= self._max_in_flight or pending[0].done()):
            self._emit_block(pending.popleft().result())

    def _emit_block(self, result: tuple[bytes, int, int]) -> None:
        out, crc, length = result
        self._crc = crc32_combine(self._crc, crc, length)
        self._emit_payload(out)

    def _emit_payload(self, out: bytes) -> None:
        if not out:
            return
        self._compressed += len(out)
        if self._encrypter:
            out = self._encrypter.encrypt(out)
        self._emit(out)

    def _emit(self, data: bytes) -> None:
        self._sha.update(data)
        self._sink.write(data)
        self._written += len(data)

    def _emit_trailer(self) -> integrity.Record:
        """The end records, then the integrity record as the archive comment: the hash it carries
        covers every byte before it, the comment's length field included."""
        ends = self._trailer(comment_length=0)
        size = self._written + len(ends)
        length = integrity.encoded_length(size, self._raw)
        ends = self._trailer(comment_length=length)
        self._emit(ends)
        record = integrity.Record(self._sha.hexdigest(), size, self._raw)
        comment = record.encode()
        assert len(comment) == length
        self._sink.write(comment)
        self._written += len(comment)
        return record

    def _method_fields(self) -> tuple[int, int, int, bytes]:
        """(version needed, flags, method, AES extra) shared by the local and central headers."""
        flags = _FLAG_DESCRIPTOR | _FLAG_UTF8
        if not self._encrypter:
            return _VERSION_ZIP64, flags, _METHOD_DEFLATE, b""
        aes = _AES_EXTRA.pack(
            _EXTRA_AES, _AES_EXTRA.size - 4, _AES_VENDOR_VERSION, b"AE", _AES_STRENGTH_256, _METHOD_DEFLATE
        )
        return _VERSION_AES, flags | _FLAG_ENCRYPTED, _METHOD_AES, aes

    def _local_header(self) -> bytes:
        version, flags, method, aes = self._method_fields()
        # Sizes unknown yet: 0 here, real values in the data descriptor. The ZIP64 extra tells
        # streaming readers to expect 8-byte sizes in that descriptor.
        extra = _ZIP64_SIZES.pack(_EXTRA_ZIP64, 16, 0, 0) + aes
        header = _LOCAL.pack(
            _SIG_LOCAL, version, flags, method, self._dos_time, self._dos_date, 0, 0, 0,
            len(self._name), len(extra),
        )  # fmt: skip
        return header + self._name + extra

    def _trailer(self, comment_length: int) -> bytes:
        """Data descriptor, central directory (always ZIP64 sizes), ZIP64 end records, end record
        (announcing a comment of ``comment_length`` bytes, which follows it)."""
        version, flags, method, aes = self._method_fields()
        crc = self._crc
        stored_size = self._written - self._data_start
        descriptor = _DESCRIPTOR64.pack(_SIG_DESCRIPTOR, crc, stored_size, self._raw)
        extra = _ZIP64_SIZES.pack(_EXTRA_ZIP64, 16, self._raw, stored_size) + aes
        central = _CENTRAL.pack(
            _SIG_CENTRAL, _MADE_BY_UNIX | version, version, flags, method, self._dos_time, self._dos_date,
            crc, _U32_MAX, _U32_MAX, len(self._name), len(extra), 0, 0, 0, _UNIX_FILE_0644, 0,
        ) + self._name + extra  # fmt: skip
        cd_offset = self._written + len(descriptor)
        eocd64_offset = cd_offset + len(central)
        eocd64 = _EOCD64.pack(
            _SIG_EOCD64, _EOCD64.size - 12, _MADE_BY_UNIX | version, version, 0, 0, 1, 1,
            len(central), cd_offset,
        )  # fmt: skip
        locator = _LOCATOR.pack(_SIG_LOCATOR, 0, eocd64_offset, 1)
        eocd = _EOCD.pack(_SIG_EOCD, 0, 0, 1, 1, len(central), min(cd_offset, _U32_MAX), comment_length)
        return descriptor + central + eocd64 + locator + eocd


# --- reader ---------------------------------------------------------------------------------------


def _parse_extras(extra: bytes) -> dict[int, bytes]:
    fields: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(extra):
        header_id, size = _EXTRA_HEAD.unpack_from(extra, offset)
        fields[header_id] = extra[offset + 4 : offset + 4 + size]
        offset += 4 + size
    return fields


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

        (sig, _version, flags, method, dos_time, dos_date, crc, csize, usize, name_len, extra_len) = _LOCAL.unpack(
            self._read_exact(_LOCAL.size, "local header")
        )
        if sig != _SIG_LOCAL:
            raise CorruptArchiveError(f"read zip: bad local header signature {sig!r}")
        raw_name = self._read_exact(name_len, "member name")
        self.name = raw_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437", errors="replace")
        self.mtime = _from_dos(dos_time, dos_date)
        extras = _parse_extras(self._read_exact(extra_len, "local extra field"))
        self._flags = flags
        self._zip64 = _EXTRA_ZIP64 in extras
        self._header_crc, self._header_csize, self._header_usize = crc, csize, usize
        if self._zip64 and len(extras[_EXTRA_ZIP64]) >= 16:
            zip64_usize, zip64_csize = struct.unpack_from("<QQ", extras[_EXTRA_ZIP64])
            if usize == _U32_MAX:
                self._header_usize = zip64_usize
            if csize == _U32_MAX:
                self._header_csize = zip64_csize

        self._aes_version = 0
        self._decrypter: AESZipDecrypter | None = None
        self._overhead = 0
        if method == _METHOD_AES:
            aes = extras.get(_EXTRA_AES)
            if aes is None or len(aes) != 7:
                raise CorruptArchiveError(f"read zip {self.name!r}: AES method without a valid 0x9901 field")
            self._aes_version, _vendor, strength, method = struct.unpack("<H2sBH", aes)
            if not password:
                raise WrongPasswordError(f"read zip {self.name!r}: the member is encrypted; password needed")
            info = types.SimpleNamespace(filename=self.name, wz_aes_strength=strength)
            try:
                header = self._read_exact(AESZipDecrypter.encryption_header_length(info), "AES header")
                self._decrypter = AESZipDecrypter(info, password, header)
            except KeyError as exc:
                raise CorruptArchiveError(f"read zip {self.name!r}: unknown AES strength {strength}") from exc
            except RuntimeError as exc:  # pyzipper's "Bad password" (verifier mismatch)
                raise WrongPasswordError(f"read zip {self.name!r}: wrong password") from exc
            self._overhead = len(header) + AESZipDecrypter.hmac_size
        elif flags & _FLAG_ENCRYPTED:
            raise ArchiveError(f"read zip {self.name!r}: unsupported encryption (only WinZip AES)")
        if method != _METHOD_DEFLATE:
            raise ArchiveError(f"read zip {self.name!r}: unsupported compression method {method}")

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise ArchiveError(f"read zip {self.name!r}: a member can be iterated only once")
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
                raise CorruptArchiveError(f"read zip {self.name!r}: truncated archive in member data")
            # The stream's end is only found after decrypting, so the cipher and MAC are driven
            # separately: the MAC must cover exactly the ciphertext up to the end of the deflate data.
            data = decrypter.decypter.decrypt(chunk) if decrypter else chunk
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
                raise CorruptArchiveError(f"read zip {self.name!r}: bad deflate data: {exc}") from exc
            used = len(chunk) - len(inflater.unused_data)
            if decrypter:
                decrypter.hmac.update(chunk[:used])
            self._ahead = chunk[used:]
            consumed += used
            self._offset += used
        self.raw_bytes, self.crc32 = raw, crc
        self._check_end(consumed + self._overhead)

    def _check_end(self, stored_size: int) -> None:
        name = self.name
        if self._decrypter:
            try:
                self._decrypter.check_hmac(self._read_exact(AESZipDecrypter.hmac_size, "AES auth code"))
            except BadZipFile as exc:
                raise CorruptArchiveError(f"read zip {name!r}: HMAC mismatch (data altered)") from exc
        if self._flags & _FLAG_DESCRIPTOR:
            first = self._read_exact(4, "data descriptor")
            crc_bytes = self._read_exact(4, "data descriptor") if first == _SIG_DESCRIPTOR else first
            size_format = "<QQ" if self._zip64 else "<II"
            sizes = self._read_exact(struct.calcsize(size_format), "data descriptor")
            (crc,) = struct.unpack("<I", crc_bytes)
            csize, usize = struct.unpack(size_format, sizes)
        else:
            crc, csize, usize = self._header_crc, self._header_csize, self._header_usize
        self._check_values("data descriptor", crc, csize, usize, stored_size)
        self._check_central_directory(stored_size)

    def _check_values(self, where: str, crc: int, csize: int, usize: int, stored_size: int) -> None:
        name = self.name
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
        name = self.name

        def fail(problem: str) -> CorruptArchiveError:
            return CorruptArchiveError(f"read zip {name!r}: {problem}")

        if len(rest) > _DRAIN_LIMIT:
            raise fail("unexpected data after the member")
        if len(rest) < _CENTRAL.size or not rest.startswith(_SIG_CENTRAL):
            raise fail("missing or truncated central directory")
        fields = _CENTRAL.unpack_from(rest, 0)
        flags, crc, csize, usize, name_len, extra_len, comment_len = fields[3], *fields[7:13]
        cd_size = _CENTRAL.size + name_len + extra_len + comment_len
        if len(rest) < cd_size:
            raise fail("truncated central directory")
        stored_name = rest[_CENTRAL.size : _CENTRAL.size + name_len]
        if stored_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437", errors="replace") != name:
            raise fail("central directory names another member")
        zip64 = _parse_extras(rest[_CENTRAL.size + name_len : _CENTRAL.size + name_len + extra_len]).get(
            _EXTRA_ZIP64, b""
        )
        values = {"usize": usize, "csize": csize}
        position = 0
        for key in ("usize", "csize"):  # ZIP64 extra holds only the fields set to 0xFFFFFFFF, in order
            if values[key] == _U32_MAX:
                if len(zip64) < position + 8:
                    raise fail("central directory ZIP64 field too short")
                (values[key],) = struct.unpack_from("<Q", zip64, position)
                position += 8
        self._check_values("central directory", crc, values["csize"], values["usize"], stored_size)

        end = rest[cd_size:]
        if end.startswith(_SIG_EOCD64):
            if len(end) < _EOCD64.size + _LOCATOR.size:
                raise fail("truncated ZIP64 end records")
            _sig, record_size, _made, _need, disk, cd_disk, here, total, size64, offset64 = _EOCD64.unpack_from(end)
            locator_at = 12 + record_size
            if record_size < _EOCD64.size - 12 or len(end) < locator_at + _LOCATOR.size:
                raise fail("bad ZIP64 end record size")
            if (disk, cd_disk, here, total, size64, offset64) != (0, 0, 1, 1, cd_size, cd_offset):
                raise fail("ZIP64 end record does not match the central directory")
            sig, locator_disk, eocd64_offset, disks = _LOCATOR.unpack_from(end, locator_at)
            if (sig, locator_disk, eocd64_offset, disks) != (_SIG_LOCATOR, 0, cd_offset + cd_size, 1):
                raise fail("bad ZIP64 end record locator")
            end = end[locator_at + _LOCATOR.size :]
        if len(end) < _EOCD.size or not end.startswith(_SIG_EOCD):
            raise fail("missing end of central directory record")
        _sig, disk, cd_disk, here, total, size32, offset32, comment = _EOCD.unpack_from(end)
        if len(end) < _EOCD.size + comment:
            raise fail("truncated archive comment (the integrity record)")
        if len(end) > _EOCD.size + comment:
            raise fail("unexpected data after the end record")
        self._check_record(end[_EOCD.size:], fail)
        if (
            disk not in (0, _U16_MAX)
            or cd_disk not in (0, _U16_MAX)
            or here not in (1, _U16_MAX)
            or total not in (1, _U16_MAX)
            or size32 not in (cd_size, _U32_MAX)
            or offset32 not in (cd_offset, _U32_MAX)
        ):
            raise fail("end record does not match the central directory")


    def _check_record(self, comment: bytes, fail: Any) -> None:
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


def _from_dos(dos_time: int, dos_date: int) -> datetime | None:
    try:
        return datetime(
            1980 + (dos_date >> 9), (dos_date >> 5) & 0xF, dos_date & 0x1F,
            dos_time >> 11, (dos_time >> 5) & 0x3F, (dos_time & 0x1F) * 2,
        )  # fmt: skip
    except ValueError:
        return None


def iter_member(source: SupportsRead, password: bytes | None = None, *, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Yield the decompressed bytes of the single member of a ZIP read front to back.

    Raises WrongPasswordError before yielding anything, CorruptArchiveError (possibly after
    yielding: integrity is known only at the end, so consumers must not commit before exhaustion).
    """
    yield from MemberReader(source, password, chunk_size=chunk_size)
