"""`make install` installs only what `pgbkp` needs; the dev targets add the tools; stamps avoid reinstalls.

Checked with `make -n` (print, do not run) on a copy of the Makefile, with stamp times set explicitly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    os.utime(tmp_path / "pyproject.toml", (1_000_000, 1_000_000))
    return tmp_path


def dry_run(tree: Path, *targets: str) -> list[str]:
    """The pip commands `make -n TARGETS` would run."""
    out = subprocess.run(["make", "-n", *targets], cwd=tree, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return [ln for ln in out.splitlines() if "pip" in ln and "install" in ln]


def stamp(tree: Path, name: str, when: int) -> None:
    path = tree / ".venv" / name
    path.parent.mkdir(exist_ok=True)
    path.touch()
    os.utime(path, (when, when))


def test_fresh_install_has_no_dev_extra(tree: Path) -> None:
    assert dry_run(tree, "install") == [
        ".venv/bin/python -m pip --disable-pip-version-check --quiet install -e '.[runner]'"]


@pytest.mark.parametrize("target", ["dev", "test", "lint", "demo", "test-slow", "bench", "bench-many"])
def test_dev_targets_install_the_dev_extra(tree: Path, target: str) -> None:
    assert dry_run(tree, target) == [
        ".venv/bin/python -m pip --disable-pip-version-check --quiet install -e '.[dev,runner]'"]


@pytest.mark.parametrize("target", ["install", "dev", "test", "lint"])
def test_nothing_is_reinstalled_once_dev_is_current(tree: Path, target: str) -> None:
    stamp(tree, ".installed-runtime", 2_000_000)
    stamp(tree, ".installed-dev", 2_000_000)
    assert dry_run(tree, target) == []


def test_dev_after_install_adds_the_tools_only(tree: Path) -> None:
    stamp(tree, ".installed-runtime", 2_000_000)
    assert dry_run(tree, "install") == []
    assert dry_run(tree, "dev") == [
        ".venv/bin/python -m pip --disable-pip-version-check --quiet install -e '.[dev,runner]'"]


def test_a_changed_pyproject_reinstalls(tree: Path) -> None:
    stamp(tree, ".installed-runtime", 2_000_000)
    stamp(tree, ".installed-dev", 2_000_000)
    os.utime(tree / "pyproject.toml", (3_000_000, 3_000_000))
    assert dry_run(tree, "install") == [
        ".venv/bin/python -m pip --disable-pip-version-check --quiet install -e '.[runner]'"]
    assert dry_run(tree, "test") == [
        ".venv/bin/python -m pip --disable-pip-version-check --quiet install -e '.[dev,runner]'"]
