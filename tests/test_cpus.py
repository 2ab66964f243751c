"""available_cpus: the affinity mask and the cgroup v2/v1 CPU quota, read from a fake cgroup tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgbkp.cpus import available_cpus


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))


def cgroup(tmp_path: Path, files: dict[str, str], membership: str = "0::/\n") -> dict[str, Path]:
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership)
    return {"cgroup_root": root, "proc_cgroup": proc}


@pytest.mark.usefixtures("eight_cpus")
@pytest.mark.parametrize(
    ("files", "membership", "expected"),
    [
        ({}, "0::/\n", 8),
        ({"cpu.max": "max 100000\n"}, "0::/\n", 8),
        ({"cpu.max": "150000 100000\n"}, "0::/\n", 2),
        ({"cpu.max": "1000 100000\n"}, "0::/\n", 1),
        ({"cpu.max": "400000 100000\n"}, "0::/\n", 4),
        ({"a/cpu.max": "300000 100000", "a/b/cpu.max": "max 100000"}, "0::/a/b\n", 3),
        ({"a/cpu.max": "max 100000", "a/b/cpu.max": "250000 100000"}, "0::/a/b\n", 3),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, "", 8),
        ({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, "", 2),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "50000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, "", 1),
        ({"cpu.max": "garbage"}, "0::/\n", 8),
    ],
)
def test_available_cpus_respects_cgroup_quota(
    tmp_path: Path, files: dict[str, str], membership: str, expected: int
) -> None:
    assert available_cpus(**cgroup(tmp_path, files, membership)) == expected


def test_available_cpus_respects_affinity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert available_cpus(**cgroup(tmp_path, {"cpu.max": "400000 100000"})) == 1


def test_available_cpus_on_this_machine_is_sane() -> None:
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)
