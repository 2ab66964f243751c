"""How many CPUs (and how much memory) this process may really use, for sizing worker pools: the
deflate threads, and how many databases are backed up at once.

``os.cpu_count()`` counts the host's cores; in a container or a Lambda function the affinity mask
and the cgroup CPU quota are what bind us, and a pool larger than the quota only adds contention.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["available_cpus", "available_memory", "database_concurrency"]


def _quota_cpus(quota: float, period: float) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_files(cgroup_root: Path, proc_cgroup: Path, name: str) -> Iterator[str]:
    """The text of cgroup v2 file ``name`` in our cgroup and each parent up to the root, where present:
    a parent's limit binds us too, so callers take the smallest."""
    relative = ""
    for line in (_read_text(proc_cgroup) or "").splitlines():
        if line.startswith("0::"):
            relative = line[3:].strip("/")
    directory = cgroup_root / relative if relative else cgroup_root
    while True:
        text = _read_text(directory / name)
        if text:
            yield text
        if directory == cgroup_root or cgroup_root not in directory.parents:
            return
        directory = directory.parent


def _cgroup_v2_limit(cgroup_root: Path, proc_cgroup: Path) -> int | None:
    """Smallest cpu.max quota from our cgroup up to the root."""
    limits: list[int] = []
    for text in _cgroup_files(cgroup_root, proc_cgroup, "cpu.max"):
        fields = text.split()
        if len(fields) == 2 and fields[0] != "max":
            limit = _quota_cpus(float(fields[0]), float(fields[1]))
            if limit is not None:
                limits.append(limit)
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


#: Databases at once, by default, at most: measured on 2 cores (docs/benchmarks.md, "Several databases at
#: once"), 2 at once took 45% off, 3 and 4 no more, since pg_dump waiting on the server is what overlaps.
MAX_DEFAULT_DATABASES = 2
#: Memory one database in flight may take (upload parts, deflate blocks, its pg_dump), and a margin.
MEMORY_PER_DATABASE = 256 << 20


def _cgroup_memory(cgroup_root: Path, proc_cgroup: Path) -> int | None:
    """Smallest memory.max (v2) from our cgroup up, or memory.limit_in_bytes (v1)."""
    limits = [int(text) for text in _cgroup_files(cgroup_root, proc_cgroup, "memory.max") if text.isdigit()]
    v1 = _read_text(cgroup_root / "memory" / "memory.limit_in_bytes")
    if v1 and v1.isdigit() and int(v1) < 1 << 60:  # "no limit" is a huge number there
        limits.append(int(v1))
    return min(limits) if limits else None


def available_memory(env: dict[str, str] | None = None, *, cgroup_root: Path = Path("/sys/fs/cgroup"),
                     proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """Bytes this process may use: Lambda's configured memory, else the cgroup limit, else the RAM."""
    env = dict(os.environ) if env is None else env
    lambda_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
    if lambda_mb.isdigit():
        return int(lambda_mb) << 20
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        physical = 1 << 30
    limit = _cgroup_memory(cgroup_root, proc_cgroup)
    return min(physical, limit) if limit else physical


def database_concurrency(cpus: int | None = None, memory: int | None = None) -> int:
    """DATABASE_CONCURRENCY's default: one database per CPU up to MAX_DEFAULT_DATABASES, and no more
    than one per MEMORY_PER_DATABASE (a 128 MB Lambda function backs up one at a time)."""
    cpus = available_cpus() if cpus is None else cpus
    memory = available_memory() if memory is None else memory
    return max(1, min(cpus, MAX_DEFAULT_DATABASES, memory // MEMORY_PER_DATABASE))
