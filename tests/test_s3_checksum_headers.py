"""S3_CHECKSUM: the headers our S3 client really sends, recorded by a proxy in front of the S3 server.

Since botocore 1.36 the default (``when_supported``) adds CRC checksum headers (``x-amz-checksum-*``,
``x-amz-sdk-checksum-algorithm``) to uploads; older MinIO, Backblaze B2, Dell ECS and other S3-compatible
stores reject them. These tests pin what each mode sends with the installed botocore, for the requests a
backup makes: PutObject, CreateMultipartUpload, UploadPart, CompleteMultipartUpload, CopyObject (the
metadata self-copy) and DeleteObjects (retention). A positive control shows the proxy does see such
headers when botocore sends them, so the "absent" assertions are not vacuous.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace

import boto3
import botocore
import botocore.config
import pytest

from pgbkp.config import S3Settings
from pgbkp.redact import Secret
from pgbkp.storage.s3 import S3Storage, make_client
from tests.s3proxy import Request, S3Proxy, running
from tests.servers import S3Server

PART = 5 * 1024 * 1024
UPLOAD_OPS = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "CopyObject")  # no copy


def flexible_checksum_headers(req: Request) -> dict[str, str]:
    return {k: v for k, v in req.headers.items()
            if k.startswith("x-amz-checksum-") or k == "x-amz-sdk-checksum-algorithm"}


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[S3Proxy]:
    with running(s3.endpoint) as p:
        yield p


def settings(s3: S3Server, endpoint: str, checksum: str) -> S3Settings:
    return S3Settings(endpoint=endpoint, access_key=Secret(s3.access_key), secret_key=Secret(s3.secret_key),
                      force_path_style=True, region="us-east-1", checksum=checksum, part_size=PART, concurrency=2)


def backup_like_traffic(storage: S3Storage, bucket: str) -> None:
    """What one backup plus its retention sends: a small upload, a multipart one, a batch delete."""
    up = storage.upload(bucket, "db/small.zip", metadata={"origin": "test"})
    up.write(b"small object")
    up.commit()
    up = storage.upload(bucket, "db/large.zip")
    data = os.urandom(2 * PART + 1000)
    chunk = 1 << 20
    for i in range(0, len(data), chunk):
        up.write(data[i:i + chunk])
    up.commit()
    storage.delete(bucket, ["db/small.zip", "db/large.zip"])
    assert list(storage.list(bucket, "db/")) == []


@pytest.fixture
def bucket(s3: S3Server) -> str:
    name = f"checksum-{uuid.uuid4().hex[:8]}"
    S3Storage(settings(s3, s3.endpoint, "auto")).client.create_bucket(Bucket=name)
    return name


@pytest.mark.parametrize("mode", ["auto", "when_required", "off"])
def test_upload_requests_carry_no_flexible_checksums(s3: S3Server, proxy: S3Proxy, bucket: str, mode: str) -> None:
    backup_like_traffic(S3Storage(settings(s3, proxy.endpoint, mode)), bucket)
    seen = {op: proxy.ops(op) for op in (*UPLOAD_OPS, "DeleteObjects")}
    assert [len(seen[op]) for op in UPLOAD_OPS] == [1, 1, 3, 1, 0], "the traffic this test is about"
    for op in UPLOAD_OPS:
        for req in seen[op]:
            assert flexible_checksum_headers(req) == {}, (mode, op, req.headers)
    for req in proxy.requests:
        assert "aws-chunked" not in req.headers.get("content-encoding", ""), (mode, req.operation)
        assert "x-amz-trailer" not in req.headers, (mode, req.operation)
        assert "x-amz-decoded-content-length" not in req.headers
        # Bodies go out whole, with a length, never as a streamed (chunked) payload.
        assert "STREAMING" not in req.headers.get("x-amz-content-sha256", ""), (mode, req.operation)
    (delete,) = seen["DeleteObjects"]
    if mode == "off":
        # DeleteObjects must carry an integrity header: the older Content-MD5 instead of the CRC.
        assert flexible_checksum_headers(delete) == {}
        assert "content-md5" in delete.headers
    else:
        # DeleteObjects *requires* a checksum: even when_required sends one (a CRC with this botocore).
        assert flexible_checksum_headers(delete) or "content-md5" in delete.headers


def test_off_md5_is_the_right_digest(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    """The Content-MD5 that off mode adds must be the body's (moto does not check it; real stores do)."""
    storage = S3Storage(settings(s3, proxy.endpoint, "off"))
    for k in ("a", "b"):
        up = storage.upload(bucket, k)
        up.write(k.encode())
        up.commit()
    storage.delete(bucket, ["a"])
    assert [o.key for o in storage.list(bucket, "")] == ["b"]
    (delete,) = proxy.ops("DeleteObjects")
    assert delete.body and b"<Key>a</Key>" in delete.body
    assert delete.headers["content-md5"] == base64.b64encode(hashlib.md5(delete.body).digest()).decode()


def test_positive_control_when_supported_sends_crc_headers(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    """botocore's own default, through the same proxy: the headers the other tests find absent appear."""
    client = boto3.client("s3", endpoint_url=proxy.endpoint, region_name="us-east-1",
                          aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
                          config=botocore.config.Config(s3={"addressing_style": "path"},
                                                        request_checksum_calculation="when_supported"))
    client.put_object(Bucket=bucket, Key="k", Body=b"hello")
    (put,) = proxy.ops("PutObject")
    headers = flexible_checksum_headers(put)
    assert headers, f"botocore {botocore.__version__} sent no checksum headers by default"
    assert any(k.startswith("x-amz-checksum-") for k in headers)


def test_mode_selection_per_setting() -> None:
    base = S3Settings(endpoint="http://127.0.0.1:9", access_key=Secret("a"), secret_key=Secret("b"),
                      region="us-east-1")
    aws = replace(base, endpoint=None)
    cases = [(aws, "auto", "when_supported"), (base, "auto", "when_required"),
             (base, "when_required", "when_required"), (aws, "when_required", "when_required"),
             (base, "off", "when_required"), (aws, "off", "when_required")]
    for s, mode, expected in cases:
        client = make_client(replace(s, checksum=mode))
        assert client.meta.config.request_checksum_calculation == expected, (s.endpoint, mode)
        assert client.meta.config.response_checksum_validation == expected, (s.endpoint, mode)


def test_aws_mode_declares_crc32_for_multipart(s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    """auto without an endpoint (AWS) keeps botocore's CRC32 on every part: the upload then declares the
    algorithm at creation and lists each part's CRC when completing, as AWS requires of such uploads."""
    storage = S3Storage(settings(s3, proxy.endpoint, "auto"))
    aws = make_client(replace(settings(s3, proxy.endpoint, "auto"), endpoint=None))
    # The configuration AWS would get, pointed at the proxy (the endpoint only picks the mode).
    storage.client = boto3.client("s3", endpoint_url=proxy.endpoint, region_name="us-east-1",
                                  aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
                                  config=aws.meta.config)
    assert storage.client.meta.config.request_checksum_calculation == "when_supported"
    data = os.urandom(2 * PART + 7)
    up = storage.upload(bucket, "k")
    up.write(data)
    info = up.commit()
    assert info.size == len(data)
    (create,) = proxy.ops("CreateMultipartUpload")
    assert create.headers.get("x-amz-checksum-algorithm") == "CRC32"
    parts = proxy.ops("UploadPart")
    assert len(parts) == 3 and all("x-amz-checksum-crc32" in p.headers for p in parts)
    assert up._parts and all("ChecksumCRC32" in p for p in up._parts.values())
    # Read back without response validation: moto keeps the parts' composite CRC (without AWS's "-N"
    # suffix) as if it were the whole object's, which botocore would reject.
    body = S3Storage(settings(s3, s3.endpoint, "when_required")).client.get_object(Bucket=bucket, Key="k")
    assert body["Body"].read() == data
