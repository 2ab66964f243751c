"""What age costs: the layer alone against pyzipper's AES, and a whole archive written and read back.

    python tests/bench/bench_age.py [--mb 200] [--level 6] [--threads N] [--repeat 3]

``layer``: 1 MiB blocks through AgeWriter / AgeReader (X25519 recipient) and through the archive's
AesEncrypter / AesDecrypter (AES-256-CTR + HMAC-SHA1, what ZIP_PASSWORD costs), from memory into a sink
that counts. ``archive``: dump-like text (bench_archive's corpus, about 3:1) through ZipStreamWriter as a
plain ZIP, with ZIP_PASSWORD (AES) and as a plain ZIP inside age; then MemberReader over each. MB are
10^6 bytes of input. ``cpu s`` is the process's CPU time (all threads): on a shared 2-core machine the
wall-clock MB/s moves with the other load, CPU time much less. The best of ``--repeat`` runs is kept.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable, Iterator

import pyrage
from bench_archive import CountingSink, chunks_from_memory, make_corpus

from pgbkp.archive import MemberReader, ZipStreamWriter
from pgbkp.archive.aes import AesDecrypter, AesEncrypter, header_length
from pgbkp.archive.agecrypt import AgeReader, AgeWriter
from pgbkp.cpus import available_cpus

MIB = 1 << 20


def timed(action: Callable[[], object]) -> tuple[float, float]:
    started, cpu_started = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - started, time.process_time() - cpu_started


def best(repeat: int, action: Callable[[], object]) -> tuple[float, float]:
    runs = [timed(action) for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def blocks(block: bytes, total: int) -> Iterator[bytes]:
    for _ in range(total // len(block)):
        yield block


def line(label: str, size: int, seconds: float, cpu: float) -> None:
    mb = size / 1e6
    print(f"{label:<34} {mb / seconds:9.1f} MB/s {cpu:8.2f} cpu s {1000 * cpu / mb:8.3f} cpu ms/MB")


def layer(total: int, repeat: int) -> None:
    identity = pyrage.x25519.Identity.generate()
    block = os.urandom(MIB)  # crypto does not care what the bytes are

    def age_encrypt() -> None:
        writer = AgeWriter(CountingSink(), [identity.to_public()])
        for piece in blocks(block, total):
            writer.write(piece)
        writer.close()

    sealed = io.BytesIO()
    writer = AgeWriter(sealed, [identity.to_public()])
    for piece in blocks(block, total):
        writer.write(piece)
    writer.close()

    def age_decrypt() -> None:
        sealed.seek(0)
        reader = AgeReader(sealed, [identity])
        while reader.read(MIB):
            pass

    password = b"a benchmark password"
    aes_header = AesEncrypter(password).header()

    def aes_encrypt() -> None:
        encrypter = AesEncrypter(password)
        encrypter.header()
        for piece in blocks(block, total):
            encrypter.encrypt(piece)
        encrypter.auth_code()

    def aes_decrypt() -> None:
        decrypter = AesDecrypter("bench", password, 3, aes_header[: header_length("bench", 3)])
        for piece in blocks(block, total):  # the reader decrypts, then authenticates the same ciphertext
            decrypter.decrypt(piece)
            decrypter.authenticate(piece)

    print(f"layer: {total / 1e6:.0f} MB in 1 MiB blocks")
    line("age encrypt (AgeWriter)", total, *best(repeat, age_encrypt))
    line("age decrypt (AgeReader)", total, *best(repeat, age_decrypt))
    line("AES-256 encrypt (pyzipper)", total, *best(repeat, aes_encrypt))
    line("AES-256 decrypt (pyzipper)", total, *best(repeat, aes_decrypt))


def archive(total: int, level: int, threads: int, repeat: int) -> None:
    corpus = make_corpus()
    identity = pyrage.x25519.Identity.generate()
    password = b"a benchmark password"

    def write(sink: object, secret: bytes | None) -> None:
        with ZipStreamWriter(sink, "bench.sql", level=level, threads=threads, password=secret) as writer:  # type: ignore[arg-type]
            for chunk in chunks_from_memory(corpus, total):
                writer.write(chunk)
            writer.close()

    def write_plain() -> None:
        write(CountingSink(), None)

    def write_aes() -> None:
        write(CountingSink(), password)

    def write_age() -> None:
        sealed = AgeWriter(CountingSink(), [identity.to_public()])
        write(sealed, None)
        sealed.close()

    stored: dict[str, io.BytesIO] = {name: io.BytesIO() for name in ("plain", "aes", "age")}
    write(stored["plain"], None)
    write(stored["aes"], password)
    outer = AgeWriter(stored["age"], [identity.to_public()])
    write(outer, None)
    outer.close()

    def read(name: str, secret: bytes | None) -> Callable[[], None]:
        def action() -> None:
            stored[name].seek(0)
            source = AgeReader(stored[name], [identity]) if name == "age" else stored[name]
            for _ in MemberReader(source, secret):
                pass

        return action

    size = stored["plain"].getbuffer().nbytes
    print(f"\narchive: {total / 1e6:.0f} MB of dump-like text, level {level}, {threads} deflate threads, "
          f"{size / 1e6:.1f} MB of ZIP ({total / size:.2f}:1)")
    line("write plain ZIP", total, *best(repeat, write_plain))
    line("write AES-ZIP (ZIP_PASSWORD)", total, *best(repeat, write_aes))
    line("write ZIP in age (AGE_RECIPIENTS)", total, *best(repeat, write_age))
    line("read plain ZIP", total, *best(repeat, read("plain", None)))
    line("read AES-ZIP", total, *best(repeat, read("aes", password)))
    line("read ZIP in age", total, *best(repeat, read("age", None)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200, help="MiB of input (default 200)")
    parser.add_argument("--level", type=int, default=6)
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    total = args.mb * MIB
    layer(total, args.repeat)
    archive(total, args.level, args.threads, args.repeat)


if __name__ == "__main__":
    main()
