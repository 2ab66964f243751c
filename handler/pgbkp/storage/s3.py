"""The Storage interface on S3 and S3-compatible stores (MinIO and others), with boto3.

Uploads are our own multipart writer rather than boto3's transfer manager: the manager completes an
object whenever its input ends, so a failed dump would become a truncated "backup". Here an object
exists only after an explicit :meth:`S3Upload.commit`, and any failure aborts the multipart upload.
"""

from __future__ import annotations

import base64
import concurrent.futures
import functools
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from pgbkp.config import S3Settings
from pgbkp.storage import (
    NotFoundError,
    ObjectExistsError,
    ObjectInfo,
    PendingUpload,
    StorageError,
    UploadStoppedError,
)

log = logging.getLogger(__name__)

#: S3 allows 10,000 parts. Part n is ``part_size * (1 + n // PARTS_PER_STEP)`` bytes, so 8 MiB parts
#: reach ~440 GB while memory stays at a few parts for ordinary dumps.
PARTS_PER_STEP = 1000
MAX_PARTS = 10_000
#: How long cleanup after a failure keeps trying (aborting an upload, looking for what landed): within
#: Lambda's hard margin (20 s) and a container's usual stop timeout, so a stop is never outlasted.
CLEANUP_SECONDS = 15.0
#: How often a producer waiting on the store looks at its stop request.
STOP_POLL_SECONDS = 0.2
#: A conditional write (If-None-Match: *) refused: something is already under the key.
_PRECONDITION_FAILED = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
#: DeleteObjects takes at most 1000 keys.
DELETE_BATCH = 1000
_STRIPPED_PREFIXES = ("x-amz-checksum-", "x-amz-sdk-checksum-algorithm")
#: Error codes (or bare HTTP statuses) of stores that do not implement DeleteObjects, or reject how
#: boto3 checksums it (DeleteObjects is the one call that always carries a CRC32 unless S3_CHECKSUM=off;
#: older MinIO wants Content-MD5, B2 answers InvalidArgument to unknown headers): fall back to one
#: DeleteObject per key, which needs no checksum at all.
_BATCH_DELETE_UNSUPPORTED = {"NotImplemented", "MalformedXML", "InvalidRequest", "InvalidArgument",
                             "MissingContentMD5", "MethodNotAllowed", "XNotImplemented", "501", "405"}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        return f"{code}: {err.get('Message') or 'no message'}"
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return f"cannot reach the S3 endpoint ({exc}). Fix: check S3_ENDPOINT and that the server is up"
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no S3 credentials. Fix: set S3_ACCESS_KEY and S3_SECRET_KEY, or give the role access"
    return f"{type(exc).__name__}: {exc}"


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code")
               or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _error(op: str, bucket: str, key: str, exc: BaseException) -> StorageError:
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    code = exc.response.get("Error", {}).get("Code") if isinstance(exc, botocore.exceptions.ClientError) else None
    if code in ("NoSuchBucket", "404", "NotFound", "NoSuchKey"):
        what = "bucket does not exist" if code == "NoSuchBucket" or not key else "object does not exist"
        fix = (". Fix: create the bucket, or correct S3_BUCKET / bucket= / db_buckets=" if "bucket" in what else "")
        return NotFoundError(f"{op} {where}: {what}{fix}")
    return StorageError(f"{op} {where}: {_describe(exc)}")


def _strip_checksums(request: Any, **_: Any) -> None:
    """S3_CHECKSUM=off: remove the flexible-checksum headers some S3-compatible stores reject, adding the
    older Content-MD5 where a body was checksummed (DeleteObjects needs one or the other)."""
    stripped = False
    for name in list(request.headers.keys()):
        if name.lower().startswith(_STRIPPED_PREFIXES):
            del request.headers[name]
            stripped = True
    body = request.body
    if stripped and isinstance(body, bytes | bytearray) and "Content-MD5" not in request.headers:
        request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324


def make_client(settings: S3Settings) -> Any:
    """A thread-safe S3 client for these settings."""
    if settings.checksum == "auto":
        # AWS itself handles flexible checksums; many S3-compatible stores reject them.
        mode = "when_supported" if settings.endpoint is None else "when_required"
    else:
        mode = "when_required"
    cfg = botocore.config.Config(
        s3={"addressing_style": "path" if settings.force_path_style else "auto"},
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        # One client serves every database in flight (DATABASE_CONCURRENCY), each with its parts in flight;
        # the pool only caps the connections kept open, so room for 8 databases costs nothing until used.
        max_pool_connections=max(10, (settings.concurrency + 1) * 8),
        request_checksum_calculation=mode,
        response_checksum_validation=mode,
        connect_timeout=10,
        read_timeout=120,
        user_agent_extra="pgbkp",
    )
    region = settings.region or ("us-east-1" if settings.endpoint else None)
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint,
        region_name=region,
        aws_access_key_id=settings.access_key.reveal() if settings.access_key else None,
        aws_secret_access_key=settings.secret_key.reveal() if settings.secret_key else None,
        config=cfg,
    )
    if settings.checksum == "off":
        client.meta.events.register("before-sign.s3", _strip_checksums)
    return client


def _quote(etag: str) -> str:
    return f'"{etag}"'


def _norm_etag(etag: str | None) -> str:
    """ETags compared as stores spell them differently: quoted or not, upper or lower case."""
    return (etag or "").strip().removeprefix("W/").strip('"').lower()


def _multipart_etag(part_etags: Sequence[str]) -> str:
    """The ETag S3 gives a completed multipart object: MD5 of the parts' MD5s, then ``-N``."""
    digest = hashlib.md5(b"".join(bytes.fromhex(e.strip('"')) for e in part_etags))  # noqa: S324
    return _quote(f"{digest.hexdigest()}-{len(part_etags)}")


class _StopAware:
    """Ordinary requests, each on a helper thread, waited for in short steps, so that a stop request
    (SIGTERM, Ctrl-C's flag, Lambda's hard margin) ends the wait at once instead of when a stalled store
    answers (botocore's read timeout, times its retries). A request left behind runs on, on its daemon
    thread: every caller treats a stop like any other failure of that request. Cleanup (aborting an
    upload, looking for what landed) does not come through here: it must run after a stop."""

    def __init__(self, should_stop: Callable[[], bool] | None) -> None:
        self.should_stop = should_stop

    def run(self, op: str, bucket: str, key: str, fn: Callable[[], Any], *,
            stop: Callable[[], bool] | None = None) -> Any:
        stop = stop or self.should_stop
        if stop is None:
            return fn()
        if stop():
            raise UploadStoppedError(f"{op} {_where(bucket, key)}: stopped before the request was sent")
        fut: Future[Any] = Future()

        def call() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        threading.Thread(target=call, name=f"s3-{op.replace(' ', '-')}", daemon=True).start()
        while True:
            try:
                return fut.result(timeout=STOP_POLL_SECONDS)
            except concurrent.futures.TimeoutError:
                if stop():
                    raise UploadStoppedError(
                        f"{op} {_where(bucket, key)}: stopped while waiting for the store") from None


def _where(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"


class _PartThreads:
    """A few daemon threads that upload parts. Not a ThreadPoolExecutor: its threads are joined at
    interpreter exit, so a part stuck on a slow store would hold a stopping process until the socket
    times out; a stop must be honoured while parts are in flight (the upload is aborted first)."""

    def __init__(self, count: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[None], Callable[[], None]] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(count)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], None]) -> Future[None]:
        fut: Future[None] = Future()
        self._queue.put((fut, fn))
        return fut

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            fut, fn = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fn()
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(None)
            # Drop the finished part's closure (its bytes) now, not when the next part arrives: an idle
            # thread holding its last part would add a part per thread to the memory bound.
            del item, fut, fn

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)


class S3Upload:
    """Stream bytes into one new object: one PUT if small, else a multipart upload with parts in
    flight on a few threads. Memory is bounded by about ``(concurrency + 1) x part size``.

    One write per backup: the object appears whole at commit, with the metadata it was created with,
    and is never copied, replaced or deleted afterwards. It never replaces an object already under the
    key (checked when the upload starts, and ``If-None-Match: *`` on the request that lands it).

    Not thread-safe: one producer calls write/commit/abort. ``should_stop`` is polled while the
    producer waits for a free part slot or for the last parts, so a stop request is honoured even when
    the store is slow; ``on_progress`` runs on the part threads."""

    def __init__(self, storage: S3Storage, bucket: str, key: str, metadata: Mapping[str, str],
                 on_progress: Callable[[int], None] | None, should_stop: Callable[[], bool],
                 retain_until: datetime | None = None) -> None:
        self._s = storage
        self._retain_until = retain_until
        self._client = storage.client
        self.bucket, self.key = bucket, key
        self._metadata = dict(metadata)
        self._on_progress = on_progress
        self._should_stop = should_stop
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: dict[int, dict[str, Any]] = {}  # PartNumber -> the part entry CompleteMultipartUpload needs
        self._part_md5: dict[int, str] = {}
        # With flexible checksums on (AWS), botocore adds a CRC32 to every UploadPart; AWS expects the
        # upload to declare that algorithm when created and the complete request to list each part's CRC.
        # Elsewhere each part carries a Content-MD5, so the store refuses a part damaged on the way.
        checksums = self._client.meta.config.request_checksum_calculation == "when_supported"
        self._algorithm: dict[str, str] = {"ChecksumAlgorithm": "CRC32"} if checksums else {}
        self._futures: list[Future[None]] = []
        self._slots = threading.Semaphore(storage.settings.concurrency)
        self._threads: _PartThreads | None = None
        self._failure: BaseException | None = None
        self._state = "open"
        self._abort_deadline: float | None = None
        self.bytes_written = 0

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def _part_size(self) -> int:
        return self._s.settings.part_size * (1 + len(self._futures) // PARTS_PER_STEP)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != "open":
            raise StorageError(f"upload {self.url}: write after {self._state}")
        self._raise_if_failed()
        self._buf += data
        self.bytes_written += len(data)
        while len(self._buf) >= self._part_size():
            self._send_part(self._part_size())

    def _raise_if_failed(self) -> None:
        """A part failed on a worker thread: stop the producer at its next write, not at commit."""
        if self._failure is not None:
            raise StorageError(f"upload {self.url}: {_describe(self._failure)}") from self._failure

    def _raise_if_stopped(self) -> None:
        if self._should_stop():
            raise UploadStoppedError(f"upload {self.url}: stopped while parts were in flight")

    def _wait(self, ready: Callable[[float], bool]) -> None:
        """Wait until ``ready(timeout)`` says so, checking for a stop request between short waits."""
        while not ready(STOP_POLL_SECONDS):
            self._raise_if_stopped()
            self._raise_if_failed()

    def _send_part(self, size: int) -> None:
        """Cut the next ``size`` bytes off the buffer and hand them to a part thread."""
        self._raise_if_failed()
        if self._upload_id is None:
            try:
                resp = self._s.calls.run("upload", self.bucket, self.key, lambda: self._client.create_multipart_upload(
                    Bucket=self.bucket, Key=self.key, **self._s.create_args(self._metadata, self._retain_until),
                    **self._algorithm), stop=self._should_stop)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                raise _error("upload", self.bucket, self.key, exc) from exc
            self._upload_id = resp["UploadId"]
            self._threads = _PartThreads(self._s.settings.concurrency, "s3-part")
        number = len(self._futures) + 1
        if number > MAX_PARTS:
            raise StorageError(f"upload {self.url}: more than {MAX_PARTS} parts ({self.bytes_written} bytes so "
                               "far). Fix: raise S3_PART_SIZE_MB")
        # Take a slot *before* cutting the part, so at most `concurrency` parts live outside the buffer:
        # the producer blocks here while every slot is busy, which bounds memory whatever the dump size.
        self._wait(lambda t: self._slots.acquire(timeout=t))
        if self._failure is not None:
            self._slots.release()
            self._raise_if_failed()
        with memoryview(self._buf) as view:
            part = bytes(view[:size])
        del self._buf[:size]
        assert self._threads is not None
        fut = self._threads.submit(lambda: self._upload_part(number, part))
        fut.add_done_callback(lambda _f: self._slots.release())
        self._futures.append(fut)

    def _upload_part(self, number: int, data: bytes) -> None:
        if self._failure is not None or self._state == "aborted":
            return  # pointless now; commit() notices the missing part, abort() drops the upload
        md5 = hashlib.md5(data)  # noqa: S324 - S3's Content-MD5 and ETag
        self._part_md5[number] = md5.hexdigest()
        checks = self._algorithm or {"ContentMD5": base64.b64encode(md5.digest()).decode()}
        try:
            resp = self._client.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=data, **checks)
        except Exception as exc:
            self._failure = self._failure or exc
            raise
        entry = {"PartNumber": number, "ETag": resp["ETag"]}
        if self._algorithm and resp.get("ChecksumCRC32"):
            entry["ChecksumCRC32"] = resp["ChecksumCRC32"]
        self._parts[number] = entry
        if self._on_progress is not None:
            self._on_progress(len(data))

    def commit(self) -> ObjectInfo:
        """Land the object in one request. Nothing written here is ever deleted afterwards: once that
        request is sent the object is either absent or whole (S3 makes it visible atomically), and
        the archive carries its own integrity record. On failure the multipart upload is aborted."""
        if self._state != "open":
            raise StorageError(f"upload {self.url}: commit after {self._state}")
        self._state = "committing"
        try:
            info = self._put_whole() if self._upload_id is None else self._complete()
        except BaseException as exc:  # Ctrl-C too: no pending upload may stay behind
            err: BaseException = exc
            if isinstance(exc, Exception) and not isinstance(exc, StorageError):
                err = _error("upload", self.bucket, self.key, exc)
            try:
                self.abort()
            except StorageError as abort_exc:
                if isinstance(err, StorageError):
                    err = type(err)(f"{err}; {abort_exc}")
            if err is exc:
                raise
            raise err from exc
        self._state = "committed"
        self._stop_threads()
        return info

    def _put_whole(self) -> ObjectInfo:
        body = bytes(self._buf)
        self._buf = bytearray()
        md5 = hashlib.md5(body)  # noqa: S324 - S3's Content-MD5 and ETag
        checks = {} if self._algorithm else {"ContentMD5": base64.b64encode(md5.digest()).decode()}
        expected = md5.hexdigest()
        try:
            resp = self._s.calls.run("upload", self.bucket, self.key, lambda: self._client.put_object(
                Bucket=self.bucket, Key=self.key, Body=body, IfNoneMatch="*",
                **self._s.create_args(self._metadata, self._retain_until), **checks), stop=self._should_stop)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            return self._resolve(exc, expected, len(body))
        if self._on_progress is not None:
            self._on_progress(len(body))
        # The store checked the Content-MD5 (or CRC32) of what it received; it answers with the object.
        return ObjectInfo(self.bucket, self.key, len(body), None, dict(self._metadata), resp.get("ETag"))

    def _complete(self) -> ObjectInfo:
        if self._buf or not self._futures:
            self._send_part(len(self._buf))
        for fut in self._futures:
            self._wait(lambda t, f=fut: _settled(f, t))  # type: ignore[misc]
            fut.result()
        self._raise_if_failed()
        if len(self._parts) != len(self._futures):
            raise StorageError(f"upload {self.url}: {len(self._futures) - len(self._parts)} parts were not uploaded")
        parts = [self._parts[n] for n in sorted(self._parts)]
        expected = _multipart_etag([self._part_md5[n] for n in sorted(self._parts)])
        self._raise_if_stopped()
        try:
            upload_id = self._upload_id
            resp = self._s.calls.run("upload", self.bucket, self.key, lambda: self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=upload_id, MultipartUpload={"Parts": parts},
                IfNoneMatch="*"), stop=self._should_stop)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            return self._resolve(exc, expected, self.bytes_written)
        except UploadStoppedError:
            return self._landed_despite_stop(expected)
        self._upload_id = None
        return self._check_landed(expected, md5_etags=_md5_etags(resp, self._s))

    def _landed_despite_stop(self, expected_etag: str) -> ObjectInfo:
        """Stopped while the store was completing the upload. The store may have finished it already, with
        only its answer still on the way: then the backup exists and is whole, and saying it failed would be
        wrong (and abort nothing). So look, once, as cleanup does (a stop does not cut it short): our object
        under the key is a success; nothing there means the upload is aborted as for any other stop."""
        stopped = UploadStoppedError(
            f"upload {self.url}: stopped while the store was completing the upload; the upload is aborted, but "
            "a completion already under way may still land the object: if it appears, it is whole (its "
            "integrity record shows it)")
        try:
            info = self._s.retrying("head", self.bucket, self.key,
                                    lambda: self._client.head_object(Bucket=self.bucket, Key=self.key),
                                    missing_ok=True)
        except StorageError:
            raise stopped from None
        if info is None:
            raise stopped
        landed_etag = str(info.get("ETag", ""))
        if int(info["ContentLength"]) != self.bytes_written or (
                _md5_etags(info, self._s) and _norm_etag(landed_etag) != _norm_etag(expected_etag)):
            raise self._exists_error()
        log.info("upload %s: stopped while the store was completing it, but it had landed: the backup is whole "
                 "(ETag %s)", self.url, landed_etag)
        self._upload_id = None
        return ObjectInfo(self.bucket, self.key, self.bytes_written, info.get("LastModified"),
                          info.get("Metadata", {}), landed_etag)

    def _check_landed(self, expected_etag: str, *, md5_etags: bool) -> ObjectInfo:
        """What the store now holds under the key must be this upload: its size, and its ETag where the
        store computes ETags from MD5s (not with SSE-KMS). Catches a store that ignored If-None-Match
        and let another writer's completion replace ours."""
        try:
            answer = self._s.retrying("head", self.bucket, self.key,
                                      lambda: self._client.head_object(Bucket=self.bucket, Key=self.key))
        except StorageError as exc:
            raise StorageError(f"upload {self.url}: the store completed the upload, but the object could not be "
                               f"checked ({exc}). Nothing was deleted: its integrity record shows whether it is "
                               "whole (pgbkp verify)") from exc
        info = ObjectInfo(self.bucket, self.key, int(answer["ContentLength"]), answer.get("LastModified"),
                          answer.get("Metadata", {}), answer.get("ETag"))
        if info.size != self.bytes_written:
            raise StorageError(f"upload {self.url}: the object under the key has {info.size} bytes, we wrote "
                               f"{self.bytes_written}: another run wrote the same key (left as it is)")
        if md5_etags and _norm_etag(info.etag) != _norm_etag(expected_etag):
            raise StorageError(f"upload {self.url}: the object under the key has ETag {info.etag}, ours is "
                               f"{expected_etag}: another run wrote the same key (left as it is)")
        return info

    def _resolve(self, exc: BaseException, expected_etag: str, size: int) -> ObjectInfo:
        """The request that lands the object failed as far as we know. It may have landed all the same:
        an answer lost after botocore's retries, or a retry refused by If-None-Match because the first
        try had landed. Look at what is under the key, but never delete: whatever is there stays."""
        what = _describe(exc)
        refused = isinstance(exc, botocore.exceptions.ClientError) and _code(exc) in _PRECONDITION_FAILED
        try:
            info = self._s.retrying("head", self.bucket, self.key,
                                    lambda: self._client.head_object(Bucket=self.bucket, Key=self.key),
                                    missing_ok=True)
        except StorageError as head_exc:
            raise StorageError(f"upload {self.url}: {what}; whether the object landed is unknown ({head_exc}). "
                               "Nothing was deleted: if it is there, its integrity record shows whether it is "
                               "whole (pgbkp verify)") from exc
        if info is None:
            raise StorageError(f"upload {self.url}: {what}") from exc
        landed_etag = str(info.get("ETag", ""))
        ours = int(info["ContentLength"]) == size and (
            not _md5_etags(info, self._s) or _norm_etag(landed_etag) == _norm_etag(expected_etag))
        if not ours:
            raise self._exists_error()
        log.info("upload %s: %s, but the object that landed is ours (ETag %s)", self.url,
                 "a retry was refused" if refused else "the answer was lost", landed_etag)
        self._upload_id = None
        return ObjectInfo(self.bucket, self.key, size, info.get("LastModified"), info.get("Metadata", {}),
                          landed_etag)

    def _exists_error(self) -> ObjectExistsError:
        return ObjectExistsError(f"upload {self.url}: another backup landed under this key while we uploaded; "
                                 "it was kept and ours was dropped")

    def abort(self) -> None:
        """Drop the upload: no object, no pending multipart upload. The abort is sent at once, without
        waiting for parts in flight, then again once they settle (a part landing after an abort can keep
        a billed upload alive), all within the storage's abort deadline. Calling it again after a
        failed abort retries; after a commit or a successful abort it does nothing."""
        if self._state == "committed":
            return
        self._state = "aborted"
        self._buf = bytearray()
        for fut in self._futures:
            fut.cancel()
        self._stop_threads()
        if self._upload_id is None:
            return
        # One cleanup deadline per upload: a second abort (the caller's, after a commit that already
        # tried) gets one more try within it, not a fresh deadline of its own.
        if self._abort_deadline is None:
            self._abort_deadline = time.monotonic() + self._s.abort_timeout
        deadline = self._abort_deadline
        self._s.abort_upload(self.bucket, self.key, self._upload_id, deadline=deadline)
        in_flight = [f for f in self._futures if not f.done()]
        if in_flight:
            concurrent.futures.wait(in_flight, timeout=max(0.0, deadline - time.monotonic()))
            self._s.abort_upload(self.bucket, self.key, self._upload_id, deadline=deadline)
        self._upload_id = None

    def _stop_threads(self) -> None:
        if self._threads is not None:
            self._threads.stop()
            self._threads = None


def _md5_etags(answer: Mapping[str, Any], storage: S3Storage) -> bool:
    """Whether the object's ETag is MD5-based (so ours can be compared): not for SSE-KMS, whether asked
    for (S3_SSE) or the bucket's default encryption, which the store's answer names."""
    return storage.etags_are_md5 and answer.get("ServerSideEncryption") != "aws:kms"


def _settled(fut: Future[None], timeout: float) -> bool:
    try:
        fut.exception(timeout=timeout)
    except concurrent.futures.TimeoutError:
        return False
    except concurrent.futures.CancelledError:
        pass
    return True


class S3Download:
    def __init__(self, info: ObjectInfo, body: Any) -> None:
        self.info = info
        self._body = body

    def read(self, size: int = -1) -> bytes:
        try:
            return bytes(self._body.read(None if size < 0 else size))
        except Exception as exc:
            raise StorageError(f"download {self.info.url}: {_describe(exc)}") from exc

    def close(self) -> None:
        self._body.close()


class S3Storage:
    """:class:`pgbkp.storage.Storage` on one S3 endpoint."""

    def __init__(self, settings: S3Settings, *, abort_timeout: float | None = None,
                 should_stop: Callable[[], bool] | None = None, client: Any = None) -> None:
        """``abort_timeout``: how long cleanup after a failure (aborting an upload, also while parts are
        still in flight) keeps retrying before it gives up and says what is left. ``client``: one from
        :func:`make_client` for these settings, which a long-lived edge keeps across runs (a new one costs
        0.12-0.19 s); this storage's own state (the stop request, what it learnt of the buckets) is per run."""
        self.settings = settings
        self.client = make_client(settings) if client is None else client
        self.abort_timeout = CLEANUP_SECONDS if abort_timeout is None else abort_timeout
        #: Ordinary requests honour ``should_stop`` (the edge's stop request) while they wait.
        self.calls = _StopAware(should_stop)
        self._batch_delete = True  # cleared the first time the store rejects DeleteObjects
        self._lock_enabled: dict[str, bool | None] = {}  # bucket -> object_lock_enabled(), asked once
        self._lock_asking = threading.Lock()  # once also when several databases' retention asks at the same time

    @property
    def etags_are_md5(self) -> bool:
        """S3 ETags are MD5-based except for SSE-KMS (and SSE-C) objects."""
        return self.settings.sse != "aws:kms"  # also per answer: _md5_etags

    def create_args(self, metadata: Mapping[str, str], retain_until: datetime | None) -> dict[str, Any]:
        """What every new object is created with: metadata, content type, and the storage settings
        (storage class, server-side encryption, Object Lock). PutObject and CreateMultipartUpload both
        take these, so a backup is stored, encrypted and locked in the one write that lands it."""
        args: dict[str, Any] = {"Metadata": dict(metadata), "ContentType": "application/zip"}
        s = self.settings
        if s.storage_class:
            args["StorageClass"] = s.storage_class
        if s.sse:
            args["ServerSideEncryption"] = s.sse
        if s.sse_kms_key_id:
            args["SSEKMSKeyId"] = s.sse_kms_key_id
        if s.object_lock_mode and retain_until is not None:
            args["ObjectLockMode"] = s.object_lock_mode
            args["ObjectLockRetainUntilDate"] = retain_until
        return args

    def object_lock_enabled(self, bucket: str) -> bool | None:
        """GetObjectLockConfiguration, once per bucket for the life of this storage (one run). None when
        the store will not say: access denied (retention then just tries its deletes) or not implemented."""
        with self._lock_asking:
            return self._object_lock_enabled(bucket)

    def _object_lock_enabled(self, bucket: str) -> bool | None:
        if bucket in self._lock_enabled:
            return self._lock_enabled[bucket]
        enabled: bool | None
        try:
            conf = self.calls.run("get object lock configuration", bucket, "", lambda: (
                self.client.get_object_lock_configuration(Bucket=bucket))).get("ObjectLockConfiguration", {})
            enabled = conf.get("ObjectLockEnabled") == "Enabled"
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "ObjectLockConfigurationNotFoundError":
                enabled = False
            else:
                # INFO, not WARNING: a deployment without Object Lock has no reason to grant the permission.
                enabled = None
                log.info("s3://%s: cannot tell whether the bucket has Object Lock (%s); retention deletes without "
                         "checking for locks. Fix: allow s3:GetBucketObjectLockConfiguration on it", bucket,
                         _describe(exc))
        except botocore.exceptions.BotoCoreError as exc:
            log.warning("s3://%s: cannot tell whether the bucket has Object Lock (%s); retention deletes without "
                        "checking for locks", bucket, _describe(exc))
            return None  # not kept: the next database's retention asks again
        self._lock_enabled[bucket] = enabled
        return enabled

    def extend_lock(self, bucket: str, key: str, mode: str, until: datetime) -> None:
        """PutObjectRetention on the object's current version. S3 refuses to shorten a COMPLIANCE lock
        (and a GOVERNANCE one without the bypass permission), so callers compare with head() first."""
        try:
            self.calls.run("extend lock", bucket, key, lambda: self.client.put_object_retention(
                Bucket=bucket, Key=key, Retention={"Mode": mode, "RetainUntilDate": until}))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            err = _error("extend lock", bucket, key, exc)
            if isinstance(exc, botocore.exceptions.ClientError) and _code(exc) in ("AccessDenied", "403"):
                err = StorageError(f"{err}. Fix: allow s3:PutObjectRetention on the bucket")
            raise err from None

    def _pages(self, op: str, bucket: str, prefix: str, pages: Any) -> Iterator[Any]:
        """A paginator's pages, each request waited for as :class:`_StopAware` does."""
        it = iter(pages)
        while (page := self.calls.run(op, bucket, prefix, lambda: next(it, None))) is not None:
            yield page

    def check_bucket(self, bucket: str) -> None:
        try:
            self.calls.run("check bucket", bucket, "", lambda: self.client.head_bucket(Bucket=bucket))
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise NotFoundError(
                    f"check bucket s3://{bucket}: it does not exist. Fix: create it, or correct "
                    "S3_BUCKET / bucket= / db_buckets=") from None
            if code in ("403", "AccessDenied", "Forbidden"):
                raise StorageError(
                    f"check bucket s3://{bucket}: access denied. Fix: check S3_ACCESS_KEY / S3_SECRET_KEY "
                    "and the bucket policy") from None
            raise _error("check bucket", bucket, "", exc) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise _error("check bucket", bucket, "", exc) from None

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in self._pages("list", bucket, prefix, pages):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(bucket, obj["Key"], int(obj["Size"]), obj.get("LastModified"),
                                     etag=obj.get("ETag"))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _error("list", bucket, prefix, exc) from None

    def head(self, bucket: str, key: str) -> ObjectInfo:
        try:
            r = self.calls.run("head", bucket, key, lambda: self.client.head_object(Bucket=bucket, Key=key))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _error("head", bucket, key, exc) from None
        return ObjectInfo(bucket, key, int(r["ContentLength"]), r.get("LastModified"), r.get("Metadata", {}),
                          r.get("ETag"), lock_mode=r.get("ObjectLockMode"),
                          lock_until=r.get("ObjectLockRetainUntilDate"),
                          legal_hold=r.get("ObjectLockLegalHoldStatus") == "ON")

    def upload(self, bucket: str, key: str, *, metadata: Mapping[str, str] | None = None,
               on_progress: Callable[[int], None] | None = None,
               should_stop: Callable[[], bool] = lambda: False, retain_until: datetime | None = None,
               listed: bool = False) -> S3Upload:
        """A new object under ``key``; ObjectExistsError at once if the key already holds one (the
        commit checks again with If-None-Match, for a writer that comes in between). ``listed``: the
        run's listing of the folder already said the key is free, so no HeadObject is sent."""
        head = lambda: self.client.head_object(Bucket=bucket, Key=key)  # noqa: E731
        if not listed and self.retrying("head", bucket, key, lambda: self.calls.run("head", bucket, key, head,
                                                                                     stop=should_stop),
                                        missing_ok=True, attempts_only=True) is not None:
            raise ObjectExistsError(f"upload s3://{bucket}/{key}: a backup already exists under this key (made "
                                    "in the same minute by another run?); it was kept and nothing was written")
        return S3Upload(self, bucket, key, metadata or {}, on_progress, should_stop, retain_until)

    def download(self, bucket: str, key: str) -> S3Download:
        try:
            r = self.calls.run("download", bucket, key, lambda: self.client.get_object(Bucket=bucket, Key=key))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _error("download", bucket, key, exc) from None
        info = ObjectInfo(bucket, key, int(r["ContentLength"]), r.get("LastModified"), r.get("Metadata", {}))
        return S3Download(info, r["Body"])

    def retrying(self, op: str, bucket: str, key: str, attempt: Callable[[], Any], *, missing_ok: bool = False,
                 deadline: float | None = None, attempts_only: bool = False) -> Any:
        """Run ``attempt`` until it succeeds or the deadline (default: ``abort_timeout`` from now)
        passes: cleanup and the checks after a lost answer must outlast a store that is briefly down.
        ``missing_ok``: a 404 answer returns None. ``attempts_only``: no waiting beyond botocore's own
        retries (for the ordinary path, where an error is reported rather than outlasted)."""
        deadline = deadline if deadline is not None else time.monotonic() + self.abort_timeout
        delay = 0.25
        while True:
            try:
                return attempt()
            except botocore.exceptions.ClientError as exc:
                if missing_ok and _code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return None
                if attempts_only or time.monotonic() + delay > deadline:
                    raise _error(op, bucket, key, exc) from None
                log.debug("%s s3://%s/%s: %s; retrying in %.2fs", op, bucket, key, _describe(exc), delay)
            except botocore.exceptions.BotoCoreError as exc:
                if attempts_only or time.monotonic() + delay > deadline:
                    raise _error(op, bucket, key, exc) from None
                log.debug("%s s3://%s/%s: %s; retrying in %.2fs", op, bucket, key, _describe(exc), delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def abort_upload(self, bucket: str, key: str, upload_id: str, *, deadline: float | None = None) -> None:
        """Abort, retrying until the deadline: a store that is briefly down must not keep billing for parts."""

        def attempt() -> None:
            try:
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) not in ("NoSuchUpload", "404"):
                    raise

        try:
            self.retrying("abort upload", bucket, key, attempt, deadline=deadline)
        except StorageError as exc:
            raise StorageError(
                f"{exc} (upload id {upload_id}). Its parts stay billed until the next backup of this database "
                f"removes them, or run: aws s3api abort-multipart-upload --bucket {bucket} --key <key> "
                f"--upload-id {upload_id}") from exc

    def delete(self, bucket: str, keys: Sequence[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            if not self._batch_delete:
                self._delete_singly(bucket, batch)
                continue
            try:
                request = {"Objects": [{"Key": k} for k in batch], "Quiet": True}
                resp = self.calls.run("delete", bucket, batch[0], functools.partial(
                    self.client.delete_objects, Bucket=bucket, Delete=request))
            except botocore.exceptions.ClientError as exc:
                err = exc.response.get("Error", {})
                status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
                if err.get("Code") not in _BATCH_DELETE_UNSUPPORTED and status not in _BATCH_DELETE_UNSUPPORTED:
                    raise _error("delete", bucket, batch[0], exc) from None
                log.info("s3://%s rejected batch delete (%s); deleting one key at a time", bucket,
                         _describe(exc))
                self._batch_delete = False
                self._delete_singly(bucket, batch)
                continue
            except botocore.exceptions.BotoCoreError as exc:
                raise _error("delete", bucket, batch[0], exc) from None
            errors = resp.get("Errors", [])
            if errors:
                first = errors[0]
                raise StorageError(
                    f"delete s3://{bucket}/{first.get('Key')}: {first.get('Code')}: {first.get('Message')} "
                    f"({len(errors)} of {len(batch)} keys not deleted)")

    def _delete_singly(self, bucket: str, keys: Sequence[str]) -> None:
        def one(key: str) -> None:
            try:
                self.client.delete_object(Bucket=bucket, Key=key)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                raise _error("delete", bucket, key, exc) from None

        with ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="s3-delete") as pool:
            for _ in pool.map(one, keys):
                pass

    def pending_uploads(self, bucket: str, prefix: str) -> Iterator[PendingUpload]:
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
            for page in self._pages("list uploads", bucket, prefix, pages):
                for u in page.get("Uploads", []):
                    yield PendingUpload(bucket, u["Key"], u["UploadId"], u["Initiated"],
                                        self._last_part(bucket, u["Key"], u["UploadId"]))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _error("list uploads", bucket, prefix, exc) from None

    def _last_part(self, bucket: str, key: str, upload_id: str) -> datetime | None:
        """When the newest part of an upload arrived: a live run keeps adding parts."""
        newest = None
        pages = self.client.get_paginator("list_parts").paginate(Bucket=bucket, Key=key, UploadId=upload_id)
        for page in self._pages("list parts", bucket, key, pages):
            for part in page.get("Parts", []):
                if newest is None or part["LastModified"] > newest:
                    newest = part["LastModified"]
        return newest

    def abort_pending(self, upload: PendingUpload) -> None:
        self.abort_upload(upload.bucket, upload.key, upload.upload_id)
