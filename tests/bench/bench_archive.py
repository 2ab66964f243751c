"""Throughput and size of ZipStreamWriter by level x threads, on dump-like text; with --read, of the reader too.

    python tests/bench/bench_archive.py --threads 1,2,4 --level 1,3,6,9 --mb 200 [--source pipe] [--read]

The input imitates ``pg_dump`` COPY rows (ids, uuids, timestamps, amounts, words from a skewed
vocabulary, emails): about 3:1 with zlib level 6, not repeated filler. A 16 MiB corpus is generated
once and cycled; deflate looks back only 32 KiB, so cycling does not help it. ``--source memory``
feeds 1 MiB slices from memory (measures the writer alone); ``--source pipe`` reads 1 MiB chunks
from a child process writing to a pipe, like the pipeline reads pg_dump (the child costs CPU too).
MB are 10^6 bytes of input; the sink counts and drops the output. ``cpu s`` is the process's CPU time
(all threads): on a shared machine it moves less than the wall-clock MB/s. ``--read`` writes each
level's archive once into memory and times ``MemberReader`` over it (1 MiB reads, every check on).
"""

from __future__ import annotations

import argparse
import io
import itertools
import random
import string
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from pgbkp.archive import MemberReader, ZipStreamWriter

CHUNK = 1 << 20
CORPUS_BYTES = 16 << 20


def make_corpus(size: int = CORPUS_BYTES, seed: int = 7) -> bytes:
    """Dump-like COPY text rows; deterministic for a given seed."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 11))) for _ in range(4000)]
    cumulative = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(vocabulary))))  # Zipf-like
    statuses = ["active", "pending", "closed", "refunded", "on_hold"]
    domains = ["example.com", "mail.test", "corp.example", "shop.test"]
    rows: list[str] = []
    total = 0
    row_id = 1000
    while total < size:
        row_id += rng.randint(1, 3)
        words = rng.choices(vocabulary, cum_weights=cumulative, k=rng.randint(3, 14))
        user = rng.choice(vocabulary)
        row = (
            f"{row_id}\t{uuid.UUID(int=rng.getrandbits(128))}\t{user}.{rng.choice(vocabulary)}"
            f"@{rng.choice(domains)}\t2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
            f".{rng.randint(0, 999999):06d}"
            f"+00\t{rng.randint(0, 99999)}.{rng.randint(0, 99):02d}\t{rng.choice(statuses)}"
            f"\t{rng.randint(1, 500)}\t{' '.join(words)}\n"
        )
        rows.append(row)
        total += len(row)
    return "".join(rows).encode()[:size]


def chunks_from_memory(corpus: bytes, total: int) -> Iterator[bytes | memoryview]:
    view = memoryview(corpus)
    sent = 0
    while sent < total:
        offset = sent % len(corpus)
        piece = view[offset : offset + min(CHUNK, total - sent, len(corpus) - offset)]
        yield piece
        sent += len(piece)


_CHILD = """
import sys
data = open(sys.argv[1], "rb").read()
left = int(sys.argv[2])
out = sys.stdout.buffer
while left > 0:
    piece = data[: min(len(data), left)]
    out.write(piece)
    left -= len(piece)
"""


def chunks_from_pipe(corpus: bytes, total: int) -> Iterator[bytes | memoryview]:
    with tempfile.NamedTemporaryFile(prefix="bench-corpus-") as corpus_file:
        corpus_file.write(corpus)
        corpus_file.flush()
        child = subprocess.Popen([sys.executable, "-c", _CHILD, corpus_file.name, str(total)], stdout=subprocess.PIPE)
        assert child.stdout is not None
        while chunk := child.stdout.read(CHUNK):
            yield chunk
        child.wait()


class CountingSink:
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)


@dataclass
class Result:
    level: int
    threads: int
    seconds: float
    cpu_seconds: float
    raw: int
    out: int

    @property
    def mb_per_s(self) -> float:
        return self.raw / self.seconds / 1e6


def run_one(corpus: bytes, total: int, level: int, threads: int, source: str, password: bytes | None) -> Result:
    sink = CountingSink()
    feed = chunks_from_pipe if source == "pipe" else chunks_from_memory
    started, cpu_started = time.perf_counter(), time.process_time()
    writer = ZipStreamWriter(sink, "bench.sql", level=level, threads=threads, password=password)
    for chunk in feed(corpus, total):
        writer.write(chunk)
    stats = writer.close()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return Result(level, threads, seconds, cpu, stats.raw_bytes, stats.archive_bytes)


def read_one(corpus: bytes, total: int, level: int, threads: int, password: bytes | None) -> Result:
    """Write one archive into memory, then time the reader over it alone."""
    archive = io.BytesIO()
    with ZipStreamWriter(archive, "bench.sql", level=level, threads=threads, password=password) as writer:
        for chunk in chunks_from_memory(corpus, total):
            writer.write(chunk)
        writer.close()
    archive.seek(0)
    started, cpu_started = time.perf_counter(), time.process_time()
    reader = MemberReader(archive, password)
    for _chunk in reader:
        pass
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return Result(level, 1, seconds, cpu, reader.raw_bytes, len(archive.getbuffer()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma list, e.g. 1,2,4")
    parser.add_argument("--level", default="6", help="comma list, e.g. 1,3,6,9")
    parser.add_argument("--mb", type=int, default=200, help="input size per run, MB")
    parser.add_argument("--source", choices=["memory", "pipe"], default="memory")
    parser.add_argument("--password", default=None, help="encrypt with WinZip AES-256")
    parser.add_argument("--read", action="store_true", help="also time MemberReader on each level's archive")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.level.split(",")]
    thread_counts = [int(x) for x in args.threads.split(",")]
    total = args.mb * 1_000_000
    password = args.password.encode() if args.password else None

    corpus = make_corpus()
    gzip_ratio = len(corpus) / len(zlib.compress(corpus, 6))
    print(
        f"corpus: {len(corpus) >> 20} MiB cycled to {args.mb} MB, zlib-6 ratio {gzip_ratio:.2f}:1, "
        f"source={args.source}, aes={'yes' if password else 'no'}"
    )
    print(f"{'level':>5} {'threads':>7} {'MB/s':>8} {'ratio':>6} {'output bytes':>14} {'seconds':>8} {'cpu s':>7}")
    results: dict[tuple[int, int], Result] = {}
    for level in levels:
        for threads in thread_counts:
            result = run_one(corpus, total, level, threads, args.source, password)
            results[level, threads] = result
            print(
                f"{level:>5} {threads:>7} {result.mb_per_s:>8.1f} {result.raw / result.out:>6.2f} "
                f"{result.out:>14,} {result.seconds:>8.2f} {result.cpu_seconds:>7.2f}",
                flush=True,
            )
    base_threads = thread_counts[0]
    print(f"\nvs {base_threads} thread(s) at the same level:")
    for (level, threads), result in results.items():
        if threads == base_threads:
            continue
        base = results[level, base_threads]
        print(
            f"  level {level}, {threads} threads: x{result.mb_per_s / base.mb_per_s:.2f} throughput, "
            f"size {100 * (result.out - base.out) / base.out:+.3f}%"
        )
    if args.read:
        print(f"\nreader (MemberReader, MB/s of dump out):\n{'level':>5} {'MB/s':>8} {'seconds':>8} {'cpu s':>7}")
        for level in levels:
            read = read_one(corpus, total, level, max(thread_counts), password)
            print(f"{level:>5} {read.mb_per_s:>8.1f} {read.seconds:>8.2f} {read.cpu_seconds:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
