"""LOG_FILE on a full disk: one warning on the console, and the run goes on; no logging tracebacks.

/dev/full is a real file that fails every write with ENOSPC, exactly as a full filesystem does, so the
real RotatingFileHandler, its buffering and logging's error path are what is tested.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgbkp import logs
from tests.helpers import PGBKP

FULL = "/dev/full"
WARNING = ("write log file /dev/full: No space left on device. The run goes on; lines reach the console only, "
           "until the file can be written again. Fix: free space on that disk, or set LOG_FILE=off.")

pytestmark = pytest.mark.skipif(not os.path.exists(FULL), reason="needs /dev/full")


@pytest.fixture
def package_logger() -> Iterator[logging.Logger]:
    """The ``pgbkp`` logger, put back as it was afterwards (handlers, level, propagation)."""
    logger = logging.getLogger("pgbkp")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    for h in list(logger.handlers):
        logger.removeHandler(h)
        if h not in saved[0]:
            h.close()
    for h in saved[0]:
        logger.addHandler(h)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_full_log_file_warns_once_in_process(package_logger: logging.Logger,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    console = io.StringIO()
    logs.setup("INFO", "json", console)
    handler = logs.add_file(FULL, "json")
    for n in range(65):
        logging.getLogger("pgbkp.pipeline").info("line %d", n)
    records = [json.loads(line) for line in console.getvalue().splitlines()]
    assert [r["message"] for r in records] == ["line 0", WARNING, *(f"line {n}" for n in range(1, 65))]
    assert [r["level"] for r in records if r["message"] == WARNING] == ["WARNING"]
    handler.close()  # the last buffered lines cannot be written either: closing must not raise
    assert capsys.readouterr().err == ""  # logging's handleError wrote a traceback here for every line


def test_log_file_that_works_does_not_warn(package_logger: logging.Logger, tmp_path: Path) -> None:
    console = io.StringIO()
    logs.setup("INFO", "json", console)
    handler = logs.add_file(tmp_path / "pg-backup.log", "json")
    for n in range(3):
        logging.getLogger("pgbkp.pipeline").info("line %d", n)
    handler.close()
    assert [json.loads(x)["message"] for x in (tmp_path / "pg-backup.log").read_text().splitlines()] == [
        "line 0", "line 1", "line 2"]
    assert [json.loads(x)["message"] for x in console.getvalue().splitlines()] == ["line 0", "line 1", "line 2"]


def test_serve_with_log_file_on_a_full_disk(tmp_path: Path) -> None:
    """The real runner, once: its PostgreSQL refuses the connection (127.0.0.1 port 1), so the run fails
    after several log lines, every one of which the log file refuses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "AWS_", "ZIP_", "LOG_"))}
    env.update({"PG_URLS": "postgres://u:pw@127.0.0.1:1/postgres", "S3_BUCKET": "backups", "CRON_ENABLED": "false",
                "LOG_FILE": FULL, "LOG_FORMAT": "json", "HEALTHCHECK_URL": "",
                "HEALTH_FILE": str(tmp_path / "health.json")})
    out = subprocess.run([PGBKP, "serve"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 1, out.stderr  # the backup failed; the log file did not stop anything
    assert "Traceback" not in out.stderr and "Logging error" not in out.stderr, out.stderr
    records = [json.loads(line) for line in out.stderr.splitlines()]  # every line is a record
    messages = [r["message"] for r in records]
    assert messages.count(WARNING) == 1, messages
    assert messages.index(WARNING) == 1  # right after the first line, the first the file refused
    assert any(m.startswith("run failed") for m in messages[2:]), messages
    assert json.loads((tmp_path / "health.json").read_text())  # the run went on to write its status


def test_a_log_call_with_arguments_that_do_not_fit_never_raises(package_logger: logging.Logger,
                                                                 tmp_path: Path) -> None:
    """The redacting filter formats the message; a mismatch used to raise TypeError out of the log call
    itself. Now the line is logged without its arguments (where a secret would be)."""
    console = io.StringIO()
    logs.setup("INFO", "json", console)
    handler = logs.add_file(tmp_path / "pg-backup.log", "json")
    logging.getLogger("pgbkp.pipeline").warning("aborted %d uploads", "several-secret-argument")
    handler.close()
    expected = "aborted %d uploads [the log arguments did not fit this message]"
    assert [json.loads(x)["message"] for x in console.getvalue().splitlines()] == [expected]
    assert [json.loads(x)["message"] for x in (tmp_path / "pg-backup.log").read_text().splitlines()] == [expected]
