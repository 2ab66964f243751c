"""How many CPUs this process may really use, for sizing worker pools (the deflate threads).

``os.cpu_count()`` counts the host's cores; in a container or a Lambda function the affinity mask
and the cgroup CPU quota are what bind us, and a pool larger than the quota only adds contention.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus"]


def _quota_cpus(quota: float, period: float) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_v2_limit(cgroup_root: Path, proc_cgroup: Path) -> int | None:
    """Smallest cpu.max quota from our cgroup up to the root (a parent's limit binds us too)."""
    relative = ""
    for line in (_read_text(proc_cgroup) or "").splitlines():
        if line.startswith("0::"):
            relative = line[3:].strip("/")
    directory = cgroup_root / relative if relative else cgroup_root
    limits: list[int] = []
    while True:
        text = _read_text(directory / "cpu.max")
        if text:
            fields = text.split()
            if len(fields) == 2 and fields[0] != "max":
                limit = _quota_cpus(float(fields[0]), float(fields[1]))
                if limit is not None:
                    limits.append(limit)
        if directory == cgroup_root or cgroup_root not in directory.parents:
            break
        directory = directory.parent
    return min(limits) if limits else None


def _cgroup_v1_limit(cgroup_root: Path) -> int | None:
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota = _read_text(cgroup_root / name / "cpu.cfs_quota_us")
        period = _read_text(cgroup_root / name / "cpu.cfs_period_us")
        if quota and period:
            try:
                return _quota_cpus(float(quota), float(period))
            except ValueError:
                return None
    return None


def available_cpus(*, cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """CPUs this process may really use: affinity mask, then cgroup v2/v1 CPU quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        limit = _cgroup_v2_limit(cgroup_root, proc_cgroup) or _cgroup_v1_limit(cgroup_root)
    except ValueError:
        limit = None
    if limit is not None:
        cpus = min(cpus, limit)
    return max(1, cpus)
