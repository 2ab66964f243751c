"""Progress of each database: tqdm bars on a terminal, a plain log line every 30 s anywhere else.

Bars are for people watching; their carriage returns and escape codes would litter a log file or
``docker logs``, so without a terminal we log a line instead (bytes and MB/s), at most once per interval.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from tqdm import tqdm

from pgbkp.output import size
from pgbkp.pipeline import DatabaseResult, Job, Observer

log = logging.getLogger("pgbkp.progress")

DEFAULT_INTERVAL = 30.0


class BarObserver:
    """Two bars per database: bytes read from pg_dump (against the database's on-disk size, an
    estimate: a dump is usually smaller, since it holds no indexes) and bytes uploaded.

    With several databases in flight (DATABASE_CONCURRENCY) each has its own pair of lines: the lowest
    free pair (tqdm ``position=``), given back when it finishes."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bars: dict[int, tuple[Any, Any]] = {}
        self._slots: dict[int, int] = {}  # id(job) -> its pair of lines
        self._lock = threading.Lock()

    def started(self, job: Job) -> None:
        with self._lock:
            slot = min(set(range(len(self._slots) + 1)) - set(self._slots.values()))
            self._slots[id(job)] = slot
        common: dict[str, Any] = {"unit": "B", "unit_scale": True, "unit_divisor": 1000, "file": self._stream,
                                  "dynamic_ncols": True, "miniters": 1, "mininterval": 0.2}
        dump = tqdm(total=job.size_estimate or None, position=2 * slot, leave=True,
                    desc=f"Dump {job.database} (total ~ database size, an estimate)", **common)
        upload = tqdm(total=None, position=2 * slot + 1, leave=True,
                      desc=f"Upload {job.key.rsplit('/', 1)[-1]}", **common)
        self._bars[id(job)] = (dump, upload)

    def dumped(self, job: Job, n: int) -> None:
        if id(job) in self._bars:
            self._bars[id(job)][0].update(n)

    def uploaded(self, job: Job, n: int) -> None:
        if id(job) in self._bars:
            self._bars[id(job)][1].update(n)  # called from the upload threads; tqdm locks its own output

    def finished(self, job: Job, result: DatabaseResult) -> None:
        bars = self._bars.pop(id(job), None)
        with self._lock:
            self._slots.pop(id(job), None)
        if bars is None:
            return
        dump, upload = bars
        if result.status == "ok" and dump.total and dump.n != dump.total:
            dump.total = dump.n  # the estimate was only that: end the bar at what pg_dump really wrote
            dump.refresh()
        dump.close()
        upload.close()


@dataclass
class _Counts:
    started: float
    last_line: float
    dumped: int = 0
    uploaded: int = 0
    dumped_at_line: int = 0
    uploaded_at_line: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class LogObserver:
    """One log line per database at most every ``interval`` seconds: bytes so far and MB/s since the
    previous line, for the dump and the upload."""

    def __init__(self, interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log) -> None:
        self.interval = interval
        self._clock = clock
        self._log = logger
        self._jobs: dict[int, _Counts] = {}

    def started(self, job: Job) -> None:
        now = self._clock()
        self._jobs[id(job)] = _Counts(started=now, last_line=now)
        estimate = f" (about {size(job.size_estimate)} on disk)" if job.size_estimate else ""
        self._log.info("backing up %s to %s%s", job.database, job.url, estimate,
                       extra={"connection": job.connection.name, "database": job.database})

    def dumped(self, job: Job, n: int) -> None:
        self._add(job, n, 0)

    def uploaded(self, job: Job, n: int) -> None:
        self._add(job, 0, n)

    def _add(self, job: Job, dumped: int, uploaded: int) -> None:
        counts = self._jobs.get(id(job))
        if counts is None:
            return
        with counts.lock:  # uploads report from several threads
            counts.dumped += dumped
            counts.uploaded += uploaded
            now = self._clock()
            span = now - counts.last_line
            if span < self.interval:
                return
            dump_rate = (counts.dumped - counts.dumped_at_line) / span / 1e6
            up_rate = (counts.uploaded - counts.uploaded_at_line) / span / 1e6
            counts.last_line, counts.dumped_at_line, counts.uploaded_at_line = now, counts.dumped, counts.uploaded
            line = (f"progress {job.database}: dumped {counts.dumped} bytes ({size(counts.dumped)}"
                    + (f" of about {size(job.size_estimate)}, an estimate" if job.size_estimate else "")
                    + f") at {dump_rate:.1f} MB/s, uploaded {counts.uploaded} bytes ({size(counts.uploaded)}) "
                    f"at {up_rate:.1f} MB/s, {now - counts.started:.0f}s elapsed")
        self._log.info(line, extra={"connection": job.connection.name, "database": job.database})

    def finished(self, job: Job, result: DatabaseResult) -> None:
        self._jobs.pop(id(job), None)


def make_observer(stream: TextIO | None = None, *, interval: float = DEFAULT_INTERVAL,
                  clock: Callable[[], float] = time.monotonic) -> Observer:
    """Bars when ``stream`` (default stderr) is a terminal, else periodic log lines."""
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return BarObserver(stream)
    return LogObserver(interval, clock)
