"""memory: the limits a start-up check compares with (the cgroup limit from files laid out as
the kernel lays them out, under tmp_path)."""

import jax
import pytest

from r1jax import memory


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1_limit_is_the_lowest_on_the_path(tmp_path):
    proc = tmp_path / "cgroup"
    _write(proc, "9:cpu:/\n4:memory:/slurm/job_7\n3:cpuset:/\n")
    root = tmp_path / "fs"
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")  # no limit
    _write(root / "memory" / "slurm" / "memory.limit_in_bytes", str(64 << 30))
    _write(root / "memory" / "slurm" / "job_7" / "memory.limit_in_bytes", str(6 << 30))
    assert memory.cgroup_memory_limit(str(proc), str(root)) == 6 << 30
    _write(root / "memory" / "slurm" / "memory.limit_in_bytes", str(2 << 30))
    assert memory.cgroup_memory_limit(str(proc), str(root)) == 2 << 30


def test_cgroup_v2_limit_and_a_container_mounted_at_its_own_cgroup(tmp_path):
    proc = tmp_path / "cgroup"
    _write(proc, "0::/docker/abc\n")
    root = tmp_path / "fs"
    _write(root / "memory.max", "max\n")
    assert memory.cgroup_memory_limit(str(proc), str(root)) is None
    # Inside a container /sys/fs/cgroup is the container's own cgroup: /docker/abc is not there.
    _write(root / "memory.max", "1073741824\n")
    assert memory.cgroup_memory_limit(str(proc), str(root)) == 1 << 30
    # The hybrid layout: v2 mounted at unified/ beside v1's controllers.
    _write(root / "unified" / "docker" / "abc" / "memory.max", "536870912\n")
    assert memory.cgroup_memory_limit(str(proc), str(root)) == 1 << 29


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert memory.cgroup_memory_limit(str(tmp_path / "missing"), str(tmp_path)) is None
    proc = tmp_path / "cgroup"
    _write(proc, "garbage\n1:name=systemd:/\n")
    assert memory.cgroup_memory_limit(str(proc), str(tmp_path)) is None
    assert memory.host_memory_bytes() > 0  # this host's own files, whatever they say


def test_check_fits_names_a_cgroup_limit_below_the_hosts_memory(monkeypatch):
    monkeypatch.setattr(memory, "cgroup_memory_limit", lambda: 3 << 30)
    assert memory.host_memory_bytes() == 3 << 30
    cpu = jax.devices("cpu")[:1]
    memory.check_fits(2 << 30, cpu, "a state")
    with pytest.raises(memory.OutOfMemory, match=r"more than this process's cgroup memory limit"):
        memory.check_fits(4 << 30, cpu, "a state")
