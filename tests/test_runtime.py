"""Sizing torch's threads to the CPUs a process may use, and sharing them among the jobs ablate runs at once."""
from __future__ import annotations

import os

import pytest

from t2s.engine import runtime
from t2s.engine.runtime import share_cpus_env


def test_cgroup_quota_is_read_from_v2_and_v1_files(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert runtime.cgroup_cpu_limit(str(tmp_path)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtime.cgroup_cpu_limit(str(tmp_path)) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtime.cgroup_cpu_limit(str(tmp_path)) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1: no quota
    assert runtime.cgroup_cpu_limit(str(tmp_path)) is None
    assert runtime.cgroup_cpu_limit(str(tmp_path / "absent")) is None


def test_usable_cpus_is_the_affinity_mask_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: None)
    assert runtime.usable_cpus() == 6
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: 2.5)
    assert runtime.usable_cpus() == 2
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: 0.5)  # half a CPU still runs one thread
    assert runtime.usable_cpus() == 1


def test_jobs_share_the_cpus_and_the_environment_variable_wins(monkeypatch):
    monkeypatch.delenv(runtime.THREADS_ENV_VAR, raising=False)
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 8)
    assert [runtime.thread_count(jobs) for jobs in (1, 2, 3, 16)] == [8, 4, 2, 1]
    assert share_cpus_env(1) == {}
    assert share_cpus_env(2) == {runtime.THREADS_ENV_VAR: "4", "OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.setenv(runtime.THREADS_ENV_VAR, "3")
    assert runtime.thread_count(2) == 3
    monkeypatch.setenv(runtime.THREADS_ENV_VAR, "three")
    with pytest.raises(ValueError, match="T2S_THREADS='three' is not a whole number"):
        runtime.thread_count()


def test_size_threads_sets_torchs_thread_count(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv(runtime.THREADS_ENV_VAR, "1")
    try:
        assert runtime.size_threads() == 1 and torch.get_num_threads() == 1
    finally:
        runtime.release_threads()
        torch.set_num_threads(before)


def test_kit_processes_computing_at_once_share_the_cpus_and_rebalance_when_one_ends(monkeypatch, tmp_path):
    """Two kit processes started on their own: each registers while it computes and takes its share of the usable
    CPUs; when the other ends (or dies: its entry is stale), the share grows back at the next rebalance. A share
    given by T2S_THREADS (ablate's jobs) is kept."""
    import subprocess
    import sys

    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "RUNNING_DIR", tmp_path / "computing")
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 4)
    monkeypatch.delenv(runtime.THREADS_ENV_VAR, raising=False)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert runtime.size_threads() == 4 and runtime.kit_processes() == 1  # alone
        (tmp_path / "computing" / str(other.pid)).touch()  # another kit process starts computing
        monkeypatch.setattr(runtime, "REBALANCE_S", 0.0)
        assert runtime.rebalance_threads() == 2 and torch.get_num_threads() == 2
        (tmp_path / "computing" / "999999999").touch()  # a process that died without leaving: not counted, removed
        assert runtime.kit_processes() == 2 and not (tmp_path / "computing" / "999999999").exists()
        other.kill()
        other.wait()
        assert runtime.rebalance_threads() == 4  # the other ended: the CPUs are this one's again
        monkeypatch.setenv(runtime.THREADS_ENV_VAR, "1")
        assert runtime.rebalance_threads() == 1  # ablate's share wins
    finally:
        other.kill()
        runtime.release_threads()
        torch.set_num_threads(before)
    assert not (tmp_path / "computing" / str(os.getpid())).exists()  # released: it no longer counts
    assert runtime.rebalance_threads() == torch.get_num_threads()  # outside computing: nothing changes
