"""The import contracts in .importlinter hold today, and each one breaks when its rule is broken.

Each case plants one bad import in a copy of handler/ and runs lint-imports on the copy, so a contract
that silently stopped checking anything (a typo in a module name, a wrong contract type) fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONFIG = ROOT / ".importlinter"

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed (make dev)")


def lint(handler: Path, config: Path = CONFIG) -> subprocess.CompletedProcess[str]:
    """lint-imports over the pgbkp package under ``handler`` (which comes first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(handler)}
    return subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache", str(config)], cwd=handler.parent,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_tree_keeps_every_contract() -> None:
    result = lint(ROOT / "handler")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contracts_have_no_exceptions() -> None:
    """Issue 12 fixed the last known violations; a new exception must be argued for, not slipped in."""
    lines = [ln.strip() for ln in CONFIG.read_text(encoding="utf-8").splitlines()]
    assert [ln for ln in lines if ln.startswith("ignore_imports")] == []


# (file under handler/pgbkp, line appended to it, the contract that must break)
CASES = [
    ("config.py", "from pgbkp import pipeline", "layers: edges > handler_core"),
    ("runner.py", "from pgbkp import restore_cli", "layers: edges > handler_core"),
    ("newmodule.py", "VALUE = 1", "layers: edges > handler_core"),
    ("keys.py", "from pgbkp import redact", "retention, keys, integrity, output and emf import nothing from pgbkp"),
    ("retention.py", "from pgbkp import keys", "retention, keys, integrity, output and emf import nothing from pgbkp"),
    ("archive.py", "from pgbkp import config", "archive imports only its integrity record"),
    ("output.py", "from pgbkp import redact", "retention, keys, integrity, output and emf import nothing from pgbkp"),
    ("restore_cli.py", "from pgbkp.cli import main", "layers: edges > handler_core"),
    ("archive/writer.py", "import pyzipper", "pyzipper only in archive/aes.py"),
    ("restore.py", "import pyrage", "pyrage only in archive/agecrypt.py"),
    ("pipeline.py", "import subprocess", "subprocess only in postgres.py"),
    ("restore.py", "import boto3", "boto3 only in storage/"),
    ("schedule.py", "import botocore.config", "boto3 only in storage/"),
    ("handler_core.py", "from pgbkp.storage import s3", "S3Storage is built at the edges"),
    ("pipeline.py", "from pgbkp.storage.s3 import S3Storage", "S3Storage is built at the edges"),
    ("restore.py", "from pgbkp.storage.s3 import S3Storage", "S3Storage is built at the edges"),
    ("runner.py", "from aws_lambda_powertools import Logger", "Powertools only at the Lambda edge"),
    ("pipeline.py", "from pgbkp import settings_secrets", "the CLI and serve never load the Lambda edge"),
    ("config/values.py", "from pgbkp.config import model", "config: values < model"),
    ("runner.py", "import apprise", "apprise only in notify.py"),
    ("notify.py", "from pgbkp import pipeline", "layers: edges > handler_core"),
]


@pytest.mark.parametrize(("name", "line", "contract"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_a_planted_import_breaks_its_contract(tmp_path: Path, name: str, line: str, contract: str) -> None:
    handler = tmp_path / "handler"
    shutil.copytree(ROOT / "handler", handler, ignore=shutil.ignore_patterns("__pycache__"))
    target = handler / "pgbkp" / name
    if not target.exists() and name != "newmodule.py":
        # archive.py may have become a package (issue 12): plant the line in its __init__.py.
        target = handler / "pgbkp" / name.removesuffix(".py") / "__init__.py"
    with target.open("a", encoding="utf-8") as f:
        f.write(f"\n{line}\n")
    result = lint(handler)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{contract}" in result.stdout
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith("BROKEN") or " BROKEN (" in ln]
    assert any(contract in ln for ln in broken), result.stdout


def test_a_fixed_violation_must_drop_its_ignore_line(tmp_path: Path) -> None:
    """An ignore_imports line that matches nothing fails the lint, so exceptions cannot outlive their cause
    (restore_cli no longer imports cli: issue 12 removed the import and its ignore line together)."""
    config = tmp_path / ".importlinter"
    text = CONFIG.read_text(encoding="utf-8")
    anchor = "exhaustive = true\n"
    assert anchor in text
    config.write_text(text.replace(anchor, anchor + "ignore_imports =\n    pgbkp.restore_cli -> pgbkp.cli\n", 1),
                      encoding="utf-8")
    result = lint(ROOT / "handler", config)
    assert result.returncode != 0
    assert "No matches for ignored import pgbkp.restore_cli -> pgbkp.cli." in result.stdout + result.stderr
