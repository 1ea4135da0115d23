"""The cores the API sizes its processes by: affinity and cgroup CPU quotas, read from
cgroup trees laid out as the kernel mounts them, and from a real process pinned to one
core."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from directory.cores import cgroup_cpu_quota, usable_cores


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def _quota(tmp_path: Path, memberships: str, files: dict[str, str]) -> float | None:
    _tree(tmp_path / "cgroup", files)
    (tmp_path / "self-cgroup").write_text(memberships)
    return cgroup_cpu_quota(
        cgroup_root=tmp_path / "cgroup", proc_self_cgroup=tmp_path / "self-cgroup"
    )


def _cores(tmp_path: Path) -> int:
    return usable_cores(cgroup_root=tmp_path / "cgroup", proc_self_cgroup=tmp_path / "self-cgroup")


def test_a_v2_quota_is_read_in_cores(tmp_path):
    quota = _quota(tmp_path, "0::/\n", {"cpu.max": "150000 100000\n"})
    assert quota == 1.5


def test_a_v2_quota_of_a_parent_bounds_its_children(tmp_path):
    # A Kubernetes pod's limit sits on the pod's cgroup; its containers' own say "max".
    quota = _quota(
        tmp_path,
        "0::/kubepods/pod-a/container-b\n",
        {
            "cpu.max": "max 100000\n",
            "kubepods/cpu.max": "max 100000\n",
            "kubepods/pod-a/cpu.max": "200000 100000\n",
            "kubepods/pod-a/container-b/cpu.max": "max 100000\n",
        },
    )
    assert quota == 2.0


def test_no_quota_is_none(tmp_path):
    assert _quota(tmp_path, "0::/system.slice/x.service\n", {"cpu.max": "max 100000\n"}) is None


def test_a_v1_quota_inside_a_container_whose_mount_is_its_own_cgroup(tmp_path):
    # Docker on cgroup v1: /proc/self/cgroup names the container's host path, while the
    # container sees its own cgroup at the mount's root.
    quota = _quota(
        tmp_path,
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
        {"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
    )
    assert quota == 0.5


def test_a_v1_quota_of_minus_one_is_none(tmp_path):
    quota = _quota(
        tmp_path,
        "1:cpu:/\n",
        {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
    )
    assert quota is None


def test_unreadable_or_odd_cgroup_files_are_no_quota(tmp_path):
    assert _quota(tmp_path, "garbage\n0::/\n", {"cpu.max": "not numbers\n"}) is None
    assert cgroup_cpu_quota(cgroup_root=tmp_path, proc_self_cgroup=tmp_path / "missing") is None


@pytest.mark.parametrize(("cpu_max", "cores"), [("50000 100000", 1), ("150000 100000", 2)])
def test_a_quota_rounds_up_and_never_exceeds_the_affinity(tmp_path, cpu_max, cores):
    _quota(tmp_path, "0::/\n", {"cpu.max": cpu_max})
    assert _cores(tmp_path) == min(cores, len(os.sched_getaffinity(0)))


def test_without_a_quota_the_affinity_counts(tmp_path):
    _quota(tmp_path, "0::/\n", {"cpu.max": "max 100000"})
    assert _cores(tmp_path) == len(os.sched_getaffinity(0))


def test_serve_starts_one_process_per_core_it_may_use_plus_one():
    """A process pinned to one core (taskset, Docker's --cpuset-cpus) defaults to two
    workers, whatever the host has."""
    one_core = min(os.sched_getaffinity(0))
    printed = subprocess.run(
        [sys.executable, "-c", "from directory.__main__ import DEFAULT_WORKERS as w; print(w)"],
        preexec_fn=lambda: os.sched_setaffinity(0, {one_core}),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed.strip() == "2"
