"""The Storage interface on S3 and S3-compatible stores (MinIO and others), with boto3.

Uploads are our own multipart writer rather than boto3's transfer manager: the manager completes an
object whenever its input ends, so a failed dump would become a truncated "backup". Here an object
exists only after an explicit :meth:`S3Upload.commit`, and any failure aborts the multipart upload.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from pgbkp.config import S3Settings
from pgbkp.storage import NotFoundError, ObjectInfo, PendingUpload, StorageError

log = logging.getLogger(__name__)

#: S3 allows 10,000 parts. Part n is ``part_size * (1 + n // PARTS_PER_STEP)`` bytes, so 8 MiB parts
#: reach ~440 GB while memory stays at a few parts for ordinary dumps.
PARTS_PER_STEP = 1000
MAX_PARTS = 10_000
#: The largest object CopyObject accepts; above it the metadata self-copy is a multipart copy.
MAX_COPY_SIZE = 5 * 1024**3
COPY_PART_SIZE = 512 * 1024**2
MIN_PART_SIZE = 5 * 1024**2
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
        max_pool_connections=max(10, settings.concurrency * 2 + 2),
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


class S3Upload:
    """Stream bytes into one object: one PUT if small, else a multipart upload with parts in flight
    on a few threads. Memory is bounded by about ``(concurrency + 1) x part size`` plus one write.

    Not thread-safe: one producer calls write/commit/abort. ``on_progress`` runs on the part threads."""

    def __init__(self, storage: S3Storage, bucket: str, key: str, metadata: Mapping[str, str],
                 on_progress: Callable[[int], None] | None) -> None:
        self._s = storage
        self._client = storage.client
        self.bucket, self.key = bucket, key
        self._metadata = dict(metadata)
        self._on_progress = on_progress
        self._buf = bytearray()
        self._sha = hashlib.sha256()
        self._upload_id: str | None = None
        self._parts: dict[int, dict[str, Any]] = {}  # PartNumber -> the part entry CompleteMultipartUpload needs
        # With flexible checksums on (AWS), botocore adds a CRC32 to every UploadPart; AWS expects the
        # upload to declare that algorithm when created and the complete request to list each part's CRC.
        checksums = self._client.meta.config.request_checksum_calculation == "when_supported"
        self._algorithm: dict[str, str] = {"ChecksumAlgorithm": "CRC32"} if checksums else {}
        self._futures: list[Future[None]] = []
        self._slots = threading.Semaphore(storage.settings.concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._failure: BaseException | None = None
        self._state = "open"
        # Set just before the request that makes the object visible (PutObject or
        # CompleteMultipartUpload): from then on a failed commit must remove what may have landed,
        # but never an older object that was already under the key (its ETag is kept to tell them apart).
        self._final_sent = False
        #: ETags of objects this upload itself put under the key: only these may ever be deleted by a
        #: failed commit. Another run writing the same key (a second scheduler, a same-minute re-run,
        #: an hour repeated at the DST change) must never lose its object to our cleanup.
        self._own_etags: set[str] = set()
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
        self._sha.update(data)
        self._buf += data
        self.bytes_written += len(data)
        while len(self._buf) >= self._part_size():
            self._send_part(self._part_size())

    def _raise_if_failed(self) -> None:
        """A part failed on a worker thread: stop the producer at its next write, not at commit."""
        if self._failure is not None:
            raise StorageError(f"upload {self.url}: {_describe(self._failure)}") from self._failure

    def _send_part(self, size: int) -> None:
        """Cut the next ``size`` bytes off the buffer and hand them to a part thread."""
        self._raise_if_failed()
        if self._upload_id is None:
            try:
                resp = self._client.create_multipart_upload(
                    Bucket=self.bucket, Key=self.key, Metadata=self._metadata, ContentType="application/zip",
                    **self._algorithm)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                raise _error("upload", self.bucket, self.key, exc) from exc
            self._upload_id = resp["UploadId"]
            self._pool = ThreadPoolExecutor(self._s.settings.concurrency, thread_name_prefix="s3-part")
        number = len(self._futures) + 1
        if number > MAX_PARTS:
            raise StorageError(f"upload {self.url}: more than {MAX_PARTS} parts ({self.bytes_written} bytes so "
                               "far). Fix: raise S3_PART_SIZE_MB")
        # Take a slot *before* cutting the part, so at most `concurrency` parts live outside the buffer:
        # the producer blocks here while every slot is busy, which bounds memory whatever the dump size.
        self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            self._raise_if_failed()
        with memoryview(self._buf) as view:
            part = bytes(view[:size])
        del self._buf[:size]
        assert self._pool is not None
        fut = self._pool.submit(self._upload_part, number, part)
        fut.add_done_callback(lambda _f: self._slots.release())
        self._futures.append(fut)

    def _upload_part(self, number: int, data: bytes) -> None:
        if self._failure is not None or self._state == "aborted":
            return  # pointless now; commit() notices the missing part, abort() drops the upload
        try:
            resp = self._client.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=data,
                **self._algorithm)
        except Exception as exc:
            self._failure = self._failure or exc
            raise
        entry = {"PartNumber": number, "ETag": resp["ETag"]}
        if self._algorithm and resp.get("ChecksumCRC32"):
            entry["ChecksumCRC32"] = resp["ChecksumCRC32"]
        self._parts[number] = entry
        if self._on_progress is not None:
            self._on_progress(len(data))

    def commit(self, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        if self._state != "open":
            raise StorageError(f"upload {self.url}: commit after {self._state}")
        self._state = "committing"
        final = {**self._metadata, **(metadata or {}), "sha256": self._sha.hexdigest()}
        try:
            if self._upload_id is None:
                body = bytes(self._buf)
                self._buf = bytearray()
                self._before_landing(_quote(hashlib.md5(body).hexdigest()))  # noqa: S324 - S3's ETag
                resp = self._client.put_object(Bucket=self.bucket, Key=self.key, Body=body, Metadata=final,
                                               ContentType="application/zip")
                self._own_etags.add(_norm_etag(resp.get("ETag")))
                if self._on_progress is not None:
                    self._on_progress(len(body))
            else:
                if self._buf or not self._futures:
                    self._send_part(len(self._buf))
                for fut in self._futures:
                    fut.result()
                self._raise_if_failed()
                if len(self._parts) != len(self._futures):
                    raise StorageError(f"upload {self.url}: {len(self._futures) - len(self._parts)} parts "
                                       "were not uploaded")
                parts = [self._parts[n] for n in sorted(self._parts)]
                self._before_landing(_multipart_etag([p["ETag"] for p in parts]))
                resp = self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": parts})
                self._upload_id = None
                self._own_etags.add(_norm_etag(resp.get("ETag")))
                self._own_etags.add(_norm_etag(
                    self._s.set_metadata(self.bucket, self.key, final, self.bytes_written, if_match=resp["ETag"])))
            info = self._s.head(self.bucket, self.key)
        except Exception as exc:
            err = exc if isinstance(exc, StorageError) else _error("upload", self.bucket, self.key, exc)
            raise self._fail_commit(err) from exc
        if info.size != self.bytes_written or info.metadata.get("sha256") != final["sha256"]:
            raise self._fail_commit(StorageError(
                f"upload {self.url}: stored object has {info.size} bytes and sha256 "
                f"{info.metadata.get('sha256')}, expected {self.bytes_written} and {final['sha256']}"))
        self._state = "committed"
        self._shutdown()
        return info

    def _before_landing(self, expected_etag: str) -> None:
        """Just before the request that makes the object visible: if its answer is lost, the object
        that landed is recognised by the ETag S3 computes (MD5, or MD5 of part MD5s)."""
        self._own_etags.add(_norm_etag(expected_etag))
        self._final_sent = True

    def _fail_commit(self, err: StorageError) -> StorageError:
        """A commit that failed half-way must leave neither a pending upload nor a half-made object
        (one without its sha256, or whose completion answer was lost). Returns the error to raise."""
        notes = []
        try:
            self.abort()
        except StorageError as exc:
            notes.append(str(exc))
        if self._final_sent:
            try:
                if self._s.remove_if_ours(self.bucket, self.key, self._own_etags):
                    notes.append("the incomplete object was removed")
            except StorageError as exc:
                notes.append(f"the incomplete object may remain: {exc}")
        return type(err)("; ".join([str(err), *notes]))

    def abort(self) -> None:
        """Drop the upload. Waits for parts in flight first (a part that lands after the abort would
        otherwise keep a billed upload alive), then aborts with retries. Calling it again after a failed
        abort retries; after a successful one it does nothing."""
        if self._state == "committed":
            return
        self._state = "aborted"
        self._buf = bytearray()
        for fut in self._futures:
            fut.cancel()
        self._shutdown()
        if self._upload_id is not None:
            self._s.abort_upload(self.bucket, self.key, self._upload_id)
            self._upload_id = None

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


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

    def __init__(self, settings: S3Settings, *, abort_timeout: float = 60.0, copy_threshold: int = MAX_COPY_SIZE,
                 copy_part_size: int = COPY_PART_SIZE) -> None:
        """``abort_timeout``: how long cleanup (abort, removing a half-made object) keeps retrying.
        ``copy_threshold``/``copy_part_size``: above the threshold the metadata self-copy is a multipart
        copy in parts of that size (tests lower both to exercise that path with small objects)."""
        if not MIN_PART_SIZE <= copy_part_size <= MAX_COPY_SIZE or copy_threshold > MAX_COPY_SIZE:
            raise ValueError("copy_part_size must be within 5 MiB..5 GiB and copy_threshold at most 5 GiB")
        self.settings = settings
        self.client = make_client(settings)
        self.abort_timeout = abort_timeout
        self.copy_threshold = copy_threshold
        self.copy_part_size = copy_part_size
        self._batch_delete = True  # cleared the first time the store rejects DeleteObjects

    def check_bucket(self, bucket: str) -> None:
        try:
            self.client.head_bucket(Bucket=bucket)
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
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(bucket, obj["Key"], int(obj["Size"]), obj.get("LastModified"),
                                     etag=obj.get("ETag"))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _error("list", bucket, prefix, exc) from None

    def head(self, bucket: str, key: str) -> ObjectInfo:
        try:
            r = self.client.head_object(Bucket=bucket, Key=key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _error("head", bucket, key, exc) from None
        return ObjectInfo(bucket, key, int(r["ContentLength"]), r.get("LastModified"), r.get("Metadata", {}),
                          r.get("ETag"))

    def upload(self, bucket: str, key: str, *, metadata: Mapping[str, str] | None = None,
               on_progress: Callable[[int], None] | None = None) -> S3Upload:
        return S3Upload(self, bucket, key, metadata or {}, on_progress)

    def download(self, bucket: str, key: str) -> S3Download:
        try:
            r = self.client.get_object(Bucket=bucket, Key=key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _error("download", bucket, key, exc) from None
        info = ObjectInfo(bucket, key, int(r["ContentLength"]), r.get("LastModified"), r.get("Metadata", {}))
        return S3Download(info, r["Body"])

    def set_metadata(self, bucket: str, key: str, metadata: Mapping[str, str], size: int, *,
                     if_match: str) -> str:
        """Replace an object's metadata by copying it onto itself, server-side; returns the new ETag.

        The SHA-256 of a streamed object is only known at its end, after the multipart upload began.
        ``if_match`` makes the copy refuse an object that another writer put there meanwhile."""
        src = {"Bucket": bucket, "Key": key}
        if size <= self.copy_threshold:
            resp = self.client.copy_object(Bucket=bucket, Key=key, CopySource=src, Metadata=dict(metadata),
                                           MetadataDirective="REPLACE", ContentType="application/zip",
                                           CopySourceIfMatch=if_match)
            return str(resp.get("CopyObjectResult", {}).get("ETag", ""))
        upload_id = self.client.create_multipart_upload(
            Bucket=bucket, Key=key, Metadata=dict(metadata), ContentType="application/zip")["UploadId"]
        try:
            ranges = [(i, min(i + self.copy_part_size, size) - 1) for i in range(0, size, self.copy_part_size)]

            def copy(n: int, lo: int, hi: int) -> dict[str, Any]:
                r = self.client.upload_part_copy(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n,
                                                 CopySource=src, CopySourceRange=f"bytes={lo}-{hi}",
                                                 CopySourceIfMatch=if_match)
                return {"PartNumber": n, "ETag": r["CopyPartResult"]["ETag"]}

            with ThreadPoolExecutor(self.settings.concurrency) as pool:
                parts = list(pool.map(lambda a: copy(*a), [(n, lo, hi) for n, (lo, hi) in enumerate(ranges, 1)]))
            done = self.client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                                         MultipartUpload={"Parts": parts})
            return str(done.get("ETag", ""))
        except Exception:
            self.abort_upload(bucket, key, upload_id)
            raise

    def _retrying(self, what: str, attempt: Callable[[], Any]) -> Any:
        """Run ``attempt`` until it succeeds or ``abort_timeout`` passes: cleanup after a failure must
        outlast a store that is briefly down, since what it leaves behind is billed or misleading."""
        deadline = time.monotonic() + self.abort_timeout
        delay = 0.25
        while True:
            try:
                return attempt()
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                if time.monotonic() + delay > deadline:
                    raise StorageError(f"{what}: {_describe(exc)}") from exc
                log.debug("%s: %s; retrying in %.2fs", what, _describe(exc), delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort, retrying for a while: a store that is briefly down must not keep billing for parts."""

        def attempt() -> None:
            try:
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
                    raise

        try:
            self._retrying(f"abort upload s3://{bucket}/{key} (upload id {upload_id})", attempt)
        except StorageError as exc:
            raise StorageError(
                f"{exc}. Its parts stay billed until the next run removes stale uploads, or run: aws s3api "
                f"abort-multipart-upload --bucket {bucket} --key <key> --upload-id {upload_id}") from exc

    def etag(self, bucket: str, key: str) -> str | None:
        """The object's ETag, or None when there is no object under the key."""
        try:
            return str(self.client.head_object(Bucket=bucket, Key=key)["ETag"])
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _error("head", bucket, key, exc) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise _error("head", bucket, key, exc) from None

    def remove_if_ours(self, bucket: str, key: str, own_etags: Collection[str]) -> bool:
        """Delete the object under ``key`` only if it is one we wrote (its ETag is in ``own_etags``):
        never an older backup, nor another run's object. Retries like an abort; says if it deleted."""

        def attempt() -> bool:
            try:
                current = self.client.head_object(Bucket=bucket, Key=key)["ETag"]
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
            if not _norm_etag(current) or _norm_etag(current) not in own_etags:
                return False
            self.client.delete_object(Bucket=bucket, Key=key)
            return True

        return bool(self._retrying(f"delete s3://{bucket}/{key}", attempt))

    def delete(self, bucket: str, keys: Sequence[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            if not self._batch_delete:
                self._delete_singly(bucket, batch)
                continue
            try:
                resp = self.client.delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
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
            for page in pages:
                for u in page.get("Uploads", []):
                    yield PendingUpload(bucket, u["Key"], u["UploadId"], u["Initiated"])
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _error("list uploads", bucket, prefix, exc) from None

    def abort_pending(self, upload: PendingUpload) -> None:
        self.abort_upload(upload.bucket, upload.key, upload.upload_id)
