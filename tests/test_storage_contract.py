"""One conformance suite for every Storage: MemoryStorage and S3Storage on the real (moto) S3 server.

The first half runs the same checks on both backends (the ``backend`` fixture). The second half is
S3-only: the single-delete fallback, the multipart self-copy, the S3 server going away mid-upload, and
the upload writer under concurrency, all through ``tests/s3proxy.py`` in front of the server, while the
end state is always checked on the server directly, never through the proxy.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import boto3
import botocore.config
import pytest

from pgbkp.config import S3Settings
from pgbkp.redact import Secret
from pgbkp.storage import NotFoundError, ObjectInfo, Storage, StorageError
from pgbkp.storage.memory import MemoryStorage
from pgbkp.storage.s3 import S3Storage, S3Upload
from tests.s3proxy import Request, S3Proxy
from tests.s3proxy import running as proxy_running
from tests.servers import S3Server

MiB = 1024 * 1024
PART = 5 * MiB  # the smallest part S3 accepts: keeps multipart tests small


def settings_for(s3: S3Server, endpoint: str | None = None, **over: Any) -> S3Settings:
    base = S3Settings(endpoint=endpoint or s3.endpoint, access_key=Secret(s3.access_key),
                      secret_key=Secret(s3.secret_key), force_path_style=True, region="us-east-1",
                      part_size=PART, concurrency=4)
    return replace(base, **over)


def raw_client(s3: S3Server) -> Any:
    """A client straight to moto, for seeding and for checking the end state behind any proxy."""
    return boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1",
                        aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
                        config=botocore.config.Config(s3={"addressing_style": "path"}, max_pool_connections=32))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Backend:
    """A Storage plus the few ways a test needs to reach behind it."""

    name: str
    storage: Storage
    bucket: str
    seed: Callable[[list[str]], None]  # many tiny objects, fast
    keys: Callable[[], list[str]]
    pending: Callable[[], list[str]]  # keys with an unfinished multipart upload


@pytest.fixture(params=["memory", "s3"])
def backend(request: pytest.FixtureRequest) -> Backend:
    bucket = f"contract-{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        mem = MemoryStorage([bucket])
        return Backend(
            "memory", mem, bucket,
            seed=lambda names: [mem.put(bucket, n, b"x") for n in names] and None,
            keys=lambda: sorted(mem.objects[bucket]),
            pending=lambda: sorted(u.key for u in mem.pending.values()),
        )
    s3: S3Server = request.getfixturevalue("s3")
    raw = raw_client(s3)
    raw.create_bucket(Bucket=bucket)

    def seed(names: list[str]) -> None:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: raw.put_object(Bucket=bucket, Key=k, Body=b"x"), names))

    def keys() -> list[str]:
        pages = raw.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))

    def pending() -> list[str]:
        return sorted(u["Key"] for u in raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []))

    return Backend("s3", S3Storage(settings_for(s3), abort_timeout=5), bucket, seed, keys, pending)


def write_all(upload: Any, data: bytes, chunk: int = 256 * 1024) -> None:
    for i in range(0, len(data), chunk):
        upload.write(data[i:i + chunk])


def read_all(storage: Storage, bucket: str, key: str) -> bytes:
    dl = storage.download(bucket, key)
    try:
        out = bytearray()
        while block := dl.read(1 << 20):
            out += block
        return bytes(out)
    finally:
        dl.close()


# --- the shared contract ---------------------------------------------------------------------------


def test_check_bucket(backend: Backend) -> None:
    backend.storage.check_bucket(backend.bucket)
    with pytest.raises(NotFoundError) as exc:
        backend.storage.check_bucket("no-such-bucket-here")
    assert "s3://no-such-bucket-here" in str(exc.value)
    assert "Fix" in str(exc.value)


@pytest.mark.parametrize("size", [0, 1000, 22 * MiB], ids=["empty", "small", "multipart"])
def test_upload_commit_round_trip(backend: Backend, size: int) -> None:
    data = os.urandom(size)
    key = "db/shop/backup.zip"
    seen: list[int] = []
    lock = threading.Lock()

    def progress(n: int) -> None:
        with lock:
            seen.append(n)

    up = backend.storage.upload(backend.bucket, key, metadata={"raw-size": "7", "origin": "contract"},
                                on_progress=progress)
    write_all(up, data)
    assert up.bytes_written == size
    # Nothing is visible before the commit, whatever was already sent.
    assert backend.keys() == []
    with pytest.raises(NotFoundError):
        backend.storage.head(backend.bucket, key)
    info = up.commit({"raw-size": "42"})
    assert isinstance(info, ObjectInfo)
    assert (info.bucket, info.key, info.size) == (backend.bucket, key, size)
    assert info.url == f"s3://{backend.bucket}/{key}"
    assert info.metadata["sha256"] == sha(data)
    assert info.metadata["raw-size"] == "42"  # commit's metadata wins over upload's
    assert info.metadata["origin"] == "contract"
    assert sum(seen) == size
    head = backend.storage.head(backend.bucket, key)
    assert (head.size, head.metadata["sha256"]) == (size, sha(data))
    assert read_all(backend.storage, backend.bucket, key) == data
    assert backend.pending() == []
    dl = backend.storage.download(backend.bucket, key)
    assert dl.info.size == size and dl.info.metadata["sha256"] == sha(data)
    dl.close()


@pytest.mark.parametrize("backend", ["s3"], indirect=True)  # parts are an S3 notion
def test_multipart_uses_more_than_three_parts(backend: Backend) -> None:
    up = backend.storage.upload(backend.bucket, "k")
    write_all(up, os.urandom(3 * PART + 1))
    assert isinstance(up, S3Upload)
    assert backend.pending() == ["k"]  # the multipart upload exists, the object does not
    assert len(up._futures) == 3
    up.commit()
    assert len(up._parts) == 4


def test_abort_leaves_nothing_and_is_idempotent(backend: Backend) -> None:
    for size in (10, 12 * MiB):
        up = backend.storage.upload(backend.bucket, f"k{size}")
        write_all(up, os.urandom(size))
        up.abort()
        up.abort()
        assert backend.keys() == []
        assert backend.pending() == []
        with pytest.raises(StorageError, match=rf"upload s3://{backend.bucket}/k{size}: write after abort"):
            up.write(b"more")
        with pytest.raises(StorageError):
            up.commit()


def test_write_and_commit_after_commit_raise(backend: Backend) -> None:
    up = backend.storage.upload(backend.bucket, "k")
    up.write(b"abc")
    up.commit()
    with pytest.raises(StorageError, match=rf"upload s3://{backend.bucket}/k: write after commit"):
        up.write(b"more")
    with pytest.raises(StorageError, match="commit after commit"):
        up.commit()
    up.abort()  # after a commit, abort keeps the object
    assert backend.keys() == ["k"]


def test_list_paginates_scopes_by_prefix_and_deletes_in_batches(backend: Backend) -> None:
    """One seeding of 1,100 keys (the slow part on moto) serves listing and deleting beyond 1000."""
    mine = [f"db/shop/{i:05d}.zip" for i in range(1100)]
    others = ["db/shopping/00001.zip", "db/shop-eu/00001.zip", "db/sho", "other/db/shop/1.zip"]
    backend.seed(mine + others)
    listed = list(backend.storage.list(backend.bucket, "db/shop/"))
    assert sorted(o.key for o in listed) == mine
    assert all(o.size == 1 and o.bucket == backend.bucket for o in listed)
    assert all(o.last_modified is not None for o in listed)
    assert [o.key for o in backend.storage.list(backend.bucket, "db/shopping/")] == ["db/shopping/00001.zip"]
    assert list(backend.storage.list(backend.bucket, "nothing/")) == []

    backend.storage.delete(backend.bucket, [*mine[1:], "db/shop/never-existed.zip"])
    assert backend.keys() == sorted([mine[0], *others])
    backend.storage.delete(backend.bucket, [])  # nothing to do is fine
    assert backend.keys() == sorted([mine[0], *others])


def test_missing_object_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFoundError, match=rf"head s3://{backend.bucket}/nope"):
        backend.storage.head(backend.bucket, "nope")
    with pytest.raises(NotFoundError, match=rf"download s3://{backend.bucket}/nope"):
        backend.storage.download(backend.bucket, "nope")


def test_pending_uploads_and_abort_pending(backend: Backend) -> None:
    up = backend.storage.upload(backend.bucket, "db/shop/unfinished.zip")
    write_all(up, os.urandom(PART + 10))  # past one part: a multipart upload now exists on S3
    other = backend.storage.upload(backend.bucket, "db/shopping/unfinished.zip")
    write_all(other, os.urandom(PART + 10))
    pending = list(backend.storage.pending_uploads(backend.bucket, "db/shop/"))
    assert [p.key for p in pending] == ["db/shop/unfinished.zip"]
    assert pending[0].bucket == backend.bucket and pending[0].upload_id and pending[0].initiated
    backend.storage.abort_pending(pending[0])
    backend.storage.abort_pending(pending[0])  # already gone is fine
    assert [p.key for p in backend.storage.pending_uploads(backend.bucket, "db/")] == ["db/shopping/unfinished.zip"]
    up.abort()  # the owner's abort still succeeds after someone else aborted it
    other.abort()
    assert backend.pending() == [] and backend.keys() == []


# --- S3 only: through the recording/faulting proxy -------------------------------------------------


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[S3Proxy]:
    with proxy_running(s3.endpoint) as p:
        yield p


@pytest.fixture
def bucket(s3: S3Server) -> str:
    name = f"faults-{uuid.uuid4().hex[:8]}"
    raw_client(s3).create_bucket(Bucket=name)
    return name


def state(s3: S3Server, bucket: str) -> tuple[list[str], list[str]]:
    """(object keys, keys with a pending multipart upload), asked of moto directly."""
    raw = raw_client(s3)
    objs = sorted(o["Key"] for o in raw.list_objects_v2(Bucket=bucket).get("Contents", []))
    ups = sorted(u["Key"] for u in raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
    return objs, ups


def op_is(name: str, **query: str) -> Callable[[Request], bool]:
    return lambda r: r.operation == name and all(r.query.get(k) == [v] for k, v in query.items())


def test_batch_delete_falls_back_to_single_deletes(s3: S3Server, proxy: S3Proxy, bucket: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pgbkp.storage.s3.DELETE_BATCH", 10)  # 3 batches without seeding thousands
    raw = raw_client(s3)
    names = [f"db/x/{i:04d}" for i in range(25)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: raw.put_object(Bucket=bucket, Key=k, Body=b"x"), [*names, "db/keep"]))
    proxy.fail(op_is("DeleteObjects"), 501, "NotImplemented")
    storage = S3Storage(settings_for(s3, proxy.endpoint))
    storage.delete(bucket, names)
    assert state(s3, bucket) == (["db/keep"], [])
    assert len(proxy.ops("DeleteObjects")) == 1  # rejected once, then remembered for the other batches
    assert len(proxy.ops("DeleteObject")) == 25


@pytest.mark.parametrize(("status", "code"), [(501, "NotImplemented"), (501, ""), (405, "MethodNotAllowed"),
                                              (400, "MalformedXML"), (400, "MissingContentMD5"),
                                              (400, "InvalidArgument")])
def test_batch_delete_rejections_that_mean_unsupported(s3: S3Server, proxy: S3Proxy, bucket: str, status: int,
                                                       code: str) -> None:
    raw_client(s3).put_object(Bucket=bucket, Key="a", Body=b"x")
    proxy.fail(op_is("DeleteObjects"), status, code)
    S3Storage(settings_for(s3, proxy.endpoint)).delete(bucket, ["a"])
    assert state(s3, bucket) == ([], [])


def test_batch_delete_other_errors_are_reported(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    raw_client(s3).put_object(Bucket=bucket, Key="a", Body=b"x")
    proxy.fail(op_is("DeleteObjects"), 403, "AccessDenied")
    with pytest.raises(StorageError, match=rf"delete s3://{bucket}/a: AccessDenied"):
        S3Storage(settings_for(s3, proxy.endpoint)).delete(bucket, ["a"])
    assert proxy.ops("DeleteObject") == []
    assert state(s3, bucket) == (["a"], [])


def test_metadata_self_copy_single_and_multipart(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    data = os.urandom(12 * MiB + 3)
    for threshold, op, n in ((5 * 1024**3, "CopyObject", 1), (6 * MiB, "UploadPartCopy", 3)):
        proxy.clear()
        storage = S3Storage(settings_for(s3, proxy.endpoint), copy_threshold=threshold, copy_part_size=PART)
        up = storage.upload(bucket, f"k-{op}", metadata={"origin": "x"})
        write_all(up, data)
        info = up.commit({"raw-size": "1"})
        assert info.metadata == {"origin": "x", "raw-size": "1", "sha256": sha(data)}
        assert len(proxy.ops(op)) == n
        ranges = sorted(r.headers["x-amz-copy-source-range"] for r in proxy.ops("UploadPartCopy"))
        if n == 3:
            assert ranges == sorted(["bytes=0-5242879", "bytes=5242880-10485759", "bytes=10485760-12582914"])
        assert read_all(storage, bucket, f"k-{op}") == data
    assert state(s3, bucket) == (["k-CopyObject", "k-UploadPartCopy"], [])
    with pytest.raises(ValueError):
        S3Storage(settings_for(s3), copy_part_size=MiB)


def test_s3_server_stops_mid_upload_then_abort_retries(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    storage = S3Storage(settings_for(s3, proxy.endpoint, max_attempts=2, concurrency=2), abort_timeout=20)
    up = storage.upload(bucket, "db/shop/backup.zip")
    write_all(up, os.urandom(2 * PART))
    proxy.wait_for(lambda: len(proxy.ops("UploadPart")) == 2)
    for fut in up._futures:
        fut.result(timeout=10)  # both parts landed
    proxy.stop()
    started = time.monotonic()
    with pytest.raises(StorageError, match=rf"upload s3://{bucket}/db/shop/backup.zip: ") as exc:
        for _ in range(200):  # part 3 goes out and fails: the next write stops the producer
            write_all(up, os.urandom(MiB))
            time.sleep(0.02)
    failed_after = time.monotonic() - started
    assert "endpoint" in str(exc.value).lower() or "connect" in str(exc.value).lower()
    assert state(s3, bucket) == ([], ["db/shop/backup.zip"])
    proxy.start_later(1.5)
    up.abort()  # retries while the server is away, succeeds once it is back
    took = time.monotonic() - started
    up.abort()
    assert state(s3, bucket) == ([], [])
    assert len(proxy.ops("AbortMultipartUpload")) >= 1
    assert failed_after < 15 and took < 25


def test_s3_server_stops_before_commit(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    storage = S3Storage(settings_for(s3, proxy.endpoint, max_attempts=2, concurrency=2), abort_timeout=20)
    up = storage.upload(bucket, "k")
    write_all(up, os.urandom(2 * PART + 100))
    proxy.wait_for(lambda: len(proxy.ops("UploadPart")) == 2)
    for fut in up._futures:
        fut.result(timeout=10)
    proxy.stop()
    proxy.start_later(2.0)  # back while commit's own cleanup is still retrying
    with pytest.raises(StorageError, match=rf"upload s3://{bucket}/k: "):
        up.commit()
    up.abort()
    assert state(s3, bucket) == ([], [])


def test_in_flight_parts_never_exceed_concurrency(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    concurrency, chunk = 2, 256 * 1024
    proxy.delay(op_is("UploadPart"), 0.3)
    storage = S3Storage(settings_for(s3, proxy.endpoint, concurrency=concurrency))
    progressed = 0
    lock = threading.Lock()

    def progress(n: int) -> None:
        nonlocal progressed
        with lock:
            progressed += n

    data = os.urandom(7 * PART + 12345)
    up = storage.upload(bucket, "k", on_progress=progress)
    worst = 0
    for i in range(0, len(data), chunk):
        up.write(data[i:i + chunk])
        with lock:
            worst = max(worst, up.bytes_written - progressed)  # bytes held in memory: buffer + parts in flight
    info = up.commit()
    assert proxy.max_in_flight == concurrency
    assert worst <= (concurrency + 1) * PART + chunk
    assert worst > concurrency * PART  # the bound was reached, so it was the semaphore that held
    numbers = sorted(int(r.query["partNumber"][0]) for r in proxy.ops("UploadPart"))
    assert numbers == list(range(1, 9))
    assert info.metadata["sha256"] == sha(data)
    assert read_all(storage, bucket, "k") == data  # parts reassembled in order


def test_failed_part_stops_the_producer_promptly(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    concurrency = 2
    proxy.fail(op_is("UploadPart", partNumber="2"), 403, "AccessDenied")
    storage = S3Storage(settings_for(s3, proxy.endpoint, concurrency=concurrency))
    up = storage.upload(bucket, "k")
    with pytest.raises(StorageError, match=rf"upload s3://{bucket}/k: AccessDenied"):
        write_all(up, os.urandom(20 * PART))
    # Part 2 was cut at 2 parts; at most `concurrency` more parts plus one in the buffer could follow.
    assert up.bytes_written <= (2 + concurrency + 1) * PART
    assert len(proxy.ops("UploadPart")) <= 2 + concurrency
    up.abort()
    assert state(s3, bucket) == ([], [])
    # Once a part has failed, the very next write fails, not the next part boundary (up to a part later).
    proxy.clear()
    proxy.fail(op_is("UploadPart", partNumber="1"), 403, "AccessDenied")
    up = storage.upload(bucket, "k2")
    write_all(up, os.urandom(PART))
    proxy.wait_for(lambda: all(f.done() for f in up._futures))
    with pytest.raises(StorageError, match=rf"upload s3://{bucket}/k2: AccessDenied"):
        up.write(b"x")
    up.abort()
    assert state(s3, bucket) == ([], [])


def test_commit_failing_after_the_object_landed_removes_it(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    storage = S3Storage(settings_for(s3, proxy.endpoint, max_attempts=2), abort_timeout=5)
    # 1. The metadata self-copy fails: the completed object has no sha256 and must go.
    proxy.fail(op_is("CopyObject"), 403, "AccessDenied")
    up = storage.upload(bucket, "copy-fails")
    write_all(up, os.urandom(2 * PART + 1))
    with pytest.raises(StorageError, match=rf"upload s3://{bucket}/copy-fails: AccessDenied.*removed"):
        up.commit()
    assert len(proxy.ops("CompleteMultipartUpload")) == 1
    assert state(s3, bucket) == ([], [])
    # 2. Completion lands on the server but the answer is lost (every time): still no object.
    proxy.clear()
    proxy.fail(op_is("CompleteMultipartUpload"), 500, "InternalError", after=True)
    up = storage.upload(bucket, "answer-lost")
    write_all(up, os.urandom(PART + 1))
    with pytest.raises(StorageError, match=rf"upload s3://{bucket}/answer-lost: "):
        up.commit()
    assert state(s3, bucket) == ([], [])
    # 3. The same for a single PUT.
    proxy.clear()
    proxy.fail(op_is("PutObject"), 500, "InternalError", after=True)
    up = storage.upload(bucket, "put-lost")
    up.write(b"small")
    with pytest.raises(StorageError, match=rf"upload s3://{bucket}/put-lost: "):
        up.commit()
    assert state(s3, bucket) == ([], [])


def test_failed_commit_keeps_an_older_object_under_the_key(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    raw_client(s3).put_object(Bucket=bucket, Key="k", Body=b"the previous backup")
    proxy.fail(op_is("CompleteMultipartUpload"), 403, "AccessDenied")  # refused: nothing new landed
    up = S3Storage(settings_for(s3, proxy.endpoint)).upload(bucket, "k")
    write_all(up, os.urandom(PART + 1))
    with pytest.raises(StorageError, match=rf"upload s3://{bucket}/k: AccessDenied"):
        up.commit()
    assert state(s3, bucket) == (["k"], [])
    assert raw_client(s3).get_object(Bucket=bucket, Key="k")["Body"].read() == b"the previous backup"


def test_abort_with_parts_in_flight(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    proxy.delay(op_is("UploadPart"), 0.5)
    storage = S3Storage(settings_for(s3, proxy.endpoint, concurrency=3))
    up = storage.upload(bucket, "k")
    write_all(up, os.urandom(3 * PART))
    proxy.wait_for(lambda: len(proxy.ops("UploadPart")) == 3)
    started = time.monotonic()
    up.abort()
    assert time.monotonic() - started < 5
    assert all(f.done() for f in up._futures)
    assert len(proxy.ops("AbortMultipartUpload")) == 1
    assert state(s3, bucket) == ([], [])


def test_too_many_parts_is_a_clear_error(s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pgbkp.storage.s3.MAX_PARTS", 2)
    up = S3Storage(settings_for(s3)).upload(bucket, "k")
    with pytest.raises(StorageError, match=rf"upload s3://{bucket}/k: more than 2 parts.*S3_PART_SIZE_MB"):
        write_all(up, os.urandom(3 * PART + 1))
    up.abort()
    assert state(s3, bucket) == ([], [])


# --------------------------------------------------------------------------------------------------
# Two writers on one key (a second scheduler, a same-minute re-run, an hour repeated at the DST change):
# a failed commit may only ever remove its own object.


def _racing_storage(s3: S3Server, bucket: str, when: str) -> S3Storage:
    """An S3Storage whose metadata copy lets another writer put its own object at the key first
    (``when="before"``, then the copy fails) or right after (``when="after"``)."""
    storage = S3Storage(settings_for(s3), abort_timeout=5)
    real = storage.set_metadata
    raw = raw_client(s3)

    def racing(b: str, key: str, metadata: Any, size: int, *, if_match: str) -> str:
        if when == "before":
            raw.put_object(Bucket=bucket, Key=key, Body=b"the other run's backup")
            raise StorageError(f"upload s3://{b}/{key}: PreconditionFailed: At least one of the pre-conditions "
                               "you specified did not hold")
        etag = real(b, key, metadata, size, if_match=if_match)
        raw.put_object(Bucket=bucket, Key=key, Body=b"the other run's backup")
        return etag

    storage.set_metadata = racing  # type: ignore[method-assign]
    return storage


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_failed_commit_never_deletes_another_writers_object(s3: S3Server, when: str) -> None:
    bucket = f"race-{uuid.uuid4().hex[:8]}"
    raw = raw_client(s3)
    raw.create_bucket(Bucket=bucket)
    up = _racing_storage(s3, bucket, when).upload(bucket, "db/k.zip")
    write_all(up, os.urandom(2 * PART + 7))
    with pytest.raises(StorageError):
        up.commit()
    body = raw.get_object(Bucket=bucket, Key="db/k.zip")["Body"].read()
    assert body == b"the other run's backup"
    assert raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
