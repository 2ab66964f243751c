"""The integrity record every archive carries: any changed, missing or extra byte is refused."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from pgbkp import integrity
from pgbkp.archive import ArchiveError, MemberReader, ZipStreamWriter

DATA = b"".join(b"row %d of a table that compresses well\n" % (i % 100) for i in range(3000))


def archive(password: bytes | None) -> tuple[bytes, int]:
    out = io.BytesIO()
    with ZipStreamWriter(out, "db.sql", password=password, threads=2, block_size=64 * 1024) as w:
        w.write(DATA)
        stats = w.close()
    body = out.getvalue()
    assert stats.sha256 == hashlib.sha256(body[: body.rindex(integrity.MAGIC)]).hexdigest()
    return body, stats.raw_bytes


def read(body: bytes, password: bytes | None) -> MemberReader:
    reader = MemberReader(io.BytesIO(body), password, chunk_size=4096)
    assert b"".join(reader) == DATA
    return reader


@pytest.mark.parametrize("password", [None, b"a long enough password"], ids=["plain", "aes"])
def test_the_record_covers_every_byte(password: bytes | None) -> None:
    body, raw = archive(password)
    reader = read(body, password)
    at = body.rindex(integrity.MAGIC)
    assert reader.record == integrity.Record(hashlib.sha256(body[:at]).hexdigest(), at, raw)
    assert reader.object_sha256 == hashlib.sha256(body).hexdigest()
    missed = []
    for pos in range(len(body)):
        bad = bytearray(body)
        bad[pos] ^= 0x01
        try:
            read(bytes(bad), password)
        except ArchiveError:
            continue
        missed.append(pos)
    assert missed == []
    for cut in range(1, 300):
        with pytest.raises(ArchiveError):
            read(body[:-cut], password)
    with pytest.raises(ArchiveError, match="unexpected data after the end record"):
        read(body + b"\n", password)


def test_record_text_round_trip_and_damage() -> None:
    record = integrity.Record("ab" * 32, 1234, 98765)
    text = record.encode()
    assert text == (b"pgbkp-integrity/1 sha256=" + b"ab" * 32 + b" size=1234 raw-size=98765 check="
                    + hashlib.sha256(text[: text.rindex(b" check=")]).hexdigest()[:16].encode())
    assert integrity.parse(text) == record
    assert len(text) == integrity.encoded_length(1234, 98765)
    with pytest.raises(integrity.IntegrityRecordError, match="is damaged"):
        integrity.parse(text.replace(b"size=1234", b"size=1235"))
    with pytest.raises(integrity.IntegrityRecordError, match="is malformed"):
        integrity.parse(b"a comment somebody added")


def test_v1_archive_without_a_comment_has_no_record() -> None:
    body, _raw = archive(None)
    at = body.rindex(integrity.MAGIC)
    v1 = body[: at - 2] + b"\x00\x00"  # the end record as v1 wrote it: no comment
    reader = read(v1, None)
    assert reader.record is None
    assert reader.object_sha256 == hashlib.sha256(v1).hexdigest()


def test_hostile_archive_fields_stay_one_short_line() -> None:
    """A 64 KiB member name, or psql echoing a megabyte of hostile SQL, never becomes a megabyte message."""
    import struct

    from pgbkp.archive import CorruptArchiveError
    from pgbkp.archive.zipformat import LOCAL, SIG_LOCAL
    from pgbkp.postgres import _StderrTail

    name = "n" * 65_000
    header = struct.pack(LOCAL.format, SIG_LOCAL, 20, 0, 8, 0, 0, 0, 0, 0, len(name), 0) + name.encode()
    with pytest.raises(CorruptArchiveError) as exc:
        b"".join(MemberReader(io.BytesIO(header), None))
    assert str(exc.value) == f"read zip '{'n' * 80}…': truncated archive in member data"

    read_end, write_end = os.pipe()
    tail = _StderrTail(os.fdopen(read_end, "rb"))
    with os.fdopen(write_end, "wb") as w:
        w.write(b'psql:<stdin>:3: ERROR:  syntax error at or near "' + b"A" * 3_000_000 + b'"\nsecond line\n')
    text = tail.text()
    assert text == ('psql:<stdin>:3: ERROR:  syntax error at or near "' + "A" * (1000 - 49) + " …(cut)\nsecond line\n")
