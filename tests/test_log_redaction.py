"""Secrets never reach the console or the log file: `pgbkp serve` with a secret in every variable that can
hold one, at DEBUG, with one connection that works and one that fails, then a search of everything written."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
import uuid
from pathlib import Path

import pytest

from pgbkp import config, redact
from tests.helpers import PGBKP, all_keys, make_bucket
from tests.servers import HOSTILE_PASSWORD, PgCluster, S3Server, free_port

WRONG_PG_PASSWORD = "Wr0ng-pg-P@ss,w0rd"
ZIP_PASSWORD = "zip-secret-Pa55:phrase"
ACCESS_KEY = "AKIAREDACTME7EXAMPLE"  # an identifier, not a secret: it may appear
SECRET_KEY = "s3-secret-key/with+chars=9f3"
PING_TOKEN = str(uuid.uuid4())


def forms(secret: str) -> set[str]:
    return {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret, safe="")}


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_no_secret_in_any_output_or_the_log_file(pg: PgCluster, s3: S3Server, tmp_path: Path, fmt: str) -> None:
    db = f"redact_{uuid.uuid4().hex[:8]}"
    pg.create_database(db)
    try:
        bucket = make_bucket(s3)
        others = ",".join(d for d in pg.databases() if d != db)
        wrong = pg.url().replace(urllib.parse.quote(HOSTILE_PASSWORD, safe=""),
                                 urllib.parse.quote(WRONG_PG_PASSWORD, safe=""))
        log_file = tmp_path / "logs" / "pg-backup.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "ZIP_", "RETENTION_"))}
        env.update({
            **s3.env(),
            "S3_ACCESS_KEY": ACCESS_KEY,  # moto accepts any key pair
            "S3_SECRET_KEY": SECRET_KEY,
            "PG_URLS": f"good|bucket={bucket}|ignore={others}|{pg.url()},bad|bucket={bucket}|{wrong}",
            "ZIP_PASSWORD": ZIP_PASSWORD,
            "HEALTHCHECK_URL": f"http://127.0.0.1:{free_port()}/ping/{PING_TOKEN}",  # nobody listens: pings fail
            "CRON_ENABLED": "false",
            "LOG_LEVEL": "DEBUG",
            "LOG_FORMAT": fmt,
            "LOG_FILE": str(log_file),
            "HEALTH_FILE": str(tmp_path / "health.json"),
        })
        out = subprocess.run([PGBKP, "serve"], env=env, capture_output=True, text=True, timeout=120, check=False)
    finally:
        pg.drop_database(db)

    assert out.returncode == 1, out.stderr[-3000:]  # the bad connection failed, the good one ran
    assert [k for k in all_keys(s3, bucket) if k.startswith(f"good/{db}/")], out.stderr[-3000:]
    written = log_file.read_text(encoding="utf-8")
    health_file = (tmp_path / "health.json").read_text(encoding="utf-8")
    everything = {"stdout": out.stdout, "stderr": out.stderr, "log file": written, "status file": health_file}
    assert "password authentication failed" in written  # the failure is there, without its password
    assert "health ping 'start' to 127.0.0.1 failed" in written
    assert "run failed" in written
    if fmt == "json":
        assert all(json.loads(line)["message"] for line in written.splitlines())

    for name, text in everything.items():
        for secret in (HOSTILE_PASSWORD, WRONG_PG_PASSWORD, ZIP_PASSWORD, SECRET_KEY, PING_TOKEN):
            for form in forms(secret):
                assert form not in text, f"{name} shows a secret ({secret[:3]}...)"


# --------------------------------------------------------------------------------------------------
# The scrubber is a net for long secrets only; short ones never reach a message by construction.


@pytest.mark.usefixtures("forget_test_secrets")
def test_short_secrets_do_not_garble_messages() -> None:
    """The issue's two cases: ZIP_PASSWORD=backup and the README's S3_ACCESS_KEY=minio."""
    config.load({"PG_URLS": "postgres://postgres:postgres@postgres:5432/postgres", "S3_BUCKET": "backups",
                 "S3_ENDPOINT": "http://minio:9000", "S3_ACCESS_KEY": "minio", "S3_SECRET_KEY": "minio123",
                 "ZIP_PASSWORD": "backup"})
    text = ("restore s3://backups/postgres/db/x.zip: wrong password; endpoint http://minio:9000; "
            "password authentication failed for user \"postgres\"")
    assert redact.redact(text) == text


@pytest.mark.usefixtures("forget_test_secrets")
def test_the_net_starts_at_ten_characters() -> None:
    assert redact.MIN_SCRUBBED == 10
    redact.Secret("nine-char")  # 9
    redact.Secret("ten-chars!")  # 10
    redact.Secret("k3y/with+chars=1")
    assert redact.redact("nine-char ten-chars! x") == "nine-char **redacted** x"
    # the percent-encoded forms as well, as a URL or a query string would carry them
    assert redact.redact("k3y%2Fwith%2Bchars%3D1 k3y%2Fwith%2Bchars%3D1") == "**redacted** **redacted**"
    assert redact.redact("ten-chars!!") == "**redacted**!"  # inside a longer text: still scrubbed
