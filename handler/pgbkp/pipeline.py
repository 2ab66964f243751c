"""The backup pipeline: plan the jobs, stream each database pg_dump -> ZIP -> S3, then apply retention.

This is the one place that knows the order of things. The CLI, the Lambda handler and the local runner
all call :func:`plan` and :func:`run`; the modules below (config, postgres, archive, storage, keys,
retention) know nothing of each other's work.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pgbkp import __version__, keys, postgres, retention
from pgbkp.archive import ZipStreamWriter
from pgbkp.config import Config, ConfigError, Connection
from pgbkp.redact import redact
from pgbkp.storage import Storage, StorageError
from pgbkp.storage.s3 import S3Storage

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
STALE_UPLOAD_AGE = timedelta(days=1)


class CancelledError(Exception):
    """The run was asked to stop (time budget or signal) while a database was in flight."""


@dataclass(frozen=True)
class Job:
    """One database to back up, with everything decided before pg_dump starts."""

    connection: Connection
    database: str
    bucket: str
    key: str
    when: datetime
    size_estimate: int = 0
    server_version: str = ""

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def folder(self) -> str:
        return self.key.rsplit("/", 1)[0] + "/"


@dataclass
class RetentionAction:
    key: str
    action: str  # "delete" or "keep"
    reasons: list[str]
    done: bool = False


@dataclass
class DatabaseResult:
    connection: str
    database: str
    bucket: str = ""
    key: str = ""
    status: str = "failed"  # ok | failed | dry-run | deferred
    raw_bytes: int = 0
    object_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    retention: list[RetentionAction] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunResult:
    results: list[DatabaseResult] = field(default_factory=list)
    deferred: list[Job] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status in ("ok", "dry-run") for r in self.results)

    @property
    def failed(self) -> list[DatabaseResult]:
        return [r for r in self.results if r.status == "failed"]


class Observer(Protocol):
    """Progress hooks; the CLI draws bars, the runner logs lines, Lambda emits metrics."""

    def started(self, job: Job) -> None: ...
    def dumped(self, job: Job, n: int) -> None: ...
    def uploaded(self, job: Job, n: int) -> None: ...
    def finished(self, job: Job, result: DatabaseResult) -> None: ...


class NullObserver:
    """Ignores everything; subclass it to hear only some events."""

    def started(self, job: Job) -> None:
        pass

    def dumped(self, job: Job, n: int) -> None:
        pass

    def uploaded(self, job: Job, n: int) -> None:
        pass

    def finished(self, job: Job, result: DatabaseResult) -> None:
        pass


class MultiObserver:
    """Fans the pipeline's progress out to several observers, in order."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = list(observers)

    def started(self, job: Job) -> None:
        for o in self.observers:
            o.started(job)

    def dumped(self, job: Job, n: int) -> None:
        for o in self.observers:
            o.dumped(job, n)

    def uploaded(self, job: Job, n: int) -> None:
        for o in self.observers:
            o.uploaded(job, n)

    def finished(self, job: Job, result: DatabaseResult) -> None:
        for o in self.observers:
            o.finished(job, result)


class StorageCache:
    """One storage client per distinct S3 settings, shared by the connections that use them."""

    def __init__(self, factory: Callable[[Any], Storage] = S3Storage) -> None:
        self._factory = factory
        self._made: dict[Any, Storage] = {}

    def __call__(self, connection: Connection) -> Storage:
        if connection.s3 not in self._made:
            self._made[connection.s3] = self._factory(connection.s3)
        return self._made[connection.s3]


def _ctx(job: Job) -> dict[str, Any]:
    return {"connection": job.connection.name, "database": job.database}


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    failures: list[DatabaseResult] = field(default_factory=list)


def plan(
    config: Config,
    *,
    connections: Sequence[str | int] | None = None,
    databases: Sequence[str] | None = None,
    now: datetime | None = None,
) -> Plan:
    """List each selected connection's databases and decide bucket and key for each.

    A connection that cannot be listed becomes a failed result (the others still run); a database
    with no bucket, or a requested database that does not exist, is a ConfigError: nothing runs.
    """
    now = (now or datetime.now(UTC)).astimezone(config.timezone).replace(tzinfo=None, second=0, microsecond=0)
    selected = [config.connection(c) for c in connections] if connections else list(config.connections)
    out = Plan()
    for conn in selected:
        try:
            server, found = postgres.list_databases(conn.pg, bindir=config.pg_bindir)
        except postgres.PostgresError as exc:
            msg = f"PG_URLS item {conn.index + 1} ({conn.name}): field 'url': {exc}"
            log.error(msg, extra={"connection": conn.name})
            out.failures.append(DatabaseResult(conn.name, "*", error=msg))
            continue
        names = {d.name: d for d in found}
        if databases:
            missing = [d for d in databases if d not in names]
            if missing and len(selected) == 1:
                raise ConfigError(
                    f"connection {conn.name!r}: no database {', '.join(map(repr, missing))} to back up "
                    f"(found: {', '.join(map(repr, sorted(names))) or 'none'})")
            chosen = [names[d] for d in databases if d in names]
        else:
            chosen = [d for d in found if d.name not in conn.ignore]
        for info in chosen:
            bucket = conn.bucket_for(info.name)
            if bucket is None:
                raise ConfigError(
                    f"PG_URLS item {conn.index + 1} ({conn.name}): no bucket for database {info.name!r}. "
                    "Fix: add it to db_buckets=, or set bucket= or S3_BUCKET.")
            key = keys.object_key(config.global_prefix, conn.base_dir, info.name, now, conn.prefix)
            out.jobs.append(Job(conn, info.name, bucket, key, now, info.size, server.version))
    return out


def check_buckets(jobs: Iterable[Job], storage_for: Callable[[Connection], Storage]) -> None:
    """Every bucket must exist before the first dump starts (ConfigError otherwise)."""
    seen: set[tuple[int, str]] = set()
    for job in jobs:
        if (job.connection.index, job.bucket) in seen:
            continue
        seen.add((job.connection.index, job.bucket))
        try:
            storage_for(job.connection).check_bucket(job.bucket)
        except StorageError as exc:
            field_name = ("db_buckets" if job.database in job.connection.db_buckets else
                          "bucket (or S3_BUCKET)")
            raise ConfigError(
                f"PG_URLS item {job.connection.index + 1} ({job.connection.name}): field '{field_name}': {exc}"
            ) from None


def object_metadata(job: Job, pg_dump_version: str) -> dict[str, str]:
    """What we know before the dump starts; raw size and sha256 are added at commit."""
    ascii_only = lambda s: s.encode("ascii", "replace").decode()  # noqa: E731 - S3 metadata is ASCII
    return {
        "database": urllib.parse.quote(job.database, safe=""),
        "server-version": ascii_only(job.server_version),
        "pg-dump-version": ascii_only(pg_dump_version),
        "tool-version": f"pgbkp {__version__}",
        "created": job.when.strftime("%Y-%m-%dT%H:%M"),
    }


def clean_stale_uploads(storage: Storage, job: Job, now: datetime | None = None) -> int:
    """Abort multipart uploads a killed run left in this database's own folder (S3 bills their parts)."""
    now = now or datetime.now(UTC)
    count = 0
    for pending in storage.pending_uploads(job.bucket, job.folder):
        if pending.key.rsplit("/", 1)[0] + "/" != job.folder or now - pending.initiated < STALE_UPLOAD_AGE:
            continue
        storage.abort_pending(pending)
        count += 1
        log.info("aborted stale multipart upload s3://%s/%s from %s", job.bucket, pending.key,
                 pending.initiated.isoformat(), extra=_ctx(job))
    return count


def backup_database(
    config: Config,
    job: Job,
    storage: Storage,
    *,
    observer: Observer | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    pg_dump_version: str = "",
) -> DatabaseResult:
    """Stream one database into one object. On any failure: no object, no pending upload, an error."""
    observer = observer or NullObserver()
    result = DatabaseResult(job.connection.name, job.database, job.bucket, job.key)
    started = time.monotonic()
    observer.started(job)
    upload = None
    try:
        try:
            clean_stale_uploads(storage, job)
        except StorageError as exc:  # housekeeping: never a reason to skip the backup itself
            log.warning("could not look for stale multipart uploads: %s", redact(str(exc)), extra=_ctx(job))
        upload = storage.upload(job.bucket, job.key, metadata=object_metadata(job, pg_dump_version),
                                on_progress=lambda n: observer.uploaded(job, n))
        password = config.zip_password.reveal().encode() if config.zip_password else None
        with postgres.DumpStream(job.connection.pg, job.database, bindir=config.pg_bindir,
                                 stop=should_stop) as dump:
            writer = ZipStreamWriter(upload, keys.member_name(job.key), password=password,
                                     level=config.compression_level, threads=config.compression_threads,
                                     mtime=job.when)
            with writer:
                while chunk := dump.read(READ_CHUNK):
                    writer.write(chunk)
                    observer.dumped(job, len(chunk))
                    if should_stop():
                        raise CancelledError(f"backup {job.url}: stopped before the dump finished")
                stats = writer.close()
        info = upload.commit({"raw-size": str(stats.raw_bytes)})
        result.status, result.raw_bytes, result.object_bytes = "ok", stats.raw_bytes, info.size
    except BaseException as exc:  # Ctrl-C too: whatever stops us, the upload must not stay pending
        result.error = redact(str(exc) if isinstance(exc, postgres.PostgresError | StorageError | CancelledError)
                              else f"backup {job.url}: {type(exc).__name__}: {exc}")
        if upload is not None:
            try:
                upload.abort()
            except StorageError as abort_exc:
                result.error += f"; {redact(str(abort_exc))}"
        if not isinstance(exc, Exception):
            raise
    result.seconds = round(time.monotonic() - started, 3)
    if result.status == "ok":
        log.info("backed up %s: %d bytes dumped, %d stored, %.1fs", job.url, result.raw_bytes,
                 result.object_bytes, result.seconds, extra=_ctx(job))
    else:
        log.error("backup failed: %s", result.error, extra=_ctx(job))
    observer.finished(job, result)
    return result


def policy_for(connection: Connection) -> retention.Policy:
    return retention.Policy(connection.retention_days, connection.retention_weeks, connection.retention_months)


def retention_plan(config: Config, job: Job, storage: Storage, *, protect: Sequence[str] = (),
                   today: datetime | None = None) -> retention.Plan:
    """Plan over this database's own backups only: its folder, its file names, its prefix."""
    conn = job.connection
    backups = []
    for obj in storage.list(job.bucket, job.folder):
        parsed = keys.parse_key(obj.key, config.global_prefix, conn.base_dir, conn.prefix)
        if parsed is not None and parsed[0] == job.database:
            backups.append(retention.Backup(obj.key, parsed[1]))
    day = retention.local_today(today or datetime.now(UTC), config.timezone)
    return retention.plan(backups, day, policy_for(job.connection), protect=protect)


def apply_retention(config: Config, job: Job, storage: Storage, written_key: str | None, *,
                    dry_run: bool = False) -> list[RetentionAction]:
    """Delete what the plan says, after this run's verified upload of this database (or, dry, just say)."""
    policy = policy_for(job.connection)
    if not policy.enabled:
        return []
    the_plan = retention_plan(config, job, storage, protect=[written_key] if written_key else [])
    actions = [RetentionAction(d.backup.key, "delete", list(d.reasons)) for d in the_plan.delete]
    actions += [RetentionAction(d.backup.key, "keep", list(d.reasons)) for d in the_plan.keep]
    doomed = [a for a in actions if a.action == "delete"]
    for a in doomed:
        log.info("%s s3://%s/%s: %s", "would delete" if dry_run else "delete", job.bucket, a.key,
                 "; ".join(a.reasons), extra=_ctx(job))
    if doomed and not dry_run:
        storage.delete(job.bucket, [a.key for a in doomed])
        for a in doomed:
            a.done = True
    return actions


def run(
    config: Config,
    the_plan: Plan,
    *,
    storage_for: Callable[[Connection], Storage] | None = None,
    observer: Observer | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    before_job: Callable[[Job, list[Job]], bool] = lambda job, rest: True,
    dry_run: bool = False,
) -> RunResult:
    """Back up every planned job in order, each followed by its own retention.

    ``before_job(job, remaining)`` may return False to stop before a job starts (Lambda's time budget);
    the jobs not started are returned in ``RunResult.deferred``.
    """
    storage_for = storage_for or StorageCache()
    out = RunResult(results=list(the_plan.failures))
    check_buckets(the_plan.jobs, storage_for)
    versions: dict[str, str] = {}
    for i, job in enumerate(the_plan.jobs):
        if should_stop() or not before_job(job, the_plan.jobs[i:]):
            out.deferred = the_plan.jobs[i:]
            break
        storage = storage_for(job.connection)
        if dry_run:
            result = DatabaseResult(job.connection.name, job.database, job.bucket, job.key, "dry-run",
                                    raw_bytes=job.size_estimate)
            log.info("would back up %s to %s (about %d bytes on disk)", job.database, job.url,
                     job.size_estimate, extra=_ctx(job))
            result.retention = _safe_retention(config, job, storage, None, result, dry_run=True)
            out.results.append(result)
            continue
        if "pg_dump" not in versions:
            versions["pg_dump"] = _pg_dump_version(config)
        result = backup_database(config, job, storage, observer=observer, should_stop=should_stop,
                                 pg_dump_version=versions["pg_dump"])
        if result.status == "ok":
            result.retention = _safe_retention(config, job, storage, job.key, result)
        out.results.append(result)
    return out


def _safe_retention(config: Config, job: Job, storage: Storage, written: str | None, result: DatabaseResult,
                    *, dry_run: bool = False) -> list[RetentionAction]:
    """Retention failing is a failed run (it must not go unnoticed), but the backup itself stands."""
    try:
        return apply_retention(config, job, storage, written, dry_run=dry_run)
    except StorageError as exc:
        result.status = "failed"
        result.error = f"retention: {redact(str(exc))}"
        log.error("retention failed: %s", result.error, extra=_ctx(job))
        return []


def _pg_dump_version(config: Config) -> str:
    try:
        return postgres.client_version("pg_dump", config.pg_bindir)
    except Exception:  # the dump itself will report a missing pg_dump clearly
        return "unknown"
