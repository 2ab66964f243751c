"""Real archive tools read what ZipStreamWriter writes: 7z, bsdtar (libarchive), Info-ZIP unzip.

A missing tool fails the test (never skips): a suite that silently skips its real readers proves nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgbkp.archive import ZipStreamWriter, iter_member
from tests.bench.bench_archive import make_corpus

NAME = "backup ção ☃ 日本.sql"
PASSWORD = "pä$$ 'word\""
ENV = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (p7zip-full / libarchive-tools / unzip are required)"
    return path


def run(*args: str | Path, cwd: Path | None = None, stdin: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as source:
        return subprocess.run(
            [str(arg) for arg in args], cwd=cwd, stdin=source, capture_output=True, env=ENV, timeout=600
        )


def ok(result: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert result.returncode == 0, result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    return result


@pytest.fixture(scope="module")
def payload() -> bytes:
    """A few MB: dump-like text plus an incompressible run, so several 256 KiB blocks of both kinds."""
    return make_corpus(3 << 20) + os.urandom(300_000) + make_corpus(500_000, seed=2)


@pytest.fixture(scope="module")
def archives(payload: bytes, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("archives")
    paths: dict[str, Path] = {}
    for kind, password in (("plain", None), ("aes", PASSWORD.encode())):
        path = directory / f"{kind}.zip"
        with path.open("wb") as sink:
            writer = ZipStreamWriter(sink, NAME, password=password, threads=2, block_size=256 * 1024)
            for offset in range(0, len(payload), 1 << 20):
                writer.write(payload[offset : offset + (1 << 20)])
            writer.close()
        paths[kind] = path
    return paths


def damaged_copy(source: Path, target: Path) -> Path:
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(data)
    return target


@pytest.mark.parametrize("kind", ["plain", "aes"])
def test_7z_extracts_and_tests(kind: str, archives: dict[str, Path], payload: bytes, tmp_path: Path) -> None:
    password = [f"-p{PASSWORD}"] if kind == "aes" else []
    ok(run(tool("7z"), "t", *password, archives[kind]))
    ok(run(tool("7z"), "x", *password, f"-o{tmp_path}", archives[kind]))
    assert (tmp_path / NAME).read_bytes() == payload
    listing = ok(run(tool("7z"), "l", "-slt", *password, archives[kind])).stdout.decode()
    assert f"Size = {len(payload)}" in listing
    if kind == "aes":
        assert "AES-256" in listing


@pytest.mark.parametrize("kind", ["plain", "aes"])
def test_bsdtar_extracts_from_file_and_from_a_pipe(
    kind: str, archives: dict[str, Path], payload: bytes, tmp_path: Path
) -> None:
    password = ["--passphrase", PASSWORD] if kind == "aes" else []
    ok(run(tool("bsdtar"), "-x", *password, "-f", archives[kind], cwd=tmp_path))
    assert (tmp_path / NAME).read_bytes() == payload
    # Reading stdin makes libarchive use its streaming reader: local header + data descriptor only.
    streamed = ok(run(tool("bsdtar"), "-x", "-O", *password, "-f", "-", stdin=archives[kind]))
    assert streamed.stdout == payload


def test_unzip_extracts_and_tests_plain(archives: dict[str, Path], payload: bytes, tmp_path: Path) -> None:
    ok(run(tool("unzip"), "-t", archives["plain"]))
    ok(run(tool("unzip"), "-q", archives["plain"], "-d", tmp_path))
    assert (tmp_path / NAME).read_bytes() == payload


@pytest.mark.parametrize("kind", ["plain", "aes"])
def test_tools_report_a_flipped_byte(kind: str, archives: dict[str, Path], tmp_path: Path) -> None:
    damaged = damaged_copy(archives[kind], tmp_path / "damaged.zip")
    seven_zip_password = [f"-p{PASSWORD}"] if kind == "aes" else []
    assert run(tool("7z"), "t", *seven_zip_password, damaged).returncode != 0
    bsdtar_password = ["--passphrase", PASSWORD] if kind == "aes" else []
    assert run(tool("bsdtar"), "-x", "-O", *bsdtar_password, "-f", damaged).returncode != 0
    if kind == "plain":
        assert run(tool("unzip"), "-t", damaged).returncode != 0


def test_7z_rejects_a_wrong_password(archives: dict[str, Path]) -> None:
    assert run(tool("7z"), "t", "-pnot-the-password", archives["aes"]).returncode != 0


class _PatternSource:
    """Deterministic incompressible-ish chunks, cheap to produce: a random block salted per chunk."""

    def __init__(self, total: int, chunk: int = 4 << 20) -> None:
        self.total, self.chunk = total, chunk
        self.base = os.urandom(chunk)

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        index = 0
        while sent < self.total:
            size = min(self.chunk, self.total - sent)
            yield index.to_bytes(8, "little") + self.base[8:size] if size > 8 else self.base[:size]
            sent += size
            index += 1


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("kind", ["plain", "aes"])
def test_member_over_4_gib(kind: str) -> None:
    """Both sizes over 4 GiB (level 0 keeps the compressed size above too): ZIP64 for real."""
    total = (4 << 30) + (3 << 20) + 123
    password = PASSWORD.encode() if kind == "aes" else None
    seven_zip_password = [f"-p{PASSWORD}"] if password else []
    bsdtar_password = ["--passphrase", PASSWORD] if password else []
    path = Path("/tmp") / f"pgbkp-zip64-{kind}-{os.getpid()}.zip"
    digest = hashlib.sha256()
    started = time.monotonic()
    try:
        with path.open("wb") as sink:
            writer = ZipStreamWriter(sink, NAME, level=0, threads=2, password=password)
            for chunk in _PatternSource(total):
                digest.update(chunk)
                writer.write(chunk)
            stats = writer.close()
        assert stats.raw_bytes == total and stats.compressed_bytes > 1 << 32
        written = time.monotonic()

        listing = ok(run(tool("7z"), "l", "-slt", *seven_zip_password, path)).stdout.decode()
        assert f"Size = {total}" in listing
        ok(run(tool("7z"), "t", *seven_zip_password, path))
        tested = time.monotonic()

        listing = ok(run(tool("bsdtar"), "-t", "-v", *bsdtar_password, "-f", path)).stdout.decode()
        assert NAME in listing and str(total) in listing
        command = [tool("bsdtar"), "-x", "-O", *bsdtar_password, "-f", str(path)]
        extracted = subprocess.Popen(command, stdout=subprocess.PIPE, env=ENV)
        assert extracted.stdout is not None
        bsdtar_digest = hashlib.sha256()
        while block := extracted.stdout.read(1 << 22):
            bsdtar_digest.update(block)
        assert extracted.wait() == 0
        assert bsdtar_digest.digest() == digest.digest()
        extracted_at = time.monotonic()

        reader_digest = hashlib.sha256()
        with path.open("rb") as source:
            for block in iter_member(source, password, chunk_size=4 << 20):
                reader_digest.update(block)
        assert reader_digest.digest() == digest.digest()
        print(
            f"\n>4 GiB {kind} member: write {written - started:.0f}s, 7z l+t {tested - written:.0f}s, "
            f"bsdtar -t/-xO {extracted_at - tested:.0f}s, iter_member {time.monotonic() - extracted_at:.0f}s"
        )
    finally:
        path.unlink(missing_ok=True)
