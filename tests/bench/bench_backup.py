"""End-to-end benchmark: ``pgbkp backup`` against pg_dump alone and the usual peer approaches.

    make bench                                   # ~500 MB dump, 3 runs each, threads 1,2,4
    make bench BENCH_ARGS="--quick"              # small dump, one run each: a smoke test
    make bench BENCH_ARGS="--nice -20"           # on a shared machine (root): see docs/benchmarks.md
    .venv/bin/python tests/bench/bench_backup.py --dump-mb 2000 --threads 1,2,4,8 --json out.json

Everything runs on a throwaway PostgreSQL cluster and a moto S3 server started here and stopped at
the end, even on failure. The database is generated server-side (tests/bench/datagen.py): realistic
rows that gzip about 2.5-3:1, not pgbench filler. Measured side by side, interleaved run by run:

* ``pg_dump -F p > /dev/null``: the ceiling;
* ours: ``pgbkp backup`` as a subprocess at the default level and threads (peak RSS from VmHWM,
  disk writes from ``wait4``'s rusage of that process and its pg_dump child plus /proc io, per-thread
  CPU from /proc);
* naive: ``pg_dump > file.sql``, zip the file with pyzipper (same level, same AES setting), upload
  the zip with boto3 ``upload_file``;
* gzip pipe: ``pg_dump | gzip -6`` streamed into boto3 ``upload_fileobj``;
* ours with COMPRESSION_THREADS = each of ``--threads``;
* ours on a second, smaller database (the RSS comparison);
* one more run of ours under py-spy (if installed) to show where each thread spends its time.

MB are 10^6 bytes of plain dump. The peers run inside this process (no interpreter start-up),
ours pays its start-up in every run, as a user would.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import boto3  # noqa: E402
import botocore.config  # noqa: E402
import datagen  # noqa: E402
import pyrage  # noqa: E402
import pyzipper  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402

from tests.servers import PgCluster, S3Server, temp_root  # noqa: E402

BUCKET = "pgbkp-bench"
PASSWORD = "bench-password-Ω"
PGBKP = ROOT / ".venv" / "bin" / "pgbkp"
PY_SPY = ROOT / ".venv" / "bin" / "py-spy"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = 1 << 20
#: Lambda gives one vCPU-second per second at 1769 MB, proportionally more up to 10240 MB.
LAMBDA_SIZES = (1769, 3008, 10240)
LAMBDA_MB_PER_VCPU = 1769


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# measurements


@dataclass
class Run:
    """One timed run of one approach."""

    approach: str
    database: str
    raw_bytes: int
    seconds: float
    object_bytes: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    peak_rss_kb: int = 0  # ours only: VmHWM of the pgbkp process
    child_peak_rss_kb: int = 0  # ours only: largest VmHWM of its children (pg_dump)
    disk_write_bytes: int = -1  # ru_oublock * 512 + /proc io write_bytes - ours only
    tmpdir_bytes: int = -1  # what was left in ours' TMPDIR
    cpu_seconds: float = 0.0  # ours: user+sys of pgbkp and its children
    main_cpu: float = 0.0  # ours: CPU of the main thread
    other_threads_cpu: float = 0.0  # ours: every other thread of the pgbkp process
    child_cpu: float = 0.0  # ours: pg_dump (and psql) children
    box_busy: float = 0.0  # whole machine: fraction of all CPUs busy during the run
    foreign: float = 0.0  # cores used by processes that are not part of the bench
    bench_cpu: float = 0.0  # CPU seconds of everything in the bench (clients, PostgreSQL, S3 server)
    head_s: float = 0.0  # ours: start to pg_dump started (interpreter, imports, listing, bucket check)
    tail_s: float = 0.0  # ours: pg_dump gone to exit (last blocks, completing the upload, retention)
    threads: int | None = None

    @property
    def mb_s(self) -> float:
        return self.raw_bytes / 1e6 / self.seconds


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children (cutime) and its live descendants, recursively."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    own = sum(int(x) for x in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
    return own + sum(_tree_cpu(c) for c in children)


def _box_busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK  # all but idle and iowait


class BoxCpu:
    """How busy the machine was during a run, and how much of that was *not* ours.

    Ours is this process tree, the PostgreSQL cluster and the S3 server; anything else on the box
    (other people's test suites on a shared machine) is "foreign" load, reported in cores.
    """

    roots: ClassVar[list[int]] = [os.getpid()]

    def _ours(self) -> float:
        return sum(_tree_cpu(pid) for pid in self.roots)

    def __enter__(self) -> BoxCpu:
        self._t0 = time.perf_counter()
        self._box0, self._ours0 = _box_busy_seconds(), self._ours()
        self.busy = self.foreign = self.ours = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t0
        box, ours = _box_busy_seconds() - self._box0, self._ours() - self._ours0
        self.busy = box / wall / (os.cpu_count() or 1)
        self.foreign = max(0.0, (box - ours) / wall)
        self.ours = ours


def wait_quiet(limit: float, threshold: float = 0.15) -> float:
    """Wait (up to ``limit`` s) until other processes use under ``threshold`` cores; return their load."""
    deadline = time.monotonic() + limit
    while True:
        with BoxCpu() as box:
            time.sleep(1.0)
        if box.foreign < threshold or time.monotonic() >= deadline:
            return box.foreign
        time.sleep(1.0)


def _stat_cpu(path: Path) -> float | None:
    """utime+stime in seconds from a /proc/.../stat file (None if the task is gone)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class ProcessWatch:
    """The last values seen in /proc for a running process: per-thread CPU, children, io."""

    pid: int
    started: float = 0.0
    thread_cpu: dict[int, float] = field(default_factory=dict)
    child_cpu: dict[int, float] = field(default_factory=dict)
    write_bytes: int = 0
    vm_hwm_kb: int = 0
    child_hwm_kb: int = 0
    dump_first_seen: float = 0.0  # perf_counter when a pg_dump child was first / last seen alive
    dump_last_seen: float = 0.0
    ended: float = 0.0

    def sample(self) -> None:
        base = Path(f"/proc/{self.pid}")
        with contextlib.suppress(OSError):
            for task in (base / "task").iterdir():
                cpu = _stat_cpu(task / "stat")
                if cpu is not None:
                    self.thread_cpu[int(task.name)] = cpu
        with contextlib.suppress(OSError):
            for child in (base / "task" / str(self.pid) / "children").read_text().split():
                cpu = _stat_cpu(Path(f"/proc/{child}/stat"))
                if cpu is not None:
                    self.child_cpu[int(child)] = cpu
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/comm").read_text().strip() == "pg_dump":
                        now = time.perf_counter()
                        self.dump_first_seen = self.dump_first_seen or now
                        self.dump_last_seen = now
                self.child_hwm_kb = max(self.child_hwm_kb, _hwm_kb(Path(f"/proc/{child}")))
        with contextlib.suppress(OSError):
            io = dict(line.split(": ") for line in (base / "io").read_text().splitlines())
            self.write_bytes = int(io.get("write_bytes", "0"))
        self.vm_hwm_kb = max(self.vm_hwm_kb, _hwm_kb(base))


def _hwm_kb(proc: Path) -> int:
    """Peak resident set (VmHWM) of a live process; 0 once it is a zombie or gone.

    Not ru_maxrss: after a vfork+exec the child's ru_maxrss starts at the *parent's* peak RSS,
    so every child of a 100 MiB benchmark process would report at least 100 MiB.
    """
    try:
        found = re.search(r"VmHWM:\s+(\d+)", (proc / "status").read_text())
    except OSError:
        return 0
    return int(found.group(1)) if found else 0


def run_watched(cmd: list[str], env: dict[str, str], *, on_start: Callable[[int], Any] | None = None,
                interval: float = 0.1) -> tuple[int, str, str, Any, ProcessWatch, float]:
    """Run ``cmd``, polling /proc; returns (exit code, stdout, stderr, rusage from wait4, watch, seconds)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watch = ProcessWatch(proc.pid)
    watch.started = started
    out: dict[str, bytes] = {}

    def drain(name: str, stream: Any) -> None:
        out[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(n, s), daemon=True)
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    extra = on_start(proc.pid) if on_start else None
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        watch.sample()
        time.sleep(interval)
    watch.ended = time.perf_counter()
    seconds = watch.ended - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    if extra is not None:
        extra.wait()
    return (proc.returncode, out.get("out", b"").decode(errors="replace"),
            out.get("err", b"").decode(errors="replace"), rusage, watch, seconds)


# ---------------------------------------------------------------------------------------------
# the bench


def _start_py_spy(output: Path, pid: int) -> subprocess.Popen[bytes]:
    """Attach py-spy to a running process; it stops by itself when the process exits."""
    return subprocess.Popen([str(PY_SPY), "record", "--pid", str(pid), "--threads", "--nonblocking", "--rate", "100",
                             "--format", "raw", "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Bench:
    def __init__(self, pg: PgCluster, s3: S3Server, args: argparse.Namespace, work: Path) -> None:
        self.pg = pg
        self.s3 = s3
        self.args = args
        self.work = work
        self.password = None if args.no_password else PASSWORD
        # age (issue 15): a fresh recipient; the bench never decrypts, so the identity is dropped at once
        self.age_recipient = str(pyrage.x25519.Identity.generate().to_public())
        self.level = args.level
        self.pg_dump = str(pg.bindir / "pg_dump")
        self.client = boto3.client(
            "s3", endpoint_url=s3.endpoint, region_name=s3.region, aws_access_key_id=s3.access_key,
            aws_secret_access_key=s3.secret_key,
            config=botocore.config.Config(s3={"addressing_style": "path"},
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"),
        )
        self.transfer = TransferConfig(multipart_chunksize=8 * PAGE, max_concurrency=4)
        self.client.create_bucket(Bucket=BUCKET)
        postmaster = int((pg.datadir / "postmaster.pid").read_text().split()[0])
        BoxCpu.roots = [os.getpid(), postmaster]
        self.raw: dict[str, int] = {}
        self.runs: list[Run] = []

    # helpers

    def settle(self) -> None:
        """Let the moto server and PostgreSQL finish the last run's work, and wait out foreign load."""
        time.sleep(0.5)
        if self.args.quiet_wait > 0:
            wait_quiet(self.args.quiet_wait)

    def pg_env(self) -> dict[str, str]:
        return self.pg.env()

    def empty_bucket(self) -> None:
        listing = self.client.list_objects_v2(Bucket=BUCKET)
        for obj in listing.get("Contents", []):
            self.client.delete_object(Bucket=BUCKET, Key=obj["Key"])
        for up in self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
            self.client.abort_multipart_upload(Bucket=BUCKET, Key=up["Key"], UploadId=up["UploadId"])

    def build(self, database: str, dump_mb: float) -> None:
        self.pg.create_database(database)
        datagen.build(datagen.psql_runner(str(self.pg.bindir), self.pg_env()), database, dump_mb, log=log)
        # One full read: measures the dump size and warms the page cache, so every approach starts equal.
        with BoxCpu():
            proc = subprocess.Popen([self.pg_dump, "-F", "p", "-d", database], stdout=subprocess.PIPE,
                                    env=self.pg_env())
            assert proc.stdout is not None
            size = 0
            while chunk := proc.stdout.read(PAGE):
                size += len(chunk)
            if proc.wait() != 0:
                raise RuntimeError(f"pg_dump {database} failed")
        self.raw[database] = size
        log(f"  {database}: plain dump {size / 1e6:.1f} MB")

    def record(self, run: Run) -> Run:
        self.runs.append(run)
        extra = ""
        if run.approach.startswith("ours"):
            extra = (f"  peak RSS {run.peak_rss_kb / 1024:.0f} MiB (pg_dump {run.child_peak_rss_kb / 1024:.0f}), "
                     f"disk writes {run.disk_write_bytes} B, "
                     f"main thread {run.main_cpu / run.seconds:.0%} busy, before pg_dump {run.head_s:.1f}s, "
                     f"after {run.tail_s:.1f}s")
        if run.stages:
            extra += "  (" + ", ".join(f"{k} {v:.1f}s" for k, v in run.stages.items()) + ")"
        log(f"  {run.approach:<14} {run.database:<12} {run.seconds:7.2f}s {run.mb_s:7.1f} MB/s  "
            f"bench CPU {run.bench_cpu:5.1f}s, box busy {run.box_busy:.0%}, foreign load {run.foreign:.2f} "
            f"cores{extra}")
        return run

    # the approaches

    def pg_dump_devnull(self, database: str) -> Run:
        self.settle()
        with BoxCpu() as box:
            started = time.perf_counter()
            subprocess.run([self.pg_dump, "-F", "p", "-d", database], stdout=subprocess.DEVNULL,
                           env=self.pg_env(), check=True)
            seconds = time.perf_counter() - started
        run = Run("pg_dump", database, self.raw[database], seconds)
        run.box_busy, run.foreign, run.bench_cpu = box.busy, box.foreign, box.ours
        return self.record(run)

    def ours_env(self, threads: int | None, tmpdir: Path, encryption: str | None = None) -> dict[str, str]:
        """``encryption``: ``aes`` (ZIP_PASSWORD), ``plain`` or ``age`` (AGE_RECIPIENTS); None: per --no-password."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "AWS_", "ZIP_"))}
        env.pop("COMPRESSION_THREADS", None)
        env.update(self.s3.env())
        env.update(PG_URLS=f"bench|bucket={BUCKET}|{self.pg.url()}", PG_BIN_DIR=str(self.pg.bindir),
                   ZIP_COMPRESSION_LEVEL=str(self.level), TMPDIR=str(tmpdir), LOG_LEVEL="WARNING",
                   # the backup's own disk use is measured, not the log file a cron user may keep
                   LOG_FILE="off",
                   # .pyc caching is the interpreter's, not the backup's: keep it out of the disk count
                   PYTHONDONTWRITEBYTECODE="1")
        encryption = encryption or ("aes" if self.password else "plain")
        if encryption == "aes":
            env["ZIP_PASSWORD"] = self.password or PASSWORD
        elif encryption == "age":
            env["AGE_RECIPIENTS"] = self.age_recipient
        if threads is not None:
            env["COMPRESSION_THREADS"] = str(threads)
        return env

    def ours(self, database: str, threads: int | None = None, *, label: str = "ours",
             profile_to: Path | None = None, encryption: str | None = None) -> tuple[Run, ProcessWatch]:
        tmpdir = Path(tempfile.mkdtemp(prefix="ours-tmp-", dir=self.work))
        cmd = [str(PGBKP), "backup", "--database", database, "--json"]
        on_start = functools.partial(_start_py_spy, profile_to) if profile_to is not None else None
        self.settle()
        with BoxCpu() as box:
            code, stdout, stderr, rusage, watch, seconds = run_watched(
                cmd, self.ours_env(threads, tmpdir, encryption), on_start=on_start)
        if code != 0:
            raise RuntimeError(f"pgbkp backup {database} exited {code}: {stderr.strip()[-2000:]}")
        summary = json.loads(stdout[stdout.index("{"):])
        result = summary["results"][0]
        left = sum(p.stat().st_size for p in tmpdir.rglob("*") if p.is_file())
        shutil.rmtree(tmpdir)
        main_cpu = watch.thread_cpu.get(watch.pid, 0.0)
        run = Run(label, database, result["raw_bytes"], seconds, object_bytes=result["object_bytes"],
                  peak_rss_kb=watch.vm_hwm_kb, child_peak_rss_kb=watch.child_hwm_kb,
                  disk_write_bytes=rusage.ru_oublock * 512 + watch.write_bytes,
                  tmpdir_bytes=left, cpu_seconds=rusage.ru_utime + rusage.ru_stime, main_cpu=main_cpu,
                  other_threads_cpu=sum(c for t, c in watch.thread_cpu.items() if t != watch.pid),
                  child_cpu=sum(watch.child_cpu.values()), box_busy=box.busy, foreign=box.foreign,
                  bench_cpu=box.ours, threads=threads)
        if watch.dump_first_seen:
            run.head_s = watch.dump_first_seen - watch.started
            run.tail_s = watch.ended - watch.dump_last_seen
        if result["raw_bytes"] != self.raw[database]:
            raise RuntimeError(f"ours read {result['raw_bytes']} bytes of {database}, pg_dump gives "
                               f"{self.raw[database]}")
        self.empty_bucket()
        return self.record(run), watch

    def naive(self, database: str) -> Run:
        """The usual peer: dump to a file, zip the file, upload the zip, delete both files."""
        sql = self.work / f"{database}.sql"
        archive = self.work / f"{database}.zip"
        stages: dict[str, float] = {}
        self.settle()
        with BoxCpu() as box:
            started = time.perf_counter()
            with sql.open("wb") as out:
                subprocess.run([self.pg_dump, "-F", "p", "-d", database], stdout=out, env=self.pg_env(),
                               check=True)
            stages["dump"] = time.perf_counter() - started
            mark = time.perf_counter()
            encryption = {"encryption": pyzipper.WZ_AES} if self.password else {}
            with pyzipper.AESZipFile(archive, "w", compression=pyzipper.ZIP_DEFLATED,
                                     compresslevel=self.level, **encryption) as zf:
                if self.password:
                    zf.setpassword(self.password.encode())
                zf.write(sql, f"{database}.sql")
            stages["zip"] = time.perf_counter() - mark
            mark = time.perf_counter()
            self.client.upload_file(str(archive), BUCKET, f"naive/{database}.zip", Config=self.transfer)
            stages["upload"] = time.perf_counter() - mark
            size = archive.stat().st_size
            sql.unlink()
            archive.unlink()
            seconds = time.perf_counter() - started
        self.empty_bucket()
        run = Run("naive", database, self.raw[database], seconds, object_bytes=size, stages=stages)
        run.box_busy, run.foreign, run.bench_cpu = box.busy, box.foreign, box.ours
        return self.record(run)

    def gzip_pipe(self, database: str) -> Run:
        """``pg_dump | gzip -6`` read from gzip's stdout straight into a multipart upload."""
        self.settle()
        with BoxCpu() as box:
            started = time.perf_counter()
            proc = subprocess.Popen(
                ["bash", "-o", "pipefail", "-c", f'"$0" -F p -d "$1" | gzip -{self.level}', self.pg_dump, database],
                stdout=subprocess.PIPE, env=self.pg_env())
            self.client.upload_fileobj(proc.stdout, BUCKET, f"gzip/{database}.sql.gz", Config=self.transfer)
            if proc.wait() != 0:
                raise RuntimeError(f"pg_dump | gzip of {database} exited {proc.returncode}")
            seconds = time.perf_counter() - started
        size = self.client.head_object(Bucket=BUCKET, Key=f"gzip/{database}.sql.gz")["ContentLength"]
        self.empty_bucket()
        run = Run("gzip-pipe", database, self.raw[database], seconds, object_bytes=size)
        run.box_busy, run.foreign, run.bench_cpu = box.busy, box.foreign, box.ours
        return self.record(run)


# ---------------------------------------------------------------------------------------------
# profile


@dataclass
class Profile:
    seconds: float
    raw_bytes: int
    threads: dict[str, dict[str, float]]  # role -> {"cpu": s, "busy": fraction of wall, "samples": n}
    main_activities: list[tuple[str, float]]  # main thread: what it does, share of its samples
    deflate_mb_per_cpu_s: float  # raw MB per CPU-second of the deflate threads: the per-core rate
    source: str


def _role(name: str) -> str:
    if name == "MainThread":
        return "main"
    if name.startswith("zip-deflate"):
        return "deflate"
    if name.startswith("s3-part"):
        return "upload"
    return "other"


#: What the main thread is doing, recognised by a function on its stack (first match wins).
MAIN_ACTIVITIES = (
    ("start-up and planning (imports, botocore models, listing databases, checking the bucket)",
     ("importlib", "loaders.py", "plan (pgbkp/pipeline.py", "check_buckets", "_pg_dump_version",
      "clean_stale_uploads", "load (pgbkp/config/loader.py")),
    ("reading pg_dump's pipe (DumpStream.read)", ("DumpStream.read",)),
    ("waiting for the oldest deflate block", ("Future.result", "Condition.wait", "Event.wait")),
    ("handing parts to the upload pool (S3Upload.write)", ("S3Upload.write", "_send_part")),
    ("AES-CTR + HMAC (pyzipper)", ("encrypt", "zipfile_aes")),
    ("ZipStreamWriter bookkeeping (cutting blocks, CRC combine; deflate itself if 1 thread)",
     ("ZipStreamWriter.write", "_submit", "crc32_combine", "_emit")),
    ("finishing: commit, retention listing, summary", ("commit", "apply_retention", "print_summary", "dumps")),
)


def _main_activity(stack: str) -> str:
    frames = stack.split(";")
    for label, needles in MAIN_ACTIVITIES:
        if any(needle in frame for frame in frames for needle in needles):
            return label
    leaf = frames[-1] if frames and frames[-1] else "(no Python frame: C code, or interpreter start-up)"
    return "other: " + re.sub(r" \((.*?):\d+\)$", r" (\1)", leaf)


def profile(bench: Bench, database: str) -> Profile | None:
    """One extra run of ours, sampled by py-spy: who is busy, and what the main thread does."""
    if not PY_SPY.exists():
        log("  py-spy not installed (.venv/bin/pip install py-spy): per-thread CPU from /proc only")
        return None
    out = bench.work / "profile.txt"
    run, watch = bench.ours(database, label="ours+py-spy", profile_to=out)
    bench.runs.remove(run)
    if not out.exists():
        log("  py-spy wrote nothing (ptrace not allowed here?)")
        return None
    tid_name: dict[int, str] = {}
    samples: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        m = re.match(r"thread \((0x[0-9a-fA-F]+|\d+)\): ([^;]*)(;.*)? (\d+)$", line)
        if not m:
            continue
        tid, name, stack, count = m.group(1), m.group(2), m.group(3) or "", int(m.group(4))
        if not tid.startswith("0x"):
            tid_name[int(tid)] = name
        role = _role(name)
        samples[role] += count
        if role == "main":
            leaves[_main_activity(stack)] += count
    cpu: defaultdict[str, float] = defaultdict(float)
    for tid, seconds in watch.thread_cpu.items():
        role = "main" if tid == watch.pid else _role(tid_name.get(tid, "?"))
        cpu[role] += seconds
    cpu["pg_dump"] = sum(watch.child_cpu.values())
    roles = {}
    for role in ("main", "deflate", "upload", "other", "pg_dump"):
        roles[role] = {"cpu": round(cpu.get(role, 0.0), 2), "busy": round(cpu.get(role, 0.0) / run.seconds, 3),
                       "samples": samples.get(role, 0)}
    total_main = sum(leaves.values()) or 1
    top = [(name, round(n / total_main, 3)) for name, n in leaves.most_common(10)]
    per_core = run.raw_bytes / 1e6 / cpu["deflate"] if cpu.get("deflate") else float("nan")
    return Profile(run.seconds, run.raw_bytes, roles, top, round(per_core, 1),
                   "py-spy --threads + /proc/<pid>/task/*/stat")


# ---------------------------------------------------------------------------------------------
# report


def machine() -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu_model,
            "ram_gib": round(mem_kb / 1024 / 1024, 1), "kernel": platform.release(),
            "python": platform.python_version()}


def summarize(bench: Bench, args: argparse.Namespace, prof: Profile | None, info: dict[str, Any]) -> dict[str, Any]:
    big, small = args.big_db, args.small_db
    by: defaultdict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in bench.runs:
        by[r.approach, r.database].append(r)

    def med(approach: str, db: str = big, attr: str = "seconds") -> float:
        return median([getattr(r, attr) for r in by[approach, db]])

    raw_mb = bench.raw[big] / 1e6
    table = []
    for approach in ("pg_dump", "ours", "naive", "gzip-pipe"):
        runs = by[approach, big]
        if not runs:
            continue
        secs = med(approach)
        obj = runs[0].object_bytes
        row: dict[str, Any] = {"approach": approach, "runs": len(runs), "seconds": round(secs, 2),
               "mb_s": round(raw_mb / secs, 1), "all_seconds": [round(r.seconds, 2) for r in runs],
               "ratio": round(bench.raw[big] / obj, 2) if obj else None,
               "box_busy": round(med(approach, attr="box_busy"), 2),
               "foreign": round(med(approach, attr="foreign"), 2),
               "bench_cpu_s_per_mb": round(med(approach, attr="bench_cpu") / raw_mb, 4)}
        if runs[0].stages:
            row["stages"] = {k: round(median([r.stages[k] for r in runs]), 2) for k in runs[0].stages}
        table.append(row)
    threads_table = []
    for t in args.thread_counts:
        runs = by[f"ours-t{t}", big] + [r for r in by["ours", big] if t == args.default_threads]
        if not runs:
            continue
        secs = median([r.seconds for r in runs])
        cpu = median([r.cpu_seconds for r in runs])
        threads_table.append({
            "threads": t, "runs": len(runs), "seconds": round(secs, 2), "mb_s": round(raw_mb / secs, 1),
            "vs_pg_dump": round(secs / med("pg_dump"), 2),
            "cpu_s_per_mb": round(cpu / raw_mb, 4),
            "main_cpu_s_per_mb": round(median([r.main_cpu for r in runs]) / raw_mb, 4),
            "peak_rss_mib": round(max(r.peak_rss_kb for r in runs) / 1024, 1),
            "box_busy": round(median([r.box_busy for r in runs]), 2),
            "foreign": round(median([r.foreign for r in runs]), 2),
            "head_s": round(median([r.head_s for r in runs]), 2),
            "tail_s": round(median([r.tail_s for r in runs]), 2),
        })
    ours_runs = by["ours", big]
    small_runs = by["ours", small]
    rss_big = max(r.peak_rss_kb for r in ours_runs) / 1024
    rss_small = max(r.peak_rss_kb for r in small_runs) / 1024 if small_runs else float("nan")
    ratios = {
        "ours_over_pg_dump": round(med("ours") / med("pg_dump"), 2),
        "naive_over_ours": round(med("naive") / med("ours"), 2),
        "gzip_over_ours": round(med("gzip-pipe") / med("ours"), 2),
    }
    # A model, not a measurement: ours is CPU-bound here, so with every core to itself (no foreign
    # load) it could not beat all bench CPU (pgbkp, pg_dump, PostgreSQL, moto) spread over all cores.
    floor = med("ours", attr="bench_cpu") / (os.cpu_count() or 1)
    ratios["ours_cpu_floor_s"] = round(floor, 2)
    ratios["naive_over_ours_cpu_floor"] = round(med("naive") / floor, 2)
    targets = {
        "naive/ours >= 1.7 (issue 7)": ratios["naive_over_ours"] >= 1.7,
        "naive/ours >= 1.3 (issue 2)": ratios["naive_over_ours"] >= 1.3,
        "peak RSS < 200 MiB": max(rss_big, rss_small) < 200,
        "peak RSS not growing with dump size": rss_big <= rss_small * 1.05 + 5,
        "0 bytes written to local disk": all(r.disk_write_bytes == 0 and r.tmpdir_bytes == 0
                                             for r in bench.runs if r.approach.startswith("ours")),
    }
    # issue 15: the same backup as a plain ZIP, an AES-ZIP and a ZIP in age, side by side
    encryption_table = []
    for approach, name in (("ours-plain", "plain ZIP"), ("ours-aes", "AES-ZIP (ZIP_PASSWORD)"),
                           ("ours-age", "ZIP in age (AGE_RECIPIENTS)")):
        runs = by[approach, big]
        if runs:
            encryption_table.append({
                "approach": approach, "name": name, "runs": len(runs), "seconds": round(med(approach), 2),
                "mb_s": round(raw_mb / med(approach), 1),
                "cpu_s_per_mb": round(median([r.cpu_seconds for r in runs]) / raw_mb, 4),
                "peak_rss_mib": round(max(r.peak_rss_kb for r in runs) / 1024, 1),
                "object_bytes": runs[0].object_bytes})
    if by["ours-age", big] and by["ours-aes", big]:
        ratios["age_over_aes"] = round(med("ours-age") / med("ours-aes"), 3)
        ratios["age_over_aes_cpu"] = round(median([r.cpu_seconds for r in by["ours-age", big]])
                                           / median([r.cpu_seconds for r in by["ours-aes", big]]), 3)
        targets["age at most 10% slower than AES-ZIP (issue 15)"] = ratios["age_over_aes"] <= 1.10
    gzip_runs = by["gzip-pipe", big]
    projection = lambda_projection(threads_table, med("pg_dump"), raw_mb, args.default_threads)
    return {
        "machine": info, "args": {k: v for k, v in vars(args).items() if k != "func"},
        "dump_bytes": bench.raw, "gzip6_ratio": round(bench.raw[big] / gzip_runs[0].object_bytes, 2)
        if gzip_runs else None,
        "ours_ratio": round(bench.raw[big] / ours_runs[0].object_bytes, 2),
        "table": table, "threads_table": threads_table, "encryption_table": encryption_table, "ratios": ratios,
        "peak_rss_mib": {small: round(rss_small, 1), big: round(rss_big, 1)},
        "disk_write_bytes": max(r.disk_write_bytes for r in bench.runs if r.approach.startswith("ours")),
        "tmpdir_bytes": max(r.tmpdir_bytes for r in bench.runs if r.approach.startswith("ours")),
        "targets": targets, "profile": asdict(prof) if prof else None, "lambda": projection,
        "runs": [asdict(r) for r in bench.runs],
    }


def lambda_projection(threads_table: list[dict[str, Any]], pg_dump_s: float, raw_mb: float,
                      default_threads: int) -> list[dict[str, Any]]:
    """rate = min(pg_dump rate, vCPU / client CPU-s per MB, 1 / main-thread CPU-s per MB).

    Client CPU is everything that would run inside the Lambda: pgbkp (all threads) and pg_dump.
    The PostgreSQL server and S3 are elsewhere there, so they are left out (here they share the box).
    """
    rows = {r["threads"]: r for r in threads_table}
    out = []
    for memory in LAMBDA_SIZES:
        vcpu = memory / LAMBDA_MB_PER_VCPU
        visible = 2 if memory <= 3008 else 6 if memory > 8845 else 3 + (memory > 5307) + (memory > 7076)
        # the default thread count is the visible core count; use the nearest measured row
        measured = min(rows, key=lambda t: (abs(t - visible), -t)) if rows else None
        if measured is None:
            continue
        cost = rows[measured]["cpu_s_per_mb"]
        main = rows[measured]["main_cpu_s_per_mb"]
        dump_rate = raw_mb / pg_dump_s
        cpu_rate = vcpu / cost
        main_rate = 1 / main if main else float("inf")
        rate = min(dump_rate, cpu_rate, main_rate)
        bound = "pg_dump" if rate == dump_rate else "CPU" if rate == cpu_rate else "main thread"
        out.append({"memory_mb": memory, "vcpu": round(vcpu, 2), "visible_cores": visible,
                    "threads_row": measured, "cpu_rate_mb_s": round(cpu_rate, 1),
                    "rate_mb_s": round(rate, 1), "bound": bound,
                    "minutes_per_10gb": round(10_000 / rate / 60, 1)})
    return out


def print_report(s: dict[str, Any]) -> None:
    big = s["args"]["big_db"]
    log("\n== results (medians) ==")
    log(f"dump {s['dump_bytes'][big] / 1e6:.1f} MB; gzip -6 ratio {s['gzip6_ratio']}:1; "
        f"ours (zip, level {s['args']['level']}) {s['ours_ratio']}:1")
    log("| approach | runs | wall s | MB/s (raw dump) | ratio | CPU s/MB (all bench processes) | box CPU busy "
        "| foreign load (cores) | stages |")
    log("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in s["table"]:
        stages = ", ".join(f"{k} {v}s" for k, v in r.get("stages", {}).items())
        log(f"| {r['approach']} | {r['runs']} | {r['seconds']} | {r['mb_s']} | {r['ratio'] or '-'} | "
            f"{r['bench_cpu_s_per_mb']} | {r['box_busy']:.0%} | {r['foreign']} | {stages} |")
    log("\n| COMPRESSION_THREADS | runs | wall s | MB/s | / pg_dump time | CPU s per MB | main thread CPU s per MB"
        " | peak RSS MiB | box CPU busy | foreign load | before pg_dump s | after pg_dump s |")
    log("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in s["threads_table"]:
        log(f"| {r['threads']} | {r['runs']} | {r['seconds']} | {r['mb_s']} | {r['vs_pg_dump']} | "
            f"{r['cpu_s_per_mb']} | {r['main_cpu_s_per_mb']} | {r['peak_rss_mib']} | {r['box_busy']:.0%} | "
            f"{r['foreign']} | {r['head_s']} | {r['tail_s']} |")
    if s.get("encryption_table"):
        log("\n| encryption | runs | wall s | MB/s | CPU s per MB (pgbkp) | peak RSS MiB | object bytes |")
        log("|---|---:|---:|---:|---:|---:|---:|")
        for r in s["encryption_table"]:
            log(f"| {r['name']} | {r['runs']} | {r['seconds']} | {r['mb_s']} | {r['cpu_s_per_mb']} | "
                f"{r['peak_rss_mib']} | {r['object_bytes']} |")
    log("\nratios: " + ", ".join(f"{k} = {v}" for k, v in s["ratios"].items()))
    log(f"peak RSS (MiB): {s['peak_rss_mib']}; disk bytes written by ours: {s['disk_write_bytes']}; "
        f"left in TMPDIR: {s['tmpdir_bytes']}")
    for name, ok in s["targets"].items():
        log(f"  target {name}: {'met' if ok else 'NOT met'}")
    if s["profile"]:
        p = s["profile"]
        log(f"\nprofile ({p['source']}), {p['seconds']:.1f}s wall:")
        for role, v in p["threads"].items():
            log(f"  {role:<8} CPU {v['cpu']:6.2f}s  = {v['busy']:.0%} of wall  ({v['samples']} py-spy samples)")
        log(f"  deflate per core: {p['deflate_mb_per_cpu_s']} MB of dump per CPU-second")
        log("  main thread, where its samples are:")
        for name, share in p["main_activities"]:
            log(f"    {share:6.1%}  {name}")
    log("\nLambda projection (minutes per 10 GB of dump):")
    for r in s["lambda"]:
        log(f"  {r['memory_mb']} MB: {r['vcpu']} vCPU, {r['visible_cores']} cores visible -> "
            f"{r['rate_mb_s']} MB/s ({r['bound']}-bound) -> {r['minutes_per_10gb']} min")


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dump-mb", type=float, default=500, help="size of the main database's plain dump")
    parser.add_argument("--small-mb", type=float, default=150, help="the second database, for the RSS comparison")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each approach (the median is reported)")
    parser.add_argument("--threads", default="1,2,4", help="COMPRESSION_THREADS values for the thread table")
    parser.add_argument("--level", type=int, default=6, help="compression level for ours, naive and gzip")
    parser.add_argument("--no-password", action="store_true", help="plain ZIP (default: AES-256 for ours and naive)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
    parser.add_argument("--no-age", action="store_true",
                        help="skip the encryption comparison (plain ZIP, AES-ZIP, age; the default threads)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 40 MB + 15 MB dumps, one run each")
    parser.add_argument("--quiet-wait", type=float, default=10,
                        help="before each run, wait up to this many seconds for other processes to go quiet")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the bench, PostgreSQL and S3 at this nice value, e.g. -20 on a shared machine "
                        "(root only; sets the session autogroup's nice too)")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.dump_mb, args.small_mb, args.repeat = min(args.dump_mb, 40), min(args.small_mb, 15), 1
    args.thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    from pgbkp.cpus import available_cpus

    args.default_threads = available_cpus()
    args.big_db, args.small_db = "bench_big", "bench_small"
    return args


def raise_priority(pids: list[int], nice: int) -> None:
    """Give these processes (and what they start) priority over other work on a shared machine.

    With autogroup scheduling (Linux's default on desktops and many VMs) CPU is first shared between
    sessions, so the session's autogroup gets the nice value too; plain nice only orders processes
    within one session. Needs root (CAP_SYS_NICE) for negative values.
    """
    for pid in pids:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    except OSError:
        return []


@contextlib.contextmanager
def servers() -> Iterator[tuple[PgCluster, S3Server, Path]]:
    root = temp_root("pgbkp-bench-")
    pg = PgCluster(root / "pg")
    s3 = S3Server()
    try:
        pg.start()
        s3.start()
        yield pg, s3, root
    finally:
        s3.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through servers(), which stops PostgreSQL and moto


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A background job may start with SIGINT ignored: make both signals stop the servers cleanly.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    info = machine()
    info["nice"] = args.nice
    started = time.monotonic()
    if args.nice:
        raise_priority([os.getpid()], args.nice)
    with servers() as (pg, s3, root):
        if args.nice:
            postmaster = int((pg.datadir / "postmaster.pid").read_text().split()[0])
            raise_priority([postmaster, *_children(postmaster), *([s3.proc.pid] if s3.proc else [])], args.nice)
        info["postgresql"] = pg.psql("SHOW server_version")
        log(f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']} GiB RAM, PostgreSQL "
            f"{info['postgresql']}; default COMPRESSION_THREADS={args.default_threads}; "
            f"level {args.level}, AES {'off' if args.no_password else 'on'}")
        work = root / "work"
        work.mkdir()
        bench = Bench(pg, s3, args, work)
        log(f"building {args.big_db} (~{args.dump_mb:.0f} MB dump) and {args.small_db} (~{args.small_mb:.0f} MB)")
        t0 = time.monotonic()
        bench.build(args.big_db, args.dump_mb)
        bench.build(args.small_db, args.small_mb)
        info["build_seconds"] = round(time.monotonic() - t0, 1)
        big = args.big_db
        log(f"\nside by side on {big}, {args.repeat} round(s), interleaved")
        for _ in range(args.repeat):
            bench.pg_dump_devnull(big)
            bench.ours(big)
            bench.naive(big)
            bench.gzip_pipe(big)
            if not args.no_age:
                for encryption in ("plain", "aes", "age"):
                    bench.ours(big, label=f"ours-{encryption}", encryption=encryption)
        log(f"\nours by COMPRESSION_THREADS on {big}")
        for _ in range(args.repeat):
            for t in args.thread_counts:
                if t != args.default_threads:
                    bench.ours(big, t, label=f"ours-t{t}")
        log(f"\nours on {args.small_db} (peak RSS vs dump size)")
        for _ in range(args.repeat):
            bench.ours(args.small_db)
        prof = None
        if not args.no_profile:
            log("\nprofile run (not timed with the others)")
            prof = profile(bench, big)
        summary = summarize(bench, args, prof, info)
    summary["total_seconds"] = round(time.monotonic() - started, 1)
    print_report(summary)
    log(f"\ntotal {summary['total_seconds']:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
