"""One conformance suite for every Storage: MemoryStorage and S3Storage on the real (moto) S3 server.

The first half runs the same checks on both backends (the ``backend`` fixture). The second half is
S3-only: the single-delete fallback, one write per backup (conditional, checksummed, never a copy), the
S3 server failing mid-upload and around the commit, and the upload writer under concurrency, all through
``tests/s3proxy.py`` in front of the server, while the end state is always checked on the server
directly, never through the proxy. Faults are driven by events (a request held at a gate), not sleeps.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import boto3
import botocore.config
import pytest

from pgbkp.config import S3Settings
from pgbkp.redact import Secret
from pgbkp.storage import NotFoundError, ObjectExistsError, ObjectInfo, Storage, StorageError, UploadStoppedError
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
    info = up.commit()
    assert isinstance(info, ObjectInfo)
    assert (info.bucket, info.key, info.size) == (backend.bucket, key, size)
    assert info.url == f"s3://{backend.bucket}/{key}"
    assert info.metadata == {"raw-size": "7", "origin": "contract"}  # as given when the upload began
    assert sum(seen) == size
    head = backend.storage.head(backend.bucket, key)
    assert (head.size, head.metadata) == (size, {"raw-size": "7", "origin": "contract"})
    assert read_all(backend.storage, backend.bucket, key) == data
    assert backend.pending() == []
    dl = backend.storage.download(backend.bucket, key)
    assert (dl.info.size, dl.info.metadata) == (size, {"raw-size": "7", "origin": "contract"})
    dl.close()


def test_an_upload_never_replaces_an_object_under_its_key(backend: Backend) -> None:
    backend.seed(["db/k.zip"])
    with pytest.raises(ObjectExistsError, match=rf"upload s3://{backend.bucket}/db/k.zip: a backup already "
                       "exists under this key .*it was kept and nothing was written"):
        backend.storage.upload(backend.bucket, "db/k.zip")
    assert read_all(backend.storage, backend.bucket, "db/k.zip") == b"x"
    assert backend.pending() == []


@pytest.mark.parametrize("size", [1000, 2 * PART + 7], ids=["put", "multipart"])
def test_a_writer_landing_first_keeps_its_object(backend: Backend, size: int) -> None:
    """Two runs in the same minute: the one that lands second drops its own upload, nothing else."""
    up = backend.storage.upload(backend.bucket, "db/k.zip")
    write_all(up, os.urandom(size))
    backend.seed(["db/k.zip"])  # the other run's whole backup lands while ours is still open
    with pytest.raises(ObjectExistsError, match=rf"upload s3://{backend.bucket}/db/k.zip: another backup landed "
                       "under this key while we uploaded; it was kept and ours was dropped"):
        up.commit()
    assert read_all(backend.storage, backend.bucket, "db/k.zip") == b"x"
    assert backend.pending() == []


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


@pytest.mark.parametrize("size", [1000, 2 * PART + 7], ids=["put", "multipart"])
def test_one_write_per_backup(s3: S3Server, proxy: S3Proxy, bucket: str, size: int) -> None:
    """The object lands in one conditional request, every body carries a checksum the store verifies,
    and nothing is ever copied: on a versioned bucket a backup is exactly one version."""
    raw = raw_client(s3)
    raw.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    data = os.urandom(size)
    up = S3Storage(settings_for(s3, proxy.endpoint)).upload(bucket, "db/k.zip", metadata={"origin": "x"})
    write_all(up, data)
    info = up.commit()
    assert proxy.ops("CopyObject") == [] and proxy.ops("UploadPartCopy") == []
    landing = proxy.ops("PutObject" if size < PART else "CompleteMultipartUpload")
    assert [r.headers.get("if-none-match") for r in landing] == ["*"]
    bodies = proxy.ops("PutObject") + sorted(proxy.ops("UploadPart"), key=lambda r: int(r.query["partNumber"][0]))
    assert [r.headers["content-md5"] for r in bodies] == [
        base64.b64encode(hashlib.md5(data[i:i + PART]).digest()).decode()
        for i in range(0, size, PART)]
    versions = raw.list_object_versions(Bucket=bucket)["Versions"]
    assert [(v["Key"], v["Size"]) for v in versions] == [("db/k.zip", size)]
    assert (info.size, raw.head_object(Bucket=bucket, Key="db/k.zip")["Metadata"]) == (size, {"origin": "x"})
    assert state(s3, bucket) == (["db/k.zip"], [])


def test_store_failing_mid_upload_then_abort_retries(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    storage = S3Storage(settings_for(s3, proxy.endpoint, max_attempts=2, concurrency=2), abort_timeout=20)
    proxy.fail(op_is("UploadPart", partNumber="3"), 503, "SlowDown")
    up = storage.upload(bucket, "db/shop/backup.zip")
    write_all(up, os.urandom(3 * PART))
    concurrent.futures.wait(up._futures)  # part 3 failed, after botocore's own retry
    with pytest.raises(StorageError, match=rf"^upload s3://{bucket}/db/shop/backup.zip: SlowDown: injected"):
        up.write(b"x")  # the very next write stops the producer
    assert state(s3, bucket) == ([], ["db/shop/backup.zip"])
    proxy.fail(op_is("AbortMultipartUpload"), 503, "SlowDown", times=3)  # 2 tries of botocore, then ours
    up.abort()  # keeps retrying while the store refuses, succeeds once it answers
    up.abort()
    assert state(s3, bucket) == ([], [])
    assert len(proxy.ops("AbortMultipartUpload")) == 4


def test_store_refusing_the_commit_leaves_nothing(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    storage = S3Storage(settings_for(s3, proxy.endpoint, max_attempts=2, concurrency=2), abort_timeout=20)
    proxy.fail(op_is("CompleteMultipartUpload"), 503, "SlowDown")
    up = storage.upload(bucket, "k")
    write_all(up, os.urandom(2 * PART + 100))
    with pytest.raises(StorageError, match=rf"^upload s3://{bucket}/k: SlowDown: injected by s3proxy$"):
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
    assert info.size == len(data)
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


@pytest.mark.parametrize("size", [1000, 2 * PART + 1], ids=["put", "multipart"])
def test_an_answer_lost_after_the_object_landed_is_a_commit(s3: S3Server, proxy: S3Proxy, bucket: str,
                                                             size: int) -> None:
    """The store did the work but every answer is lost (the retry refused by If-None-Match included):
    what landed is ours, whole, and stays; nothing is pending."""
    op = "PutObject" if size < PART else "CompleteMultipartUpload"
    proxy.fail(op_is(op), 500, "InternalError", after=True)
    storage = S3Storage(settings_for(s3, proxy.endpoint, max_attempts=2), abort_timeout=5)
    data = os.urandom(size)
    up = storage.upload(bucket, "db/k.zip")
    write_all(up, data)
    info = up.commit()
    assert (info.key, info.size) == ("db/k.zip", size)
    tries = proxy.ops(op)
    assert [r.headers["amz-sdk-request"].split(";")[0] for r in tries] == [
        f"attempt={n}" for n in range(1, len(tries) + 1)]
    assert len(tries) > 1  # botocore retried, and the retries were refused (If-None-Match) or lost too
    assert proxy.ops("DeleteObject") == [] and proxy.ops("DeleteObjects") == []
    assert state(s3, bucket) == (["db/k.zip"], [])
    assert raw_client(s3).get_object(Bucket=bucket, Key="db/k.zip")["Body"].read() == data


def test_every_request_failing_after_the_object_landed_deletes_nothing(s3: S3Server, proxy: S3Proxy,
                                                                       bucket: str) -> None:
    """Whether it landed cannot be learned: the commit fails, says so, and deletes nothing."""
    raw_client(s3).put_object(Bucket=bucket, Key="db/older.zip", Body=b"the previous backup")
    storage = S3Storage(settings_for(s3, proxy.endpoint, max_attempts=1), abort_timeout=1)
    data = os.urandom(2 * PART + 1)
    up = storage.upload(bucket, "db/k.zip")
    write_all(up, data)
    landed = threading.Event()

    def from_the_landing_on(r: Request) -> bool:
        if r.operation == "CompleteMultipartUpload":
            landed.set()
        return landed.is_set()

    proxy.fail(from_the_landing_on, 500, "InternalError", after=True)
    with pytest.raises(StorageError, match=rf"^upload s3://{bucket}/db/k.zip: InternalError: injected by s3proxy; "
                       "whether the object landed is unknown .*Nothing was deleted"):
        up.commit()
    assert proxy.ops("DeleteObject") == [] and proxy.ops("DeleteObjects") == []
    raw = raw_client(s3)
    assert state(s3, bucket) == (["db/k.zip", "db/older.zip"], [])
    assert raw.get_object(Bucket=bucket, Key="db/older.zip")["Body"].read() == b"the previous backup"
    assert raw.get_object(Bucket=bucket, Key="db/k.zip")["Body"].read() == data


@pytest.mark.parametrize("size", [1000, 2 * PART + 1], ids=["put", "multipart"])
def test_another_writer_landing_during_our_commit_keeps_its_object(s3: S3Server, proxy: S3Proxy, bucket: str,
                                                                   size: int) -> None:
    op = "PutObject" if size < PART else "CompleteMultipartUpload"
    gate = proxy.hold(op_is(op))
    up = S3Storage(settings_for(s3, proxy.endpoint)).upload(bucket, "db/k.zip")
    write_all(up, os.urandom(size))
    result: list[BaseException] = []
    committer = threading.Thread(target=lambda: _capture(up.commit, result))
    committer.start()
    gate.wait_arrived()
    raw_client(s3).put_object(Bucket=bucket, Key="db/k.zip", Body=b"the other run's backup")
    gate.release()
    committer.join()
    assert isinstance(result[0], ObjectExistsError)
    assert state(s3, bucket) == (["db/k.zip"], [])
    assert raw_client(s3).get_object(Bucket=bucket, Key="db/k.zip")["Body"].read() == b"the other run's backup"


def _capture(fn: Callable[[], Any], out: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as exc:
        out.append(exc)


def test_abort_is_sent_at_once_with_parts_in_flight(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    gate = proxy.hold(op_is("UploadPart"))
    storage = S3Storage(settings_for(s3, proxy.endpoint, concurrency=3))
    up = storage.upload(bucket, "k")
    write_all(up, os.urandom(3 * PART))
    gate.wait_arrived()
    aborted = proxy.hold(op_is("AbortMultipartUpload"), after=True)
    aborter = threading.Thread(target=up.abort)
    aborter.start()
    aborted.wait_arrived()  # the abort reached the store while every part was still held
    assert not any(f.done() for f in up._futures)
    gate.release()
    aborted.release()
    aborter.join()
    assert all(f.done() for f in up._futures)
    assert state(s3, bucket) == ([], [])


def test_a_stop_request_ends_a_producer_waiting_on_parts(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    """SIGTERM or the Lambda deadline while every part slot waits on a slow store: the producer stops
    at once instead of when a part finishes, and the abort leaves nothing."""
    gate = proxy.hold(op_is("UploadPart"))
    stop = threading.Event()
    up = S3Storage(settings_for(s3, proxy.endpoint, concurrency=2)).upload(bucket, "k", should_stop=stop.is_set)
    result: list[BaseException] = []
    producer = threading.Thread(target=lambda: _capture(lambda: write_all(up, os.urandom(6 * PART)), result))
    producer.start()
    gate.wait_arrived()
    stop.set()
    producer.join()
    assert isinstance(result[0], UploadStoppedError)
    assert str(result[0]) == f"upload s3://{bucket}/k: stopped while parts were in flight"
    gate.release()
    up.abort()
    assert state(s3, bucket) == ([], [])


def test_too_many_parts_is_a_clear_error(s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pgbkp.storage.s3.MAX_PARTS", 2)
    up = S3Storage(settings_for(s3)).upload(bucket, "k")
    with pytest.raises(StorageError, match=rf"upload s3://{bucket}/k: more than 2 parts.*S3_PART_SIZE_MB"):
        write_all(up, os.urandom(3 * PART + 1))
    up.abort()
    assert state(s3, bucket) == ([], [])


def test_a_second_abort_gets_one_try_within_the_first_ones_deadline(s3: S3Server, proxy: S3Proxy,
                                                                     bucket: str) -> None:
    """The commit aborts its upload; the caller aborts again: the second abort must not start a cleanup
    deadline of its own (27 s instead of 15 with a store refusing every abort)."""
    storage = S3Storage(settings_for(s3, proxy.endpoint, max_attempts=1, concurrency=2), abort_timeout=0.5)
    proxy.fail(op_is("CompleteMultipartUpload"), 403, "AccessDenied")
    proxy.fail(op_is("AbortMultipartUpload"), 503, "SlowDown")
    up = storage.upload(bucket, "k")
    write_all(up, os.urandom(PART + 1))
    with pytest.raises(StorageError, match=r"AccessDenied.*abort upload s3://.*SlowDown"):
        up.commit()
    tried = len(proxy.ops("AbortMultipartUpload"))
    with pytest.raises(StorageError, match="SlowDown"):
        up.abort()
    aborts = proxy.ops("AbortMultipartUpload")
    per_try = int(aborts[-1].headers["amz-sdk-request"].rsplit("max=", 1)[1])  # botocore's own tries
    assert len(aborts) == tried + per_try  # one try of ours, the deadline being spent


def test_a_landed_upload_whose_check_fails_once_is_a_commit(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    """The store completed the upload; the HEAD that checks it fails (every try botocore makes): retried
    within the cleanup deadline, not reported as a failed backup."""
    completed = threading.Event()

    def head_after_landing(r: Request) -> bool:
        if r.operation == "CompleteMultipartUpload":
            completed.set()
        return r.operation == "HeadObject" and completed.is_set()

    storage = S3Storage(settings_for(s3, proxy.endpoint, max_attempts=1), abort_timeout=5)
    data = os.urandom(PART + 1)
    up = storage.upload(bucket, "k")
    write_all(up, data)
    proxy.fail(head_after_landing, 500, "InternalError", times=2)
    assert up.commit().size == len(data)
    heads = [r for r in proxy.requests if r.operation == "HeadObject"]
    assert len(heads) == 1 + 2 + 1  # the precheck, one failed try of ours (botocore's two), the one that worked
    assert state(s3, bucket) == (["k"], [])


def test_a_stop_ends_a_wait_on_a_stalled_control_request(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    """Listing, checking a bucket, heading: a stalled answer no longer outlasts a stop request."""
    stop = threading.Event()
    storage = S3Storage(settings_for(s3, proxy.endpoint), should_stop=stop.is_set)
    gate = proxy.hold(op_is("HeadBucket"))
    result: list[BaseException] = []
    checker = threading.Thread(target=lambda: _capture(lambda: storage.check_bucket(bucket), result))
    checker.start()
    gate.wait_arrived()
    stop.set()
    checker.join()
    assert [str(e) for e in result] == [f"check bucket s3://{bucket}: stopped while waiting for the store"]
    with pytest.raises(UploadStoppedError, match=rf"^list s3://{bucket}/db/: stopped before the request was sent$"):
        list(storage.list(bucket, "db/"))
    gate.release()


def test_finished_parts_are_not_kept_by_idle_part_threads(s3: S3Server, bucket: str) -> None:
    """Memory stays (concurrency + 1) parts: a part thread must drop its finished part at once, not hold it
    until the next one arrives (which added a part per thread: 148 MiB peak instead of ~100 in the bench)."""
    concurrency = 4
    up = S3Storage(settings_for(s3, concurrency=concurrency)).upload(bucket, "k")
    write_all(up, os.urandom(concurrency * PART), chunk=PART)
    concurrent.futures.wait(up._futures)  # every part done; the threads now wait for the next
    assert up._threads is not None
    frames = sys._current_frames()
    idle = [frames[t.ident] for t in up._threads._threads if t.ident in frames]
    assert len(idle) == concurrency
    held = [name for f in idle for name, v in f.f_locals.items() if callable(v) or isinstance(v, tuple | Future)]
    assert held == []  # no finished item, future or part closure (with its bytes) kept by an idle thread
    up.commit()
