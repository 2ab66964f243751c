"""`make demo` is a README command: it runs here end to end, so a change cannot break it unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import ROOT


def test_the_demo_backs_up_lists_and_restores_identically() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "S3_", "ZIP_", "RETENTION_"))}
    done = subprocess.run([sys.executable, "-m", "tests.demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "pg_dump of the restore equals the original: True" in done.stdout
    assert "checked: AES authentication code, object SHA-256 (integrity record)" in done.stdout
    assert done.stdout.count("sha256=") == 2
