"""The backup pipeline: plan the jobs, stream each database pg_dump -> ZIP -> S3, then apply retention.

This is the one place that knows the order of things. ``handler_core.handle`` (behind the CLI, the
Lambda function and the local runner) calls :func:`plan` and :func:`run`; the modules below (config,
postgres, archive, storage, keys, retention) know nothing of each other's work.

Both ends are passed in: the store as ``storage_for`` (the edges build it: S3 in production, memory in
tests) and PostgreSQL as a :class:`DumpSource` (pg_dump and psql by default, a fake in tests), so the
order, budget, signals and retention of a run can be tested without a server.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from pgbkp import __version__, cpus, integrity, keys, postgres, retention
from pgbkp.archive import SupportsWrite, ZipStreamWriter
from pgbkp.config import AgeRecipients, Config, ConfigError, Connection, S3Settings, select, setting
from pgbkp.output import OK_STATUSES
from pgbkp.redact import redact
from pgbkp.storage import ObjectExistsError, ObjectInfo, Storage, StorageError

if TYPE_CHECKING:  # pyrage loads only where age is used (AGE_RECIPIENTS): a plain run's start-up skips it
    from pgbkp.archive.agecrypt import Recipient

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
#: How long a multipart upload of ours must have had no new part before a later run aborts it.
STALE_UPLOAD_IDLE = timedelta(hours=1)


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
    #: "database", or "globals" for the connection's roles and other globals (database is keys.GLOBALS).
    kind: str = "database"
    #: pg_dump's extra argv items: PG_DUMP_ARGS and the exclude fields (Connection.dump_args_for).
    dump_args: tuple[str, ...] = ()

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
    """One database's outcome. ``raw_bytes`` counts what pg_dump wrote, also when the backup then failed;
    ``size_estimate`` is the database's size on disk (what a dry run can tell, usually more than a dump)."""

    connection: str
    database: str
    bucket: str = ""
    key: str = ""
    status: str = "failed"  # ok | failed | dry-run (skipped ones become a Skipped entry)
    raw_bytes: int = 0
    object_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    retention: list[RetentionAction] = field(default_factory=list)
    size_estimate: int = 0
    #: "database", or "globals" (pg_dumpall --globals-only; ``database`` is then keys.GLOBALS).
    kind: str = "database"
    #: What the user should know of a backup that succeeded: a globals dump without role passwords.
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Skipped:
    """A database deliberately not backed up (ignored, or named but not found): not a failure."""

    connection: str
    database: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class RunResult:
    results: list[DatabaseResult] = field(default_factory=list)
    deferred: list[Job] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status in OK_STATUSES for r in self.results)


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
    """``storage_for``: one store per distinct S3 settings, shared by the connections that use them (an S3
    client costs a start-up). The edges pass ``StorageCache(S3Storage)``; only they know S3."""

    def __init__(self, factory: Callable[[S3Settings], Storage]) -> None:
        self._factory = factory
        self._made: dict[S3Settings, Storage] = {}

    def __call__(self, connection: Connection) -> Storage:
        if connection.s3 not in self._made:
            self._made[connection.s3] = self._factory(connection.s3)
        return self._made[connection.s3]


class DumpReader(Protocol):
    """A dump being read: ``read()`` returns b"" only once the whole dump has been read, and raises
    (postgres.DumpError) when the dump failed, so a truncated dump never looks complete."""

    def read(self, size: int) -> bytes: ...


class GlobalsReader(DumpReader, Protocol):
    """The globals dump being read; ``note`` says, once it is read, what it left out (role passwords)."""

    note: str | None


class DumpSource(Protocol):
    """What a backup asks of PostgreSQL: which databases a connection has, pg_dump's version (for the
    object's metadata), and one database's dump. :class:`PgDumpSource` runs psql and pg_dump; tests pass
    a fake (tests/fakes.py)."""

    def databases(self, connection: Connection, *,
                  sizes: bool = False) -> tuple[postgres.ServerInfo, list[postgres.DatabaseInfo]]:
        """Each database's size on disk only with ``sizes`` (else 0: costly to read, rarely used).
        Raises postgres.PostgresError when the connection cannot be listed."""
        ...

    def version(self) -> str: ...

    def dump(self, connection: Connection, database: str, *, stop: Callable[[], bool],
             lock_wait_timeout: int, extra_args: Sequence[str] = ()) -> AbstractContextManager[DumpReader]:
        """The dump of ``database``; ``stop`` is polled while it waits (a stalled dump must still stop);
        ``extra_args``: more pg_dump flags (Job.dump_args), each one argv item."""
        ...

    def dump_globals(self, connection: Connection, *,
                     stop: Callable[[], bool]) -> AbstractContextManager[GlobalsReader]:
        """The server's roles and other globals (pg_dumpall --globals-only), read as :meth:`dump`'s."""
        ...


@dataclass(frozen=True)
class PgDumpSource:
    """The real source: psql lists the databases, pg_dump dumps them (postgres.DumpStream)."""

    bindir: Path | None = None  # PG_BIN_DIR

    def databases(self, connection: Connection, *,
                  sizes: bool = False) -> tuple[postgres.ServerInfo, list[postgres.DatabaseInfo]]:
        return postgres.list_databases(connection.pg, bindir=self.bindir, sizes=sizes)

    def version(self) -> str:
        try:
            return postgres.client_version("pg_dump", self.bindir)
        except Exception:  # the dump itself will report a missing pg_dump clearly
            return "unknown"

    def dump(self, connection: Connection, database: str, *, stop: Callable[[], bool],
             lock_wait_timeout: int, extra_args: Sequence[str] = ()) -> postgres.DumpStream:
        return postgres.DumpStream(connection.pg, database, bindir=self.bindir, stop=stop,
                                   lock_wait_timeout=lock_wait_timeout, extra_args=extra_args)

    def dump_globals(self, connection: Connection, *, stop: Callable[[], bool]) -> postgres.GlobalsDump:
        return postgres.GlobalsDump(connection.pg, bindir=self.bindir, stop=stop)


def _ctx(job: Job) -> dict[str, Any]:
    return {"connection": job.connection.name, "database": job.database}


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    failures: list[DatabaseResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


IGNORED = "ignored (IGNORE_DATABASES or ignore=)"


def plan(
    config: Config,
    *,
    connections: Sequence[str | int] | None = None,
    databases: Sequence[str] | None = None,
    now: datetime | None = None,
    source: DumpSource | None = None,
    sizes: bool = False,
) -> Plan:
    """List each selected connection's databases and decide bucket and key for each.

    One database or connection never stops the others: a connection that cannot be listed, a database
    the user may not CONNECT to, or one without a bucket becomes a failed result; an ignored database,
    or a requested one that does not exist (dropped since a hand-off named it), is skipped with a warning.
    ``source`` lists the databases (default: psql, :class:`PgDumpSource`); ``sizes`` also reads each one's
    size on disk into ``Job.size_estimate``, for whoever uses an estimate (else it is 0).
    """
    source = source or PgDumpSource(config.pg_bindir)
    now = (now or datetime.now(UTC)).astimezone(config.timezone).replace(tzinfo=None, second=0, microsecond=0)
    selected = [config.connection(c) for c in connections] if connections else list(config.connections)
    out = Plan()
    for conn in selected:
        item = f"PG_URLS item {conn.index + 1} ({conn.name})"
        try:
            server, found = source.databases(conn, sizes=sizes)
        except postgres.PostgresError as exc:
            msg = f"{item}: field 'url': {exc}"
            log.error(msg, extra={"connection": conn.name})
            out.failures.append(DatabaseResult(conn.name, "*", error=msg))
            continue
        names = {d.name: d for d in found}
        if databases:
            for name in (d for d in databases if d not in names and not (conn.globals and d == keys.GLOBALS)):
                reason = (f"no database {name!r} on {conn.pg.display} (dropped, or misspelt?); the others "
                          f"go on. Found: {', '.join(map(repr, sorted(names))) or 'none'}")
                log.warning("skipped %s: %s", name, reason, extra={"connection": conn.name, "database": name})
                out.skipped.append(Skipped(conn.name, name, reason))
            chosen = [names[d] for d in databases if d in names]
        else:
            chosen = _select(conn, item, found, out)
        for info in chosen:
            ctx = {"connection": conn.name, "database": info.name}
            bucket = conn.bucket_for(info.name)
            key = keys.object_key(config.global_prefix, conn.base_dir, info.name, now, conn.prefix,
                                  keys.AGE_SUFFIX if conn.age else "")
            error = None
            if bucket is None:
                error = (f"{item}: no bucket for database {info.name!r}. Fix: add it to db_buckets=, set "
                         "bucket= or S3_BUCKET, or skip it with ignore=.")
            elif not info.can_connect:
                error = (f"{item}: user {conn.pg.user!r} may not connect to database {info.name!r} (no CONNECT "
                         f"privilege). Fix: GRANT CONNECT ON DATABASE {postgres.quote_ident(info.name)} TO "
                         f"{postgres.quote_ident(conn.pg.user)}, or skip it with ignore= or IGNORE_DATABASES.")
            if error is not None:
                log.error("%s", error, extra=ctx)
                out.failures.append(DatabaseResult(conn.name, info.name, bucket or "", key if bucket else "",
                                                   error=error))
                continue
            assert bucket is not None
            dump_args = conn.dump_args_for(info.name)
            if dump_args:  # --dry-run shows them too
                log.info("%s: pg_dump %s", info.name, " ".join(map(shlex.quote, dump_args)), extra=ctx)
            out.jobs.append(Job(conn, info.name, bucket, key, now, info.size, server.version, dump_args=dump_args))
        if conn.globals and (not databases or keys.GLOBALS in databases):
            _plan_globals(config, conn, now, server, out)
    return out


def _plan_globals(config: Config, conn: Connection, now: datetime, server: postgres.ServerInfo, out: Plan) -> None:
    """The connection's globals job (BACKUP_GLOBALS or globals=), after its databases: roles must exist
    before a database that names them is restored, and a full-server restore reads the list in order."""
    key = keys.globals_key(config.global_prefix, conn.base_dir, now, conn.prefix, keys.AGE_SUFFIX if conn.age else "")
    bucket = conn.bucket_for(keys.GLOBALS)
    if bucket is None:
        error = (f"PG_URLS item {conn.index + 1} ({conn.name}): no bucket for the globals backup. Fix: set bucket= "
                 f"or S3_BUCKET, or add {keys.GLOBALS}=NAME to db_buckets=.")
        log.error("%s", error, extra={"connection": conn.name, "database": keys.GLOBALS})
        out.failures.append(DatabaseResult(conn.name, keys.GLOBALS, error=error, kind="globals"))
        return
    out.jobs.append(Job(conn, keys.GLOBALS, bucket, key, now, 0, server.version, kind="globals"))


def _select(conn: Connection, item: str, found: list[postgres.DatabaseInfo], out: Plan) -> list[postgres.DatabaseInfo]:
    """What databases= picks from the listing (every database when it is not given), less IGNORE_DATABASES
    and ignore= (recorded as skipped). A *name* the server does not list fails on its own, with the fix; a
    pattern that matches nothing is a warning (a family of databases may be empty for now)."""
    ctx = {"connection": conn.name}
    sel = select([d.name for d in found], conn.databases)
    listed = ", ".join(map(repr, sorted(d.name for d in found))) or "none"
    for name in sel.missing:
        msg = (f"{item}: field 'databases': no database {name!r} on {conn.pg.display} (templates and databases "
               f"that refuse connections are never backed up). Fix: correct the name (found: {listed}), or "
               "remove it from databases=.")
        log.error("%s", msg, extra={**ctx, "database": name})
        out.failures.append(DatabaseResult(conn.name, name, error=msg))
    for pattern in sel.unmatched:
        reason = f"databases= pattern {pattern!r} matched no database on {conn.pg.display} (found: {listed})"
        log.warning("skipped %s: %s", pattern, reason, extra={**ctx, "database": pattern})
        out.skipped.append(Skipped(conn.name, pattern, reason))
    for name in sorted(set(conn.db_dump_args) - {d.name for d in found}):
        log.warning("%s: the db_exclude_* fields name database %r, which %s does not list", item, name,
                    conn.pg.display, extra=ctx)
    if not conn.databases and conn.pg.database != "postgres":
        log.info("%s: the URL's database %r only chooses where to connect: every database is backed up "
                 "(databases= picks some)", item, conn.pg.database, extra=ctx)
    picked = set(sel.chosen)
    out.skipped += [Skipped(conn.name, d.name, IGNORED) for d in found if d.name in picked and d.name in conn.ignore]
    return [d for d in found if d.name in picked and d.name not in conn.ignore]


def check_buckets(jobs: Iterable[Job], storage_for: Callable[[Connection], Storage]) -> dict[tuple[int, str], str]:
    """Check each bucket once before the first dump; return the error of each that failed, by (connection
    index, bucket). A missing bucket or an unreachable store fails only the databases that go there."""
    seen: set[tuple[int, str]] = set()
    failed: dict[tuple[int, str], str] = {}
    for job in jobs:
        where = (job.connection.index, job.bucket)
        if where in seen:
            continue
        seen.add(where)
        storage = storage_for(job.connection)
        try:
            storage.check_bucket(job.bucket)
            lock_mode = job.connection.s3.object_lock_mode
            if lock_mode and storage.object_lock_enabled(job.bucket) is False:
                raise StorageError(f"check bucket s3://{job.bucket}: S3_OBJECT_LOCK_MODE is {lock_mode}, but the "
                                   "bucket has no Object Lock. Fix: use a bucket created with Object Lock, or "
                                   "unset S3_OBJECT_LOCK_MODE (object_lock_mode=off in this item)")
        except StorageError as exc:
            field_name = ("db_buckets" if job.database in job.connection.db_buckets else
                          "bucket (or S3_BUCKET)")
            failed[where] = redact(
                f"PG_URLS item {job.connection.index + 1} ({job.connection.name}): field '{field_name}': {exc}")
            log.error("%s", failed[where], extra={"connection": job.connection.name})
    return failed


def retain_until(config: Config, job: Job) -> datetime | None:
    """With S3_OBJECT_LOCK_MODE, when a new backup's lock ends: local midnight (in TIMEZONE) of the
    first day retention could delete it, so it stays locked exactly as long as retention must keep it
    (a later weekly or monthly keeper gets its lock extended: _extend_locks)."""
    if job.connection.s3.object_lock_mode is None:
        return None
    return retention.local_midnight(retention.lock_date(job.when.date(), policy_for(job.connection)),
                                    config.timezone)


def lock_wait_timeout(config: Config) -> int:
    """PG_LOCK_WAIT_TIMEOUT_SECONDS: how long pg_dump waits for its table locks (0: forever)."""
    return int(setting(config.env, "PG_LOCK_WAIT_TIMEOUT_SECONDS"))


def object_metadata(job: Job, pg_dump_version: str) -> dict[str, str]:
    """What we know before the dump starts. The SHA-256 and the dump's size are only known at its end:
    they are in the archive's own integrity record (pgbkp.integrity), which this metadata announces
    (inside the ZIP: with age, restore checks it after decrypting)."""
    ascii_only = lambda s: s.encode("ascii", "replace").decode()  # noqa: E731 - S3 metadata is ASCII
    return {
        **({"encryption": "age"} if keys.is_age(job.key) else {}),
        "database": urllib.parse.quote(job.database, safe=""),
        "server-version": ascii_only(job.server_version),
        "pg-dump-version": ascii_only(pg_dump_version),
        "tool-version": f"pgbkp {__version__}",
        "created": job.when.strftime("%Y-%m-%dT%H:%M"),
        integrity.METADATA_KEY: integrity.METADATA_VALUE,
    }


#: What opens .zip.age backups; none of it belongs where backups are made (docs/age.md, "Lambda").
AGE_IDENTITY_SETTINGS = ("AGE_IDENTITY_FILE", "AGE_IDENTITY", "AGE_IDENTITY_SECRET_ID", "AGE_IDENTITY_PASSPHRASE")


def check_encryption(config: Config) -> None:
    """At a backup run's start, before any work: every connection's age recipients parse (pyrage), and none
    has ZIP_PASSWORD too. Raises ConfigError naming the bad recipient by position (docs/age.md). An age
    identity set for a backup run is a warning: it undoes what age is for, but a box that also restores
    may hold it on purpose."""
    for conn in config.connections:
        age_recipients(config, conn)
    given = [name for name in AGE_IDENTITY_SETTINGS if config.env.get(name, "").strip()]
    if given:  # the names only, never a value
        verb, pronoun = ("is", "it") if len(given) == 1 else ("are", "them")
        log.warning("%s %s set where backups are made: whoever takes over this machine or role can read every "
                    ".zip.age backup, which age is there to prevent. Fix: unset %s for backups; keep the identity "
                    "only where you restore or verify (docs/age.md)", " and ".join(given), verb, pronoun)


def age_recipients(config: Config, conn: Connection) -> list[Recipient] | None:
    """The connection's age recipients, parsed; None without age. Raises ConfigError."""
    if conn.age is None:
        return None
    if config.zip_password:
        where = "AGE_RECIPIENTS" if conn.age.sources[0][0].startswith("AGE_") else "its field 'age'"
        raise ConfigError(
            f"ZIP_PASSWORD and AGE_RECIPIENTS are both set for PG_URLS item {conn.index + 1} ({conn.name}) "
            f"(through {where}): a backup is encrypted one way. Fix: unset ZIP_PASSWORD where backups are made "
            "(age replaces it); keep it only where you restore the .zip backups it made.")
    return list(_parse_age(conn.age))


@lru_cache(maxsize=64)
def _parse_age(age: AgeRecipients) -> tuple[Recipient, ...]:
    from pgbkp.archive.agecrypt import AgeKeyError, parse_recipients

    out: list[Recipient] = []
    for source, text in age.sources:
        try:
            out += parse_recipients(text, source=source)
        except AgeKeyError as exc:
            raise ConfigError(str(exc)) from None
    return tuple(out)


@contextmanager
def _age_layer(upload: SupportsWrite, recipients: list[Recipient] | None, job: Job) -> Iterator[SupportsWrite]:
    """The upload itself, or an AgeWriter in front of it. On a clean exit the age file is completed (its
    final chunk written into the upload, before commit); on an exception the writer is only aborted."""
    if recipients is None:
        yield upload
        return
    from pgbkp.archive.agecrypt import AgeWriter

    with AgeWriter(upload, recipients, name=job.url) as encrypt:
        yield encrypt
        encrypt.close()


def clean_stale_uploads(config: Config, storage: Storage, job: Job, now: datetime | None = None) -> int:
    """Abort the multipart uploads a killed run of this database left behind (S3 bills their parts).

    Only uploads to this database's own backup names in its own folder, never our own key (a run of the
    same minute may be live), and only once nothing has been uploaded to them for STALE_UPLOAD_IDLE:
    a live run sends a part every few MB of compressed dump, so an upload idle that long has no owner.
    """
    return _clean_stale(config, storage, [job], job.folder, now)


def _clean_stale(config: Config, storage: Storage, jobs: Sequence[Job], prefix: str,
                 now: datetime | None = None) -> int:
    """:func:`clean_stale_uploads` for several databases of one connection and bucket, with one listing
    of the uploads under ``prefix`` (their common folder)."""
    now = now or datetime.now(UTC)
    conn, bucket = jobs[0].connection, jobs[0].bucket
    ours, live = {j.database for j in jobs}, {j.key for j in jobs}
    count = 0
    for pending in storage.pending_uploads(bucket, prefix):
        parsed = keys.parse_key(pending.key, config.global_prefix, conn.base_dir, conn.prefix)
        if parsed is None or parsed[0] not in ours or pending.key in live:
            continue
        if now - pending.last_activity < STALE_UPLOAD_IDLE:
            continue
        storage.abort_pending(pending)
        count += 1
        log.info("aborted multipart upload s3://%s/%s left by a stopped run (idle since %s)", bucket,
                 pending.key, pending.last_activity.isoformat(),
                 extra={"connection": conn.name, "database": parsed[0]})
    return count


def backup_database(
    config: Config,
    job: Job,
    storage: Storage,
    *,
    observer: Observer | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    pg_dump_version: str = "",
    source: DumpSource | None = None,
    housekeeping: bool = True,
    listed: bool = False,
    threads: int | None = None,
) -> DatabaseResult:
    """Stream one database into one object. On any failure: no object, no pending upload, an error.

    :func:`run` does once per connection what a lone call does here: ``housekeeping=False`` (it looked
    for stale uploads already), ``listed=True`` (its listing says the key is free: no HEAD first).
    ``threads``: deflate threads (default COMPRESSION_THREADS), the run's share per database."""
    observer = observer or NullObserver()
    source = source or PgDumpSource(config.pg_bindir)
    result = DatabaseResult(job.connection.name, job.database, job.bucket, job.key, kind=job.kind)
    started = time.monotonic()
    observer.started(job)
    upload = None
    try:
        if housekeeping:
            try:
                clean_stale_uploads(config, storage, job)
            except StorageError as exc:  # housekeeping: never a reason to skip the backup itself
                log.warning("could not look for stale multipart uploads: %s", redact(str(exc)), extra=_ctx(job))
        upload = storage.upload(job.bucket, job.key, metadata=object_metadata(job, pg_dump_version),
                                on_progress=lambda n: observer.uploaded(job, n), should_stop=should_stop,
                                retain_until=retain_until(config, job), listed=listed)
        recipients = age_recipients(config, job.connection)
        password = config.zip_password.reveal().encode() if config.zip_password else None
        opened = (source.dump_globals(job.connection, stop=should_stop) if job.kind == "globals" else
                  source.dump(job.connection, job.database, stop=should_stop,
                              lock_wait_timeout=lock_wait_timeout(config), extra_args=job.dump_args))
        with opened as dump, _age_layer(upload, recipients, job) as sink:
            writer = ZipStreamWriter(sink, keys.member_name(job.key), password=password,
                                     level=config.compression_level,
                                     threads=config.compression_threads if threads is None else threads,
                                     mtime=job.when)
            with writer:
                while chunk := dump.read(READ_CHUNK):
                    writer.write(chunk)
                    result.raw_bytes += len(chunk)
                    observer.dumped(job, len(chunk))
                    if should_stop():
                        raise CancelledError(f"backup {job.url}: stopped before the dump finished")
                writer.close()
            result.note = getattr(dump, "note", None)
        if should_stop():
            raise CancelledError(f"backup {job.url}: stopped before the upload was committed")
        info = upload.commit()
        result.status, result.object_bytes = "ok", info.size
    except ObjectExistsError as exc:
        # Two runs in the same minute share a key: the backup already there is kept, whole.
        result.status, result.error = "skipped", redact(str(exc))  # commit() already dropped our upload
    except BaseException as exc:  # Ctrl-C too: whatever stops us, the upload must not stay pending
        result.error = redact(str(exc) if isinstance(exc, postgres.PostgresError | StorageError | CancelledError)
                              else f"backup {job.url}: {type(exc).__name__}: {exc}")
        if upload is not None:
            try:
                upload.abort()
            except StorageError as abort_exc:
                note = redact(str(abort_exc))
                if note not in result.error:  # a failed commit already tried, and said so
                    result.error += f"; {note}"
        if not isinstance(exc, Exception):
            raise
    result.seconds = round(time.monotonic() - started, 3)
    if result.status == "ok":
        log.info("backed up %s: %d bytes dumped, %d stored, %.1fs", job.url, result.raw_bytes,
                 result.object_bytes, result.seconds, extra=_ctx(job))
        if result.note:
            log.warning("%s: %s", job.url, result.note, extra=_ctx(job))
    else:
        log.error("backup failed: %s", result.error, extra=_ctx(job))
    observer.finished(job, result)
    return result


def policy_for(connection: Connection) -> retention.Policy:
    return retention.Policy(connection.retention_days, connection.retention_weeks, connection.retention_months,
                            connection.retention_keep_last)


def retention_plan(config: Config, job: Job, storage: Storage, *, protect: Sequence[str] = (),
                   today: datetime | None = None, listed: Iterable[ObjectInfo] | None = None) -> retention.Plan:
    """Plan over this database's own backups only: its folder, its file names, its prefix. ``listed``:
    the objects as the run's one listing of the connection's folder saw them (else the folder is listed)."""
    conn = job.connection
    backups = []
    for obj in storage.list(job.bucket, job.folder) if listed is None else listed:
        parsed = keys.parse_key(obj.key, config.global_prefix, conn.base_dir, conn.prefix)
        if parsed is not None and parsed[0] == job.database:
            backups.append(retention.Backup(obj.key, parsed[1]))
    day = retention.local_today(today or datetime.now(UTC), config.timezone)
    return retention.plan(backups, day, policy_for(job.connection), protect=protect)


def apply_retention(config: Config, job: Job, storage: Storage, written_key: str | None, *,
                    dry_run: bool = False, listed: Iterable[ObjectInfo] | None = None,
                    delete: bool = True) -> list[RetentionAction]:
    """Delete what the plan says, after this run's verified upload of this database (or, dry, just say).

    With S3 Object Lock, a doomed backup that is still locked is kept instead ("locked until ..."), and
    with S3_OBJECT_LOCK_MODE a backup the plan now keeps longer than its lock has its lock extended.
    ``listed``: see :func:`retention_plan`. ``delete=False``: plan only; the caller deletes the actions
    marked "delete" (in batches across databases) and sets their ``done``."""
    policy = policy_for(job.connection)
    if not policy.enabled:
        return []
    the_plan = retention_plan(config, job, storage, protect=[written_key] if written_key else [], listed=listed)
    actions = [RetentionAction(d.backup.key, "delete", list(d.reasons)) for d in the_plan.delete]
    actions += [RetentionAction(d.backup.key, "keep", list(d.reasons)) for d in the_plan.keep]
    _keep_locked(job, storage, [a for a in actions if a.action == "delete"])
    _extend_locks(config, job, storage, the_plan, {a.key: a for a in actions}, dry_run=dry_run)
    doomed = [a for a in actions if a.action == "delete"]
    for a in doomed:
        log.info("%s s3://%s/%s: %s", "would delete" if dry_run else "delete", job.bucket, a.key,
                 "; ".join(a.reasons), extra=_ctx(job))
    if doomed and not dry_run and delete:
        storage.delete(job.bucket, [a.key for a in doomed])
        for a in doomed:
            a.done = True
    return actions


#: How a kept action says that Object Lock, not the plan, kept it (reports list these apart).
LOCKED_REASONS = ("locked until", "under legal hold")


def _utc(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _keep_locked(job: Job, storage: Storage, doomed: list[RetentionAction]) -> None:
    """Turn each doomed backup that Object Lock still protects into a kept one: S3 would refuse to
    delete it, or on a versioned bucket only hide it behind a delete marker while it stays billed.

    The bucket's lock configuration is asked once per run (the storage caches it); only when it has
    Object Lock is each doomed key headed. This never fails the run: a store that will not say, or a
    head that fails, leaves the backup to be deleted as planned."""
    if not doomed or not storage.object_lock_enabled(job.bucket):
        return
    now = datetime.now(UTC)
    for a in doomed:
        try:
            info = storage.head(job.bucket, a.key)
        except StorageError as exc:
            log.warning("could not look at the Object Lock of s3://%s/%s (%s); deleting it as planned", job.bucket,
                        a.key, redact(str(exc)), extra=_ctx(job))
            continue
        if not info.locked(now):
            continue
        why = [*([f"locked until {_utc(info.lock_until)}"] if info.lock_until and info.lock_until > now else []),
               *(["under legal hold"] if info.legal_hold else [])]
        log.info("keep s3://%s/%s: %s (retention would delete it: %s)", job.bucket, a.key, "; ".join(why),
                 "; ".join(a.reasons), extra=_ctx(job))
        a.action, a.reasons = "keep", why


def _extend_locks(config: Config, job: Job, storage: Storage, the_plan: retention.Plan,
                  actions: dict[str, RetentionAction], *, dry_run: bool) -> None:
    """S3_OBJECT_LOCK_MODE: lock each backup the plan keeps past the lock it was written with (the
    newest of a week or month that is over) until the rules stop keeping it. Only ever lengthens, and
    heads only those backups, so a run costs a HEAD per weekly or monthly keeper and one
    PutObjectRetention per backup that has just become one. Failing here fails retention (reported)."""
    lock_mode = job.connection.s3.object_lock_mode
    if lock_mode is None:
        return
    policy = policy_for(job.connection)
    for d in the_plan.keep:
        if d.keep_until is None or d.keep_until <= retention.lock_date(d.backup.taken.date(), policy):
            continue
        until = retention.local_midnight(d.keep_until, config.timezone)
        info = storage.head(job.bucket, d.backup.key)
        if info.lock_until is not None and info.lock_until >= until:
            continue
        # S3 lets a GOVERNANCE lock become COMPLIANCE, never the reverse.
        mode = "COMPLIANCE" if "COMPLIANCE" in (info.lock_mode, lock_mode) else lock_mode
        if dry_run:
            reason = f"would extend its lock to {_utc(until)}"
        else:
            storage.extend_lock(job.bucket, d.backup.key, mode, until)
            reason = f"lock extended to {_utc(until)}"
        actions[d.backup.key].reasons.append(reason)
        log.info("%s s3://%s/%s: %s", "would extend the lock of" if dry_run else "extended the lock of",
                 job.bucket, d.backup.key, f"{mode} until {_utc(until)} ({'; '.join(d.reasons)})", extra=_ctx(job))


def run(
    config: Config,
    the_plan: Plan,
    *,
    storage_for: Callable[[Connection], Storage],
    source: DumpSource | None = None,
    observer: Observer | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    before_job: Callable[[Job, list[Job]], bool] = lambda job, rest: True,
    dry_run: bool = False,
) -> RunResult:
    """Back up every planned job, up to DATABASE_CONCURRENCY at once, each followed by its own retention.

    ``before_job(job, remaining)`` may return False to stop before a job starts (Lambda's time budget);
    the jobs not started are returned in ``RunResult.deferred``. It is asked in plan order, once the jobs
    before have started (the observer heard ``started``). ``storage_for`` gives each connection's store
    (the caller builds it); ``source`` dumps the databases (default: pg_dump).

    Per connection and bucket the store is asked once, at the start, for the uploads a killed run left
    and for the objects in the connection's folder: the listing says which keys are free (no HEAD before
    each upload) and is what each database's retention plans over; deletions go in batches at the end.
    """
    source = source or PgDumpSource(config.pg_bindir)
    out = RunResult(results=list(the_plan.failures), skipped=list(the_plan.skipped))
    bad_buckets = check_buckets(the_plan.jobs, storage_for)
    jobs = []
    for job in the_plan.jobs:
        error = bad_buckets.get((job.connection.index, job.bucket))
        if error is None:
            jobs.append(job)
        else:
            out.results.append(DatabaseResult(job.connection.name, job.database, job.bucket, job.key,
                                              error=error, size_estimate=job.size_estimate, kind=job.kind))
    folders = _list_folders(config, jobs, storage_for, dry_run=dry_run)
    if not dry_run:
        _clean_stale_once(config, jobs, storage_for)
    width = 1 if dry_run else min(database_concurrency(config), max(1, len(jobs)))
    deletes = _Deletes()
    halted = threading.Event()  # set when the run itself is interrupted (Ctrl-C): every job stops

    def stop() -> bool:
        return halted.is_set() or should_stop()

    pg_dump_version: list[str] = []
    threads = _threads_per_job(config, width)
    watcher = _Serialized(observer or NullObserver(), track=width > 1)

    def one(job: Job) -> DatabaseResult:
        storage = storage_for(job.connection)
        folder = folders.get((job.connection.index, job.bucket))
        if dry_run:
            return _dry_run(config, job, storage, folder)
        result = backup_database(config, job, storage, observer=watcher, should_stop=stop,
                                 pg_dump_version=pg_dump_version[0], source=source, housekeeping=False,
                                 listed=folder is not None and job.key not in folder.keys, threads=threads)
        result.size_estimate = job.size_estimate
        if result.status == "ok" and stop():
            log.info("stopping: retention of %s is left to the next run", job.database, extra=_ctx(job))
        elif result.status == "ok":
            listed = None if folder is None else folder.with_object(job, result.object_bytes)
            result.retention = _safe_retention(config, job, storage, job.key, result, listed=listed,
                                               deletes=None if folder is None else deletes)
        return result

    done: dict[int, DatabaseResult] = {}
    in_flight: dict[Future[DatabaseResult], int] = {}
    pool = ThreadPoolExecutor(width, thread_name_prefix="pgbkp-db") if width > 1 else None
    try:
        for i, job in enumerate(jobs):
            while len(in_flight) >= width:
                _collect(in_flight, done, deletes, storage_for, stop)
            if stop() or not before_job(job, jobs[i:]):
                out.deferred = jobs[i:]
                break
            if not dry_run and not pg_dump_version:
                pg_dump_version.append(source.version())
            if pool is None:
                done[i] = one(job)
                deletes.flush(storage_for, stop, full_only=True)
                continue
            future = pool.submit(one, job)
            in_flight[future] = i
            watcher.wait_started(job, future)  # so before_job of the next one counts this one in flight
        while in_flight:
            _collect(in_flight, done, deletes, storage_for, stop)
    except BaseException:
        halted.set()  # Ctrl-C in this thread: the jobs in flight abort their uploads, then we go
        if in_flight:
            wait(in_flight)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    deletes.flush(storage_for, stop)
    for i in sorted(done):
        result, job = done[i], jobs[i]
        if result.status == "skipped":  # the same minute's backup is already there, kept as it is
            out.skipped.append(Skipped(job.connection.name, job.database, result.error or "already backed up"))
        else:
            out.results.append(result)
    return out


def database_concurrency(config: Config) -> int:
    """DATABASE_CONCURRENCY, else the default from the CPUs and memory this process may use."""
    value = setting(config.env, "DATABASE_CONCURRENCY")
    return int(value) if value is not None else cpus.database_concurrency()


def _threads_per_job(config: Config, width: int) -> int | None:
    """Each database in flight gets its share of the deflate threads (COMPRESSION_THREADS, else the CPUs),
    so that concurrency does not multiply them, but at least 2 (unless COMPRESSION_THREADS=1): with one
    thread the writer deflates inline, between reads, and loses more than the extra thread costs
    (measured: docs/benchmarks.md, "Several databases at once")."""
    if width <= 1:
        return None
    total = config.compression_threads or cpus.available_cpus()
    return 1 if total == 1 else max(2, total // width)


def _collect(in_flight: dict[Future[DatabaseResult], int], done: dict[int, DatabaseResult], deletes: _Deletes,
             storage_for: Callable[[Connection], Storage], stop: Callable[[], bool]) -> None:
    """Wait for at least one job in flight to end and take its result (a full batch of deletions goes)."""
    finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
    for future in finished:
        done[in_flight.pop(future)] = future.result()
    deletes.flush(storage_for, stop, full_only=True)


class _Serialized:
    """The run's observers, called by one thread at a time: several databases (and their upload threads)
    report at once, and the observers below (bars, counters, Lambda's budget) need not be thread-safe.
    Also tells :func:`run` when a job has started, so ``before_job`` sees it in flight."""

    def __init__(self, observer: Observer, *, track: bool = True) -> None:
        self._observer = observer
        self._lock = threading.Lock()
        self._track = track  # only a pool waits for starts
        self._started: dict[int, threading.Event] = {}

    def _event(self, job: Job) -> threading.Event:
        with self._lock:
            return self._started.setdefault(id(job), threading.Event())

    def wait_started(self, job: Job, future: Future[DatabaseResult]) -> None:
        event = self._event(job)
        future.add_done_callback(lambda _f: event.set())  # a job that failed before it started
        event.wait()
        with self._lock:
            self._started.pop(id(job), None)

    def started(self, job: Job) -> None:
        with self._lock:
            self._observer.started(job)
        if self._track:
            self._event(job).set()

    def dumped(self, job: Job, n: int) -> None:
        with self._lock:
            self._observer.dumped(job, n)

    def uploaded(self, job: Job, n: int) -> None:
        with self._lock:
            self._observer.uploaded(job, n)

    def finished(self, job: Job, result: DatabaseResult) -> None:
        with self._lock:
            self._observer.finished(job, result)


@dataclass
class _Folder:
    """A connection's folder in one bucket, listed once at the start of a run: the keys there (a key
    not among them needs no HEAD before its upload) and each database's objects (what retention plans
    over, with the run's own new object added)."""

    keys: set[str] = field(default_factory=set)
    objects: dict[str, list[ObjectInfo]] = field(default_factory=dict)

    def with_object(self, job: Job, size: int) -> list[ObjectInfo]:
        """This database's objects as they are once the run's own object has landed."""
        objects = list(self.objects.get(job.database, []))
        if job.key not in self.keys:
            objects.append(ObjectInfo(job.bucket, job.key, size))
        return objects


def _groups(jobs: Iterable[Job]) -> dict[tuple[int, str], list[Job]]:
    """The jobs by (connection, bucket): what shares a folder listing."""
    groups: dict[tuple[int, str], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.connection.index, job.bucket), []).append(job)
    return groups


def _list_folders(config: Config, jobs: Iterable[Job], storage_for: Callable[[Connection], Storage], *,
                  dry_run: bool) -> dict[tuple[int, str], _Folder]:
    """One paginated listing per connection folder and bucket. Not made where it saves nothing (a single
    database without retention: one HEAD is cheaper than listing a folder); a listing that fails leaves
    each database to list its own folder, as a lone backup does."""
    folders: dict[tuple[int, str], _Folder] = {}
    for where, group in _groups(jobs).items():
        conn, bucket = group[0].connection, where[1]
        if not policy_for(conn).enabled and (dry_run or len(group) < 2):
            continue
        root = keys.folder(config.global_prefix, conn.base_dir, "")
        wanted = {j.database for j in group}
        folder = _Folder()
        try:
            for obj in storage_for(conn).list(bucket, root):
                folder.keys.add(obj.key)
                parsed = keys.parse_key(obj.key, config.global_prefix, conn.base_dir, conn.prefix)
                if parsed is not None and parsed[0] in wanted:
                    folder.objects.setdefault(parsed[0], []).append(obj)
        except StorageError as exc:
            log.warning("could not list s3://%s/%s once for all databases (%s); each database lists its own",
                        bucket, root, redact(str(exc)), extra={"connection": conn.name})
            continue
        folders[where] = folder
    return folders


def _clean_stale_once(config: Config, jobs: Iterable[Job], storage_for: Callable[[Connection], Storage]) -> None:
    """:func:`clean_stale_uploads` for all the run's databases, one listing per connection folder and bucket."""
    for (_, bucket), group in _groups(jobs).items():
        conn = group[0].connection
        root = keys.folder(config.global_prefix, conn.base_dir, "")
        try:
            _clean_stale(config, storage_for(conn), group, root)
        except StorageError as exc:  # housekeeping: never a reason to skip the backups themselves
            log.warning("could not look for stale multipart uploads in s3://%s/%s: %s", bucket, root,
                        redact(str(exc)), extra={"connection": conn.name})


def _dry_run(config: Config, job: Job, storage: Storage, folder: _Folder | None) -> DatabaseResult:
    result = DatabaseResult(job.connection.name, job.database, job.bucket, job.key, "dry-run",
                            size_estimate=job.size_estimate, kind=job.kind)
    log.info("would back up %s to %s (about %d bytes on disk, an estimate)", job.database, job.url,
             job.size_estimate, extra=_ctx(job))
    # Plan over the store as the real run will see it: with this run's object in it, protected.
    if folder is not None:
        result.retention = _safe_retention(config, job, storage, job.key, result, dry_run=True,
                                           listed=folder.with_object(job, 0))
    else:
        after = cast(Storage, _AfterUpload(storage, job))
        result.retention = _safe_retention(config, job, after, job.key, result, dry_run=True)
    return result


#: S3's DeleteObjects takes at most this many keys.
DELETE_BATCH = 1000


class _Deletes:
    """What each database's retention decided to delete, sent per bucket in batches of up to
    DELETE_BATCH keys (S3's DeleteObjects limit) rather than a request per database. Only databases
    whose backup landed (verified) in this run add to it; a failed batch fails their results."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: dict[tuple[int, str], list[tuple[Job, DatabaseResult, RetentionAction]]] = {}

    def add(self, job: Job, result: DatabaseResult, actions: Iterable[RetentionAction]) -> None:
        with self._lock:
            queue = self._queued.setdefault((job.connection.index, job.bucket), [])
            queue += [(job, result, a) for a in actions if a.action == "delete" and not a.done]

    def flush(self, storage_for: Callable[[Connection], Storage], stop: Callable[[], bool], *,
              full_only: bool = False) -> None:
        with self._lock:
            ready = {w: q for w, q in self._queued.items() if q and (len(q) >= DELETE_BATCH or not full_only)}
            for where in ready:
                self._queued[where] = []
        for (_, bucket), queue in ready.items():
            if stop():
                log.info("stopping: deleting %d old backup(s) in s3://%s is left to the next run", len(queue),
                         bucket, extra={"connection": queue[0][0].connection.name})
                continue
            storage = storage_for(queue[0][0].connection)
            for start in range(0, len(queue), DELETE_BATCH):
                batch = queue[start:start + DELETE_BATCH]
                try:
                    storage.delete(bucket, [a.key for _, _, a in batch])
                except StorageError as exc:
                    for job, result in {id(r): (j, r) for j, r, _ in batch}.values():
                        result.status = "failed"
                        result.error = f"retention: {redact(str(exc))}"
                        log.error("retention failed: %s", result.error, extra=_ctx(job))
                    continue
                for _, _, a in batch:
                    a.done = True


class _AfterUpload:
    """A dry run's view of the store: what it lists, plus the object the real run would write (size 0).

    Retention plans over this, so ``--dry-run`` shows exactly the deletions of the real run (an earlier
    backup of today is "not the newest of today" once this run's backup exists)."""

    def __init__(self, storage: Storage, job: Job) -> None:
        self._storage, self._job = storage, job

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        listed = False
        for obj in self._storage.list(bucket, prefix):
            listed = listed or obj.key == self._job.key
            yield obj
        if not listed and bucket == self._job.bucket and self._job.key.startswith(prefix):
            yield ObjectInfo(bucket, self._job.key, 0)

    def delete(self, bucket: str, keys: Sequence[str]) -> None:
        raise StorageError(f"delete s3://{bucket}: a dry run deletes nothing")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


def _safe_retention(config: Config, job: Job, storage: Storage, written: str | None, result: DatabaseResult,
                    *, dry_run: bool = False, listed: Iterable[ObjectInfo] | None = None,
                    deletes: _Deletes | None = None) -> list[RetentionAction]:
    """Retention failing is a failed run (it must not go unnoticed), but the backup itself stands.
    With ``deletes`` the deletions are queued there (the run sends them in batches)."""
    try:
        actions = apply_retention(config, job, storage, written, dry_run=dry_run, listed=listed,
                                  delete=deletes is None)
        if deletes is not None and not dry_run:
            deletes.add(job, result, actions)
        return actions
    except StorageError as exc:
        result.status = "failed"
        result.error = f"retention: {redact(str(exc))}"
        log.error("retention failed: %s", result.error, extra=_ctx(job))
        return []

