"""The storage interface: the few operations a backup, retention and restore need from a bucket store.

Everything above this package depends only on :class:`Storage`; ``storage.s3`` implements it with boto3
(the only place boto3 is imported) and ``storage.memory`` in memory. One conformance suite
(tests/test_storage_contract.py) runs against both, the S3 one on a real S3-compatible server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


class StorageError(Exception):
    """A storage operation failed; the message names the operation and ``s3://bucket/key``."""


class NotFoundError(StorageError):
    """The bucket or object does not exist."""


class ObjectExistsError(StorageError):
    """The key already holds an object, which an upload never replaces (it is kept as it is)."""


class UploadStoppedError(StorageError):
    """The caller's stop request (signal, time limit) ended an upload while it waited on the store."""


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    last_modified: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    etag: str | None = None
    #: S3 Object Lock, as ``head()`` reports it: GOVERNANCE or COMPLIANCE, the retain-until time (aware,
    #: UTC; a past one no longer protects), and a legal hold (which protects until it is removed).
    lock_mode: str | None = None
    lock_until: datetime | None = None
    legal_hold: bool = False

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def locked(self, now: datetime) -> bool:
        """Whether a delete of this object would be refused (or, on a versioned bucket, only hide it)."""
        return self.legal_hold or (self.lock_until is not None and self.lock_until > now)


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload that was started and never completed nor aborted."""

    bucket: str
    key: str
    upload_id: str
    initiated: datetime
    #: When its newest part arrived (the initiation if none did): how long it has been idle.
    last_part: datetime | None = None

    @property
    def last_activity(self) -> datetime:
        return max(self.initiated, self.last_part) if self.last_part else self.initiated


class Upload(Protocol):
    """A write-only stream into one new object. Nothing is visible under the key until :meth:`commit`,
    which lands it in one write, with the metadata given when the upload began."""

    bytes_written: int

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def commit(self) -> ObjectInfo:
        """Make the object visible, whole, in one write; never over an object already under the key
        (ObjectExistsError, and that object is kept).

        On failure it cleans up itself (no pending upload) and raises StorageError; it never deletes an
        object, since what may have landed is whole. A later :meth:`abort` is then a no-op."""
        ...

    def abort(self) -> None:
        """Drop everything written; leaves no object and no pending multipart upload. Idempotent; after
        a commit it does nothing; after a failed abort (store down past the retries) it retries."""
        ...


class Download(Protocol):
    info: ObjectInfo

    def read(self, size: int = -1) -> bytes: ...

    def close(self) -> None: ...


class Storage(Protocol):
    def check_bucket(self, bucket: str) -> None:
        """Raise NotFoundError (with the fix) when the bucket is missing or not ours to use."""
        ...

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, however many (pagination is the implementation's job)."""
        ...

    def head(self, bucket: str, key: str) -> ObjectInfo: ...

    def upload(self, bucket: str, key: str, *, metadata: Mapping[str, str] | None = None,
               on_progress: Callable[[int], None] | None = None,
               should_stop: Callable[[], bool] = lambda: False, retain_until: datetime | None = None,
               listed: bool = False) -> Upload:
        """Start a new object; ObjectExistsError if the key holds one already. ``should_stop`` is
        polled while waiting on the store: when it turns true the upload raises UploadStoppedError.
        ``retain_until``: with an Object Lock mode set, the object is written locked until then.
        ``listed``: the caller listed the key's folder during this run and the key was not there, so the
        store need not ask again (the landing request's ``If-None-Match: *`` still refuses to replace)."""
        ...

    def download(self, bucket: str, key: str) -> Download: ...

    def delete(self, bucket: str, keys: Sequence[str]) -> None:
        """Delete ``keys`` (batched as the store allows); raises StorageError naming any key not deleted."""
        ...

    def pending_uploads(self, bucket: str, prefix: str) -> Iterator[PendingUpload]: ...

    def abort_pending(self, upload: PendingUpload) -> None: ...

    def object_lock_enabled(self, bucket: str) -> bool | None:
        """Whether the bucket has Object Lock (then ``head()`` fills ``ObjectInfo.lock_*``); None when the
        store will not say (access denied, not implemented). Asked once per bucket per storage object."""
        ...

    def extend_lock(self, bucket: str, key: str, mode: str, until: datetime) -> None:
        """Set the object's retention to ``mode`` until ``until``. Callers only ever lengthen a lock."""
        ...
