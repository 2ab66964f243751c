"""The last backups of each database, kept in a small JSON file next to the health file.

``/metrics``, ``METRICS_TEXTFILE`` and the status page need more than the last run: when each database
last succeeded (it may have failed since), how many failures and retention deletions so far, and the size
and duration of its recent backups for the chart. One file serves ``pgbkp serve`` (which keeps it in memory
too) and ``pgbkp backup`` under cron (which reads it, adds its run, and writes it back), so both report the
same counters, and a restarted runner still draws its history. Each write is one read-merge-write under
a lock file beside it (``flock``): a runner that kept the file in memory first takes in what a cron backup
or ``pgbkp verify`` wrote meanwhile, instead of writing its older copy over it.

The file is bounded (``MAX_BACKUPS`` per database, ``MAX_DATABASES`` in all) and rewritten atomically. It
holds sizes, times, statuses and error lines, which the pipeline builds without secrets; never a URL, a
password or a key. A damaged or foreign file is set aside with a warning, never fatal: monitoring must not
stop a backup.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from pgbkp import health
from pgbkp.redact import redact

log = logging.getLogger("pgbkp.history")

VERSION = 1
#: Backups kept per database: about three months of daily runs, enough for the chart.
MAX_BACKUPS = 100
#: Databases kept; the ones not seen for longest (dropped, renamed) go first.
MAX_DATABASES = 500
#: A history file is at most a few MB; anything much bigger was not written by pgbkp.
MAX_FILE_BYTES = 32 * 1024 * 1024
#: An error kept per backup: one line on the page; a whole stderr would make the file outgrow MAX_FILE_BYTES.
MAX_ERROR_CHARS = 300
#: How long a writer waits for another process's read-merge-write before writing without the lock.
LOCK_WAIT_SECONDS = 10.0


def path_for(env: Mapping[str, str]) -> Path:
    """Beside the health file: ``pgbkp-health.json`` -> ``pgbkp-health-history.json``."""
    health_file = Path(env.get("HEALTH_FILE", "").strip() or health.default_file())
    return health_file.with_name(f"{health_file.stem}-history.json")


def _empty() -> dict[str, Any]:
    return {"version": VERSION, "databases": []}


def _entry(doc: dict[str, Any], connection: str, database: str) -> dict[str, Any]:
    for db in doc["databases"]:
        if db["connection"] == connection and db["database"] == database:
            return db
    db = {"connection": connection, "database": database, "backups": [], "last_success_at": None,
          "backups_total": 0, "failures_total": 0, "retention_deleted_total": 0, "last_verify": None,
          "updated_at": None}
    doc["databases"].append(db)
    return db


def _number(value: object) -> bool:
    """A finite int or float (JSON allows NaN, Infinity and huge integers, which the metrics cannot show)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _error_line(error: object) -> str:
    """Redacted first (a secret cut in two would escape the scrubber), then cut to MAX_ERROR_CHARS."""
    text = redact(str(error or "failed"))
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 1] + "…"


def _valid(doc: object) -> bool:
    """Just enough to trust the shapes the code below reads; anything else is set aside."""
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("databases"), list):
        return False
    for db in doc["databases"]:
        if not isinstance(db, dict) or not isinstance(db.get("connection"), str) \
                or not isinstance(db.get("database"), str) or not isinstance(db.get("backups"), list):
            return False
        for key in ("backups_total", "failures_total", "retention_deleted_total"):
            if not isinstance(db.get(key), int) or not _number(db.get(key)):
                return False
        for b in db["backups"]:
            if not isinstance(b, dict) or not isinstance(b.get("at"), str) or b.get("status") not in ("ok", "failed"):
                return False
            if not all(_number(b.get(k)) for k in ("raw_bytes", "object_bytes", "seconds")):
                return False
        for key in ("last_success_at", "updated_at"):
            if db.get(key) is not None and not isinstance(db.get(key), str):
                return False
        verify = db.get("last_verify")
        if verify is not None and not (isinstance(verify, dict) and isinstance(verify.get("at"), str)
                                       and isinstance(verify.get("ok"), bool)):
            return False
    return True


def timestamp(iso: str | None) -> float | None:
    """Seconds since the epoch of an ISO 8601 time with its offset (None when unset or unreadable)."""
    if not iso:
        return None
    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return t.timestamp() if t.utcoffset() is not None else None


class History:
    """The history file and its contents in memory; safe to read from the HTTP server's threads."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        #: The file as last read or written here (inode, mtime, size): a change means another writer.
        self._seen: tuple[int, int, int] | None = None
        self._doc = self._load() or _empty()

    def _load(self) -> dict[str, Any] | None:
        """The file's contents, or None (missing, unreadable or not ours: warned once per version of it)."""
        if self.path is None:
            return None
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                self._seen = (st.st_ino, st.st_mtime_ns, st.st_size)
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the history file %s (%s): starting a new history", self.path,
                        exc.strerror or exc)
            return None
        try:
            doc = json.loads(data.decode("utf-8")) if len(data) <= MAX_FILE_BYTES else None
        except (UnicodeDecodeError, ValueError, RecursionError):
            doc = None
        if not _valid(doc):
            log.warning("the history file %s is not one pgbkp wrote (or an older version): starting a new "
                        "history; it will be replaced at the end of the next run", self.path)
            return None
        assert isinstance(doc, dict)
        return doc

    def _refresh(self) -> None:
        """Under ``_lock``: take in what another process wrote since this one last read or wrote the file
        (a missing or damaged file keeps what is in memory, which the next write puts back)."""
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
        except OSError:
            return
        if (st.st_ino, st.st_mtime_ns, st.st_size) != self._seen and (doc := self._load()) is not None:
            self._doc = doc

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Other processes' writers wait while this one reads, merges and writes. A lock that cannot be had
        (no lock file, a writer stuck for LOCK_WAIT_SECONDS) is a warning: monitoring never stops a backup."""
        if self.path is None:
            yield
            return
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            log.warning("cannot lock the history file %s (%s): writing it without the lock", lock,
                        exc.strerror or exc)
            yield
            return
        try:
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        log.warning("the history file %s stayed locked for %gs: writing it without the lock",
                                    self.path, LOCK_WAIT_SECONDS)
                        break
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # and with it the lock

    def snapshot(self) -> dict[str, Any]:
        """A deep copy, for readers that must not see a run being recorded half-way; it includes what
        another process (a cron backup, ``pgbkp verify``) wrote to the file since."""
        with self._lock:
            self._refresh()
            return copy.deepcopy(self._doc)

    def record_run(self, rows: Iterable[Mapping[str, Any]], at: str) -> None:
        """Add one run's results (``handler_core.summarize`` rows; dry runs are not backups) finished at ``at``."""
        with self._exclusive(), self._lock:
            self._refresh()
            for r in rows:
                if r.get("status") not in ("ok", "failed"):
                    continue
                ok = r["status"] == "ok"
                db = _entry(self._doc, str(r["connection"]), str(r["database"]))
                db["backups"].append({
                    "at": at, "status": r["status"], "raw_bytes": int(r.get("raw_bytes") or 0),
                    "object_bytes": int(r.get("object_bytes") or 0), "seconds": float(r.get("seconds") or 0.0),
                    "error": None if ok else _error_line(r.get("error")),
                })
                del db["backups"][:-MAX_BACKUPS]
                db["backups_total"] += 1
                db["failures_total"] += 0 if ok else 1
                deleted = (r.get("retention") or {}).get("deleted", [])
                db["retention_deleted_total"] += sum(1 for d in deleted if d.get("done"))
                if ok:
                    db["last_success_at"] = at
                db["updated_at"] = at
            self._trim()
            self._save()

    def record_verify(self, connection: str, database: str, at: str, ok: bool, error: str | None) -> None:
        with self._exclusive(), self._lock:
            self._refresh()
            db = _entry(self._doc, connection, database)
            db["last_verify"] = {"at": at, "ok": ok, "error": None if ok else _error_line(error)}
            db["updated_at"] = db.get("updated_at") or at
            self._trim()
            self._save()

    def _trim(self) -> None:
        dbs = self._doc["databases"]
        if len(dbs) > MAX_DATABASES:
            dbs.sort(key=lambda d: timestamp(d.get("updated_at")) or 0.0, reverse=True)
            del dbs[MAX_DATABASES:]

    def _save(self) -> None:
        """Under both locks: replace the file atomically; a failure is a warning (the next run tries again)."""
        if self.path is None:
            return
        try:
            fd, tmp = tempfile.mkstemp(prefix=".pgbkp-history-", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(self._doc, f, ensure_ascii=False, separators=(",", ":"))
                    f.flush()
                    st = os.fstat(f.fileno())
                os.replace(tmp, self.path)
                self._seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("cannot write the history file %s: %s", self.path, exc.strerror or exc)
