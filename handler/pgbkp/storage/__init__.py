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


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    last_modified: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    etag: str | None = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload that was started and never completed nor aborted."""

    bucket: str
    key: str
    upload_id: str
    initiated: datetime


class Upload(Protocol):
    """A write-only stream into one object. Nothing is visible under the key until :meth:`commit`."""

    bytes_written: int

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def commit(self, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        """Finish the object, add ``metadata`` plus its ``sha256``, and check what landed.

        On failure it cleans up itself (no pending upload, no half-made object, never an older object
        under the key) and raises StorageError; a later :meth:`abort` is then a no-op."""
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
               on_progress: Callable[[int], None] | None = None) -> Upload: ...

    def download(self, bucket: str, key: str) -> Download: ...

    def delete(self, bucket: str, keys: Sequence[str]) -> None:
        """Delete ``keys`` (batched as the store allows); raises StorageError naming any key not deleted."""
        ...

    def pending_uploads(self, bucket: str, prefix: str) -> Iterator[PendingUpload]: ...

    def abort_pending(self, upload: PendingUpload) -> None: ...
