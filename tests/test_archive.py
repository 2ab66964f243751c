"""ZipStreamWriter / iter_member: exact round trips, integrity errors, threads, the AES adapter."""

from __future__ import annotations

import importlib.metadata
import io
import os
import random
import struct
import threading
import tomllib
import types
import zipfile
import zlib
from datetime import datetime
from pathlib import Path

import pytest
import pyzipper
import pyzipper.zipfile_aes
from Cryptodome.Cipher import AES
from Cryptodome.Hash import HMAC, SHA1
from Cryptodome.Protocol.KDF import PBKDF2
from Cryptodome.Util import Counter
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet

from pgbkp.archive import (
    ArchiveError,
    ArchiveStats,
    CorruptArchiveError,
    MemberReader,
    WrongPasswordError,
    ZipStreamWriter,
    iter_member,
)
from pgbkp.archive import aes as archive_aes
from pgbkp.archive.crc import crc32_combine
from tests.bench.bench_archive import make_corpus

BLOCK = 64 * 1024
NAME = "dump é ☃ 日本.sql"


def mixed_data(size: int, seed: int = 1) -> bytes:
    """Random and text runs interleaved, so blocks see both compressible and incompressible data."""
    rng = random.Random(seed)
    text = b"INSERT INTO t VALUES (42, 'some words here', now());\n" * 2000
    parts: list[bytes] = []
    total = 0
    while total < size:
        n = rng.randint(1, 40_000)
        part = rng.randbytes(n) if rng.random() < 0.4 else text[rng.randint(0, 1000) :][:n]
        parts.append(part)
        total += len(part)
    return b"".join(parts)[:size]


def write_archive(data: bytes, *, chunk: int = 10_000, **options: object) -> tuple[bytes, ArchiveStats]:
    sink = io.BytesIO()
    writer = ZipStreamWriter(sink, options.pop("name", NAME), **options)  # type: ignore[arg-type]
    for offset in range(0, len(data), chunk):
        writer.write(data[offset : offset + chunk])
    stats = writer.close()
    return sink.getvalue(), stats


def payload_offset(archive: bytes) -> int:
    name_len, extra_len = struct.unpack_from("<HH", archive, 26)
    return 30 + name_len + extra_len


def deflate_payload(archive: bytes, stats: ArchiveStats) -> bytes:
    start = payload_offset(archive)
    return archive[start : start + stats.compressed_bytes]


def flip(archive: bytes, position: int) -> bytes:
    damaged = bytearray(archive)
    damaged[position] ^= 0x40
    return bytes(damaged)


def wrong_password_for(archive: bytes, avoid: bytes) -> bytes:
    start = payload_offset(archive)
    return password_not_matching(archive[start : start + 18], avoid)


def password_not_matching(aes_header: bytes, avoid: bytes) -> bytes:
    """A password other than ``avoid`` whose 2-byte verifier does not match by chance (1 in 65536)."""
    salt, verifier = aes_header[:16], aes_header[16:18]
    for n in range(100):
        candidate = b"wrong-%d" % n
        if candidate != avoid and PBKDF2(candidate.decode(), salt, count=1000, dkLen=66)[64:] != verifier:
            return candidate
    raise AssertionError("unreachable")


def deflate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("zip-deflate")]


# --- the deflate stream --------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("size", [0, 1, 1000, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK, 5 * BLOCK + 17, 700_001])
def test_stream_inflates_to_exactly_the_input(size: int, threads: int) -> None:
    data = mixed_data(size, seed=size)
    archive, stats = write_archive(data, threads=threads, block_size=BLOCK, chunk=7777)
    inflater = zlib.decompressobj(-15)
    assert inflater.decompress(deflate_payload(archive, stats)) == data
    assert inflater.eof and not inflater.unused_data
    assert stats.raw_bytes == size
    assert stats.crc32 == zlib.crc32(data)
    assert stats.archive_bytes == len(archive)


@pytest.mark.parametrize("block_size", [1, 1000, 40_000])
def test_blocks_smaller_than_the_window_still_form_one_stream(block_size: int) -> None:
    data = mixed_data(12_000 if block_size == 1 else 120_000, seed=3)  # 12,000 one-byte blocks are plenty
    archive, stats = write_archive(data, threads=2, block_size=block_size, chunk=3333)
    assert zlib.decompress(deflate_payload(archive, stats), -15) == data


def test_accepts_bytearray_and_memoryview() -> None:
    data = mixed_data(300_000)
    sink = io.BytesIO()
    writer = ZipStreamWriter(sink, NAME, threads=2, block_size=BLOCK)
    writer.write(bytearray(data[:100_000]))
    writer.write(memoryview(data)[100_000:])
    stats = writer.close()
    assert stats.raw_bytes == len(data)
    assert zipfile.ZipFile(io.BytesIO(sink.getvalue())).read(NAME) == data


def test_parallel_size_within_a_tenth_of_a_percent_of_single_thread() -> None:
    corpus = make_corpus(6 << 20)
    _, serial = write_archive(corpus, threads=1, chunk=1 << 20)
    _, parallel = write_archive(corpus, threads=2, chunk=1 << 20)
    assert serial.compressed_bytes < len(corpus) / 1.8  # the corpus really is compressible text
    assert abs(parallel.compressed_bytes - serial.compressed_bytes) / serial.compressed_bytes < 0.001


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc32_combine_matches_zlib(first: bytes, second: bytes) -> None:
    assert crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second)) == zlib.crc32(first + second)


def test_crc32_combine_long_second_part() -> None:
    first, second = os.urandom(100), os.urandom(3 * 1024 * 1024 + 5)
    assert crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second)) == zlib.crc32(first + second)


# --- standard readers ----------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_python_zipfile_reads_plain(threads: int, level: int) -> None:
    data = mixed_data(400_000)
    moment = datetime(2024, 5, 17, 13, 45, 58)
    archive, _ = write_archive(data, threads=threads, level=level, block_size=BLOCK, mtime=moment)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert zf.testzip() is None
        (info,) = zf.infolist()
        assert info.filename == NAME
        assert info.date_time == (2024, 5, 17, 13, 45, 58)
        assert info.file_size == len(data)
        assert zf.read(NAME) == data


@pytest.mark.parametrize("threads", [1, 2])
def test_pyzipper_reads_aes(threads: int) -> None:
    data = mixed_data(400_000)
    archive, stats = write_archive(data, threads=threads, password=b"p\xc3\xa4ss", block_size=BLOCK)
    assert stats.archive_bytes == len(archive)
    with pyzipper.AESZipFile(io.BytesIO(archive)) as zf:
        zf.setpassword(b"p\xc3\xa4ss")
        (info,) = zf.infolist()
        assert info.wz_aes_strength == 3
        assert zf.read(NAME) == data


# --- iter_member ---------------------------------------------------------------------------------


class TrickleReader:
    """A stream whose read() returns fewer bytes than asked, like a network body."""

    def __init__(self, data: bytes, most: int) -> None:
        self._stream = io.BytesIO(data)
        self._most = most

    def read(self, size: int) -> bytes:
        return self._stream.read(min(size, self._most))


@pytest.mark.parametrize("password", [None, b"secret"])
@pytest.mark.parametrize("chunk_size", [1, 4096, 1 << 20])
def test_iter_member_round_trip(password: bytes | None, chunk_size: int) -> None:
    data = mixed_data(300_000 if chunk_size > 1 else 20_000)
    archive, _ = write_archive(data, threads=2, password=password, block_size=BLOCK)
    source = io.BytesIO(archive)
    chunks = list(iter_member(source, password, chunk_size=chunk_size))
    assert b"".join(chunks) == data
    assert all(len(chunk) <= chunk_size for chunk in chunks)
    assert source.read() == b""  # the central directory and end records were drained


@pytest.mark.parametrize("password", [None, b"secret"])
def test_member_reader_with_short_reads_and_empty_member(password: bytes | None) -> None:
    for data in (b"", mixed_data(150_000)):
        archive, _ = write_archive(data, threads=2, password=password, block_size=BLOCK)
        reader = MemberReader(TrickleReader(archive, 777), password, chunk_size=5000)
        assert reader.name == NAME
        assert b"".join(reader) == data
        assert reader.crc32 == zlib.crc32(data)
        with pytest.raises(ArchiveError):
            iter(reader)


def test_iter_member_bounds_output_of_highly_compressible_data() -> None:
    archive, _ = write_archive(bytes(20_000_000), threads=2, chunk=1 << 20)
    assert len(archive) < 100_000
    chunks = iter_member(io.BytesIO(archive), chunk_size=1 << 16)
    assert max(len(chunk) for chunk in chunks) <= 1 << 16


def test_plain_flipped_data_byte_is_a_crc_mismatch() -> None:
    data = mixed_data(200_000)
    archive, stats = write_archive(data, threads=2, level=0, block_size=BLOCK)
    damaged = flip(archive, payload_offset(archive) + stats.compressed_bytes // 2)
    with pytest.raises(CorruptArchiveError, match="CRC"):
        b"".join(iter_member(io.BytesIO(damaged)))


def test_plain_flipped_compressed_byte_is_corrupt() -> None:
    archive, stats = write_archive(mixed_data(200_000), threads=2, block_size=BLOCK)
    damaged = flip(archive, payload_offset(archive) + stats.compressed_bytes // 3)
    with pytest.raises(CorruptArchiveError):
        b"".join(iter_member(io.BytesIO(damaged)))


@pytest.mark.parametrize("level", [0, 6])
def test_aes_flipped_byte_is_an_hmac_mismatch(level: int) -> None:
    archive, stats = write_archive(mixed_data(200_000), threads=2, level=level, password=b"pw")
    position = payload_offset(archive) + 18 + stats.compressed_bytes // 2
    with pytest.raises(CorruptArchiveError, match="HMAC" if level == 0 else None):
        b"".join(iter_member(io.BytesIO(flip(archive, position)), b"pw"))


# Offsets of fields that carry meaning, from the start of each trailer record.
TRAILER_FIELDS = {
    b"PK\x07\x08": {"signature": 0, "crc": 4, "compressed size": 8, "size": 16},
    b"PK\x01\x02": {"signature": 0, "crc": 16, "name": 46, "zip64 size": 46 + len(NAME.encode()) + 4,
                     "zip64 compressed size": 46 + len(NAME.encode()) + 12},
    b"PK\x06\x06": {"signature": 0, "record size": 4, "disk": 16, "entries": 32, "cd size": 40,
                     "cd offset": 48},
    b"PK\x06\x07": {"signature": 0, "record offset": 8, "disks": 16},
    b"PK\x05\x06": {"signature": 0, "entries": 10, "cd size": 12, "cd offset": 16, "comment length": 20},
}  # fmt: skip


@pytest.mark.parametrize("password", [None, b"pw"])
@pytest.mark.parametrize(
    ("signature", "field"), [(sig, field) for sig, fields in TRAILER_FIELDS.items() for field in fields]
)
def test_flipped_trailer_field_is_corrupt(password: bytes | None, signature: bytes, field: str) -> None:
    archive, _ = write_archive(mixed_data(100_000), threads=2, password=password)
    position = archive.rfind(signature) + TRAILER_FIELDS[signature][field]
    with pytest.raises(CorruptArchiveError):
        b"".join(iter_member(io.BytesIO(flip(archive, position)), password))


@pytest.mark.parametrize("password", [None, b"pw"])
def test_truncated_stream_is_corrupt(password: bytes | None) -> None:
    archive, stats = write_archive(mixed_data(300_000), threads=2, password=password, block_size=BLOCK)
    start = payload_offset(archive)
    for cut in (10, start - 3, start + 10, start + stats.compressed_bytes // 2, len(archive) - 120,
                len(archive) - 40, len(archive) - 1):  # fmt: skip
        with pytest.raises(CorruptArchiveError, match=r"truncated|missing"):
            b"".join(iter_member(io.BytesIO(archive[:cut]), password))


def test_trailing_garbage_is_corrupt() -> None:
    archive, _ = write_archive(b"abc" * 1000, threads=2)
    with pytest.raises(CorruptArchiveError):
        b"".join(iter_member(io.BytesIO(archive + b"junk")))


def test_wrong_or_missing_password_fails_before_any_data() -> None:
    archive, _ = write_archive(mixed_data(100_000), threads=2, password=b"right")
    for password in (wrong_password_for(archive, b"right"), None):
        chunks = iter_member(io.BytesIO(archive), password)
        with pytest.raises(WrongPasswordError):
            next(chunks)
        with pytest.raises(WrongPasswordError):
            MemberReader(io.BytesIO(archive), password)


def test_not_a_zip_is_corrupt() -> None:
    with pytest.raises(CorruptArchiveError, match="signature"):
        MemberReader(io.BytesIO(b"\x1f\x8b" + bytes(100)))


# --- lifecycle -----------------------------------------------------------------------------------


def test_abort_stops_all_workers_and_is_idempotent() -> None:
    writer = ZipStreamWriter(io.BytesIO(), NAME, threads=4, block_size=BLOCK)
    writer.write(mixed_data(20 * BLOCK))
    assert deflate_threads()
    writer.abort()
    writer.abort()
    assert not deflate_threads()
    with pytest.raises(ArchiveError, match="after abort"):
        writer.write(b"x")
    with pytest.raises(ArchiveError, match="after abort"):
        writer.close()


def test_close_stops_workers_and_returns_the_same_stats_again() -> None:
    writer = ZipStreamWriter(io.BytesIO(), NAME, threads=2, block_size=BLOCK)
    writer.write(mixed_data(5 * BLOCK))
    stats = writer.close()
    assert not deflate_threads()
    assert writer.close() == stats
    writer.abort()  # harmless after close
    with pytest.raises(ArchiveError, match="after close"):
        writer.write(b"x")


def test_context_manager_aborts_on_exception() -> None:
    with pytest.raises(RuntimeError), ZipStreamWriter(io.BytesIO(), NAME, threads=2, block_size=BLOCK) as w:
        w.write(mixed_data(6 * BLOCK))
        raise RuntimeError("pg_dump failed")
    assert not deflate_threads()


class FailingSink:
    def __init__(self, fail_at: int) -> None:
        self.writes = 0
        self.fail_at = fail_at

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.writes >= self.fail_at:
            raise OSError("upload s3://bucket/key: connection reset")


def test_sink_error_propagates_and_stops_workers() -> None:
    writer = ZipStreamWriter(FailingSink(fail_at=3), NAME, threads=2, block_size=BLOCK)
    with pytest.raises(OSError, match="connection reset"):
        for _ in range(40):
            writer.write(mixed_data(BLOCK))
    assert not deflate_threads()
    with pytest.raises(ArchiveError):
        writer.write(b"more")


def test_in_flight_blocks_are_bounded() -> None:
    class PeakSink:
        """Records how many blocks were queued whenever output reaches the sink."""

        def __init__(self) -> None:
            self.writer: ZipStreamWriter | None = None
            self.peak = 0

        def write(self, data: bytes) -> None:
            if self.writer is not None:
                self.peak = max(self.peak, len(self.writer._pending))

    sink = PeakSink()
    sink.writer = ZipStreamWriter(sink, NAME, threads=2, block_size=BLOCK)
    for _ in range(30):
        sink.writer.write(os.urandom(BLOCK))
    sink.writer.close()
    assert 0 < sink.peak <= 4  # 2 * threads


@pytest.mark.parametrize(
    ("options", "message"),
    [({"level": 10}, "level"), ({"level": -1}, "level"), ({"threads": 0}, "threads"),
     ({"block_size": 0}, "block_size"), ({"password": b""}, "password")],
)  # fmt: skip
def test_rejects_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ZipStreamWriter(io.BytesIO(), NAME, **options)  # type: ignore[arg-type]


def test_old_mtime_is_clamped_to_1980() -> None:
    archive, _ = write_archive(b"x", threads=1, mtime=datetime(1970, 1, 1))
    assert zipfile.ZipFile(io.BytesIO(archive)).infolist()[0].date_time == (1980, 1, 1, 0, 0, 0)


# --- the AES adapter: pyzipper's private API, pinned ---------------------------------------------
# pgbkp.archive.aes drives AESZipDecrypter's private ``decypter`` and ``hmac`` (the reader must decrypt
# before it knows how much of a chunk to authenticate). These tests hold it to WinZip AES computed from
# pycryptodomex directly, so a pyzipper release that moves or changes them fails here, by name.

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def winzip_aes_256(password: bytes, salt: bytes, plaintext: bytes) -> tuple[bytes, bytes, bytes]:
    """(salt + verifier, ciphertext, auth code) per the WinZip AE spec, without pyzipper."""
    keys = PBKDF2(password, salt, dkLen=66, count=1000)  # AES key, HMAC key, password verifier
    cipher = AES.new(keys[:32], AES.MODE_CTR, counter=Counter.new(128, little_endian=True))
    ciphertext = cipher.encrypt(plaintext)
    return salt + keys[64:], ciphertext, HMAC.new(keys[32:64], ciphertext, SHA1).digest()[:10]


def test_pyzipper_private_api_decrypts_and_authenticates_separately() -> None:
    plaintext = mixed_data(100_000, seed=5)
    header, ciphertext, code = winzip_aes_256(b"pin", bytes(range(16)), plaintext)
    decrypter = archive_aes.AesDecrypter("m.sql", b"pin", 3, header)
    decrypted = decrypter.decrypt(ciphertext[:4097]) + decrypter.decrypt(ciphertext[4097:])
    assert decrypted == plaintext, "pyzipper's AESZipDecrypter.decypter no longer decrypts WinZip AES-CTR"
    decrypter.authenticate(ciphertext[:1000])
    decrypter.authenticate(ciphertext[1000:])
    decrypter.verify(code)  # decrypt() added nothing to the MAC: it covers exactly what was authenticated

    one_byte_more = archive_aes.AesDecrypter("m.sql", b"pin", 3, header)
    one_byte_more.authenticate(ciphertext + b"P")
    with pytest.raises(CorruptArchiveError) as caught:
        one_byte_more.verify(code)
    assert str(caught.value) == "read zip 'm.sql': HMAC mismatch (data altered)"
    with pytest.raises(WrongPasswordError) as wrong:
        archive_aes.AesDecrypter("m.sql", password_not_matching(header, b"pin"), 3, header)
    assert str(wrong.value) == "read zip 'm.sql': wrong password"
    with pytest.raises(CorruptArchiveError, match=r"^read zip 'm.sql': truncated AES header$"):
        archive_aes.AesDecrypter("m.sql", b"pin", 3, header[:17])


def test_aes_encrypter_writes_winzip_aes_256() -> None:
    plaintext = mixed_data(50_000, seed=6)
    encrypter = archive_aes.AesEncrypter(b"pin")
    header = encrypter.header()
    ciphertext = encrypter.encrypt(plaintext[:777]) + encrypter.encrypt(plaintext[777:])
    assert (header, ciphertext, encrypter.auth_code()) == winzip_aes_256(b"pin", header[:16], plaintext)


@pytest.mark.parametrize("strength", [0, 4])
def test_unknown_aes_strength_is_corrupt(strength: int) -> None:
    with pytest.raises(CorruptArchiveError) as caught:
        archive_aes.header_length("m.sql", strength)
    assert str(caught.value) == f"read zip 'm.sql': unknown AES strength {strength}"


@pytest.mark.parametrize(("attribute", "method"), [("decypter", "decrypt"), ("hmac", "update"), ("hmac", "digest")])
def test_a_pyzipper_without_the_private_api_fails_with_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, attribute: str, method: str
) -> None:
    class MovedDecrypter(pyzipper.zipfile_aes.AESZipDecrypter):  # type: ignore[misc]
        """A pyzipper release that renamed or reshaped the attribute the reader drives."""

        def __init__(self, *args: object) -> None:
            super().__init__(*args)
            kept = getattr(self, attribute)
            others = {name: getattr(kept, name) for name in ("decrypt", "update", "digest") if hasattr(kept, name)}
            setattr(self, attribute, types.SimpleNamespace(**{k: v for k, v in others.items() if k != method}))

    archive, _ = write_archive(mixed_data(10_000), threads=1, password=b"pw")
    monkeypatch.setattr(pyzipper.zipfile_aes, "AESZipDecrypter", MovedDecrypter)
    with pytest.raises(ArchiveError) as caught:
        MemberReader(io.BytesIO(archive), b"pw")
    assert type(caught.value) is ArchiveError
    assert str(caught.value) == (
        f"read zip {NAME!r}: pyzipper {pyzipper.__version__} has no AESZipDecrypter.{attribute}.{method}(), "
        "which pgbkp's streaming AES reader drives (pgbkp/archive/aes.py). "
        "Fix: install pyzipper>=0.4.0,<0.5, as pyproject.toml requires"
    )


def test_pyzipper_is_within_the_range_the_adapter_was_checked_on() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    assert [d for d in dependencies if d.startswith("pyzipper")] == ["pyzipper" + archive_aes.PYZIPPER_RANGE], (
        "pyproject.toml must require exactly pgbkp.archive.aes.PYZIPPER_RANGE: widen both together, "
        "after the AES adapter tests pass on the new pyzipper"
    )
    installed = importlib.metadata.version("pyzipper")
    assert installed in SpecifierSet(archive_aes.PYZIPPER_RANGE), (
        f"pyzipper {installed} is installed; pgbkp.archive.aes was checked on pyzipper{archive_aes.PYZIPPER_RANGE}"
    )
