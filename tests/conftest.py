"""Session-wide real servers: one PostgreSQL cluster and one S3-compatible (moto) server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from pgbkp import redact
from tests.servers import PgCluster, S3Server, temp_root


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """In CI a skipped test is a failure (restic's SkipDisallowed): a suite that quietly skips its
    real-server tests proves nothing."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which is not allowed: {report.longrepr}"


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    root = temp_root("pgbkp-pg-")
    cluster = PgCluster(root).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server) -> S3Server:
    """The S3 server, emptied before the test."""
    s3_server.reset()
    return s3_server


@pytest.fixture
def forget_test_secrets() -> Iterator[None]:
    """config.load() registers every password with the process-wide redactor. Tests that use ordinary
    words ("pass", "postgres") as passwords take this, so later tests' messages are not scrubbed."""
    with redact._lock:
        saved = set(redact._known)
    yield
    with redact._lock:
        redact._known.clear()
        redact._known.update(saved)
