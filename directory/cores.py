"""How many cores this process may use, which sizes the API's processes by default.

`os.cpu_count()` counts the host's cores. A container limited to two of them by a CPU
quota (Kubernetes' `limits.cpu`, Docker's `--cpus`, systemd's `CPUQuota=`) or pinned by
affinity (`taskset`, `--cpuset-cpus`) would then start a process per host core, each
with its own database pool: on a 64-core node, 65 processes and hundreds of connections
for two cores' work."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def usable_cores(
    *, cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP
) -> int:
    """The cores this process may run on (its affinity), fewer if its cgroup's CPU quota
    allows less (rounded up: a quota of 1.5 cores keeps two busy)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores = cores or os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root=cgroup_root, proc_self_cgroup=proc_self_cgroup)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return cores


def cgroup_cpu_quota(
    *, cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP
) -> float | None:
    """The CPU quota of this process's cgroup, in cores: the smallest along its path up to
    the root (a parent's quota bounds its children), or None when there is none or it
    cannot be read (not Linux, cgroups not mounted)."""
    try:
        memberships = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in memberships:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # cgroup v2: "0::/path"
            quotas += (_v2_quota(folder / "cpu.max") for folder in _up(cgroup_root, path))
        elif "cpu" in controllers.split(","):  # cgroup v1: "4:cpu,cpuacct:/path"
            mount = cgroup_root / controllers
            if not mount.is_dir():
                mount = cgroup_root / "cpu"
            quotas += (_v1_quota(folder) for folder in _up(mount, path))
    found = [quota for quota in quotas if quota is not None]
    return min(found) if found else None


def _up(mount: Path, path: str) -> list[Path]:
    """The folders of cgroup `path` and of its parents, under `mount`. Inside a container
    the mount is often the container's own cgroup while `path` names it on the host:
    whatever is missing is skipped."""
    parts = [part for part in path.split("/") if part]
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _v2_quota(cpu_max: Path) -> float | None:
    """`cpu.max` holds "max 100000" (none) or "<quota µs> <period µs>"."""
    try:
        quota, period = cpu_max.read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(folder: Path) -> float | None:
    """`cpu.cfs_quota_us` is -1 for none."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
