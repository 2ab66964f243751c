"""The Storage interface in memory: a reference for the conformance suite and a fast fake for units."""

from __future__ import annotations

import io
import itertools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime

from pgbkp.storage import NotFoundError, ObjectExistsError, ObjectInfo, PendingUpload, StorageError

_ids = itertools.count(1)


class MemoryUpload:
    def __init__(self, store: MemoryStorage, bucket: str, key: str, metadata: Mapping[str, str],
                 on_progress: Callable[[int], None] | None, retain_until: datetime | None = None) -> None:
        self._store, self.bucket, self.key = store, bucket, key
        self._retain_until = retain_until
        self._metadata = dict(metadata)
        self._buf = bytearray()
        self._on_progress = on_progress
        self._state = "open"
        self.bytes_written = 0
        self._pending = PendingUpload(bucket, key, f"mem-{next(_ids)}", datetime.now(UTC))
        store.pending[self._pending.upload_id] = self._pending

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != "open":
            raise StorageError(f"upload s3://{self.bucket}/{self.key}: write after {self._state}")
        self._buf += data
        self.bytes_written += len(data)
        if self._on_progress is not None:
            self._on_progress(len(data))

    def commit(self) -> ObjectInfo:
        if self._state != "open":
            raise StorageError(f"upload s3://{self.bucket}/{self.key}: commit after {self._state}")
        self._store.pending.pop(self._pending.upload_id, None)
        self._state = "aborted"
        if not self._store.put(self.bucket, self.key, bytes(self._buf), self._metadata, if_absent=True):
            raise ObjectExistsError(f"upload s3://{self.bucket}/{self.key}: another backup landed under this key "
                                    "while we uploaded; it was kept and ours was dropped")
        self._state = "committed"
        if self._retain_until is not None and self._store.object_lock_mode:
            self._store.retention[(self.bucket, self.key)] = (self._store.object_lock_mode, self._retain_until)
        return self._store.head(self.bucket, self.key)

    def abort(self) -> None:
        if self._state == "open":
            self._state = "aborted"
            self._buf = bytearray()
            self._store.pending.pop(self._pending.upload_id, None)


class MemoryDownload:
    def __init__(self, info: ObjectInfo, body: bytes) -> None:
        self.info = info
        self._body = io.BytesIO(body)

    def read(self, size: int = -1) -> bytes:
        return self._body.read(size)

    def close(self) -> None:
        self._body.close()


class MemoryStorage:
    def __init__(self, buckets: Sequence[str] = (), *, object_lock_mode: str | None = None) -> None:
        #: Like S3_OBJECT_LOCK_MODE for S3Storage: new objects are locked until their ``retain_until``.
        self.object_lock_mode = object_lock_mode
        self._lock = threading.Lock()
        self.objects: dict[str, dict[str, tuple[bytes, dict[str, str], datetime]]] = {b: {} for b in buckets}
        self.pending: dict[str, PendingUpload] = {}
        #: Object Lock, as S3 has it: per bucket on/off, or None for "the store will not say" (access
        #: denied); per object a (mode, retain-until) retention and a legal hold.
        self.lock_config: dict[str, bool | None] = {}
        self.retention: dict[tuple[str, str], tuple[str, datetime]] = {}
        self.legal_holds: set[tuple[str, str]] = set()
        #: Buckets whose lock configuration was asked for, in order (a test counts the questions).
        self.lock_config_asked: list[str] = []

    def _bucket(self, bucket: str, op: str = "access") -> dict[str, tuple[bytes, dict[str, str], datetime]]:
        if bucket not in self.objects:
            raise NotFoundError(f"{op} s3://{bucket}: it does not exist. Fix: create it, or correct "
                                "S3_BUCKET / bucket= / db_buckets=")
        return self.objects[bucket]

    def put(self, bucket: str, key: str, body: bytes, metadata: Mapping[str, str] | None = None, *,
            if_absent: bool = False) -> bool:
        """Store an object; with ``if_absent`` only where the key is free (says whether it stored)."""
        with self._lock:
            # S3 lower-cases user metadata names; so does this fake, so callers cannot come to rely on case.
            meta = {k.lower(): v for k, v in (metadata or {}).items()}
            objects = self._bucket(bucket)
            if if_absent and key in objects:
                return False
            objects[key] = (body, meta, datetime.now(UTC))
            return True

    def check_bucket(self, bucket: str) -> None:
        self._bucket(bucket, "check bucket")

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        with self._lock:
            items = sorted(self._bucket(bucket).items())
        for key, (body, _meta, when) in items:
            if key.startswith(prefix):
                yield ObjectInfo(bucket, key, len(body), when)

    def head(self, bucket: str, key: str) -> ObjectInfo:
        with self._lock:
            try:
                body, meta, when = self._bucket(bucket)[key]
            except KeyError:
                raise NotFoundError(f"head s3://{bucket}/{key}: object does not exist") from None
        mode, until = self.retention.get((bucket, key), (None, None))
        return ObjectInfo(bucket, key, len(body), when, dict(meta), lock_mode=mode, lock_until=until,
                          legal_hold=(bucket, key) in self.legal_holds)

    def object_lock_enabled(self, bucket: str) -> bool | None:
        self._bucket(bucket, "get object lock configuration")
        self.lock_config_asked.append(bucket)
        return self.lock_config.get(bucket, False)

    def extend_lock(self, bucket: str, key: str, mode: str, until: datetime) -> None:
        """Like S3 to a caller without the governance bypass: only on a bucket with Object Lock, and a
        lock still in force is never shortened, nor COMPLIANCE turned into GOVERNANCE."""
        self.head(bucket, key)
        if not self.lock_config.get(bucket):
            raise StorageError(f"extend lock s3://{bucket}/{key}: InvalidRequest: the bucket has no Object Lock")
        old = self.retention.get((bucket, key))
        if old is not None and old[1] > datetime.now(UTC) and (
                until < old[1] or (old[0] == "COMPLIANCE" and mode != "COMPLIANCE")):
            raise StorageError(f"extend lock s3://{bucket}/{key}: AccessDenied: a lock in force cannot be shortened, "
                               "nor COMPLIANCE weakened")
        self.retention[(bucket, key)] = (mode, until)

    def upload(self, bucket: str, key: str, *, metadata: Mapping[str, str] | None = None,
               on_progress: Callable[[int], None] | None = None,
               should_stop: Callable[[], bool] = lambda: False, retain_until: datetime | None = None,
               listed: bool = False) -> MemoryUpload:
        # ``listed`` changes nothing here: looking up a key costs nothing in memory.
        if key in self._bucket(bucket):
            raise ObjectExistsError(f"upload s3://{bucket}/{key}: a backup already exists under this key (made in "
                                    "the same minute by another run?); it was kept and nothing was written")
        return MemoryUpload(self, bucket, key, metadata or {}, on_progress, retain_until)

    def download(self, bucket: str, key: str) -> MemoryDownload:
        try:
            info = self.head(bucket, key)
        except NotFoundError as exc:
            raise NotFoundError(str(exc).replace("head ", "download ", 1)) from None
        with self._lock:
            body = self.objects[bucket][key][0]
        return MemoryDownload(info, body)

    def delete(self, bucket: str, keys: Sequence[str]) -> None:
        """A locked object is refused, as S3 refuses to delete a locked version (this store keeps no
        versions, so it cannot hide the object behind a delete marker as a versioned bucket would)."""
        now = datetime.now(UTC)
        with self._lock:
            objs = self._bucket(bucket)
            refused = [k for k in keys if k in objs and self._locked(bucket, k, now)]
            for key in keys:
                if key not in refused:
                    objs.pop(key, None)
        if refused:
            raise StorageError(f"delete s3://{bucket}/{refused[0]}: AccessDenied: the object is locked "
                               f"({len(refused)} of {len(keys)} keys not deleted)")

    def _locked(self, bucket: str, key: str, now: datetime) -> bool:
        held = self.retention.get((bucket, key))
        return (bucket, key) in self.legal_holds or (held is not None and held[1] > now)

    def pending_uploads(self, bucket: str, prefix: str) -> Iterator[PendingUpload]:
        self._bucket(bucket)
        yield from [u for u in self.pending.values() if u.bucket == bucket and u.key.startswith(prefix)]

    def abort_pending(self, upload: PendingUpload) -> None:
        self.pending.pop(upload.upload_id, None)
