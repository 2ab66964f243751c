"""The real ``pgbkp backup --dry-run`` on the configuration mistakes of issue 10: the whole stderr is one
exact line, exit 2, no traceback and no secret; and short secrets no longer garble what is printed.

No server is needed: every case stops at the configuration, except the last two, whose PostgreSQL
(127.0.0.1 port 1) refuses the connection at once.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping

import pytest

from tests.helpers import PGBKP

S3_SECRET = "Vq3Ts9Lm2Np8Hb6"
URL = "postgres://app:pw@db1.internal:5432/postgres"
POSITIONAL_FIX = ("positional fields are prefix|bucket|endpoint|forcepath|access|secret, so keep a left-out one's "
                  "place empty (a||c) or write key=value.")


def run(extra: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "AWS_", "ZIP_", "RETENTION_",
                                                                     "GLOBAL_", "LOG_"))}
    env.update({"LOG_FILE": "", "HEALTHCHECK_URL": "", "LOG_FORMAT": "json", "S3_BUCKET": "backups", **extra})
    return subprocess.run([PGBKP, "backup", "--dry-run"], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def message(line: str) -> str:
    """A log line's message: JSON once logging is set up (LOG_FORMAT=json), plain text before."""
    return str(json.loads(line)["message"]) if line.startswith("{") else line


CASES = [
    pytest.param(
        {"PG_URLS": f"prod|bkt-1|http://h:9000|{S3_SECRET}|access|{URL}"},
        "PG_URLS item 1 (prod): field 'forcepath' (positional field 4): not true or false (value not shown: it may be "
        f"a key moved up by a left-out field). Fix: use true or false; {POSITIONAL_FIX}",
        id="secret key in the forcepath slot"),
    pytest.param(
        {"PG_URLS": f"prod|bkt-1|wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY|true|{URL}"},
        "PG_URLS item 1 (prod): field 'endpoint' (positional field 3): not an http(s) URL with a host and a valid "
        "port (value not shown: it may be a key moved up by a left-out field). Fix: write it as http://host:port or "
        f"https://host; {POSITIONAL_FIX}",
        id="AWS secret key in the endpoint slot"),
    pytest.param(
        {"PG_URLS": "postgres://postgres:Top@Secret/Tail@host/db"},
        "PG_URLS item 1: field 'url': more than one '@', so one is inside the user, password or database name (URL "
        "not shown: any part of it may be the password). Fix: encode @ as %40 there, keeping only the @ before the "
        "host; likewise / %2F, ? %3F, # %23, , %2C, % %25.",
        id="raw @ in the password"),
    pytest.param(
        {"PG_URLS": "postgres://app:Sup3rS3cret%00@db1.internal/postgres"},
        "PG_URLS item 1 (db1.internal): field 'url': the password contains %00, a NUL character, which PostgreSQL "
        "cannot take (host db1.internal). Fix: remove the %00.",
        id="%00 in the password (was ValueError, exit 1)"),
    pytest.param(
        {"PG_URLS": "postgres://app:pw@db1.internal/post%00gres"},
        "PG_URLS item 1 (db1.internal): field 'url': the database name contains %00, a NUL character, which "
        "PostgreSQL cannot take (host db1.internal). Fix: remove the %00.",
        id="%00 in the database (was ValueError, exit 1)"),
    pytest.param(
        {"PG_URLS": f"pre\nfix|{URL}"},
        "PG_URLS item 1 (pre\\nfix): field 'prefix': 'pre\\nfix' may not contain '/' or control characters, nor be "
        ". or '..'. Fix: use a plain name; put folders in GLOBAL_PREFIX.",
        id="newline in the prefix"),
    pytest.param(
        {"PG_URLS": "postgres://app:pw@db1%0Ainternal/postgres"},
        "PG_URLS item 1 (db1\\ninternal): field 'url': the host contains spaces or control characters. Fix: write a "
        "host name or address.",
        id="newline in the host"),
    pytest.param(
        {"PG_URLS": URL, "GLOBAL_PREFIX": "a/../.."},
        "GLOBAL_PREFIX: 'a/../..' has a '.' or '..' folder, which would put keys outside the prefix or make two "
        "names for one folder. Fix: use plain folder names, such as backups/prod.",
        id="GLOBAL_PREFIX with .."),
    pytest.param(
        {"PG_URLS": f"pfx|endpoint=minio:9000|{URL}", "S3_ACCESS_KEY": "minio", "S3_SECRET_KEY": "minio-secret-key"},
        "PG_URLS item 1 (pfx): field 'endpoint': 'minio:9000' is not an http(s) URL with a host and a valid port. "
        "Fix: write it as http://host:port or https://host.",
        id="access key minio does not garble the endpoint"),
]


@pytest.mark.parametrize(("env", "message"), CASES)
def test_configuration_error_is_one_exact_line(env: dict[str, str], message: str) -> None:
    out = run(env)
    assert (out.returncode, out.stdout, out.stderr) == (2, "", f"pgbkp: configuration error: {message}\n")


def test_short_zip_password_warns_once_and_garbles_nothing() -> None:
    """ZIP_PASSWORD=backup: one warning before the run, and the connection 'backups' (bucket 'backups') is
    printed as it is. The scrubber used to turn it into '**redacted**s'."""
    out = run({"PG_URLS": "backups|postgres://u:pw@127.0.0.1:1/db", "ZIP_PASSWORD": "backup"})
    assert out.returncode == 1, out.stderr  # the run failed (no server), the configuration was fine
    lines = out.stderr.splitlines()
    assert message(lines[0]) == ("ZIP_PASSWORD: shorter than 12 characters, so anyone holding an archive can guess "
                                 "it offline. Fix: use a passphrase of 12 characters or more.")
    assert sum("ZIP_PASSWORD" in line for line in lines) == 1
    record = json.loads(lines[1])
    assert (record["level"], record["connection"], record["message"]) == (
        "ERROR", "backups",
        "PG_URLS item 1 (backups): field 'url': list databases on u@127.0.0.1:1/db: cannot reach the server "
        "(psql: error: connection to server at \"127.0.0.1\", port 1 failed: Connection refused). "
        "Fix: check host, port and network access.")
    assert "redacted" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_long_zip_password_does_not_warn() -> None:
    out = run({"PG_URLS": "backups|postgres://u:pw@127.0.0.1:1/db", "ZIP_PASSWORD": "a long passphrase"})
    assert out.returncode == 1, out.stderr
    assert "ZIP_PASSWORD" not in out.stderr
    assert json.loads(out.stderr.splitlines()[0])["level"] == "ERROR"  # the run's own first line


def test_a_misspelt_variable_is_named_once_without_its_value() -> None:
    """Issue 12: ZIP_PASSWROD was ignored without a word, and the backups went out unencrypted."""
    out = run({"PG_URLS": "backups|postgres://u:pw@127.0.0.1:1/db", "ZIP_PASSWROD": S3_SECRET})
    assert out.returncode == 1, out.stderr  # the run failed (no server), the configuration was fine
    lines = out.stderr.splitlines()
    assert message(lines[0]) == "ZIP_PASSWROD is not a pg-bkp setting and is ignored. Did you mean ZIP_PASSWORD?"
    assert sum("ZIP_PASSWROD" in line for line in lines) == 1
    assert S3_SECRET not in out.stderr + out.stdout
