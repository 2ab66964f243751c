"""Start-up pays only for what runs (issue 17): ``pgbkp --version``, ``--help`` and a command's help import
no AWS SDK, archive, progress bar, restore engine, runner or Lambda code. The check reads ``python -X
importtime`` in a fresh interpreter, so it sees every module the command loaded, however indirectly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HANDLER = Path(__file__).resolve().parent.parent / "handler"

#: What --version and --help must not load: each costs tens of milliseconds or more to import.
HEAVY = frozenset({
    "boto3", "botocore", "s3transfer", "pyzipper", "pyrage", "tqdm", "cronsim", "aws_lambda_powertools",
    "urllib.request", "http.client",
    "pgbkp.restore", "pgbkp.restore_cli", "pgbkp.runner", "pgbkp.lambda_function", "pgbkp.settings_secrets",
    "pgbkp.handler_core", "pgbkp.pipeline", "pgbkp.progress", "pgbkp.health", "pgbkp.schedule",
    "pgbkp.postgres", "pgbkp.storage", "pgbkp.storage.s3", "pgbkp.archive", "pgbkp.dispatch",
})

_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$")


def imported(*args: str) -> frozenset[str]:
    """The modules ``python -X importtime ARGS`` imports (it writes one line per module to stderr)."""
    env = {**os.environ, "PYTHONPATH": str(HANDLER)}
    env.pop("PG_URLS", None)
    result = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True,
                            timeout=60, check=False, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return frozenset(m.group(1) for line in result.stderr.splitlines() if (m := _LINE.match(line)))


def test_the_heavy_modules_are_real_names_that_the_commands_do_import() -> None:
    """Guards the test below: a misspelt name would be "not imported" for ever."""
    loaded = imported("-c", "import pgbkp.restore_cli, pgbkp.runner, pgbkp.lambda_function, pgbkp.dispatch, "
                                 "pgbkp.archive.agecrypt, "
                                 "pyzipper.zipfile_aes")
    assert sorted(HEAVY - loaded) == []


def test_the_lambda_cold_import_loads_no_library_a_run_may_not_use() -> None:
    """The image's import (Lambda's INIT, billed): AES, age, notifications and the runner's metrics are
    loaded by the run that uses them (ZIP_PASSWORD, AGE_RECIPIENTS, NOTIFY_URLS), not by every start."""
    loaded = imported("-c", "import pgbkp.lambda_function")
    assert sorted({"pyzipper", "Cryptodome", "pyrage", "apprise", "prometheus_client", "http.server"} & loaded) == []


@pytest.mark.parametrize("args", [
    ("-c", "import pgbkp.cli"),
    ("-m", "pgbkp", "--version"),
    ("-m", "pgbkp", "--help"),
    ("-m", "pgbkp", "backup", "--help"),
    ("-m", "pgbkp", "restore", "--help"),
    ("-m", "pgbkp", "serve", "--help"),
], ids=lambda a: " ".join(a[1:]))
def test_version_and_help_import_none_of_the_heavy_modules(args: tuple[str, ...]) -> None:
    loaded = imported(*args)
    assert "pgbkp.cli" in loaded
    assert sorted(HEAVY & loaded) == []


def test_the_health_check_loads_no_runner_storage_or_archive(tmp_path: Path) -> None:
    """``pgbkp health`` is Docker's HEALTHCHECK, run every 30 s for the life of the container: it reads
    one small file, so it must not pay for boto3, the archive or the handler (it did, through the runner)."""
    status = tmp_path / "health.json"
    status.write_text("{}")
    loaded = imported("-c", "import sys; from pgbkp import cli; sys.exit(0 if cli.main(['health', '--file', "
                      f"{str(status)!r}]) in (0, 1) else 2)")
    assert "pgbkp.schedule" in loaded  # what pgbkp.health imports: the command ran (it answered 0 or 1)
    allowed = {"pgbkp.health", "pgbkp.schedule", "cronsim", "urllib.request", "http.client"}  # its own, and small
    assert sorted((HEAVY - allowed) & loaded) == []
